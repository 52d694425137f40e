"""``alert-platform stream [STREAM ...]``: run stream workers in this process until stopped.

Each stream (a source topic, or ``slack-messages`` for delivery; default: all of them) gets a
worker thread in its consumer group; start the command on N machines and the groups share the
partitions. SIGTERM or Ctrl-C drains: the workers stop fetching, finish the batch in hand,
commit and leave their groups, then the command exits (within seconds).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from alert_platform.commands.common import CommandError, add_data_dir_argument, load_settings
from alert_platform.kafka.reachability import require_broker

LOG = logging.getLogger("alert_platform.commands.stream")


def _log_health(health: object) -> None:
    from alert_platform.stream.health import describe

    LOG.info("%s", describe(health))  # type: ignore[arg-type]


def _stream(args: argparse.Namespace) -> int:
    from alert_platform.stream.names import all_streams, check_stream
    from alert_platform.stream.worker import build_worker

    settings = load_settings(args, local=args.local)
    streams = args.streams or all_streams()
    try:
        for stream in streams:
            check_stream(stream)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    require_broker(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        LOG.info("signal %d: draining", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = [build_worker(settings, stream, on_health=_log_health) for stream in streams]
    failures: list[BaseException] = []

    def run(worker: object) -> None:
        try:
            worker.run(stop)  # type: ignore[attr-defined]
        except (
            BaseException
        ) as exc:  # one worker's crash stops the others (the supervisor restarts)
            failures.append(exc)
            LOG.exception("stream %s crashed", worker.stream)  # type: ignore[attr-defined]
            stop.set()

    threads = [threading.Thread(target=run, args=(w,), name=f"stream-{w.stream}") for w in workers]
    for thread in threads:
        thread.start()
    print(f"streaming {', '.join(streams)} (Ctrl-C to stop)", flush=True)
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    if failures:
        raise CommandError(f"stream worker failed: {failures[0]}")
    print("stream workers drained and stopped", flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``stream``."""
    parser = subparsers.add_parser(
        "stream",
        help="run resident stream workers (enrichment and delivery) until stopped",
        description="Consume the source topics and slack-messages in consumer groups, enrich and "
        "deliver each micro-batch as it arrives, commit what is done. SIGTERM/Ctrl-C drains.",
    )
    parser.add_argument("streams", nargs="*", metavar="STREAM",
                        help="source topics and/or slack-messages (default: all)")  # fmt: skip
    parser.add_argument("--local", action="store_true",
                        help="use the local profile (the embedded stack's endpoints)")  # fmt: skip
    add_data_dir_argument(parser)
    parser.set_defaults(handler=_stream)
