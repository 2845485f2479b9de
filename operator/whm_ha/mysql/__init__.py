"""MySQL/MariaDB replication library: GTID sets, flavor SQL, member inspection, decisions, actions.

No Kubernetes code lives here; the operator's handlers call it.
"""
