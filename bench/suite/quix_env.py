"""The separate environment the Quix Streams contender runs in.

Every Quix Streams release pins ``confluent-kafka<2.13`` while alert-platform needs ``>=2.16``,
so Quix Streams cannot be installed next to the platform (pip finds no solution). The suite
creates ``.venv/bench-quixstreams`` with the pinned versions of ``quixstreams-requirements.txt``
(once; again when that file changes) and runs the contender with that interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.suite.common import REPO, log

REQUIREMENTS = Path(__file__).with_name("quixstreams-requirements.txt")
ENV_DIR = REPO / ".venv" / "bench-quixstreams"
STAMP = ENV_DIR / ".requirements"


def quix_python() -> str:
    """The environment's interpreter, created or updated first when needed."""
    python = ENV_DIR / "bin" / "python"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return str(python)
    log(f"creating the Quix Streams environment {ENV_DIR} ...")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ENV_DIR)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], check=True
    )
    STAMP.write_text(wanted)
    return str(python)


def versions(python: str) -> str:
    """``quixstreams X, confluent-kafka Y`` of that environment."""
    code = (
        "from importlib.metadata import version as v; "
        "print(f\"quixstreams {v('quixstreams')}, confluent-kafka {v('confluent-kafka')}\")"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"
