"""The layer contracts of pyproject.toml (import-linter) hold, and they bite.

``lint-imports`` runs on the real tree (every contract kept), then on scratch copies of the
tree with one forbidden import added each: the run must fail and name that import.
"""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import alert_platform

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("alert_platform", "assets", "sensors")
# alert_platform's modules allowed to import Dagster, assets and sensors, or the stand-ins.
NOT_CORE = {"definitions", "cli", "commands", "local"}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the contracts of ``tree/pyproject.toml`` on the packages in
    ``tree`` (found before the installed ones)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def scratch_tree(tmp_path: Path) -> Path:
    """A copy of the product packages and pyproject.toml."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_real_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_core_contract_names_every_core_module() -> None:
    """A new module of alert_platform is in the core unless it is listed as not core."""
    children = {info.name for info in pkgutil.iter_modules(alert_platform.__path__)}
    contracts = _contracts()
    sources = contracts["core"]["source_modules"]
    listed = {name.removeprefix("alert_platform.") for name in sources}
    assert listed == children - NOT_CORE
    assert contracts["core-dagster-libraries"]["source_modules"] == sources


@pytest.mark.parametrize(
    ("module", "line", "reported"),
    [
        pytest.param(
            "alert_platform/kafka/records.py",
            "import dagster",
            "alert_platform.kafka.records -> dagster",
            id="core-imports-dagster",
        ),
        pytest.param(
            "alert_platform/slack/client.py",
            "from dagster_slack import SlackResource",
            "alert_platform.slack.client -> dagster_slack",
            id="core-imports-a-dagster-library",
        ),
        pytest.param(
            "alert_platform/delivery/ledger.py",
            "from assets import alerts",
            "alert_platform.delivery.ledger -> assets.alerts",
            id="core-imports-assets",
        ),
        pytest.param(
            "assets/alerts.py",
            "from alert_platform.local import stack",
            "assets.alerts -> alert_platform.local.stack",
            id="assets-import-local",
        ),
        pytest.param(
            "sensors/topic_tail.py",
            "from dagster._core.instance import DagsterInstance",
            "sensors.topic_tail -> dagster._core.instance",
            id="sensors-import-private-dagster",
        ),
        pytest.param(
            "alert_platform/commands/dev.py",
            "from alert_platform.cli import main",
            "alert_platform.commands.dev -> alert_platform.cli",
            id="command-imports-cli-back",
        ),
        pytest.param(
            "alert_platform/kafka/records.py",
            "from alert_platform.pipelines import engine",
            "- .kafka -> .pipelines",
            id="core-import-cycle",
        ),
    ],
)
def test_a_forbidden_import_breaks_the_build_and_is_named(
    scratch_tree: Path, module: str, line: str, reported: str
) -> None:
    path = scratch_tree / module
    path.write_text(path.read_text() + f"\n{line}  # forbidden\n")
    result = lint_imports(scratch_tree)
    output = " ".join((result.stdout + result.stderr).split())  # undo the report's wrapping
    assert result.returncode != 0, output
    assert "BROKEN" in output
    assert reported in output
