"""Writers and the checkers that judge what they saw: the one library the demo's tour, the tests (integration,
scenarios, the fault tier) and the benchmarks use, so that a fix to a checker reaches every place that trusts it.

It lives in the demo, the lab wing the package ships (the product's rooms never import it): the demo cannot
import ``tests/``, which is not installed, and the tests already import the demo's stack.

* ``Writers``: ``count`` threads (8 by default: a fault finds several writes in flight), each inserting ids of its
  own into ``demo.writes`` through a connection source (the applications pool, or one server), recording every
  acknowledged write as an ``Ack``: the id, the member that acknowledged it (``host:port``) and the wall-clock
  times the statement was sent and its answer came back (precise times, comparable across processes).
* ``python -m whm_ha.demo.checkers --port P ...``: the same writers as a process of their own, e.g. beside a
  member in its network namespace, over loopback; each acknowledgement is a line of a file (``read_acks``).
* Checkers: ``missing`` (acknowledged writes absent from the final primary), ``two_acknowledging`` (two members
  accepting writes at once: the order in which members took writes against the order they were made primary),
  ``fenced`` (the read-only the product enforces: ``super_read_only`` on MySQL).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, TypeAlias

import pymysql

from ..apps.pool import PoolError
from ..mysql.dialect import dialect_for
from .stack import DEMO_SCHEMA

TABLE = f"{DEMO_SCHEMA}.writes"
"""The table every writer inserts into (ids are unique across writers: see ``Writers.first``)."""
Connection: TypeAlias = "pymysql.Connection[Any]"
Source: TypeAlias = "Callable[[], AbstractContextManager[Connection]]"
"""Where a write goes: ``with source() as conn`` (e.g. ``pool.writer``, or a ``Direct``)."""
FAILURES = (pymysql.MySQLError, PoolError, OSError)


@dataclass(frozen=True)
class Ack:
    """One acknowledged write."""

    id: int
    member: str
    """``host:port`` of the server that acknowledged it."""
    sent: float
    """Wall-clock time the statement was sent."""
    acked: float
    """Wall-clock time its answer (the commit) came back."""


class Acks:
    """Acknowledged writes, appended to by many threads."""

    def __init__(self, acks: Iterable[Ack] = ()) -> None:
        self._acks = list(acks)
        self._lock = threading.Lock()

    def add(self, ack: Ack) -> None:
        with self._lock:
            self._acks.append(ack)

    def all(self) -> list[Ack]:
        with self._lock:
            return list(self._acks)

    def __len__(self) -> int:
        return len(self._acks)

    def between(self, start: float, end: float = float("inf")) -> list[Ack]:
        """The writes acknowledged at or after ``start`` and before ``end`` (wall clock)."""
        return [ack for ack in self.all() if start <= ack.acked < end]

    def ids(self) -> set[int]:
        return {ack.id for ack in self.all()}

    def progressed(self) -> Callable[[], bool]:
        """A condition: a write was acknowledged after this call."""
        now = time.time()
        return lambda: any(ack.acked > now for ack in reversed(self.all()))


def create_table(source: Source) -> None:
    """The writers' table, created on whatever ``source`` connects to (the primary) when missing."""
    with source() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {DEMO_SCHEMA}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY)")


@dataclass
class Writers:
    """``count`` threads inserting into ``table`` through ``source`` until ``stop()``; thread k writes ids
    ``first + k``, ``first + k + count``, ... (an id is never reused, also after a failed insert, which may have
    committed). A failure's message is kept in ``errors``; the thread goes on after ``pause_after_error``, or
    ends there with ``until_error``."""

    source: Source
    count: int = 8
    first: int = 1
    table: str = TABLE
    until_error: bool = False
    pause: float = 0.01
    pause_after_error: float = 0.05
    acks: Acks = field(default_factory=Acks)
    errors: list[str] = field(default_factory=list)
    on_ack: Callable[[Ack], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, *, warm_up: int = 50, timeout: float = 30) -> Writers:
        """Start the threads; return once ``warm_up`` writes were acknowledged (TimeoutError after ``timeout``)."""
        for k in range(self.count):
            thread = threading.Thread(target=self._run, args=(self.first + k,), name=f"writer-{k}", daemon=True)
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + timeout
        while len(self.acks) < warm_up:
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{len(self.acks)} of {warm_up} warm-up writes acknowledged in {timeout} s")
            time.sleep(0.05)
        return self

    def _run(self, first: int) -> None:
        for row_id in itertools.count(first, self.count):
            if self._stop.is_set():
                return
            sent = time.time()
            try:
                with self.source() as conn, conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (row_id,))
                    ack = Ack(row_id, f"{conn.host}:{conn.port}", sent, time.time())
            except FAILURES as exc:
                self.errors.append(str(exc))
                if self.until_error:
                    return
                self._stop.wait(self.pause_after_error)
                continue
            self.acks.add(ack)
            if self.on_ack is not None:
                self.on_ack(ack)
            self._stop.wait(self.pause)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the threads to end by themselves (``until_error``); whether they
        did."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float = 90) -> None:
        """Stop the threads and wait for them (a write in flight ends at its connection's read timeout)."""
        self._stop.set()
        self.join(timeout)


class Direct:
    """A ``Source`` for one server: each thread keeps its own connection, dropped after a failure."""

    def __init__(self, host: str, port: int, user: str, password: str, *, read_timeout: float = 60) -> None:
        self._host, self._port, self._user, self._password = host, port, user, password
        self._read_timeout = read_timeout
        self._local = threading.local()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Connection]:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = pymysql.connect(
                host=self._host,
                port=self._port,
                user=self._user,
                password=self._password,
                autocommit=True,
                connect_timeout=2,
                read_timeout=self._read_timeout,
                write_timeout=self._read_timeout,
            )
            self._local.conn = conn
        try:
            yield conn
        except BaseException:
            self._local.conn = None
            with contextlib.suppress(Exception):
                conn.close()
            raise


# -- checkers -------------------------------------------------------------------------------------------------


def missing(acks: Iterable[Ack], present: set[int]) -> list[int]:
    """The acknowledged ids absent from ``present`` (the final primary's rows): acknowledged writes lost."""
    return sorted({ack.id for ack in acks} - present)


def present_ids(conn: Connection) -> set[int]:
    """The ids in ``TABLE`` on a server."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {TABLE}")
        return {int(row[0]) for row in cur.fetchall()}


def acknowledging_order(acks: Iterable[Ack]) -> list[str]:
    """The members in the order they took writes: a member starts a new entry when it acknowledges a write sent
    after the current entry's first acknowledgement; an answer to a write sent before that moment (in flight at
    the change: it may have committed before) starts none."""
    order: list[str] = []
    start = float("-inf")
    for ack in sorted(acks, key=lambda a: a.acked):
        if (order and ack.member == order[-1]) or ack.sent < start:
            continue
        order.append(ack.member)
        start = ack.acked
    return order


def two_acknowledging(acks: Iterable[Ack], primaries: list[str]) -> list[str]:
    """Empty when the members took writes one after another, in the order ``primaries`` (the initial primary,
    then each new one) were made primary; else the order seen. Two members accepting writes at once show as
    more changes than were made (X, Y, X, ...: one of them acknowledged a write sent after the other had)."""
    order = acknowledging_order(acks)
    remaining = iter(primaries)
    if all(member in remaining for member in order):  # a subsequence: a primary may have taken no write
        return []
    return [f"writes acknowledged by {' -> '.join(order)}; primaries were {' -> '.join(primaries)}"]


def primaries_from(status: dict[str, Any], labels: dict[str, str], initial: str) -> list[str]:
    """The labels of the members made primary, in order, from a MySQLReplication status (its promotion history is
    newest first), starting with ``initial``; ``labels``: member name -> ``host:port``."""
    history = reversed(status.get("promotionHistory", []))
    return [labels[initial], *(labels[record["to"]] for record in history)]


def fenced(conn: Connection, product: Literal["mariadb", "mysql"]) -> bool:
    """Whether a server is fenced as the product fences it: the dialect's read-only variable is on (MySQL's
    ``super_read_only``; ``read_only`` alone still lets SUPER accounts write there)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT @@GLOBAL.{dialect_for(product).read_only_variable}")
        row = cur.fetchone()
    return bool(row and int(row[0]) == 1)


# -- writers as a process of their own ------------------------------------------------------------------------


def read_acks(path: Path) -> Acks:
    """The acknowledgements a writer process wrote to ``path`` so far."""
    acks = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            acks.append(Ack(int(parts[0]), parts[1], float(parts[2]), float(parts[3])))
    return Acks(acks)


def _write_line(out: TextIO, lock: threading.Lock, label: str) -> Callable[[Ack], None]:
    def write(ack: Ack) -> None:
        with lock:
            out.write(f"{ack.id} {label} {ack.sent:.6f} {ack.acked:.6f}\n")

    return write


def arguments() -> argparse.ArgumentParser:
    """The writer process's command line (``main``)."""
    parser = argparse.ArgumentParser(prog="python -m whm_ha.demo.checkers")
    for name in ("--host", "--user", "--password", "--out", "--label"):
        parser.add_argument(name, required=name in ("--user", "--password", "--out", "--label"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--count", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Writers on one server until killed, appending ``id member sent acked`` to ``--out`` per acknowledgement."""
    args = arguments().parse_args(argv)
    source = Direct(args.host or "127.0.0.1", args.port, args.user, args.password)
    with open(args.out, "a", buffering=1) as out:
        on_ack = _write_line(out, threading.Lock(), args.label)
        writers = Writers(source, count=args.count, first=args.first, on_ack=on_ack)
        writers.start(warm_up=0)
        threading.Event().wait()


@dataclass
class Beside:
    """A writer process (``main`` above, ``count`` connections as ``user``) started by ``popen`` (e.g. in a
    member's network namespace) on one server; its acknowledgements, labelled ``label`` (the ``host:port`` other
    writers see), in ``out``."""

    process: subprocess.Popen[bytes]
    out: Path

    @classmethod
    def start(
        cls,
        popen: Callable[[list[str]], subprocess.Popen[bytes]],
        *,
        port: int,
        user: str,
        password: str,
        label: str,
        first: int,
        out: Path,
        count: int = 2,
    ) -> Beside:
        out.touch()
        # name=value: a value starting with "-" (a generated password may) is not taken for an option
        options = {"port": port, "user": user, "password": password, "label": label, "first": first, "count": count}
        options["out"] = out
        argv = [sys.executable, "-m", "whm_ha.demo.checkers", *(f"--{k}={v}" for k, v in options.items())]
        return cls(popen(argv), out)

    def acks(self) -> Acks:
        return read_acks(self.out)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


if __name__ == "__main__":
    main()
