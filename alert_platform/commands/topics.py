"""``alert-platform topics create|list``: the platform's Kafka topics."""

from __future__ import annotations

import argparse

from alert_platform.commands.common import (
    CommandError,
    add_data_dir_argument,
    load_settings,
    split_csv,
)
from alert_platform.kafka.reachability import require_broker


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
    require_broker(settings)
    created = set(create_topics(settings, specs))
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        compact = "  compact" if spec.compacted else ""
        print(f"{spec.name:<30} {state:<8} partitions={spec.partitions}{compact}")
    return 0


def _topics_list(args: argparse.Namespace) -> int:
    from alert_platform.kafka.admin import list_topics

    settings = load_settings(args)
    require_broker(settings)
    for name, partitions in sorted(list_topics(settings).items()):
        print(f"{name:<40} partitions={partitions}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "--topics", type=split_csv, default=None, metavar="NAMES", help="only these topics"
    )
    add_data_dir_argument(create)
    create.set_defaults(handler=_topics_create)
    listing = actions.add_parser("list", help="list the broker's topics")
    add_data_dir_argument(listing)
    listing.set_defaults(handler=_topics_list)
