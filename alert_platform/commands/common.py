"""What every ``alert-platform`` command shares: its error type, settings, common arguments.

Command modules import this module, never :mod:`alert_platform.cli`, so the console script
imports every command without an import cycle. (Checking the broker is
:func:`alert_platform.kafka.reachability.require_broker`.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from alert_platform.settings import ConfigError, Settings

# A command group: adds its sub-parser to ``subparsers`` and sets ``handler`` (args -> exit code).
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


class CommandError(RuntimeError):
    """A command failed in a way the user can fix; the message says how."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions the CLI reports as ``error: <message>`` with exit code 1 (no traceback)."""
    from alert_platform.kafka.admin import TopicAdminError
    from alert_platform.kafka.reachability import BrokerUnreachableError
    from alert_platform.local.stack import StackError

    return (CommandError, ConfigError, StackError, TopicAdminError, BrokerUnreachableError)


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-dir DIR``: overrides ALERT_PLATFORM_DATA_DIR (default ``.alert-platform``)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="state directory (pid files, logs, snapshots, ledger); "
        "default $ALERT_PLATFORM_DATA_DIR or .alert-platform",
    )


def load_settings(args: argparse.Namespace, *, local: bool = False) -> Settings:
    """Settings from the environment, with ``--data-dir`` applied when the command has one.

    ``local``: the environment over the local profile (``dev``, ``stack``, ``demo``: commands of
    the embedded local stack); else unset means production.
    """
    if local:
        from alert_platform.local.profile import local_settings_from_env

        settings = local_settings_from_env()
    else:
        settings = Settings.from_env()
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        settings = settings.with_overrides(data_dir=Path(data_dir))
    return settings


def split_csv(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (an argparse ``type``)."""
    return [item.strip() for item in value.split(",") if item.strip()]
