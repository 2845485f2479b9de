"""One health probe of one node: HTTP GET (healthy on 2xx/3xx) or TCP connect, bounded by a timeout."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from .health import ProbeResult


async def probe_http(session: aiohttp.ClientSession, url: str, timeout: float) -> ProbeResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, allow_redirects=False) as response:
                await response.read()
                elapsed = (time.monotonic() - started) * 1000
                if 200 <= response.status < 400:
                    return ProbeResult(True, elapsed, f"HTTP {response.status}")
                return ProbeResult(False, elapsed, f"HTTP {response.status} from {url}")
    except TimeoutError:
        return ProbeResult(False, timeout * 1000, f"no answer from {url} within {timeout:g}s")
    except aiohttp.ClientError as exc:
        return ProbeResult(False, (time.monotonic() - started) * 1000, f"{url}: {exc.__class__.__name__}: {exc}")


async def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        return ProbeResult(True, (time.monotonic() - started) * 1000, "TCP connect succeeded")
    except TimeoutError:
        return ProbeResult(False, timeout * 1000, f"no TCP connection to {host}:{port} within {timeout:g}s")
    except OSError as exc:
        return ProbeResult(False, (time.monotonic() - started) * 1000, f"TCP {host}:{port}: {exc.strerror or exc}")


def url_for(address: str, port: int, path: str) -> str:
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"http://{host}:{port}{path}"
