"""Forwarding requests to the chosen node: streaming, header hygiene, retries, timeouts, WebSocket tunnels.

Bodies stream both ways without buffering (flow control on each side bounds memory); encodings pass
through untouched. A request is retried on another node when no connection could be made (nothing
was sent), and after other failures only when it is idempotent, has no body and nothing was sent to
the client yet; after a timeout also only when the cluster allows it for its path (WHM's APIs change
state on GET). A connect in flight to a node that leaves the rotation (the operator marks it failed,
or the proxy ejects it) is abandoned and the request goes to another node at once. An upgrade
request (WebSocket) goes to a node like any other; only a 101 answer joins the two connections byte
for byte, any other answer is relayed and HTTP goes on.

The common case, a request without a body over an idle pooled connection whose small answer arrives
whole, is served from the two connections' callbacks with no task or future (``forward_now``); at the
first sign of anything else (a failure, a timeout, a large or streamed answer) the exchange is handed,
as sent, to the general path, which decides on retries as if it had sent it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .balancer import Backend, Balancer
from .client_address import FORWARDING
from .config import ProxyConfig
from .https import redirect
from .server import ClientGone, Request
from .stats import NodeStats
from .upstream import (
    HOP_BY_HOP,
    ConnectAbandoned,
    ConnectFailed,
    Connection,
    Pool,
    Response,
    TLSFailed,
    UpstreamClosed,
    UpstreamError,
)

HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
SET_BY_PROXY = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded", b"expect"}
)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
SMALL_BODY = 65536
"""Response bodies of a known length up to this size are relayed in one write."""
JSON = b"Content-Type: application/json\r\n"
log = logging.getLogger("whm_ha_proxy.forward")
REASONS = {502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}
TLS_LOG_INTERVAL = 60.0
"""A node's TLS failure is logged when its reason changes, and otherwise at most this often (seconds)."""


@dataclass(frozen=True)
class Timeouts:
    """Upstream timeouts in seconds."""

    connect: float = 5.0
    header: float = 60.0
    """From the end of the request to the response's headers."""
    idle: float = 60.0
    """Between two reads of a response body (and for idle keep-alive connections)."""


class Outgoing:
    """What the node is sent, derived once per request."""

    __slots__ = ("cookies", "expect_continue", "head", "host")

    def __init__(self, head: bytes, *, host: bool, expect: bool, cookies: bytes) -> None:
        self.head = head
        """Request line and headers, ending with the blank line unless ``host`` is False."""
        self.host = host
        """Whether the client sent Host (otherwise the node's address is used)."""
        self.expect_continue = expect
        self.cookies = cookies

    def head_for(self, backend: Backend) -> bytes:
        """The head as ``backend`` gets it: with the node's address as Host when the client sent none."""
        return self.head if self.host else self.head + b"Host: " + backend.authority + b"\r\n\r\n"


HTTPOXY = b"proxy"
"""A client's ``Proxy:`` header is dropped (httpoxy, CVE-2016-5385): CGI and Perl nodes read it as HTTP_PROXY, the
variable their HTTP clients take as the outgoing proxy."""
NOTICED = HOP_BY_HOP_BYTES | SET_BY_PROXY | {b"cookie", HTTPOXY}
"""Header names that need more than copying (looked up once per header)."""
KEPT_CONNECTION_TOKENS = frozenset({b"keep-alive", b"close", b"upgrade"})


def outgoing(request: Request) -> Outgoing:
    """The request as the node gets it.

    Hop-by-hop headers (and those named in Connection, ``Proxy`` and any ``Proxy-*``, and underscore spellings of
    the headers the proxy sets) are dropped, except
    that an upgrade keeps ``Upgrade`` and ``Connection: Upgrade``; X-Forwarded-For is appended to,
    X-Forwarded-Proto, X-Real-IP and Forwarded are the connection's (``Origin.lines``: a trusted peer's are
    kept), X-Forwarded-Host is set. The framing (Host, Content-Length or Transfer-Encoding) is the
    proxy's own, from what the parser found and what is forwarded: no client header can remove or
    change it.
    """
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.path)]
    append = lines.append
    upgrade = request.upgrade
    expect = False
    cookies = b""
    forwarding: list[tuple[bytes, bytes]] = []
    named: set[bytes] = set()
    for name, value in request.headers:
        lower = name.lower()
        if lower in NOTICED:
            if lower == b"cookie":
                cookies = value
            elif lower in FORWARDING:
                forwarding.append((lower, value))
                continue
            elif lower == b"expect":
                expect = value.lower() == b"100-continue"
                continue
            elif lower == b"connection":
                named.update(token.strip().lower() for token in value.split(b","))
                continue
            elif lower != b"upgrade" or not upgrade:
                continue
        elif lower[:6] == b"proxy-" or (b"_" in lower and lower.replace(b"_", b"-") in SET_BY_PROXY):
            continue  # X_Real_IP and the like: CGI, PHP and WSGI read them as the proxy's own (HTTP_X_REAL_IP)
        append(name + b": " + value)
    named -= KEPT_CONNECTION_TOKENS
    if named:  # rare: drop the headers the client named in Connection (the proxy's own come after)
        lines = [lines[0], *(line for line in lines[1:] if line.split(b":", 1)[0].lower() not in named)]
        append = lines.append
    append(request.downstream.origin.lines(forwarding))
    host = request.host
    if host:
        append(b"X-Forwarded-Host: " + host)
    if upgrade:
        append(b"Connection: Upgrade")
    if request.chunked:
        append(b"Transfer-Encoding: chunked")
    elif request.length is not None:
        append(b"Content-Length: %d" % request.length)
    if host:
        append(b"Host: " + host)
        append(b"\r\n")
    else:
        append(b"")
    return Outgoing(b"\r\n".join(lines), host=bool(host), expect=expect, cookies=cookies)


def cookie(cookies: bytes, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header."""
    wanted = name.encode() + b"="
    for part in cookies.split(b";"):
        pair = part.strip()
        if pair.startswith(wanted):
            return pair[len(wanted) :].decode("latin-1")
    return None


def _sticky_node(config: ProxyConfig, out: Outgoing) -> str | None:
    """The node the client's sticky cookie names, if sessions are sticky and it sent one."""
    name = config.sticky_cookie
    return cookie(out.cookies, name) if name is not None and out.cookies else None


def _cookie_due(config: ProxyConfig, sticky: str | None, backend: Backend) -> str | None:
    """The sticky cookie's name when the answer from ``backend`` must set it (the client's names another node,
    or it sent none)."""
    name = config.sticky_cookie
    return name if name is not None and sticky != backend.name else None


def error(request: Request, status: int, message: str, **details: object) -> None:
    """A small JSON error: 503 no healthy node, 502 upstream failure, 504 upstream timeout."""
    request.respond(status, REASONS[status], JSON, json.dumps({"error": message, **details}).encode())


class Forwarder:
    """The request handler of a worker: picks a node and relays the exchange."""

    def __init__(self, balancer: Balancer, timeouts: Timeouts) -> None:
        self.balancer = balancer
        self.timeouts = timeouts
        self.pool = Pool(timeouts.connect, timeouts.idle)
        self.config: ProxyConfig | None = None
        self.stats: dict[str, NodeStats] = {}
        self.unrouted = 0
        self._loop = asyncio.get_running_loop()
        self._tls_logged: dict[str, tuple[str, float]] = {}
        """Per node, the TLS failure last logged and when (monotonic)."""

    def configure(self, config: ProxyConfig | None) -> None:
        """Apply a new configuration in place (in-flight requests keep their nodes)."""
        previous = self.config
        self.config = config
        nodes = config.nodes if config is not None else ()
        self.pool.use_tls(
            config.tls if config is not None else None, config.tls_problem if config is not None else None
        )
        self.balancer.configure(config.algorithm if config is not None else "roundRobin", nodes)
        routable = set(config.routable) if config is not None else set()
        for left in set(previous.routable if previous is not None else ()) - routable:
            self.pool.abandon(left)  # its connects in flight go elsewhere now, not after the connect timeout
        for node in nodes:
            self.stats.setdefault(node.name, NodeStats())
        for gone in set(self.stats) - {node.name for node in nodes}:
            del self.stats[gone]  # a deleted node leaves /stats and /metrics (requests in flight keep their object)
        if config is not None and previous is not None and config.generation != previous.generation:
            self.balancer.reset_ejections()

    def snapshot(self) -> dict[str, object]:
        backends = self.balancer.backends
        handshakes = self.pool.handshakes
        return {
            "nodes": {
                name: stats.snapshot(backends[name].active if name in backends else 0, handshakes.get(name, 0))
                for name, stats in self.stats.items()
            },
            "unrouted": self.unrouted,
        }

    def _unavailable(self, request: Request) -> None:
        self.unrouted += 1
        config = self.config
        nodes = len(config.nodes) if config is not None else 0
        error(request, 503, "no healthy node", cluster_configured=config is not None, nodes=nodes)

    def _failed(self, backend: Backend, stats: NodeStats, *, refused: bool = False) -> None:
        stats.errors += 1
        if self.balancer.failed(backend, self._loop.time(), refused=refused):
            stats.ejections += 1
            self.pool.abandon(backend.name)

    def _connect_failed(self, backend: Backend, stats: NodeStats, failure: ConnectFailed) -> str:
        """Count a connect that failed (nothing was sent) against its node; the message for the client."""
        self._failed(backend, stats, refused=True)
        if isinstance(failure, TLSFailed):
            self._tls_failed(backend, stats, failure)
            return "upstream TLS handshake failed"
        return "upstream connect timeout" if failure.timed_out else "upstream connection failed"

    def _tls_failed(self, backend: Backend, stats: NodeStats, failure: TLSFailed) -> None:
        """Count a failed TLS handshake, and log it when its reason is new for the node or a while has passed."""
        stats.tls_failures += 1
        reason, now = str(failure), time.monotonic()
        logged = self._tls_logged.get(backend.name)
        if logged is None or logged[0] != reason or now - logged[1] >= TLS_LOG_INTERVAL:
            self._tls_logged[backend.name] = (reason, now)
            log.warning(
                "node %s: %s; its requests go to other nodes (%d so far)", backend.name, reason, stats.tls_failures
            )

    def forward_now(self, request: Request) -> bool:
        """Serve a request without a body: sent over an idle pooled connection, the exchange is followed from
        callbacks (``_Flight``); with no idle connection to the chosen node, it goes on in a task. False (nothing
        chosen or sent) when it needs the general path from the start."""
        config = self.config
        if config is None or request.has_body or request.upgrade or request.method == "HEAD":
            return False
        if config.redirect_http and not request.downstream.tls:
            return False
        out = outgoing(request)
        sticky = _sticky_node(config, out)
        started = self._loop.time()
        backend = self.balancer.pick(started, sticky=sticky)
        if backend is None:
            return False
        stats = self.stats[backend.name]
        stats.requests += 1
        backend.active += 1
        attempt = Attempt(backend, stats, self.pool.take_idle(backend.name), started)
        if attempt.connection is not None:
            try:
                attempt.connection.begin(out.head_for(backend), method_head=False)
            except UpstreamClosed:
                attempt.connection.abort()
                attempt.connection = None
        if attempt.connection is None:
            request.downstream.continue_in_task(self.forward(request, config, out, sticky, attempt), request)
        else:
            flight = _Flight(self, request, config=config, out=out, sticky=sticky, attempt=attempt)
            attempt.connection.watch(flight.advance, self.timeouts.header)
        return True

    async def __call__(self, request: Request) -> None:
        config = self.config
        if config is None:
            return self._unavailable(request)
        if config.redirect_http and not request.downstream.tls and redirect(request):
            return None
        out = outgoing(request)
        sticky = _sticky_node(config, out)
        if out.expect_continue and request.has_body:
            request.continue_()
        return await self.forward(request, config, out, sticky)

    async def forward(
        self, request: Request, config: ProxyConfig, out: Outgoing, sticky: str | None, first: Attempt | None = None
    ) -> None:
        """Relay the exchange with a node, retrying on another where that is safe; ``first``: the first
        attempt's node, chosen and counted (and the request perhaps sent) by ``forward_now``."""
        replayable = not request.has_body and request.method in IDEMPOTENT
        tried: list[Backend] = []
        # Nodes whose connect was given up as they left the rotation: excluded, yet neither failures nor retries.
        abandoned: set[str] = set()
        failure: tuple[int, str, str] | None = None
        while True:
            connection: Connection | None = None
            if first is not None:
                backend, stats, connection, started = first.backend, first.stats, first.connection, first.started
            else:
                picked = self.balancer.pick(self._loop.time(), sticky=sticky, exclude=tried)
                if picked is None:
                    if failure is None:
                        return self._unavailable(request)
                    return error(request, failure[0], failure[1], node=failure[2])
                backend = picked
                stats = self.stats[backend.name]  # configure() keeps one for every node the balancer picks from
                last = tried[-1].name if tried else None
                if last is not None and last not in abandoned and (previous := self.stats.get(last)) is not None:
                    previous.retries += 1
                stats.requests += 1
                started = self._loop.time()
                backend.active += 1
            first = None
            tried.append(backend)
            try:
                try:
                    connection, response = await self._exchange(
                        request, backend, out.head_for(backend), connection, resend=replayable
                    )
                except ConnectAbandoned:
                    abandoned.add(backend.name)
                    continue
                except ConnectFailed as exc:
                    failure = (504 if exc.timed_out else 502, self._connect_failed(backend, stats, exc), backend.name)
                    if len(tried) - len(abandoned) <= config.retries:
                        continue
                    return error(request, failure[0], failure[1], node=backend.name)
                except UpstreamError as exc:
                    if request.body.error is not None:
                        raise ClientGone("client left during the upload") from exc
                    self._failed(backend, stats)
                    timed_out = isinstance(exc, TimeoutError)
                    message = "upstream timeout" if timed_out else "upstream failure"
                    failure = (504 if timed_out else 502, message, backend.name)
                    if (
                        replayable
                        and len(tried) - len(abandoned) <= config.retries
                        and (not timed_out or config.retries_after_timeout(request.path))
                    ):
                        continue
                    return error(request, failure[0], failure[1], node=backend.name)
                if response.status == 101:
                    return await self._switch(request, connection, response, stats, started)
                return await self._relay(
                    request,
                    connection=connection,
                    response=response,
                    backend=backend,
                    stats=stats,
                    started=started,
                    set_cookie=_cookie_due(config, sticky, backend),
                )
            finally:
                backend.active -= 1

    async def _exchange(
        self, request: Request, backend: Backend, head: bytes, sent_on: Connection | None, *, resend: bool
    ) -> tuple[Connection, Response]:
        """Send the request to a node (unless it was already sent on ``sent_on``) and wait for the
        response head.

        A reused keep-alive connection that the node closed before answering is replaced by a fresh
        one, once, when ``resend`` (an idempotent request without a body): the node may have closed it
        just as the request arrived, or after it had begun to act on it.
        """
        connection = sent_on
        for attempt in (0, 1):
            if connection is None:
                connection = await self.pool.acquire(backend.name, backend.spec.address, backend.spec.port)
                send = True
            else:
                send = False
            try:
                if send:
                    connection.begin(head, method_head=request.method == "HEAD")
                    if request.has_body:
                        writer = asyncio.ensure_future(
                            connection.send_body(request.body.chunks(), chunked=request.chunked)
                        )
                        writer.add_done_callback(_abort_on_failure(connection))
                return connection, await connection.response(self.timeouts.header)
            except UpstreamClosed:
                connection.abort()
                if not resend or attempt or not connection.reused or connection.received:
                    raise
                connection = None
            except BaseException:
                connection.abort()
                raise
        raise AssertionError("unreachable")

    def account(
        self, backend: Backend, stats: NodeStats, response: Response, set_cookie: str | None, *, secure: bool
    ) -> None:
        """Count a node's answer for its health, and add the sticky cookie to it when it is due (``Secure`` when
        the client is on TLS, so that the browser never sends it over plain HTTP)."""
        if response.status >= 500:
            self._failed(backend, stats)
        else:
            self.balancer.succeeded(backend)
        if set_cookie is not None:
            attributes = "Path=/; HttpOnly; SameSite=Lax; Secure" if secure else "Path=/; HttpOnly; SameSite=Lax"
            response.fields += f"Set-Cookie: {set_cookie}={backend.name}; {attributes}\r\n".encode()

    async def _relay(
        self,
        request: Request,
        *,
        connection: Connection,
        response: Response,
        backend: Backend,
        stats: NodeStats,
        started: float,
        set_cookie: str | None,
    ) -> None:
        """Send the node's response to the client as it arrives."""
        status = response.status
        self.account(backend, stats, response, set_cookie, secure=request.downstream.tls)
        fields = response.fields
        length = response.length
        idle = self.timeouts.idle
        try:
            if request.method == "HEAD" or status in (204, 304):
                request.respond_bodiless(status, response.reason, fields, length if request.method == "HEAD" else None)
            elif length is not None and length <= SMALL_BODY:
                body = await connection.read(idle)
                while len(body) < length and (more := await connection.read(idle)):
                    body += more
                if await connection.read(idle):
                    raise UpstreamClosed("more body than announced")
                request.respond(status, response.reason, fields, body)
            else:
                request.start(status, response.reason, fields, length)
                while piece := await connection.read(idle):
                    await request.write(piece)
                request.finish()
        except UpstreamError:
            connection.abort()
            self._failed(backend, stats)
            if not request.responded:
                return error(request, 502, "upstream failure", node=backend.name)
            request.downstream.close()  # the client sees a cut response, never a complete-looking one
            return None
        except BaseException:
            connection.abort()  # the client went away (or we are cancelled): the connection is not reusable
            raise
        self.pool.release(connection)
        stats.answered(status, self._loop.time() - started)
        return None

    async def _switch(
        self, request: Request, connection: Connection, response: Response, stats: NodeStats, started: float
    ) -> None:
        """The node answered 101: join the two connections byte for byte until either side closes."""
        if not request.upgrade:  # a 101 nobody asked for: the node broke the protocol
            connection.abort()
            return error(request, 502, "upstream failure", node=connection.key)
        assert connection.transport is not None
        request.switch(response.fields, response.upgrade, connection.transport)
        downstream = request.downstream
        assert downstream.transport is not None
        try:
            await connection.tunnel(downstream.transport.write, downstream.pause_reading, downstream.resume_reading)
        finally:
            connection.abort()
            downstream.close()
        stats.answered(101, self._loop.time() - started)


class Attempt:
    """The first attempt ``forward_now`` made: which node, when, and the connection the request was sent on."""

    __slots__ = ("backend", "connection", "started", "stats")

    def __init__(self, backend: Backend, stats: NodeStats, connection: Connection | None, started: float) -> None:
        self.backend = backend
        self.stats = stats
        self.connection = connection
        self.started = started


class _Flight:
    """An exchange ``forward_now`` follows from callbacks: answered at once when the response arrives
    whole and small, otherwise handed to the general path as sent."""

    __slots__ = ("attempt", "config", "forwarder", "out", "request", "sticky")

    def __init__(
        self,
        forwarder: Forwarder,
        request: Request,
        *,
        config: ProxyConfig,
        out: Outgoing,
        sticky: str | None,
        attempt: Attempt,
    ) -> None:
        self.forwarder = forwarder
        self.request = request
        self.config = config
        self.out = out
        self.sticky = sticky
        self.attempt = attempt

    def advance(self, connection: Connection) -> None:
        if connection.waiting_for_head:
            return
        connection.watch(None)
        request, attempt, forwarder = self.request, self.attempt, self.forwarder
        body = connection.whole_body(SMALL_BODY)
        response = connection.response_head
        if body is None or response is None:
            request.downstream.continue_in_task(
                forwarder.forward(request, self.config, self.out, self.sticky, attempt), request
            )
            return
        backend = attempt.backend
        backend.active -= 1
        try:
            forwarder.account(
                backend,
                attempt.stats,
                response,
                _cookie_due(self.config, self.sticky, backend),
                secure=request.downstream.tls,
            )
            if response.status in (204, 304):
                request.respond_bodiless(response.status, response.reason, response.fields, None)
            else:
                request.respond(response.status, response.reason, response.fields, body)
            forwarder.pool.release(connection)
            attempt.stats.answered(response.status, request.downstream.loop.time() - attempt.started)
            request.downstream.finished(request)
        except Exception:  # as the task's handler would: logged, and the client's connection closed, not left hanging
            log.exception("answering a request from callbacks failed")
            connection.abort()
            request.downstream.close()


def _abort_on_failure(connection: Connection) -> Callable[[asyncio.Future[None]], None]:
    def done(task: asyncio.Future[None]) -> None:
        if task.cancelled() or task.exception() is not None:
            connection.abort()

    return done
