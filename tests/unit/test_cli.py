"""The whm-ha command: every subcommand has help; unbuilt ones say so in one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ["operator", "proxy", "shim", "sandbox", "demo", "crds", "migrate"]


def whm_ha(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "whm_ha", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
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
