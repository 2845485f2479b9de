"""The run's exit status (tests/fixtures/session_exit.py ends the process early, to skip an abort in the
interpreter's finalization): a pytest run in a subprocess, with a plugin that breaks one step of the end of the
session, must still exit non-zero; a run that passes exits 0 and one that fails exits 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROKEN_STEPS = {
    "terminal summary": "def pytest_terminal_summary(terminalreporter):\n    raise RuntimeError('summary')\n",
    "session finish": (
        "import pytest\n\n@pytest.hookimpl(trylast=True)\n"
        "def pytest_sessionfinish(session):\n    raise RuntimeError('sessionfinish')\n"
    ),
    "unconfigure": "def pytest_unconfigure(config):\n    raise RuntimeError('unconfigure')\n",
}


def run_with_plugin(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """``pytest -p plugin`` on this file's no-op test, in the repository (so tests/conftest.py loads)."""
    (tmp_path / "inner_plugin.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "pytest", "-p", "inner_plugin", "-q", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*argv, f"{Path(__file__).relative_to(ROOT)}::test_nothing"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


def test_nothing() -> None:
    """The test the inner runs select."""


@pytest.mark.parametrize("step", BROKEN_STEPS)
def test_an_exception_at_the_end_of_the_session_exits_non_zero(tmp_path: Path, step: str) -> None:
    result = run_with_plugin(tmp_path, BROKEN_STEPS[step])
    assert result.returncode != 0, f"exit 0 although the {step} raised:\n{result.stdout}\n{result.stderr}"


def test_a_run_that_passes_exits_0_and_one_that_fails_exits_1(tmp_path: Path) -> None:
    assert run_with_plugin(tmp_path, "").returncode == 0
    failing = "def pytest_runtest_call(item):\n    raise AssertionError('the test failed')\n"
    assert run_with_plugin(tmp_path, failing).returncode == 1
