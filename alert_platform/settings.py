"""One typed settings object, read from the environment, shared by the core and Dagster.

A ``KAFKA_*`` variable that names a librdkafka property passes through to librdkafka
(``KAFKA_SASL_USERNAME`` becomes ``sasl.username``), so the same code reaches a laptop broker or
Confluent Cloud. Kubernetes service-link variables (``KAFKA_PORT``, ``KAFKA_SERVICE_HOST``, ...)
are ignored; any other ``KAFKA_*`` name is a :class:`ConfigError`. A property missing from
:mod:`alert_platform.kafka.properties` (a newer librdkafka) can be passed unchecked as
``ALERT_PLATFORM_KAFKA_PROPERTY_<NAME>`` (``_`` becomes ``.``).

Secrets (the Slack token, Kafka properties whose name contains ``password`` or ``secret``, the
passwords in database URLs) never appear in ``repr``/``str`` of :class:`Settings`; use
:func:`redact_url` and :func:`redact_kafka` when a message has to show them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlparse, urlsplit, urlunsplit

from alert_platform.kafka import properties

LOCAL_SLACK_TOKEN = "xoxb-local-sandbox"

# librdkafka settings that make the local Tansu broker behave (see docs/local-broker.md).
# Applied only with ALERT_PLATFORM_KAFKA_PROFILE=local (the default).
LOCAL_KAFKA_PROFILE: Mapping[str, str] = {
    "fetch.wait.max.ms": "10",
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "1000",
}

_KAFKA_PREFIX = "KAFKA_"
_LIBRDKAFKA = "2.16"  # the version alert_platform.kafka.properties lists
# Passes any librdkafka property, unchecked (one newer than alert_platform.kafka.properties).
KAFKA_PROPERTY_PREFIX = "ALERT_PLATFORM_KAFKA_PROPERTY_"
DAGSTER_POSTGRES_URL_ENV = "ALERT_PLATFORM_DAGSTER_POSTGRES_URL"
REDACTED = "***"
# The delivery lease must exceed one Slack call's deadline by at least this much (a live owner
# heart-beats between calls, never during one).
LEASE_MARGIN_S = 5.0


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable to fix."""


def _kafka_passthrough(env: Mapping[str, str]) -> dict[str, str]:
    """librdkafka properties from ``KAFKA_*`` (checked) and ``ALERT_PLATFORM_KAFKA_PROPERTY_*``."""
    config: dict[str, str] = {}
    for name, value in sorted(env.items()):
        if value == "":
            continue
        if name.startswith(KAFKA_PROPERTY_PREFIX) and len(name) > len(KAFKA_PROPERTY_PREFIX):
            config[name[len(KAFKA_PROPERTY_PREFIX) :].lower().replace("_", ".")] = value
            continue
        if not name.startswith(_KAFKA_PREFIX):
            continue
        known = properties.property_for_variable(name[len(_KAFKA_PREFIX) :])
        if known is not None:
            config.setdefault(known, value)  # the explicit prefix wins
        elif not properties.is_service_link_variable(name):
            guess = name[len(_KAFKA_PREFIX) :].lower().replace("_", ".")
            raise ConfigError(
                f"{name}: {guess!r} is not a librdkafka {_LIBRDKAFKA} configuration property "
                "(KAFKA_* variables set librdkafka properties); unset it, fix its name, or "
                f"pass a newer property as {KAFKA_PROPERTY_PREFIX}{name[len(_KAFKA_PREFIX) :]}"
            )
    return config


_SECRET_WORDS = ("password", "secret", "passphrase", "private", "token", "credential")
# Secret values whose names carry none of those words: a private key, OAUTHBEARER settings that
# may embed credentials.
_SECRET_PROPERTIES = frozenset(
    {"ssl.key.pem", "sasl.oauthbearer.config", "sasl.oauthbearer.extensions"}
)


def is_secret_property(name: str) -> bool:
    """True for a librdkafka property that may hold a secret (``sasl.password``, ``*secret``)."""
    lowered = name.lower()
    if lowered == "sasl.oauthbearer.token.endpoint.url":
        return False
    return lowered in _SECRET_PROPERTIES or any(word in lowered for word in _SECRET_WORDS)


def redact_kafka(config: Mapping[str, object]) -> dict[str, object]:
    """``config`` with every secret property's value replaced by ``***``."""
    return {k: (REDACTED if is_secret_property(k) else v) for k, v in config.items()}


class KafkaConfig(dict[str, str]):
    """The librdkafka pass-through mapping; its ``repr`` redacts secret properties."""

    def __repr__(self) -> str:
        return repr(redact_kafka(self))

    __str__ = __repr__


def redact_url(url: str) -> str:
    """``url`` with its password (user info, or a ``password=`` query parameter) as ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    original = parts
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}")
    if parts.query:
        query = [
            f"{key}={REDACTED}" if key.lower() in ("password", "sslpassword") else f"{key}{eq}{v}"
            for key, eq, v in (item.partition("=") for item in parts.query.split("&"))
        ]
        parts = parts._replace(query="&".join(query))
    return url if parts == original else urlunsplit(parts)  # (urlunsplit rewrites sqlite:////)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _int_in(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _int(env, name, default)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {env.get(name)!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bounded(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    """A number in ``[low, high]``; a clear error naming the variable and the range otherwise."""
    value = _float(env, name, default)
    if not low <= value <= high:  # also rejects nan and inf
        raise ConfigError(
            f"{name} must be a number from {low:g} to {high:g}, got {env.get(name)!r}"
        )
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {env.get(name)!r}")
    return raw


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True, repr=False)
class Settings:
    """Where every service lives and how the platform behaves. Build with ``from_env``.

    ``repr``/``str`` redact every secret (see :meth:`__repr__`).
    """

    data_dir: Path = Path(".alert-platform")
    kafka: Mapping[str, str] = field(
        default_factory=lambda: {"bootstrap.servers": "127.0.0.1:9092"}
    )
    kafka_profile: str = "local"
    slack_api_url: str = "http://127.0.0.1:8025/api/"
    slack_bot_token: str = field(default=LOCAL_SLACK_TOKEN, repr=False)
    slack_fallback_channel: str = "#alerts-unrouted"
    slack_ops_channel: str = "#alerts-ops"
    bigquery_api_endpoint: str = "http://127.0.0.1:9050"
    bigquery_project: str = "local-dev"
    bigquery_dataset: str = "warehouse"
    ledger_url: str = ""
    dedup_window_hours: int = 24
    connector_console_url_template: str = ""
    dagster_port: int = 3000
    inline_delivery: bool = True
    # Delivery pacing per Slack conversation (token bucket): Slack allows about 1 msg/s per
    # channel with short bursts. Only raise these against a Slack stand-in with raised limits.
    slack_channel_rate_per_s: float = 0.95
    slack_channel_burst: int = 2
    # Threads per delivery batch: one channel lane per thread (a lane is serial).
    delivery_max_workers: int = 64
    # Event-time sanity at enrichment: an event time further back or ahead is dead-lettered.
    event_time_max_past_hours: float = 720.0
    event_time_max_future_minutes: float = 60.0
    # Live delivery posts no alert whose event is older than this (outcome ``stale``); only an
    # explicit backfill does.
    max_alert_age_hours: float = 24.0
    # Where a tail cursor with no history starts: "latest" (the end, minus the look-back) or
    # "earliest" (the low watermark: the whole retention).
    start_policy: str = "latest"
    start_lookback_minutes: float = 0.0
    # One deadline per Slack Web API call (the whole call, not one socket read); the delivery
    # lease must exceed it by a margin (see ``validate``); Retry-After values are capped.
    slack_call_timeout_s: float = 10.0
    delivery_lease_s: float = 60.0
    slack_retry_after_max_s: float = 120.0
    # Back-off before the 2nd re-launch of a failed offset range (doubling, at most 300 s).
    retry_backoff_base_s: float = 15.0
    # Ops channel: one post per failing range, then a reminder at most this often.
    ops_reminder_minutes: float = 60.0
    # Ledger and run-index rows are pruned this long after the de-duplication window.
    state_retention_margin_hours: float = 24.0
    dagster_webserver_url: str = ""
    # Dagster's run storage for `alert-platform dev` (ALERT_PLATFORM_DAGSTER_POSTGRES_URL); empty:
    # SQLite in DAGSTER_HOME. `dev` writes it to dagster.yaml as an env reference, not the URL.
    dagster_postgres_url: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.kafka, KafkaConfig):
            object.__setattr__(self, "kafka", KafkaConfig(self.kafka))

    def __repr__(self) -> str:
        """Every field, with the token, secret Kafka properties and URL passwords redacted."""
        shown: list[str] = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "slack_bot_token":
                value = REDACTED if value else ""
            elif item.name == "kafka":
                value = redact_kafka(value)
            elif item.name in ("ledger_url", "dagster_postgres_url"):
                value = redact_url(value)
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default: ``os.environ``); unset means the local default."""
        env = os.environ if env is None else env
        base = cls()
        kafka = {**base.kafka, **_kafka_passthrough(env)}
        profile = env.get("ALERT_PLATFORM_KAFKA_PROFILE", "local")
        if profile not in ("local", "default"):
            raise ConfigError(
                f"ALERT_PLATFORM_KAFKA_PROFILE must be 'local' or 'default', got {profile!r}"
            )
        return cls(
            data_dir=Path(env.get("ALERT_PLATFORM_DATA_DIR") or base.data_dir),
            kafka=kafka,
            kafka_profile=profile,
            slack_api_url=env.get("SLACK_API_URL") or base.slack_api_url,
            slack_bot_token=env.get("SLACK_BOT_TOKEN") or base.slack_bot_token,
            slack_fallback_channel=env.get("ALERT_FALLBACK_CHANNEL") or base.slack_fallback_channel,
            slack_ops_channel=env.get("ALERT_OPS_CHANNEL") or base.slack_ops_channel,
            bigquery_api_endpoint=env.get("BIGQUERY_API_ENDPOINT", base.bigquery_api_endpoint),
            bigquery_project=env.get("BIGQUERY_PROJECT") or base.bigquery_project,
            bigquery_dataset=env.get("BIGQUERY_DATASET") or base.bigquery_dataset,
            ledger_url=env.get("ALERT_LEDGER_URL", ""),
            dedup_window_hours=_int_in(
                env, "ALERT_DEDUP_WINDOW_HOURS", base.dedup_window_hours, 1, 8_760
            ),
            connector_console_url_template=env.get("CONNECTOR_CONSOLE_URL_TEMPLATE", ""),
            dagster_port=_int_in(env, "DAGSTER_PORT", base.dagster_port, 1, 65_535),
            inline_delivery=_bool(env, "ALERT_PLATFORM_INLINE_DELIVERY", base.inline_delivery),
            slack_channel_rate_per_s=_bounded(
                env, "SLACK_CHANNEL_RATE_PER_S", base.slack_channel_rate_per_s, 0.001, 10_000
            ),
            slack_channel_burst=_int_in(
                env, "SLACK_CHANNEL_BURST", base.slack_channel_burst, 1, 10_000
            ),
            delivery_max_workers=_int_in(
                env, "ALERT_PLATFORM_DELIVERY_WORKERS", base.delivery_max_workers, 1, 1_024
            ),
            event_time_max_past_hours=_bounded(
                env, "ALERT_EVENT_TIME_MAX_PAST_HOURS", base.event_time_max_past_hours, 1, 87_600
            ),
            event_time_max_future_minutes=_bounded(
                env,
                "ALERT_EVENT_TIME_MAX_FUTURE_MINUTES",
                base.event_time_max_future_minutes,
                0,
                10_080,
            ),
            max_alert_age_hours=_bounded(
                env, "ALERT_MAX_AGE_HOURS", base.max_alert_age_hours, 0.01, 87_600
            ),
            start_policy=_choice(
                env, "ALERT_PLATFORM_START_POLICY", base.start_policy, ("latest", "earliest")
            ),
            start_lookback_minutes=_bounded(
                env,
                "ALERT_PLATFORM_START_LOOKBACK_MINUTES",
                base.start_lookback_minutes,
                0,
                525_600,
            ),
            slack_call_timeout_s=_bounded(
                env, "SLACK_CALL_TIMEOUT_S", base.slack_call_timeout_s, 1, 300
            ),
            delivery_lease_s=_bounded(
                env, "ALERT_PLATFORM_DELIVERY_LEASE_S", base.delivery_lease_s, 15, 86_400
            ),
            slack_retry_after_max_s=_bounded(
                env, "SLACK_RETRY_AFTER_MAX_S", base.slack_retry_after_max_s, 1, 3_600
            ),
            retry_backoff_base_s=_bounded(
                env, "ALERT_PLATFORM_RETRY_BACKOFF_BASE_S", base.retry_backoff_base_s, 0, 3_600
            ),
            ops_reminder_minutes=_bounded(
                env, "ALERT_OPS_REMINDER_MINUTES", base.ops_reminder_minutes, 1, 10_080
            ),
            state_retention_margin_hours=_bounded(
                env,
                "ALERT_STATE_RETENTION_MARGIN_HOURS",
                base.state_retention_margin_hours,
                1,
                87_600,
            ),
            dagster_webserver_url=env.get("DAGSTER_WEBSERVER_URL", ""),
            dagster_postgres_url=env.get(DAGSTER_POSTGRES_URL_ENV, ""),
        ).validate()

    def validate(self) -> Settings:
        """Cross-setting rules; returns ``self``. Raises :class:`ConfigError`."""
        margin = LEASE_MARGIN_S
        if self.delivery_lease_s < self.slack_call_timeout_s + margin:
            raise ConfigError(
                f"ALERT_PLATFORM_DELIVERY_LEASE_S ({self.delivery_lease_s:g} s) must be at least "
                f"SLACK_CALL_TIMEOUT_S ({self.slack_call_timeout_s:g} s) + {margin:g} s, else a "
                "slow Slack call could be taken over and posted twice"
            )
        return self

    @property
    def webserver_url(self) -> str:
        """The Dagster UI's base URL (links in ops messages)."""
        return self.dagster_webserver_url or f"http://127.0.0.1:{self.dagster_port}"

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (tests and the local stack use this)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka["bootstrap.servers"]

    def kafka_client_config(self, **extra: str | int | bool) -> dict[str, str | int | bool]:
        """librdkafka settings for any client: passthrough, then the profile, then ``extra``."""
        config: dict[str, str | int | bool] = dict(self.kafka)
        if self.kafka_profile == "local":
            config.update(LOCAL_KAFKA_PROFILE)
        config.update(extra)
        return config

    @property
    def effective_ledger_url(self) -> str:
        """SQLAlchemy URL of the delivery ledger: ALERT_LEDGER_URL, else SQLite in the data dir."""
        if self.ledger_url:
            return self.ledger_url
        return f"sqlite:///{(self.data_dir / 'ledger.sqlite3').resolve()}"

    @property
    def snapshot_dir(self) -> Path:
        """Where lookup-table snapshots live."""
        return self.data_dir / "tables"

    @property
    def slack_sandbox_port(self) -> int:
        return _port_of(self.slack_api_url, "SLACK_API_URL")

    @property
    def kafka_port(self) -> int:
        first = self.bootstrap_servers.split(",")[0]
        return _port_of(f"tcp://{first}", "KAFKA_BOOTSTRAP_SERVERS")

    @property
    def bigquery_port(self) -> int:
        return _port_of(self.bigquery_api_endpoint, "BIGQUERY_API_ENDPOINT")


def _port_of(url: str, variable: str) -> int:
    try:
        port = urlparse(url).port
    except ValueError:  # not a number, or outside 0..65535
        port = -1
    if port is None:
        raise ConfigError(f"{variable} must include a port, got {redact_url(url)!r}")
    if not 1 <= port <= 65_535:
        raise ConfigError(
            f"{variable} must include a port from 1 to 65535, got {redact_url(url)!r}"
        )
    return port
