"""What the cluster's ``loadBalancer.tls`` asks of plain-HTTP answers: the redirect to https."""

from __future__ import annotations

import re

from .server import Request

ACME_CHALLENGES = b"/.well-known/acme-challenge/"
"""HTTP-01 challenges must be answered over plain HTTP (cert-manager, certbot): never redirected."""
_ABSOLUTE = re.compile(rb"http://([^/?#]*)(.*)", re.IGNORECASE | re.DOTALL)
"""An absolute-form target: its authority, then the rest (path and query)."""
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]*)?")
"""host[:port] as a Location may carry it: a DNS name or IPv4 address, or a bracketed IPv6 address. Anything else
(userinfo, a path, a backslash, spaces, bytes outside ASCII) could make the Location name another host."""


def redirect_location(host: bytes, target: bytes) -> bytes | None:
    """Where a plain request for ``target`` (origin or absolute form) with Host ``host`` is sent over https: the
    same host without its port (HTTPS is on 443 in front of the proxy, as nginx's ``https://$host$request_uri``),
    the same path and query. None when there is nothing to redirect to (no host, or one that is not host[:port])
    or for an ACME challenge."""
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is not None:
        host, target = absolute[1], absolute[2]
        if not target.startswith(b"/"):
            target = b"/" + target
    authority = _HOST.fullmatch(host)
    if authority is None or not target.startswith(b"/") or target.startswith(ACME_CHALLENGES):
        return None
    return b"https://" + authority[1] + target


def redirect(request: Request) -> bool:
    """Answer ``request`` with 308 to its https location; False (nothing sent) when it has none."""
    location = redirect_location(request.host, request.path)
    if location is None:
        return False
    request.respond(308, b"Permanent Redirect", b"Location: " + location + b"\r\n")
    return True
