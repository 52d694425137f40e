"""Secrets out of sight: which librdkafka properties hold one, and redacted views of configs/URLs.

:class:`~alert_platform.settings.Settings` uses these in its ``repr``; use :func:`redact_url` and
:func:`redact_kafka` whenever a message has to show a database URL or a Kafka client config.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

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
