"""``whm-ha demo``: the whole system on one machine, on loopback, with a narrated failover tour."""
