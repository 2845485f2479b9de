"""https probes against real HTTPS stand-in nodes on loopback: a node whose certificate is good is healthy; one
whose certificate is expired, not yet valid, for another host or from an untrusted CA is unhealthy, and the
probe says which."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.node_certs import NodeCA
from tests.fixtures.whm_nodes import StartNodes
from whm_ha.node_tls import ClientTLS
from whm_ha.nodes.probe import probe_all, probe_http

NOW = datetime.now(UTC)


async def test_a_node_with_a_good_certificate_is_healthy(node_servers: StartNodes, node_ca: NodeCA) -> None:
    (node,) = node_servers("n1", tls=node_ca.issue("127.0.0.1"))
    result = await probe_http(node.host, node.port, "/healthz", 5.0, ClientTLS(ca_pem=node_ca.pem))
    assert result.ok, result.message
    assert result.message == "HTTP 200"


async def test_server_name_is_checked_instead_of_the_address(node_servers: StartNodes, node_ca: NodeCA) -> None:
    (node,) = node_servers("n1", tls=node_ca.issue("whm-node-1.example"))
    good = await probe_http(node.host, node.port, "/healthz", 5.0, ClientTLS(node_ca.pem, "whm-node-1.example"))
    assert good.ok, good.message
    wrong = await probe_http(node.host, node.port, "/healthz", 5.0, ClientTLS(node_ca.pem, "whm-node-2.example"))
    assert not wrong.ok
    assert wrong.message.endswith("certificate is not valid for whm-node-2.example (it names whm-node-1.example)"), (
        wrong.message
    )
    by_address = await probe_http(node.host, node.port, "/healthz", 5.0, ClientTLS(node_ca.pem))
    assert by_address.message.endswith("certificate is not valid for 127.0.0.1 (it names whm-node-1.example)")


@pytest.mark.parametrize(
    ("validity", "expected"),
    [
        (
            {"not_before": NOW - timedelta(days=30), "not_after": NOW - timedelta(days=1)},
            f"certificate expired (notAfter {(NOW - timedelta(days=1)).strftime('%Y-%m-%dT%H:%M:%SZ')})",
        ),
        (
            {"not_before": NOW + timedelta(days=1), "not_after": NOW + timedelta(days=30)},
            f"certificate not yet valid (notBefore {(NOW + timedelta(days=1)).strftime('%Y-%m-%dT%H:%M:%SZ')})",
        ),
    ],
    ids=["expired", "not-yet-valid"],
)
async def test_a_certificate_out_of_its_validity_is_named(
    node_servers: StartNodes, node_ca: NodeCA, validity: dict[str, datetime], expected: str
) -> None:
    (node,) = node_servers("n1", tls=node_ca.issue("127.0.0.1", **validity))
    result = await probe_http(node.host, node.port, "/healthz", 5.0, ClientTLS(ca_pem=node_ca.pem))
    assert not result.ok
    assert result.message == f"https://127.0.0.1:{node.port}/healthz: {expected}"


async def test_an_untrusted_certificate_names_its_issuer(
    node_servers: StartNodes, node_ca: NodeCA, other_ca: NodeCA
) -> None:
    (node,) = node_servers("n1", tls=other_ca.issue("127.0.0.1"))
    result = await probe_http(node.host, node.port, "/healthz", 5.0, ClientTLS(ca_pem=node_ca.pem))
    assert not result.ok
    assert "certificate not trusted: unable to get local issuer certificate; issuer " in result.message, result.message
    insecure = await probe_http(node.host, node.port, "/healthz", 5.0, ClientTLS(insecure=True))
    assert insecure.ok, insecure.message


async def test_https_probe_of_a_plain_node_and_rounds_on_the_probe_loop(
    node_servers: StartNodes, node_ca: NodeCA
) -> None:
    """The probe loop is uvloop's: its TLS errors are read as the standard loop's are."""
    plain, secure = node_servers("plain"), node_servers("secure", tls=node_ca.issue("127.0.0.1"))
    expired = node_servers("expired", tls=node_ca.issue("127.0.0.1", not_after=NOW - timedelta(minutes=5)))
    targets = [(s.name, s.host, s.port) for s in (*plain, *secure, *expired)]
    results = dict(await probe_all(targets, kind="http", path="/healthz", timeout=5.0, tls=ClientTLS(node_ca.pem)))
    assert results["secure"].ok, results["secure"].message
    assert "certificate expired (notAfter " in results["expired"].message, results["expired"].message
    assert not results["plain"].ok
    assert "the node does not speak TLS on this port" in results["plain"].message, results["plain"].message
