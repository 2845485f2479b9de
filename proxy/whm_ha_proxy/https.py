"""What the cluster's ``loadBalancer.tls`` asks of plain-HTTP answers: the redirect to https."""

from __future__ import annotations

from .server import Request

ACME_CHALLENGES = b"/.well-known/acme-challenge/"
"""HTTP-01 challenges must be answered over plain HTTP (cert-manager, certbot): never redirected."""


def redirect_location(host: bytes, target: bytes) -> bytes | None:
    """Where a plain request for ``target`` (origin or absolute form) with Host ``host`` is sent over https: the
    same host without its port (HTTPS is on 443 in front of the proxy, as nginx's ``https://$host$request_uri``),
    the same path and query. None when there is nothing to redirect to (no host) or for an ACME challenge."""
    if target.startswith(b"http://"):
        host, slash, path = target[len(b"http://") :].partition(b"/")
        target = slash + path or b"/"
    if not host or target.startswith(ACME_CHALLENGES):
        return None
    # An IPv6 literal's port follows its bracket.
    name = host[: host.find(b"]") + 1] if host.startswith(b"[") else host.partition(b":")[0]
    if not name or not target.startswith(b"/"):
        return None
    return b"https://" + name + target


def redirect(request: Request) -> bool:
    """Answer ``request`` with 308 to its https location; False (nothing sent) when it has none."""
    location = redirect_location(request.host, request.path)
    if location is None:
        return False
    request.respond(308, b"Permanent Redirect", b"Location: " + location + b"\r\n")
    return True
