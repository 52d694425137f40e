"""The sandbox control API's actions and its request guards (loopback Host, JSON body).

The guards keep a web page a developer opens from driving the sandbox: DNS rebinding sends the
attacker's host name in ``Host``, and a cross-site "simple" request can only be form-encoded,
``multipart/form-data`` or ``text/plain``, never ``application/json``.
"""

from __future__ import annotations

from typing import Any

from alert_platform.local.sandbox.state import FAULT_KINDS, HANG_MODES, Fault, SandboxState

DEFAULT_HANG_SECONDS = 30.0
HOST_RULE = "the control API answers Host 127.0.0.1, localhost or [::1] (with any port) only"
JSON_RULE = "the control API takes Content-Type: application/json"

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


def is_loopback_host(header: str | None) -> bool:
    """True for a ``Host`` header naming this machine: ``127.0.0.1``, ``localhost`` or ``[::1]``,
    each with an optional ``:port``."""
    if not header:
        return False
    value = header.strip().lower()
    if value.startswith("["):
        host, _, rest = value.partition("]")
        host += "]"
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            return False
    else:
        host, colon, port_text = value.partition(":")
        port = port_text if colon else None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65_536):
        return False
    return host in _LOOPBACK_HOSTS


def is_json_content_type(header: str | None) -> bool:
    """True for ``application/json`` (parameters such as ``charset`` allowed)."""
    return (header or "").split(";")[0].strip().lower() == "application/json"


def _post_faults(state: SandboxState, data: dict[str, Any]) -> dict[str, Any]:
    count = int(data.get("count", 1))
    kind = str(data.get("kind", "500"))
    raw_hang = data.get("hang_seconds")
    hang_seconds = DEFAULT_HANG_SECONDS if raw_hang is None else float(raw_hang)
    hang_mode = str(data.get("hang_mode") or "respond")
    methods = data.get("methods")
    if count < 1:
        raise ValueError("count must be at least 1")
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {FAULT_KINDS}, got {kind!r}")
    if hang_mode not in HANG_MODES:
        raise ValueError(f"hang_mode must be one of {HANG_MODES}, got {hang_mode!r}")
    if hang_seconds < 0:
        raise ValueError("hang_seconds must not be negative")
    if isinstance(methods, str):
        methods = [methods]
    if methods is not None and not (
        isinstance(methods, list) and all(isinstance(m, str) for m in methods)
    ):
        raise ValueError("methods must be a list of method names")
    fault = Fault(
        kind=kind,  # type: ignore[arg-type]
        remaining=count,
        hang_seconds=hang_seconds,
        hang_mode=hang_mode,  # type: ignore[arg-type]
        methods=frozenset(methods) if methods else None,
    )
    state.add_fault(fault)
    return {"pending": state.pending_faults()}


def _post_rate_limit(state: SandboxState, data: dict[str, Any]) -> dict[str, Any]:
    per_second = data.get("per_second")
    rate = float(per_second) if per_second else None
    burst = int(data.get("burst") or state.limiter.burst)
    if rate is not None and rate < 0:
        raise ValueError("per_second must not be negative")
    if burst < 1:
        raise ValueError("burst must be at least 1")
    state.set_rate_limit(rate, burst)
    return {"per_second": rate, "burst": burst}


def _post_token(state: SandboxState, data: dict[str, Any]) -> dict[str, Any]:
    state.revoked = bool(data.get("revoked", True))
    return {"revoked": state.revoked}


def _post_reset(state: SandboxState, data: dict[str, Any]) -> dict[str, Any]:
    state.reset()
    return {}


def _post_user(state: SandboxState, data: dict[str, Any]) -> dict[str, Any]:
    user = state.add_user(str(data["id"]), str(data["email"]), str(data.get("name") or ""))
    return {"user": user.to_slack()}


def _post_channel(state: SandboxState, data: dict[str, Any]) -> dict[str, Any]:
    channel = state.add_channel(str(data["id"]), str(data["name"]))
    return {"channel": {"id": channel.id, "name": channel.name}}


CONTROL_POSTS = {
    "faults": _post_faults,
    "rate_limit": _post_rate_limit,
    "token": _post_token,
    "reset": _post_reset,
    "users": _post_user,
    "channels": _post_channel,
}
