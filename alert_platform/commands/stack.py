"""``alert-platform stack up|down|status|env``: the embedded local stand-ins."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from alert_platform.commands.common import add_data_dir_argument, load_settings, split_csv

if TYPE_CHECKING:
    from alert_platform.local.processes import ServiceStatus
    from alert_platform.local.stack import LocalStack


def _services_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--services",
        type=split_csv,
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

    settings = load_settings(args, local=True)
    stack = LocalStack(settings, start_timeout=args.timeout)
    statuses = stack.up(args.services)
    _print_statuses(statuses, stack)
    print(f"logs: {stack.data_dir / 'logs'}")
    print("stop with: alert-platform stack down" + _data_dir_flag(args))
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from alert_platform.local.stack import LocalStack

    stack = LocalStack(load_settings(args, local=True))
    for name, stopped in stack.down(args.services).items():
        print(f"{name:<9} {'stopped' if stopped else 'not running'}")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from alert_platform.local.stack import LocalStack

    stack = LocalStack(load_settings(args, local=True))
    statuses = stack.status(args.services)
    _print_statuses(statuses, stack)
    return 0 if all(status.running for status in statuses.values()) else 3


def _stack_env(args: argparse.Namespace) -> int:
    """Print the local profile as shell exports (``eval "$(alert-platform stack env)"``)."""
    import shlex

    from alert_platform.local.profile import LOCAL_ENVIRONMENT

    for name, value in sorted(LOCAL_ENVIRONMENT.items()):
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _data_dir_flag(args: argparse.Namespace) -> str:
    return f" --data-dir {args.data_dir}" if getattr(args, "data_dir", None) else ""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``stack up|down|status``."""
    stack = subparsers.add_parser(
        "stack",
        help="start, stop or inspect the embedded local stack",
        description="The local stand-ins: Kafka (Tansu broker), BigQuery emulator and Slack "
        "sandbox, each bound to 127.0.0.1 on the port of its endpoint setting "
        "(KAFKA_BOOTSTRAP_SERVERS, BIGQUERY_API_ENDPOINT, SLACK_API_URL).",
    )
    actions = stack.add_subparsers(
        dest="stack_command", metavar="{up,down,status,env}", required=True
    )

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

    env = actions.add_parser(
        "env",
        help="print the local profile as shell exports",
        description="Print the variables of the local profile (local broker client settings, "
        "Slack sandbox URL and token, BigQuery emulator) as `export` lines, so that another "
        'shell\'s commands talk to the stack `make dev` runs: eval "$(alert-platform stack env)". '
        "Every other process defaults to production endpoints.",
    )
    env.set_defaults(handler=_stack_env)
