"""Shared by the configuration-fault tests: the CLI runner, a SASL environment whose password
must never be printed, and the per-case figures the fault-table row is built from."""

from __future__ import annotations

import os
import subprocess
import sys
import time

KAFKA_PASSWORD = "fault-suite-kafka-password-3141"
WRONG_TOKEN = "xoxb-0000-fault-suite-wrong-token-2718"
FAST_S = 30.0  # "fails fast": well under any retry loop or default client timeout

OUTCOMES: dict[str, float] = {}  # case -> seconds to fail (or to be refused)
LEAKS: dict[str, int] = {}  # case -> secrets found where none may appear (measured, 0 expected)
CONFIG_ALERTS: set[str] = set()  # alert ids the configuration-fault tests produced


def note(case: str, seconds: float) -> None:
    OUTCOMES[case] = round(seconds, 1)


def count_leaks(case: str, secrets: list[str], *texts: str) -> int:
    """How many (secret, text) pairs show a secret; recorded for the fault table."""
    found = sum(1 for secret in secrets for text in texts if secret in text)
    LEAKS[case] = LEAKS.get(case, 0) + found
    return found


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str, float]:
    """``alert-platform ARGS`` with ``env`` over this environment (minus KAFKA_*/SLACK_*)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SLACK_"))}
    full.update(env)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "alert_platform.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def sasl_env(bootstrap: str) -> dict[str, str]:
    """A Confluent-Cloud-like client config whose password must never be printed."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISMS": "PLAIN",
        "KAFKA_SASL_USERNAME": "fault-suite",
        "KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
    }
