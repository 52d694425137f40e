"""The ``alert-platform`` console script.

Each command group lives behind a ``register(subparsers)`` function that adds its sub-parser and
sets ``handler`` (``args -> exit code``) on it. Built-in groups are registered from
:data:`BUILTIN_COMMANDS`; more modules (``dev``, ``explain``, ``backfill``...) plug in by adding
their dotted path to :data:`COMMAND_MODULES` -- each such module exposes
``register(subparsers: argparse._SubParsersAction) -> None`` and may use :func:`load_settings`
and :func:`add_data_dir_argument`. A handler reports failure by raising :class:`CommandError`
(or any of :data:`USER_ERRORS`): the message is printed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from alert_platform import __version__
from alert_platform.settings import ConfigError, Settings

if TYPE_CHECKING:
    from alert_platform.local.processes import ServiceStatus
    from alert_platform.local.stack import LocalStack

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

# Extra command modules, each with `register(subparsers)`; imported when the parser is built.
COMMAND_MODULES: tuple[str, ...] = (
    "alert_platform.commands.dev",
    "alert_platform.commands.demo",
    "alert_platform.commands.backfill",
    "alert_platform.commands.explain",
)


class CommandError(RuntimeError):
    """A command failed in a way the user can fix; the message says how."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from alert_platform.kafka.admin import TopicAdminError
    from alert_platform.local.stack import StackError

    return (CommandError, ConfigError, StackError, TopicAdminError)


# -- shared helpers for command modules -------------------------------------------------------


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-dir DIR``: overrides ALERT_PLATFORM_DATA_DIR (default ``.alert-platform``)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="state directory (pid files, logs, snapshots, ledger); "
        "default $ALERT_PLATFORM_DATA_DIR or .alert-platform",
    )


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with ``--data-dir`` applied when the command has one."""
    settings = Settings.from_env()
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        settings = settings.with_overrides(data_dir=Path(data_dir))
    return settings


def _split_csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


# -- stack ------------------------------------------------------------------------------------


def _services_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--services",
        type=_split_csv,
        default=None,
        metavar="NAMES",
        help="comma-separated subset of kafka,bigquery,slack (default: all)",
    )


def _print_statuses(statuses: Mapping[str, ServiceStatus], stack: LocalStack) -> None:
    for name, status in statuses.items():
        pid_text = f"pid {status.pid}" if status.pid and status.running else ""
        print(f"{name:<9} {status.state:<8} {stack.url(name):<32} {pid_text}".rstrip())


def _stack_up(args: argparse.Namespace) -> int:
    from alert_platform.local.stack import LocalStack

    settings = load_settings(args)
    stack = LocalStack(settings, start_timeout=args.timeout)
    statuses = stack.up(args.services)
    _print_statuses(statuses, stack)
    print(f"logs: {stack.data_dir / 'logs'}")
    print("stop with: alert-platform stack down" + _data_dir_flag(args))
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from alert_platform.local.stack import LocalStack

    stack = LocalStack(load_settings(args))
    for name, stopped in stack.down(args.services).items():
        print(f"{name:<9} {'stopped' if stopped else 'not running'}")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from alert_platform.local.stack import LocalStack

    stack = LocalStack(load_settings(args))
    statuses = stack.status(args.services)
    _print_statuses(statuses, stack)
    return 0 if all(status.running for status in statuses.values()) else 3


def _data_dir_flag(args: argparse.Namespace) -> str:
    return f" --data-dir {args.data_dir}" if getattr(args, "data_dir", None) else ""


def register_stack(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``stack up|down|status``."""
    stack = subparsers.add_parser(
        "stack",
        help="start, stop or inspect the embedded local stack",
        description="The local stand-ins: Kafka (Tansu broker), BigQuery emulator and Slack "
        "sandbox, each bound to 127.0.0.1 on the port of its endpoint setting "
        "(KAFKA_BOOTSTRAP_SERVERS, BIGQUERY_API_ENDPOINT, SLACK_API_URL).",
    )
    actions = stack.add_subparsers(dest="stack_command", metavar="{up,down,status}", required=True)

    up = actions.add_parser(
        "up",
        help="start services in the background and wait until they are ready",
        description="Start the services in the background (pid files and logs under the data "
        "dir) and wait until each answers. Already-running services are left alone.",
    )
    add_data_dir_argument(up)
    _services_argument(up)
    up.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait per service (default 60)"
    )
    up.set_defaults(handler=_stack_up)

    down = actions.add_parser("down", help="stop the services started by `stack up`")
    add_data_dir_argument(down)
    _services_argument(down)
    down.set_defaults(handler=_stack_down)

    status = actions.add_parser(
        "status",
        help="show each service's state (exit code 3 if any is not running)",
        description="State per service from its pid file: running, stale (pid file left by a "
        "process that died) or stopped. Exit code 0 when all are running, else 3.",
    )
    add_data_dir_argument(status)
    _services_argument(status)
    status.set_defaults(handler=_stack_status)


# -- topics -----------------------------------------------------------------------------------


def _require_broker(settings: Settings) -> None:
    """Fail fast, with a hint, when no bootstrap server answers."""
    from alert_platform.kafka.clients import make_admin
    from alert_platform.local.ports import can_connect

    hint = "start it with `alert-platform stack up` or set KAFKA_BOOTSTRAP_SERVERS"
    addresses = []
    for server in settings.bootstrap_servers.split(","):
        parsed = urlparse(f"tcp://{server.strip().split('://')[-1]}")
        if parsed.hostname and parsed.port:
            addresses.append((parsed.hostname, parsed.port))
    if addresses and not any(can_connect(port, host, 2.0) for host, port in addresses):
        raise CommandError(
            f"Kafka broker at {settings.bootstrap_servers} is not reachable "
            f"(nothing accepts connections there); {hint}"
        )
    try:
        make_admin(settings, **{"log_level": 0}).list_topics(timeout=10)
    except Exception as exc:
        raise CommandError(
            f"Kafka broker at {settings.bootstrap_servers} is not reachable ({exc}); {hint}"
        ) from exc


def _topics_create(args: argparse.Namespace) -> int:
    from alert_platform.kafka.admin import create_topics
    from alert_platform.topics import ALL_TOPICS, TOPICS_BY_NAME

    settings = load_settings(args)
    specs = list(ALL_TOPICS)
    if args.topics:
        unknown = [name for name in args.topics if name not in TOPICS_BY_NAME]
        if unknown:
            raise CommandError(
                f"unknown topic(s) {', '.join(unknown)}; known: {', '.join(TOPICS_BY_NAME)}"
            )
        specs = [TOPICS_BY_NAME[name] for name in args.topics]
    _require_broker(settings)
    created = set(create_topics(settings, specs))
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        compact = "  compact" if spec.compacted else ""
        print(f"{spec.name:<30} {state:<8} partitions={spec.partitions}{compact}")
    return 0


def _topics_list(args: argparse.Namespace) -> int:
    from alert_platform.kafka.admin import list_topics

    settings = load_settings(args)
    _require_broker(settings)
    for name, partitions in sorted(list_topics(settings).items()):
        print(f"{name:<40} partitions={partitions}")
    return 0


def register_topics(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``topics create|list``."""
    topics = subparsers.add_parser(
        "topics",
        help="create or list the platform's Kafka topics",
        description="Manage the topics of alert_platform.topics on KAFKA_BOOTSTRAP_SERVERS.",
    )
    actions = topics.add_subparsers(dest="topics_command", metavar="{create,list}", required=True)
    create = actions.add_parser(
        "create",
        help="create every platform topic that does not exist yet (idempotent)",
        description="Create the platform topics with their partition counts and configs "
        "(cleanup.policy=compact on lookup-table topics). Existing topics are left unchanged.",
    )
    create.add_argument(
        "--topics", type=_split_csv, default=None, metavar="NAMES", help="only these topics"
    )
    add_data_dir_argument(create)
    create.set_defaults(handler=_topics_create)
    listing = actions.add_parser("list", help="list the broker's topics")
    add_data_dir_argument(listing)
    listing.set_defaults(handler=_topics_list)


BUILTIN_COMMANDS: tuple[Register, ...] = (register_stack, register_topics)


# -- entry point ------------------------------------------------------------------------------


def build_parser(extra_modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The full parser: built-in commands, then every module of :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(
        prog="alert-platform",
        description="Real-time business alerting: Kafka and BigQuery events into Slack alerts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in BUILTIN_COMMANDS:
        register(subparsers)
    for module_name in COMMAND_MODULES if extra_modules is None else extra_modules:
        importlib.import_module(module_name).register(subparsers)
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
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `alert-platform ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    # `python -m alert_platform.cli`: run the importable module's main, whose CommandError is
    # the one command modules raise (this file's copy as __main__ has a class of its own).
    from alert_platform.cli import main as _main

    sys.exit(_main())
