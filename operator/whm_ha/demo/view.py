"""What a user would look at, in plain words: nodes and their health, the primary, the database topology,
and traffic through the proxy."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any, cast

from kubernetes import client

from .stack import CLUSTER, NAMESPACE, REPLICATION


class Observer:
    """Reads the custom resources and the proxy's statistics."""

    def __init__(self, api: client.ApiClient, admin_port: int) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.admin_port = admin_port

    def cluster(self) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.custom.get_namespaced_custom_object("ha.whm.io", "v1alpha1", NAMESPACE, "whmclusters", CLUSTER),
        )

    def nodes(self) -> list[dict[str, Any]]:
        listing = cast(
            dict[str, Any], self.custom.list_namespaced_custom_object("ha.whm.io", "v1alpha1", NAMESPACE, "whmnodes")
        )
        return sorted(listing["items"], key=lambda n: n["metadata"]["name"])

    def replication(self) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.custom.get_namespaced_custom_object(
                "ha.whm.io", "v1alpha1", NAMESPACE, "mysqlreplications", REPLICATION
            ),
        )

    def proxy_stats(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=2) as response:
                return cast(dict[str, Any], json.loads(response.read()))
        except (OSError, ValueError):
            return None

    def lines(self, traffic: str = "") -> list[str]:
        """A snapshot in a few lines."""
        status = self.cluster().get("status") or {}
        nodes = []
        for node in self.nodes():
            node_status = node.get("status") or {}
            mark = " PRIMARY" if node_status.get("role") == "Primary" else ""
            nodes.append(f"{node['metadata']['name']} {node_status.get('health', 'Unknown')}{mark}")
        repl = self.replication().get("status") or {}
        members = []
        for member in repl.get("members", []):
            if member.get("role") == "Primary":
                members.append(f"{member['name']} PRIMARY")
            elif not member.get("reachable"):
                members.append(f"{member['name']} unreachable")
            else:
                lag = member.get("lagSeconds")
                members.append(
                    f"{member['name']} {member.get('role', '?').lower()} lag {lag if lag is not None else '?'}s"
                )
        stamp = time.strftime("%H:%M:%S")
        return [
            f"[{stamp}] nodes:    {' | '.join(nodes) or 'none yet'}   "
            f"(cluster {status.get('phase', 'Pending')}, healthy {status.get('healthy', '?')})",
            f"           database: {' | '.join(members) or 'not inspected yet'}   "
            f"(phase {repl.get('phase', 'Pending')})",
            f"           traffic:  {traffic}" if traffic else "",
        ]
