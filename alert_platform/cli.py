"""The ``alert-platform`` console script.

Each command group is a module of :mod:`alert_platform.commands` with a
``register(subparsers)`` function that adds its sub-parser and sets ``handler``
(``args -> exit code``) on it; :data:`COMMANDS` lists them. Command modules share
:mod:`alert_platform.commands.common` (settings, ``--data-dir``, :class:`CommandError`) and never
import this module back. A handler reports failure by raising :class:`CommandError` (or another
of :func:`~alert_platform.commands.common.user_errors`): the message is printed and the exit
code is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from alert_platform import __version__
from alert_platform.commands import backfill, demo, dev, explain, stack, stream, topics
from alert_platform.commands.common import (
    CommandError,
    Register,
    add_data_dir_argument,
    load_settings,
    user_errors,
)

__all__ = ["COMMANDS", "CommandError", "add_data_dir_argument", "build_parser", "load_settings"]

# Every command group, in the order of `alert-platform --help`.
COMMANDS: tuple[Register, ...] = (
    stack.register,
    topics.register,
    dev.register,
    demo.register,
    backfill.register,
    explain.register,
    stream.register,
)


def build_parser(commands: Sequence[Register] = COMMANDS) -> argparse.ArgumentParser:
    """The full parser, with every command group of ``commands``."""
    parser = argparse.ArgumentParser(
        prog="alert-platform",
        description="Real-time business alerting: Kafka and BigQuery events into Slack alerts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in commands:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `alert-platform ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
