"""The HTTP server under the shim: aiohttp's, hardened for hostile clients.

aiohttp's parser already refuses ambiguous framing (Content-Length with Transfer-Encoding, duplicate lengths,
obs-fold, bare LF, bad chunked encodings) and bounds request lines and header fields. What this adds: those
refusals as the shim's JSON errors that never echo what the client sent (aiohttp's own repeat the offending
bytes and log a traceback), a bound on the header count, a header timeout (a client dribbling its request head
is answered 408 and dropped) and a keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger("whm_ha.shim")

MAX_LINE = 8190
"""Bytes in the request line and in one header field, as aiohttp and nginx (8 KB) bound them."""
MAX_HEADERS = 100
HEADER_TIMEOUT = 60.0
"""Seconds a client may take to send a request head, as nginx's client_header_timeout."""
KEEPALIVE_TIMEOUT = 75.0


def error_body(status: int, code: str, message: str) -> bytes:
    return json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()


class _Protocol(RequestHandler):
    """aiohttp's request handler with JSON refusals and a header timeout."""

    header_timeout = HEADER_TIMEOUT
    _head_timer: asyncio.TimerHandle | None = None

    def _between_requests(self) -> bool:
        """No request is queued or being answered: bytes now are the start of a request head."""
        return self._current_request is None and not self._messages and not self._upgraded

    def data_received(self, data: bytes) -> None:
        between = self._between_requests()
        before = self._request_count
        super().data_received(data)
        if self._request_count > before:
            self._stop_head_timer()  # a whole head arrived (or a refusal was queued)
        elif data and between and self._head_timer is None:
            self._head_timer = asyncio.get_running_loop().call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or not self._between_requests():
            return
        body = error_body(408, "REQUEST_TIMEOUT", f"no complete request head within {self.header_timeout:g}s")
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """A refusal as a JSON error naming the problem, never the client's bytes; one log line, no traceback."""
        if isinstance(exc, LineTooLong):
            status, code, text = 431, "HEADERS_TOO_LARGE", f"a request line or header field exceeds {MAX_LINE} bytes"
        elif status == 400:
            code, text = "BAD_REQUEST", "malformed HTTP request"
        else:
            code, text = HTTPStatus(status).name, HTTPStatus(status).phrase
        log.info("refused a request from %s: %s %s", request.remote, status, type(exc).__name__ if exc else code)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had begun; the connection is closed")
        response = web.Response(body=error_body(status, code, text), status=status, content_type="application/json")
        response.force_close()
        return response


class _Server(web.Server):
    header_timeout = HEADER_TIMEOUT

    def __call__(self) -> RequestHandler:
        protocol = _Protocol(self, loop=self._loop, **self._kwargs)
        protocol.header_timeout = self.header_timeout
        return protocol


class HardenedRunner(web.AppRunner):
    """An AppRunner whose connections are served by the hardened handler."""

    def __init__(self, app: web.Application, *, header_timeout: float = HEADER_TIMEOUT) -> None:
        super().__init__(
            app,
            access_log=None,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        self.header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the application's startup, then aiohttp's Server
        server.__class__ = _Server  # the same Server, creating our handler for each connection
        assert isinstance(server, _Server)
        server.header_timeout = self.header_timeout
        return server
