"""The shim against hostile clients, over raw sockets: ambiguous framing, oversized and endless heads, odd
versions and methods, deep JSON, loose types. Every refusal is a JSON error that echoes nothing the client sent,
and the connection is closed."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.kube import KubeAPI
from tests.fixtures.shim_process import ShimProcess, StartShim
from whm_ha.shim.auth import CACHE_ENTRIES, _Cache

MARKER = "zq8marker"
"""A string in every hostile request; it must appear neither in an answer nor in the shim's log."""


@pytest.fixture
def shim(kube_api: KubeAPI, kube_namespace: str, shim_process: StartShim) -> Iterator[ShimProcess]:
    started = shim_process(kube_api.kubeconfig, kube_namespace, "--client-header-timeout=1")
    yield started
    assert MARKER not in started.log_text(), "the client's bytes reached the log"


def exchange(shim: ShimProcess, data: bytes, *, timeout: float = 3) -> tuple[bytes, bool]:
    """Send raw bytes; what came back until the shim closed the connection or went quiet for ``timeout``
    seconds, and whether it closed."""
    with socket.create_connection(("127.0.0.1", shim.port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return answer, False
            if not chunk:
                return answer, True
            answer += chunk


def refused(answer: bytes, status: int) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), answer[:300]
    assert b"application/json" in head.lower(), head
    assert MARKER.encode() not in answer, "the answer echoes the request"
    parsed: dict[str, object] = json.loads(body)
    assert parsed["success"] is False
    return parsed


GET = f"GET /api/ha/status HTTP/1.1\r\nHost: shim\r\nX-Marker: {MARKER}\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        GET + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # CL.TE
        GET + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",  # TE.CL
        GET + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",  # duplicate length
        GET + "Content-Length: +5\r\n\r\nhello",  # signed length
        GET + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",  # obfuscated TE
        GET + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",  # bad chunk size
        GET + "X-Folded: a\r\n b\r\n\r\n",  # obs-fold
        GET.replace("\r\nX-Marker", "\nX-Marker") + "\r\n",  # bare LF
        GET + "X-Nul: a\x00b\r\n\r\n",  # NUL in a value
        f"GET /api/ha/status HTTP/1.1\r\nX-Marker: {MARKER}\r\n\r\n",  # HTTP/1.1 without Host
        f"GET /api/ha/status?{MARKER}\r\n\r\n",  # HTTP/0.9
    ],
)
def test_ambiguous_or_malformed_requests_are_400_and_closed(shim: ShimProcess, request_bytes: str) -> None:
    answer, closed = exchange(shim, request_bytes.encode())
    refused(answer, 400)
    assert closed


def test_oversized_heads_are_431_and_never_echoed(shim: ShimProcess) -> None:
    token = MARKER + "A" * 9000
    answer, closed = exchange(shim, f"{GET}Authorization: Bearer {token}\r\n\r\n".encode())
    assert refused(answer, 431)["error"] == {
        "code": "HEADERS_TOO_LARGE",
        "message": "a request line or header field exceeds 8190 bytes",
    }
    assert closed
    many = "".join(f"X-H{i}: {MARKER}\r\n" for i in range(150))
    answer, closed = exchange(shim, f"{GET}{many}\r\n".encode())
    assert answer.split(b" ")[1] in (b"400", b"431") and MARKER.encode() not in answer and closed


def test_a_client_dribbling_its_head_gets_408_and_is_dropped(shim: ShimProcess) -> None:
    with socket.create_connection(("127.0.0.1", shim.port), timeout=0.2) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/ha/status HTTP/1.1\r\nHost: shim\r\n")
        answer = b""
        while time.monotonic() - started < 10:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                sock.sendall(b"X")  # one byte now and then: never a whole head
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started
    refused(answer, 408)
    assert 0.9 <= took < 4, f"dropped after {took:.1f}s with a 1 s header timeout"


@pytest.mark.parametrize(("line", "status"), [("GET /api/ha/status HTTP/2.0", 505), ("TRACE / HTTP/1.1", 405)])
def test_versions_and_methods_not_served(shim: ShimProcess, line: str, status: int) -> None:
    answer, _ = exchange(shim, f"{line}\r\nHost: shim\r\nX-Marker: {MARKER}\r\n\r\n".encode())
    refused(answer, status)
    if status == 405:
        assert b"\r\nAllow: " in answer


def test_405_names_the_allowed_methods(shim: ShimProcess, kube_api: KubeAPI) -> None:
    answer, _ = exchange(shim, b"PUT /api/ha/status HTTP/1.1\r\nHost: shim\r\nContent-Length: 0\r\n\r\n")
    refused(answer, 405)
    assert b"\r\nAllow: GET" in answer


def test_deep_json_loose_types_and_bad_addresses_are_refused_and_audited(shim: ShimProcess, kube_api: KubeAPI) -> None:
    admin = kube_api.tokens["admin"]
    deep = b'{"targetNodeId": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, body = shim.call("POST", "/api/ha/failover", admin, raw=deep)
    assert status == 400 and body["error"]["message"] == "the body is nested too deeply"
    nested = {"targetNodeId": json.loads("[" * 40 + "]" * 40)}
    assert shim.call("POST", "/api/ha/failover", admin, nested)[0] == 400
    for loose in (True, 2.0, None, ""):
        status, body = shim.call("POST", "/api/ha/failover", admin, {"targetNodeId": loose})
        assert status == 422 and "targetNodeId" in json.dumps(body["error"]["fields"]), loose
    for ip in ("not an address!", "-leading.dash", "1.2.3", "$(reboot)"):
        status, body = shim.call("POST", "/api/ha/nodes", admin, {"hostname": "web-9", "ip": ip})
        assert status == 422 and "ip" in body["error"]["fields"], ip
    status, _ = shim.call(
        "POST",
        "/api/ha/failover",
        admin,
        {"targetNodeId": 1},
    )
    assert status != 500
    audit = [json.loads(line.split(" ", 4)[-1]) for line in shim.log_text().splitlines() if '"audit": true' in line]
    assert any(a["result"].startswith("400 BAD_REQUEST: the body is nested too deeply") for a in audit), audit


def test_the_token_cache_is_bounded_and_expires(tmp_path: Path) -> None:
    cache: _Cache[str, int | None] = _Cache(entries=3)
    for i in range(5):
        cache.put(f"t{i}", i, 60)
    assert len(cache) == 3 and cache.get("t0") is None and cache.get("t4") == (4,)
    cache.put("bad", None, 0.05)
    assert cache.get("bad") == (None,), "a refusal is an answer too"
    time.sleep(0.1)
    assert cache.get("bad") is None
    assert CACHE_ENTRIES == 10_000


def test_a_body_sent_apart_from_its_head_arms_no_header_timeout(shim: ShimProcess, kube_api: KubeAPI) -> None:
    """Headers and body in two writes, then the keep-alive connection idles past the 1 s header timeout: no
    unsolicited 408 (the timer is for request heads only)."""
    body = b'{"targetNodeId": 1}'
    auth = f"Authorization: Bearer {kube_api.tokens['admin']}"
    head = f"POST /api/ha/failover HTTP/1.1\r\nHost: shim\r\n{auth}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", shim.port), timeout=0.3) as sock:
        sock.sendall(head)
        with contextlib.suppress(TimeoutError):
            assert sock.recv(100) == b"", "nothing before the body"
        sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 404"), answer[:100]  # no WHMCluster in this namespace
        sock.settimeout(2)
        with contextlib.suppress(TimeoutError):
            extra = sock.recv(65536)
            assert b"408" not in extra, extra
