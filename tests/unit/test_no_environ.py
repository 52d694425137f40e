"""Every environment read of the product goes through ``alert_platform.settings``.

Only the settings module and the local stand-ins' launchers (which start child processes with
an environment of their own) may read ``os.environ`` / ``os.getenv``; any other module of
``alert_platform/``, ``assets/`` or ``sensors/`` that does fails here, naming file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("alert_platform", "assets", "sensors")
ALLOWED = frozenset(
    {
        "alert_platform/settings.py",
        # Launchers of the local stand-ins: child environments, the broker binary override.
        "alert_platform/local/dev.py",
        "alert_platform/local/processes.py",
        "alert_platform/local/stack.py",
        "alert_platform/local/sandbox/__main__.py",
    }
)
_READERS = frozenset({"environ", "environb", "getenv", "getenvb"})


def environment_reads(source: str) -> list[int]:
    """Line numbers where ``source`` reads the process environment through :mod:`os`."""
    tree = ast.parse(source)
    modules = {"os"}  # names bound to the os module (import os as o)
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "os"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            lines += [node.lineno for a in node.names if a.name in _READERS]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in _READERS
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            lines.append(node.lineno)
    return sorted(lines)


def product_files() -> list[Path]:
    return sorted(path for top in PRODUCT for path in (ROOT / top).rglob("*.py"))


def test_no_product_module_reads_the_environment_outside_settings() -> None:
    offenders = [
        f"{relative}:{line}"
        for path in product_files()
        if (relative := path.relative_to(ROOT).as_posix()) not in ALLOWED
        for line in environment_reads(path.read_text())
    ]
    assert offenders == [], "read these through alert_platform.settings.Settings: " + ", ".join(
        offenders
    )


def test_the_allowed_modules_exist() -> None:
    """A stale allowance would let a new module of that name read the environment unseen."""
    assert [name for name in sorted(ALLOWED) if not (ROOT / name).is_file()] == []


@pytest.mark.parametrize(
    "source",
    [
        "import os\nX = os.environ.get('X')\n",
        "import os\nX = os.environ['X']\n",
        "import os\nX = os.getenv('X')\n",
        "import os as o\nX = o.environ\n",
        "from os import environ\n",
        "from os import getenv as g\n",
        "import os\ndef f():\n    return dict(os.environ)\n",
    ],
)
def test_the_check_finds_each_way_of_reading(source: str) -> None:
    assert environment_reads(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import os\nos.path.join('a', 'b')\n",
        "from alert_platform.settings import Settings\nSettings.from_env()\n",
        "environ = {}\nenviron.get('X')\n",
    ],
)
def test_other_code_is_not_reported(source: str) -> None:
    assert environment_reads(source) == []
