"""The redirect from the plain listener to https."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from whm_ha_proxy.https import redirect_location


@pytest.mark.parametrize(
    ("host", "target", "location"),
    [
        (b"panel.example", b"/a?b=1", b"https://panel.example/a?b=1"),
        (b"panel.example:8080", b"/", b"https://panel.example/"),
        (b"[::1]:8080", b"/x", b"https://[::1]/x"),
        (b"ignored", b"http://panel.example:80/p?q", b"https://panel.example/p?q"),
        (b"ignored", b"http://panel.example", b"https://panel.example/"),
        (b"panel.example", b"/.well-known/acme-challenge/t", None),
        (b"", b"/a", None),
        (b"panel.example", b"*", None),
        (b":8080", b"/", None),
        (b"ignored", b"HTTP://panel.example/p", b"https://panel.example/p"),  # the scheme is case-insensitive
        (b"ignored", b"http://panel.example?q", b"https://panel.example/?q"),
        # A Host that is not host[:port] would make a Location for another host, or not a URL at all.
        (b"panel.example@evil.example", b"/p", None),
        (b"evil.example/x?", b"/p", None),
        (b"panel.example\\evil.example", b"/p", None),
        (b"panel.example#", b"/p", None),
        (b"a\tb", b"/p", None),
        (b"[evil.example/x]:8080", b"/p", None),
        (b"ignored", b"http://user@evil.example/p", None),
    ],
)
def test_redirect_location(host: bytes, target: bytes, location: bytes | None) -> None:
    assert redirect_location(host, target) == location


@example(b"10.0.0.1:", b"/")
@example(b"[::1]:", b"/")
@given(st.binary(max_size=40), st.sampled_from([b"/", b"/p?q=1", b"//x/y"]))
def test_a_redirect_keeps_to_the_host_it_was_asked_for(host: bytes, target: bytes) -> None:
    """Whatever the Host, a Location is an https URL whose authority is that Host's name (its port dropped) and whose
    path is the target: a Host can never send the client elsewhere, or to something that is not a URL."""
    location = redirect_location(host, target)
    if location is None:
        return
    parts = urlsplit(location.decode("ascii"))
    name = host[: host.find(b"]") + 1] if host.startswith(b"[") else host.partition(b":")[0]
    assert (parts.scheme, parts.netloc.encode(), parts.username, parts.port) == ("https", name, None, None)
    assert parts.path.encode() + (b"?" + parts.query.encode() if parts.query else b"") == target
