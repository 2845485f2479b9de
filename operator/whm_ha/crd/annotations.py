"""Annotations and labels through which users and the shim make requests, and the operator publishes roles."""

from typing import Final

PREFIX: Final = "ha.whm.io"

FAILOVER_TO: Final = f"{PREFIX}/failover-to"
"""On a WHMCluster: switch the primary to the named node."""
PROMOTE: Final = f"{PREFIX}/promote"
"""On a MySQLReplication: promote the named member."""
FORCE: Final = f"{PREFIX}/force"
"""With promote: "true" allows a candidate beyond the allowed lag."""
RELOAD: Final = f"{PREFIX}/reload"
"""On a WHMCluster: any new value makes the proxies re-read their configuration."""
REQUEST_ID: Final = f"{PREFIX}/request-id"
"""Optional id of a request; the operator acts once per id."""

ROLE_LABEL: Final = f"{PREFIX}/role"
"""Label with the node's role (primary/secondary), on WHMNodes and their pods."""
CLUSTER_LABEL: Final = f"{PREFIX}/cluster"
"""Label naming the WHMCluster, on WHMNodes."""
