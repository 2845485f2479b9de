"""The resilience report: each fault scenario records what it measured; at the end of the run the results are
merged into ``docs/resilience.json`` (by scenario, so a partial run updates only its own rows) and
``docs/resilience.md`` is written from it. Nothing in the report is written by hand but the text below."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

DOCS = Path(os.environ.get("WHM_HA_RESILIENCE_DOCS") or Path(__file__).resolve().parents[2] / "docs")
"""Where the report goes (the environment variable: elsewhere, for the report's own test)."""
RESULTS = DOCS / "resilience.json"
REPORT = DOCS / "resilience.md"


@dataclass
class Outcome:
    """What one scenario measured. Times in seconds from the fault; None where it does not apply (or where the
    scenario failed before measuring it)."""

    scenario: str
    component: str
    """``database`` or ``nodes``."""
    outcome: str = ""
    """What happened, in a few words (e.g. "m1 promoted", "no promotion")."""
    detect: float | None = None
    """Fault to the operator acting on it (a new primary acknowledging writes, a failover in the API)."""
    recover: float | None = None
    """Fault (or healing, where nothing was promoted) to writes (or GETs) served through the application's path
    again."""
    acked: int | None = None
    """Writes (or GETs) acknowledged to clients during the whole scenario, warm-up included."""
    during: int | None = None
    """Of those, acknowledged between the fault and its healing."""
    after: int | None = None
    """Of those, acknowledged after the healing."""
    lost: int | None = None
    """Acknowledged writes missing from the final primary (or failed GETs)."""
    promotions: int | None = None
    limit: str = ""
    """What a checker found (the failure, for a failing scenario); empty when every checker passed."""
    result: str = ""
    """``pass`` or ``fail``: the test's own outcome (setup, body and teardown)."""
    commit: str = ""
    """The commit measured (``+changes`` when the work tree differed from it)."""
    measured: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d"))


class Recorder:
    """The ``resilience`` fixture of one test: ``row = resilience.scenario(name, component)`` first, then the
    figures set on ``row`` as they are measured. Its rows join the report when the test ends, marked pass or fail
    from the test's real outcome (a scenario that fails before it measured something still shows, failing)."""

    def __init__(self) -> None:
        self.rows: list[Outcome] = []

    def scenario(self, name: str, component: str) -> Outcome:
        """A row of its own (a test may measure several phases, each a scenario)."""
        self.rows.append(Outcome(name, component))
        return self.rows[-1]


FINISHED: dict[str, Outcome] = {}
"""The rows finished in this run, by scenario."""
RECORDER = pytest.StashKey["Recorder"]()
ROW_PROPERTY = "resilience"
"""A finished row travels in its teardown report's user properties, which pytest-xdist carries to the controller."""


@pytest.fixture
def resilience(request: pytest.FixtureRequest) -> Recorder:
    recorder = Recorder()
    request.node.stash[RECORDER] = recorder
    return recorder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """At each phase's report: a failure marks the row failed (its message becomes the limit); at teardown the
    row is finished (a skipped test leaves the report's previous row)."""
    report: pytest.TestReport = yield
    recorder = item.stash.get(RECORDER, None)
    for row in recorder.rows if recorder else []:
        if report.failed:
            row.result = "fail"
            row.limit = row.limit or _failure(report)
        elif report.skipped and report.when != "teardown":
            row.result = "skipped"
        if report.when == "teardown" and row.result != "skipped":
            row.result = row.result or "pass"
            report.user_properties.append((ROW_PROPERTY, asdict(row)))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A finished row, from this process or (under pytest-xdist) from a worker's report: printed and kept for
    the report (once, though the hook may be registered by more than one conftest)."""
    for key, value in report.user_properties:
        if key != ROW_PROPERTY or FINISHED.get(value["scenario"]) == Outcome(**value):
            continue
        row = FINISHED[value["scenario"]] = Outcome(**value)
        print(
            f"\n{row.scenario}: {row.result}; {row.outcome}; detect {_seconds(row.detect)}, recover "
            f"{_seconds(row.recover)}, acked {_count(row.acked)} ({_count(row.during)} during the fault, "
            f"{_count(row.after)} after), lost {_count(row.lost)}"
        )


def _failure(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr)
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    return f"failed at {report.when}: {first[:200]}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


HEADER = """# Resilience: what whm-ha does under faults

Generated by the fault tier (`make test-faults`, `tests/faults`) from the figures each scenario measured;
`docs/resilience.json` holds them. Every database member and stand-in WHM node runs in its own network
namespace on a private bridge; faults are nftables drops (loss with nftables' random numbers), link down/up,
SIGSTOP and SIGKILL, and delay, jitter and bandwidth limits through toxiproxy in a member's namespace (this
kernel has no netem). The operator, the API server and the proxy run in the root namespace. Times are seconds
from the fault, from precise client-side clocks. Writes come from 8 connections through the applications pool (the root
namespace) and 2 more beside every member (in its namespace, over loopback, which no cut reaches); *acked*
counts every acknowledged write, warm-up included, *during* those acknowledged between the fault and its healing,
*after* those acknowledged after it. *result* is the test's own outcome, *commit* the commit measured. A row
that passed passed all its checkers: every acknowledged write is on the final primary, never two members
acknowledging writes (members take writes in the order they were made primary: none acknowledges a write sent
after a later primary acknowledged one), writes go on
during the fault wherever a primary is reachable, the topology converges (one primary, every other member
replicating from it or quarantined and named) within 60 s of healing, the number of promotions is counted (at
most one per scenario, none where the primary was alive), and exactly one primary node at every sampled moment;
a failing row's *limit* says which checker failed.

## Settings for zero acknowledged-write loss

- `semiSync: true` (the operator then keeps the primary waiting for a replica's acknowledgement, `AFTER_SYNC`,
  with no fallback to asynchronous replication while a failover could happen: a primary cut off from its
  replicas blocks its writers instead of acknowledging writes that a promotion elsewhere would discard).
  The price: while no replica acknowledges, writes on the primary wait (they fail at the client's timeout);
  with one replica left, its loss stops writes until it returns or the operator fails over.
- Servers started read-only (`read_only=ON`, MySQL also `super_read_only=ON`) and, on MariaDB,
  `init_rpl_role=SLAVE`, so that only the operator opens a member and a crashed primary comes back fenced.
- Applications write as the application account (Secret `<replication>-app`), which a fenced member refuses.

## Limits, and what is lost or unavailable otherwise

- With `semiSync: false` a failover may lose the commits the old primary acknowledged that no replica had
  received; no quorum is required. The figures below are for the default test setting, `semiSync: true`.
- A primary cut off from its replicas holds its writers' commits unacknowledged: clients of the applications
  pool get an error within a second of the promotion (the pool interrupts statements on a demoted primary)
  and write to the new primary; other clients wait for their own read timeout.
- A former primary that committed what no replica received (commits it never acknowledged) comes back with
  errant transactions: it is fenced and quarantined, and must be rebuilt; nothing is merged silently.
- Slow links are staged with toxiproxy, on the server's side of each connection
  (`tests/faults/test_slow_links.py`).

## Scenarios

| scenario | component | outcome | detect | recover | acked | during | after | lost | promotions | result | limit | commit | measured |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
"""


def write_report(outcomes: list[Outcome]) -> None:
    """Merge ``outcomes`` into the results file and write the report from all of it."""
    results: dict[str, dict[str, object]] = {}
    if RESULTS.exists():
        results = {row["scenario"]: row for row in json.loads(RESULTS.read_text())}
    for outcome in outcomes:
        results[outcome.scenario] = asdict(outcome)
    rows = sorted(results.values(), key=lambda r: (str(r["component"]), str(r["scenario"])))
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        f"| {r['scenario']} | {r['component']} | {r['outcome']} | {_seconds(r['detect'])} | "  # type: ignore[arg-type]
        f"{_seconds(r['recover'])} | {_count(r['acked'])} | {_count(r.get('during'))} | "  # type: ignore[arg-type]
        f"{_count(r.get('after'))} | {_count(r['lost'])} | {_count(r['promotions'])} | "  # type: ignore[arg-type]
        f"{r.get('result') or '-'} | {r['limit'] or ''} | {r.get('commit') or '-'} | {r['measured']} |"
        for r in rows
    ]
    REPORT.write_text(HEADER + "\n".join(lines) + "\n")


def measured_commit() -> str:
    """HEAD's short hash, ``+changes`` when tracked files differ from it (the report's own files aside)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False).stdout.strip()

    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    changed = [line for line in changed if not line.endswith(("docs/resilience.json", "docs/resilience.md"))]
    return git("rev-parse", "--short=12", "HEAD") + ("+changes" if changed else "")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the report, once per run: by the controller, not by pytest-xdist's workers."""
    if FINISHED and not hasattr(session.config, "workerinput"):
        commit = measured_commit()
        for row in FINISHED.values():
            row.commit = commit
        write_report(list(FINISHED.values()))
