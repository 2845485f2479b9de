"""The redirect from the plain listener to https."""

from __future__ import annotations

import pytest

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
    ],
)
def test_redirect_location(host: bytes, target: bytes, location: bytes | None) -> None:
    assert redirect_location(host, target) == location
