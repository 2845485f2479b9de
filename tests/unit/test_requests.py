"""Request annotations: one id per request, never replayed once status.lastRequest carries it."""

from whm_ha.crd.annotations import FAILOVER_TO, PROMOTE, REQUEST_ID, pending_request


def test_no_annotation_no_request() -> None:
    assert pending_request({}, {}, FAILOVER_TO, "failover") is None
    assert pending_request({FAILOVER_TO: ""}, {}, FAILOVER_TO, "failover") is None


def test_id_given_or_derived_from_the_target() -> None:
    assert pending_request({PROMOTE: "m1", REQUEST_ID: "r1"}, {}, PROMOTE, "promote") == ("r1", "m1", False)
    assert pending_request({FAILOVER_TO: "n2"}, {}, FAILOVER_TO, "failover") == ("failover:n2", "n2", False)


def test_handled_when_the_last_outcome_has_its_id() -> None:
    assert pending_request({PROMOTE: "m1", REQUEST_ID: "r1"}, {"id": "r1"}, PROMOTE, "promote") == ("r1", "m1", True)
    assert pending_request({PROMOTE: "m1", REQUEST_ID: "r2"}, {"id": "r1"}, PROMOTE, "promote") == ("r2", "m1", False)
