"""Reading a TLS ClientHello without decrypting anything: enough to learn the server name a client asks for.

Pure and bounded: the first bytes must be TLS handshake records (content type 22, version 3.x) of at most
16 KiB each, holding a ClientHello of at most ``MAX_HELLO`` bytes in at most ``MAX_RECORDS`` records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HANDSHAKE = 22
CLIENT_HELLO = 1
SERVER_NAME = 0
MAX_RECORD = 16384
"""The largest TLS plaintext record (RFC 8446 5.1)."""
MAX_HELLO = 16384
"""The largest ClientHello accepted (post-quantum key shares make them ~2 KB)."""
MAX_RECORDS = 8
HOST_NAME = re.compile(rb"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?")


class HelloError(ValueError):
    """Bytes that are not a ClientHello the proxy will pass on: the connection is closed."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None
    """The host name in the server_name extension (lower case); None when the client sent none."""
    length: int
    """Bytes of the records that carried it."""


def read_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello that ``data`` starts with; None while more bytes are needed; HelloError as soon as the bytes
    seen cannot start one (a first byte other than a handshake record's at once)."""
    message = bytearray()
    offset = 0
    for _ in range(MAX_RECORDS):
        if len(data) <= offset:
            return None
        if data[offset] != HANDSHAKE:
            raise HelloError(f"not a TLS handshake record (byte {data[offset]:#04x})")
        if len(data) < offset + 5:
            return None
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if data[offset + 1] != 3 or not 0 < length <= MAX_RECORD:
            raise HelloError(f"TLS record version {data[offset + 1]}.{data[offset + 2]}, length {length}")
        start = offset + 5
        message += data[start : start + length]
        _check_start(message)
        if len(data) < start + length:
            return None
        offset = start + length
        size = int.from_bytes(message[1:4], "big") if len(message) >= 4 else MAX_HELLO
        if len(message) >= 4 + size:
            return ClientHello(_server_name(bytes(message[4 : 4 + size])), offset)
    raise HelloError(f"ClientHello spread over more than {MAX_RECORDS} records")


def _check_start(message: bytearray) -> None:
    """Refuse, from its first bytes, a handshake message that is not a ClientHello of a size passed on."""
    if message and message[0] != CLIENT_HELLO:
        raise HelloError(f"TLS handshake message type {message[0]} is not a ClientHello")
    if len(message) >= 4 and (size := int.from_bytes(message[1:4], "big")) > MAX_HELLO:
        raise HelloError(f"a ClientHello of {size} bytes (at most {MAX_HELLO})")


class _Reader:
    """Bounds-checked reads off a ClientHello body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def take(self, size: int) -> bytes:
        end = self.position + size
        if end > len(self.data):
            raise HelloError("truncated ClientHello")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size_bytes: int) -> bytes:
        return self.take(self.number(size_bytes))

    @property
    def done(self) -> bool:
        return self.position == len(self.data)


def _server_name(body: bytes) -> str | None:
    reader = _Reader(body)
    reader.take(2 + 32)  # legacy_version, random
    if len(reader.vector(1)) > 32:
        raise HelloError("session id longer than 32 bytes")
    reader.vector(2)  # cipher suites
    reader.vector(1)  # compression methods
    if reader.done:
        return None  # no extensions
    extensions = _Reader(reader.vector(2))
    if not reader.done:
        raise HelloError("bytes after the ClientHello's extensions")
    name: str | None = None
    while not extensions.done:
        kind = extensions.number(2)
        content = extensions.vector(2)
        if kind == SERVER_NAME:
            if name is not None:
                raise HelloError("two server_name extensions")
            name = _host_name(content)
    return name


def _host_name(content: bytes) -> str:
    """The host_name entry of a server_name extension (RFC 6066 3)."""
    outer = _Reader(content)
    names = _Reader(outer.vector(2))
    if not outer.done:
        raise HelloError("bytes after the server name list")
    while not names.done:
        kind = names.number(1)
        value = names.vector(2)
        if kind == 0:
            if not HOST_NAME.fullmatch(value):
                raise HelloError(f"server name {value[:64]!r} is not a host name")
            return value.decode("ascii").lower()
    raise HelloError("server_name extension without a host name")
