"""The shim's TLS Secret is read by name: no other Secret of its namespace is asked for."""

from __future__ import annotations

import asyncio

from tests.unit.test_proxy_config import FakeClient, tls_secret_object
from whm_ha.shim.tls import SecretCertificate


async def test_the_shim_lists_and_watches_its_secret_by_name_only() -> None:
    fake = FakeClient()
    fake.objects["secrets"] = [tls_secret_object("unnamed"), tls_secret_object("shim-tls")]
    fake.watches["secrets"] = [[{"type": "MODIFIED", "object": tls_secret_object("shim-tls", "2")}]]
    watched = SecretCertificate(fake, "ns", "shim-tls")  # type: ignore[arg-type]
    task = asyncio.create_task(watched.run())
    try:
        async with asyncio.timeout(5):
            while fake.watches["secrets"] or watched.problem is None:  # noqa: ASYNC110 - state the task changes
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert {(verb, fields) for verb, plural, fields in fake.requests if plural == "secrets"} == {
        ("list", "metadata.name=shim-tls"),
        ("watch", "metadata.name=shim-tls"),
    }
