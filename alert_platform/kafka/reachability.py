"""Is a Kafka broker there? A fast, explicit answer before a command starts talking to it."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from alert_platform.kafka.clients import make_admin
from alert_platform.settings import Settings

_HINT = "start it with `alert-platform stack up` or set KAFKA_BOOTSTRAP_SERVERS"


class BrokerUnreachableError(RuntimeError):
    """No bootstrap server answers; the message names them and says what to do."""


def _accepts_connections(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_broker(settings: Settings, timeout_s: float = 2.0) -> None:
    """Fail fast (:class:`BrokerUnreachableError`) when no bootstrap server answers: first no
    TCP listener on any of them, then a metadata request that fails."""
    addresses = []
    for server in settings.bootstrap_servers.split(","):
        parsed = urlparse(f"tcp://{server.strip().split('://')[-1]}")
        if parsed.hostname and parsed.port:
            addresses.append((parsed.hostname, parsed.port))
    if addresses and not any(_accepts_connections(h, p, timeout_s) for h, p in addresses):
        raise BrokerUnreachableError(
            f"Kafka broker at {settings.bootstrap_servers} is not reachable "
            f"(nothing accepts connections there); {_HINT}"
        )
    try:
        make_admin(settings, **{"log_level": 0}).list_topics(timeout=10)
    except Exception as exc:
        raise BrokerUnreachableError(
            f"Kafka broker at {settings.bootstrap_servers} is not reachable ({exc}); {_HINT}"
        ) from exc
