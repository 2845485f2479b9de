"""The MySQLReplication controller: inspection, reconcile, failover, switchover, fencing, Services.

Decisions are pure (`plan`), blocking database work runs in worker threads (`procedures`), and `controller`
observes, records and publishes.
"""
