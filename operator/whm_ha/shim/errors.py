"""Errors the shim answers with: a JSON body with success false, a code and a message; never a traceback."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ShimError(Exception):
    """An error answered to the client as ``{"success": false, "error": {"code", "message", ...}}``."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def response(self) -> web.Response:
        error = {"code": self.code, "message": self.message, **self.details}
        return web.json_response({"success": False, "error": error}, status=self.status)


def bad_request(message: str, **details: Any) -> ShimError:
    return ShimError(400, "BAD_REQUEST", message, **details)


def unprocessable(message: str, fields: dict[str, str]) -> ShimError:
    return ShimError(422, "VALIDATION_FAILED", message, fields=fields)


def not_found(message: str) -> ShimError:
    return ShimError(404, "NOT_FOUND", message)


def conflict(message: str, code: str = "CONFLICT", **details: Any) -> ShimError:
    return ShimError(409, code, message, **details)
