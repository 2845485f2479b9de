"""The resilience report (tests/faults/report.py): each row carries the test's real outcome and the commit; a
scenario that fails, also before it measured anything, replaces its previous row and shows as failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = """
def test_passing(resilience):
    row = resilience.scenario("passing", "database")
    row.acked, row.during, row.after, row.lost = 30, 10, 5, 0

def test_failing_after_measuring(resilience):
    row = resilience.scenario("failing", "database")
    row.acked, row.lost = 30, 1
    assert row.lost == 0, "1 acknowledged write lost"

def test_failing_before_measuring(resilience):
    resilience.scenario("broken early", "nodes")
    raise TimeoutError("no new primary within 27 s")
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "pytest-xdist workers"])
def test_each_row_carries_the_tests_outcome_and_the_commit(tmp_path: Path, workers: list[str]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    previous: dict[str, object] = {"scenario": "failing", "component": "database", "outcome": "fine"}
    previous |= {"detect": None, "recover": None, "acked": 9, "lost": 0, "promotions": 0, "limit": ""}
    previous["measured"] = "2026-11-30"
    (docs / "resilience.json").write_text(json.dumps([previous]))
    (tmp_path / "test_scenarios.py").write_text(SCENARIOS)
    env = {**os.environ, "WHM_HA_RESILIENCE_DOCS": str(docs), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "pytest", "-p", "tests.faults.report", "-p", "no:cacheprovider", "-q", *workers]
    run = subprocess.run(
        [*argv, "test_scenarios.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 1, run.stdout + run.stderr
    rows = {row["scenario"]: row for row in json.loads((docs / "resilience.json").read_text())}
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert {name: row["result"] for name, row in rows.items()} == {
        "passing": "pass",
        "failing": "fail",
        "broken early": "fail",
    }
    assert rows["passing"]["limit"] == "" and (rows["passing"]["during"], rows["passing"]["after"]) == (10, 5)
    assert "1 acknowledged write lost" in rows["failing"]["limit"] and rows["failing"]["acked"] == 30
    assert "no new primary" in rows["broken early"]["limit"]
    assert all(row["commit"].startswith(head.stdout.strip()) for row in rows.values())
    table = (docs / "resilience.md").read_text()
    assert "| during | after |" in table and "| result | limit | commit |" in table
    assert "| broken early | nodes |" in table and "| fail |" in table
    assert "passing: pass; ; detect -, recover -, acked 30 (10 during the fault, 5 after), lost 0" in run.stdout
