"""The writes of a database scenario and their checks, the same in every one (the writers and checkers are
``whm_ha.demo.checkers``): 8 connections through the applications pool in the root namespace, which follow the
recorded primary, and 2 beside every member, in its namespace over loopback, which no cut reaches (they see what
each member acknowledges, also a member the operator lost).

``Workload.start`` once the replication is Healthy; after the fault and its healing, ``judge`` stops the writers,
fills the scenario's row and asserts the checks: no acknowledged write lost, never two members acknowledging
writes, and writes acknowledged during the fault where they should go on."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults.report import Outcome
from tests.fixtures.netns import Host
from tests.kube_helpers import wait_for
from whm_ha.apps.pool import ReadWritePool
from whm_ha.demo.checkers import (
    Ack,
    Beside,
    Connection,
    Writers,
    create_table,
    missing,
    present_ids,
    primaries_from,
    two_acknowledging,
)

BESIDE_IDS = 10**8
"""Member i's writers beside it write ids from (i + 1) x BESIDE_IDS, further ones (`Workload.add_beside`) from the
next multiples; the pool's from 1."""


@dataclass
class Workload:
    pool: ReadWritePool
    writers: Writers
    beside: list[Beside]
    labels: list[str]
    """Each member's ``host:port``, as the acknowledgements name it."""

    @classmethod
    def start(
        cls, pool: ReadWritePool, hosts: list[Host], ports: list[int], user: str, password: str, folder: Path
    ) -> Workload:
        """Writers through ``pool`` and beside each member (``hosts[i]`` serving on ``ports[i]``), once each
        writer on the primary (hosts[0]) had its first writes acknowledged."""
        create_table(pool.writer)
        labels = [f"{host.address}:{port}" for host, port in zip(hosts, ports, strict=True)]
        beside = [
            Beside.start(
                host.popen,
                port=port,
                user=user,
                password=password,
                label=label,
                first=(i + 1) * BESIDE_IDS,
                out=folder / f"beside-{host.name}.acks",
            )
            for i, (host, port, label) in enumerate(zip(hosts, ports, labels, strict=True))
        ]
        load = cls(pool, Writers(pool.writer), beside, labels)
        load.writers.start(warm_up=50)
        wait_for(lambda: len(beside[0].acks()) >= 20, 30, "the first writes beside the primary")
        return load

    def add_beside(
        self, index: int, host: Host, port: int, account: tuple[str, str], count: int, folder: Path
    ) -> Beside:
        """More writers beside member ``index`` (``host`` serving on ``port``): ``count`` connections as
        ``account`` (user, password), e.g. a client that is not the application's; judged with the others. Returns
        once it had its first writes acknowledged."""
        user, password = account
        side = Beside.start(
            host.popen,
            port=port,
            user=user,
            password=password,
            label=self.labels[index],
            first=(len(self.beside) + 1) * BESIDE_IDS,
            count=count,
            out=folder / f"beside-{host.name}-{user}.acks",
        )
        self.beside.append(side)
        wait_for(lambda: len(side.acks()) >= 20, 30, f"the first writes of {user} beside {host.name}")
        return side

    def acks(self) -> list[Ack]:
        """Every acknowledged write so far (the pool's and those beside the members)."""
        return self.writers.acks.all() + [ack for side in self.beside for ack in side.acks().all()]

    def progressed(self) -> Callable[[], bool]:
        """A condition: the pool's writers had a write acknowledged after this call."""
        return self.writers.acks.progressed()

    def first_elsewhere(self, old: int, since: float) -> float | None:
        """When a member other than ``old`` first acknowledged a write after ``since`` (a new primary)."""
        times = [a.acked for a in self.acks() if a.member != self.labels[old] and a.acked >= since]
        return min(times) if times else None

    def stop(self) -> None:
        for side in self.beside:
            side.stop()
        self.writers.stop()
        self.pool.close()


def judge(
    load: Workload,
    final: Connection,
    row: Outcome,
    fault: float,
    healed: float | None,
    status: dict[str, Any],
    *,
    writes_during: bool,
) -> None:
    """Stop the writers; fill ``row`` (acked, during, after, lost: wall-clock ``fault`` and ``healed``, None when
    the scenario ends unhealed) from what they were acknowledged and what ``final`` (a connection to the final
    primary, closed here) holds; assert no acknowledged write lost, never two members acknowledging, and, if
    ``writes_during``, writes acknowledged during the fault."""
    load.stop()
    acks = load.acks()
    try:
        lost = missing(acks, present_ids(final))
    finally:
        final.close()
    end = healed if healed is not None else time.time()
    row.acked = len(acks)
    row.during = sum(1 for a in acks if fault <= a.acked < end)
    row.after = None if healed is None else sum(1 for a in acks if a.acked >= healed)
    row.lost = len(lost)
    names = sorted({m["name"] for m in status.get("members", [])}, key=lambda n: int(re.findall(r"\d+$", n)[0]))
    labels = dict(zip(names, load.labels, strict=True))
    overlapping = two_acknowledging(acks, primaries_from(status, labels, names[0]))
    assert not lost, f"{len(lost)} of {len(acks)} acknowledged writes lost: {lost[:10]}"
    assert not overlapping, f"two members acknowledging writes: {overlapping}"
    if writes_during:
        assert row.during > 0, "no write acknowledged during the fault, where a primary was reachable"
