"""A stand-in WHM node for the demo and the tests: serves pages and a health check it can be told to fail.

``python -m whm_ha.demo_node --name node-1 --port 4001`` serves ``GET /healthz`` (200, or 503 when
unhealthy, or late when slow) and answers every other GET with the node's name. ``POST /_control``
with ``{"mode": "healthy" | "unhealthy" | "slow" | "overloaded", "delay": seconds}`` changes how it
behaves: ``slow`` delays the health check only, ``overloaded`` every answer (pages too) but ``/_control``.
With ``--tls-cert FILE --tls-key FILE`` it serves HTTPS instead (certificate chain and key in PEM), as WHM nodes
often do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from typing import Any

from aiohttp import web

MODES = ("healthy", "unhealthy", "slow", "overloaded")


def build_app(name: str) -> web.Application:
    state: dict[str, Any] = {"mode": "healthy", "delay": 5.0, "requests": 0}

    async def healthz(_: web.Request) -> web.Response:
        if state["mode"] in ("slow", "overloaded"):
            await asyncio.sleep(float(state["delay"]))
        if state["mode"] == "unhealthy":
            return web.json_response({"status": "unhealthy", "node": name}, status=503)
        return web.json_response({"status": "ok", "node": name})

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("mode") not in MODES:
            return web.json_response({"error": f"mode must be one of {', '.join(MODES)}"}, status=400)
        state["mode"] = body["mode"]
        state["delay"] = float(body.get("delay", state["delay"]))
        return web.json_response(state)

    async def page(request: web.Request) -> web.Response:
        state["requests"] = int(state["requests"]) + 1
        body = await request.read()
        if state["mode"] == "overloaded":
            await asyncio.sleep(float(state["delay"]))
        return web.Response(
            text=json.dumps({"node": name, "path": request.path_qs, "method": request.method, "bytes": len(body)}),
            content_type="application/json",
            headers={"X-WHM-Node": name},
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/_control", control)
    app.router.add_route("*", "/{tail:.*}", page)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="A stand-in WHM node.")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate chain (with --tls-key)")
    parser.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    web.run_app(build_app(args.name), host=args.host, port=args.port, ssl_context=context, print=None, access_log=None)


if __name__ == "__main__":
    main()
