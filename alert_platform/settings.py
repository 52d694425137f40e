"""One typed settings object (pydantic-settings), read from the environment, shared by the core
and Dagster. Unset means production: the local stand-ins are a profile that ``alert-platform
dev``, the tests and the benchmarks set explicitly (:mod:`alert_platform.local.profile`).

Each field names its environment variable (its validation alias); a value out of its range is a
:class:`ConfigError` naming the variable and the range. ``Settings(**fields)`` reads defaults and
keyword arguments only; :meth:`Settings.from_env` reads a mapping (default ``os.environ``).

A ``KAFKA_*`` variable that names a librdkafka property passes through to librdkafka
(``KAFKA_SASL_USERNAME`` becomes ``sasl.username``), so the same code reaches a laptop broker or
Confluent Cloud. Kubernetes service-link variables (``KAFKA_PORT``, ``KAFKA_SERVICE_HOST``, ...)
are ignored; any other ``KAFKA_*`` name is a :class:`ConfigError`. A property missing from
:mod:`alert_platform.librdkafka_properties` (a newer librdkafka) can be passed unchecked as
``ALERT_PLATFORM_KAFKA_PROPERTY_<NAME>`` (``_`` becomes ``.``).

Secrets (the Slack token, a :class:`~pydantic.SecretStr`; Kafka properties whose name contains
``password`` or ``secret``; the passwords in database URLs) never appear in ``repr``/``str`` of
:class:`Settings`; use :func:`redact_url` and :func:`redact_kafka` when a message must show them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from alert_platform import librdkafka_properties as properties
from alert_platform.redaction import (
    REDACTED,
    KafkaConfig,
    is_secret_property,
    redact_kafka,
    redact_url,
)

__all__ = [
    "DAGSTER_POSTGRES_URL_ENV",
    "KAFKA_PROPERTY_PREFIX",
    "LEASE_MARGIN_S",
    "LOCAL_KAFKA_PROFILE",
    "LOCAL_SLACK_TOKEN",
    "REDACTED",
    "ConfigError",
    "KafkaConfig",
    "Settings",
    "is_secret_property",
    "process_environment",
    "redact_kafka",
    "redact_url",
]

# The Slack sandbox's only token (alert_platform.local.profile sets it; never a default here).
LOCAL_SLACK_TOKEN = "xoxb-local-sandbox"

# librdkafka settings that make the local Tansu broker behave (see docs/local-broker.md).
# Applied only with ALERT_PLATFORM_KAFKA_PROFILE=local (the local profile sets it).
LOCAL_KAFKA_PROFILE: Mapping[str, str] = {
    "fetch.wait.max.ms": "10",
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "1000",
}

_KAFKA_PREFIX = "KAFKA_"
_LIBRDKAFKA = "2.16"  # the version alert_platform.librdkafka_properties lists
# Passes any librdkafka property, unchecked (one newer than alert_platform.librdkafka_properties).
KAFKA_PROPERTY_PREFIX = "ALERT_PLATFORM_KAFKA_PROPERTY_"
DAGSTER_POSTGRES_URL_ENV = "ALERT_PLATFORM_DAGSTER_POSTGRES_URL"
DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
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


def process_environment(**changes: str) -> dict[str, str]:
    """This process's environment with ``changes``: for a child process that must see both."""
    return {**os.environ, **changes}


# The mapping :meth:`Settings.from_env` is reading (None: ``Settings(...)`` reads no environment).
_READING: ContextVar[Mapping[str, str] | None] = ContextVar("_READING", default=None)


class _MappingSource(PydanticBaseSettingsSource):
    """Each field's variable (its validation alias) from a given mapping; empty means unset."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = field.validation_alias
        raw = self.env.get(variable) if isinstance(variable, str) else None
        return raw, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            raw, _, _ = self.get_field_value(info, name)
            if raw is not None and raw.strip() != "":
                values[str(info.validation_alias)] = raw
        return values


def _env(variable: str, default: Any, **constraints: Any) -> Any:
    """A field read from ``variable``; numbers with bounds are also finite."""
    if isinstance(default, float):
        constraints.setdefault("allow_inf_nan", False)
    return Field(default, validation_alias=variable, **constraints)


def _as_kafka_config(value: dict[str, str]) -> KafkaConfig:
    return value if isinstance(value, KafkaConfig) else KafkaConfig(value)


class Settings(BaseSettings):
    """Where every service lives and how the platform behaves. Build with ``from_env``.

    Frozen; ``repr``/``str`` redact every secret. ``with_overrides`` returns a checked copy.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        case_sensitive=True,
    )

    data_dir: Path = _env("ALERT_PLATFORM_DATA_DIR", Path(".alert-platform"))
    # The librdkafka pass-through (KAFKA_*, ALERT_PLATFORM_KAFKA_PROPERTY_*), not one variable.
    kafka: Annotated[dict[str, str], AfterValidator(_as_kafka_config)] = Field(
        default_factory=lambda: KafkaConfig({"bootstrap.servers": DEFAULT_BOOTSTRAP_SERVERS})
    )
    kafka_profile: Literal["default", "local"] = _env("ALERT_PLATFORM_KAFKA_PROFILE", "default")
    slack_api_url: str = _env("SLACK_API_URL", "https://slack.com/api/")
    slack_bot_token: SecretStr = _env("SLACK_BOT_TOKEN", SecretStr(""))
    slack_fallback_channel: str = _env("ALERT_FALLBACK_CHANNEL", "#alerts-unrouted")
    slack_ops_channel: str = _env("ALERT_OPS_CHANNEL", "#alerts-ops")
    # Empty: Google BigQuery with Application Default Credentials.
    bigquery_api_endpoint: str = _env("BIGQUERY_API_ENDPOINT", "")
    bigquery_project: str = _env("BIGQUERY_PROJECT", "")
    bigquery_dataset: str = _env("BIGQUERY_DATASET", "warehouse")
    ledger_url: str = _env("ALERT_LEDGER_URL", "")
    dedup_window_hours: int = _env("ALERT_DEDUP_WINDOW_HOURS", 24, ge=1, le=8_760)
    connector_console_url_template: str = _env("CONNECTOR_CONSOLE_URL_TEMPLATE", "")
    dagster_port: int = _env("DAGSTER_PORT", 3000, ge=1, le=65_535)
    inline_delivery: bool = _env("ALERT_PLATFORM_INLINE_DELIVERY", True)
    # Delivery pacing per Slack conversation (token bucket): Slack allows about 1 msg/s per
    # channel with short bursts. Only raise these against a Slack stand-in with raised limits.
    slack_channel_rate_per_s: float = _env("SLACK_CHANNEL_RATE_PER_S", 0.95, ge=0.001, le=10_000)
    slack_channel_burst: int = _env("SLACK_CHANNEL_BURST", 2, ge=1, le=10_000)
    # Threads per delivery batch: one channel lane per thread (a lane is serial).
    delivery_max_workers: int = _env("ALERT_PLATFORM_DELIVERY_WORKERS", 64, ge=1, le=1_024)
    # Event-time sanity at enrichment: an event time further back or ahead is dead-lettered.
    event_time_max_past_hours: float = _env(
        "ALERT_EVENT_TIME_MAX_PAST_HOURS", 720.0, ge=1, le=87_600
    )
    event_time_max_future_minutes: float = _env(
        "ALERT_EVENT_TIME_MAX_FUTURE_MINUTES", 60.0, ge=0, le=10_080
    )
    # Live delivery posts no alert whose event is older than this (outcome ``stale``); only an
    # explicit backfill does.
    max_alert_age_hours: float = _env("ALERT_MAX_AGE_HOURS", 24.0, ge=0.01, le=87_600)
    # Where a tail cursor with no history starts: "latest" (the end, minus the look-back) or
    # "earliest" (the low watermark: the whole retention).
    start_policy: Literal["latest", "earliest"] = _env("ALERT_PLATFORM_START_POLICY", "latest")
    start_lookback_minutes: float = _env(
        "ALERT_PLATFORM_START_LOOKBACK_MINUTES", 0.0, ge=0, le=525_600
    )
    # One deadline per Slack Web API call (the whole call, not one socket read); the delivery
    # lease must exceed it by a margin (see ``validate``); Retry-After values are capped.
    slack_call_timeout_s: float = _env("SLACK_CALL_TIMEOUT_S", 10.0, ge=1, le=300)
    delivery_lease_s: float = _env("ALERT_PLATFORM_DELIVERY_LEASE_S", 60.0, ge=15, le=86_400)
    slack_retry_after_max_s: float = _env("SLACK_RETRY_AFTER_MAX_S", 120.0, ge=1, le=3_600)
    # Back-off before the 2nd re-launch of a failed offset range (doubling, at most 300 s).
    retry_backoff_base_s: float = _env("ALERT_PLATFORM_RETRY_BACKOFF_BASE_S", 15.0, ge=0, le=3_600)
    # Ops channel: one post per failing range, then a reminder at most this often.
    ops_reminder_minutes: float = _env("ALERT_OPS_REMINDER_MINUTES", 60.0, ge=1, le=10_080)
    # Ledger and run-index rows are pruned this long after the de-duplication window.
    state_retention_margin_hours: float = _env(
        "ALERT_STATE_RETENTION_MARGIN_HOURS", 24.0, ge=1, le=87_600
    )
    # Stream mode: resident workers enrich and deliver as records arrive, the tail sensors only
    # catch up on what the workers have not committed within the lag bound. Batch mode: every
    # record goes through sensor-launched runs (the platform before stream mode).
    mode: Literal["stream", "batch"] = _env("ALERT_PLATFORM_MODE", "stream")
    stream_lag_bound_s: float = _env("ALERT_PLATFORM_STREAM_LAG_BOUND_S", 30.0, ge=1, le=86_400)
    # A micro-batch: up to this many records, gathered for at most the linger after the first.
    stream_max_batch: int = _env("ALERT_PLATFORM_STREAM_MAX_BATCH", 5_000, ge=1, le=100_000)
    stream_linger_ms: float = _env("ALERT_PLATFORM_STREAM_LINGER_MS", 5.0, ge=0, le=10_000)
    # The delivery worker's micro-batch (posting is paced per channel: keep it small).
    stream_delivery_max_batch: int = _env(
        "ALERT_PLATFORM_STREAM_DELIVERY_MAX_BATCH", 200, ge=1, le=10_000
    )
    # fetch.wait.max.ms of the workers' group consumers (0: the cluster profile's / librdkafka's).
    # A real broker answers a fetch as soon as data arrives, whatever the wait; the local one
    # holds every fetch for the whole wait, so there it trades latency against the broker's
    # idle CPU (the local profile sets 25 ms).
    stream_fetch_wait_ms: int = _env("ALERT_PLATFORM_STREAM_FETCH_WAIT_MS", 0, ge=0, le=10_000)
    # How often a worker reports its health (Dagster observations, logs).
    stream_health_interval_s: float = _env(
        "ALERT_PLATFORM_STREAM_HEALTH_INTERVAL_S", 60.0, ge=1, le=86_400
    )
    # The consumer groups of the workers: <prefix>.<stream>.
    stream_group_prefix: str = _env("ALERT_PLATFORM_STREAM_GROUP_PREFIX", "alert-platform-stream")
    dagster_webserver_url: str = _env("DAGSTER_WEBSERVER_URL", "")
    # Dagster's run storage for `alert-platform dev` (ALERT_PLATFORM_DAGSTER_POSTGRES_URL); empty:
    # SQLite in DAGSTER_HOME. `dev` writes it to dagster.yaml as an env reference, not the URL.
    dagster_postgres_url: str = _env(DAGSTER_POSTGRES_URL_ENV, "")
    # The Dagster instance the `backfill` command submits to (empty: the dev data dir's).
    dagster_home: str = _env("DAGSTER_HOME", "")
    # First partition keys: the hourly alert assets, the daily onboarding producer.
    partitions_start: str = _env("ALERT_PLATFORM_PARTITIONS_START", "2026-11-01-00:00")
    onboarding_start: str = _env("ALERT_PLATFORM_ONBOARDING_START", "2026-11-01")

    def __init__(self, **values: Any) -> None:
        """Defaults and ``values`` only (no environment); a bad value is a :class:`ConfigError`."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the mapping ``from_env`` reads; never ``os.environ`` itself."""
        reading = _READING.get()
        if reading is None:
            return (init_settings,)
        return (init_settings, _MappingSource(settings_cls, reading))

    @field_validator("kafka_profile", "start_policy", "mode", mode="before")
    @classmethod
    def _normalise_choice(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Every field, with the token, secret Kafka properties and URL passwords redacted."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "slack_bot_token":
                value = REDACTED if value.get_secret_value() else ""
            elif name == "kafka":
                value = redact_kafka(value)
            elif name in ("ledger_url", "dagster_postgres_url"):
                value = redact_url(value)
            yield name, value

    def __repr__(self) -> str:
        return f"Settings({self.__repr_str__(', ')})"

    __str__ = __repr__

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, defaults: Mapping[str, str] | None = None
    ) -> Settings:
        """Read ``env`` (default: ``os.environ``) over ``defaults`` (e.g. the local profile);
        unset or empty means the production default. Raises :class:`ConfigError`."""
        env = os.environ if env is None else env
        merged = {**(defaults or {}), **{k: v for k, v in env.items() if v.strip() != ""}}
        kafka = {"bootstrap.servers": DEFAULT_BOOTSTRAP_SERVERS, **_kafka_passthrough(merged)}
        reading = _READING.set(merged)
        try:
            return cls(kafka=kafka).validate()
        finally:
            _READING.reset(reading)

    def validate(self) -> Settings:  # type: ignore[override]  # (BaseModel's is deprecated)
        """Cross-setting rules; returns ``self``. Raises :class:`ConfigError`."""
        margin = LEASE_MARGIN_S
        if self.delivery_lease_s < self.slack_call_timeout_s + margin:
            raise ConfigError(
                f"ALERT_PLATFORM_DELIVERY_LEASE_S ({self.delivery_lease_s:g} s) must be at least "
                f"SLACK_CALL_TIMEOUT_S ({self.slack_call_timeout_s:g} s) + {margin:g} s, else a "
                "slow Slack call could be taken over and posted twice"
            )
        return self

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced, every value and cross rule checked again."""
        current = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self)(**{**current, **changes}).validate()

    @property
    def webserver_url(self) -> str:
        """The Dagster UI's base URL (links in ops messages)."""
        return self.dagster_webserver_url or f"http://127.0.0.1:{self.dagster_port}"

    @property
    def bootstrap_servers(self) -> str:
        """``bootstrap.servers`` of the Kafka pass-through."""
        return self.kafka["bootstrap.servers"]

    def kafka_client_config(self, **extra: str | int | bool) -> dict[str, str | int | bool]:
        """librdkafka settings for any client: the profile, then the passthrough (a property
        set explicitly wins over the profile's), then ``extra``."""
        config: dict[str, str | int | bool] = {}
        if self.kafka_profile == "local":
            config.update(LOCAL_KAFKA_PROFILE)
        config.update(self.kafka)
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
        """The port of ``SLACK_API_URL`` (the local sandbox listens there)."""
        return _port_of(self.slack_api_url, "SLACK_API_URL")

    @property
    def kafka_port(self) -> int:
        """The port of the first bootstrap server."""
        first = self.bootstrap_servers.split(",")[0]
        return _port_of(f"tcp://{first}", "KAFKA_BOOTSTRAP_SERVERS")

    @property
    def bigquery_port(self) -> int:
        """The port of ``BIGQUERY_API_ENDPOINT`` (the local emulator listens there)."""
        return _port_of(self.bigquery_api_endpoint, "BIGQUERY_API_ENDPOINT")


def _variable(name: str) -> str:
    """The environment variable of field ``name`` (the name itself when it has none)."""
    info = Settings.model_fields.get(name)
    alias = info.validation_alias if info is not None else None
    return alias if isinstance(alias, str) else name


def _field(key: str) -> str:
    """The field an error location names (a field name or its variable)."""
    for name, info in Settings.model_fields.items():
        if key in (name, info.validation_alias):
            return name
    return key


def _bounds(info: FieldInfo | None) -> tuple[float, float] | None:
    """``(ge, le)`` of a range-checked field, else None."""
    found = {
        key: getattr(item, key)
        for item in (info.metadata if info is not None else [])
        for key in ("ge", "le")
        if hasattr(item, key)
    }
    return (found["ge"], found["le"]) if len(found) == 2 else None


def _describe(error: ValidationError) -> str:
    """One line per bad value, naming its variable and the allowed values; secrets not shown."""
    lines: list[str] = []
    for item in error.errors(include_url=False):
        key = str(item["loc"][0]) if item["loc"] else ""
        name = _field(key)
        variable, raw = _variable(name), item.get("input")
        info = Settings.model_fields.get(name)
        bounds = _bounds(info)
        kind = "an integer" if info is not None and info.annotation is int else "a number"
        if item["type"] == "literal_error":
            lines.append(f"{variable} must be {item['ctx']['expected']}, got {raw!r}")
        elif bounds is not None:
            low, high = bounds
            lines.append(f"{variable} must be {kind} from {low:g} to {high:g}, got {raw!r}")
        elif item["type"] == "bool_parsing":
            lines.append(f"{variable} must be true or false, got {raw!r}")
        elif item["type"] == "extra_forbidden":
            lines.append(f"{key} is not a setting")
        else:  # the value itself may be a secret (a token, a URL with a password)
            lines.append(f"{variable}: {item['msg']}")
    return "; ".join(lines)


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
