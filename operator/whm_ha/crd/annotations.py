"""Annotations and labels through which users and the shim make requests, and the operator publishes roles."""

from collections.abc import Mapping
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


def pending_request(
    annotations: Mapping[str, str], last_request: Mapping[str, object], annotation: str, kind: str
) -> tuple[str, str, bool] | None:
    """The request an annotation makes: (id, target, handled), or None when there is none.

    The id is ``ha.whm.io/request-id``, or ``<kind>:<target>`` without one; a request is handled when
    ``status.lastRequest`` already carries its id, so it is never replayed.
    """
    target = annotations.get(annotation)
    if not target:
        return None
    request_id = annotations.get(REQUEST_ID) or f"{kind}:{target}"
    return request_id, target, last_request.get("id") == request_id
