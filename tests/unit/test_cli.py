"""The whm-ha command: every subcommand has help; unbuilt ones say so in one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ["operator", "proxy", "shim", "sandbox", "demo", "crds", "migrate"]


def whm_ha(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "whm_ha", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_top_level_help_lists_every_subcommand() -> None:
    result = whm_ha("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name: str) -> None:
    result = whm_ha(name, "--help")
    assert result.returncode == 0
    assert f"usage: whm-ha {name}" in result.stdout
    assert "--" in result.stdout.split("options:", 1)[1], "help lists no options"


def test_crds_writes_one_file_per_crd(tmp_path: Path) -> None:
    result = whm_ha("crds", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in (ROOT / "crds").glob("*.yaml")
    )


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "whm-ha"
    assert script.exists(), "pip install -e . should install the whm-ha console script"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.startswith("whm-ha ")


def test_demo_on_mysql_without_its_built_root_says_how_to_build_it(tmp_path: Path) -> None:
    """``--database mysql`` runs MySQL 9.7 from the root hack/build-databases builds under the cache folder: with
    none there, one line naming the command and exit status 2, before anything starts."""
    result = whm_ha("demo", "--database", "mysql", env={"WHM_HA_CACHE": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("whm-ha demo: mysql-9.7: ")
    assert "hack/build-databases" in lines[0] and str(tmp_path) in lines[0]
    assert list(tmp_path.iterdir()) == [], "nothing was built or started"
