"""One deadline per Slack call, bounded ``Retry-After`` and the ``slack-responses`` record.

The deadline tests run the real slack-sdk client against tiny local HTTP servers that drip an
answer byte by byte, never answer, answer at once, or answer 429 with a hostile ``Retry-After``.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from slack_sdk.errors import SlackApiError

from alert_platform.delivery.responses import (
    Outcome,
    build_response_record,
    classify_exception,
    response_outcome,
    retry_after_seconds,
)
from alert_platform.settings import Settings
from alert_platform.slack.client import (
    SlackCallDeadlineExceeded,
    call_deadline,
    make_web_client,
    without_retries,
)

OK_BODY = b'{"ok":true,"channel":"C1","ts":"1.000001"}'


def _respond_drip(conn: socket.socket) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500"
    conn.sendall(head + b"\r\n\r\n")
    for _ in range(500):  # one byte every 0.2 s: each socket read is fast, the call never ends
        conn.sendall(b" ")
        time.sleep(0.2)


def _respond_silent(conn: socket.socket) -> None:
    time.sleep(30)


def _respond_ok(conn: socket.socket) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(OK_BODY)}"
    conn.sendall(head.encode() + b"\r\n\r\n" + OK_BODY)


def _respond_429(retry_after: str) -> Callable[[socket.socket], None]:
    body = b'{"ok":false,"error":"ratelimited"}'

    def respond(conn: socket.socket) -> None:
        head = (
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            f"Retry-After: {retry_after}\r\nContent-Length: {len(body)}"
        )
        conn.sendall(head.encode() + b"\r\n\r\n" + body)

    return respond


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """``server(respond)`` -> a base URL whose every request is answered by ``respond``."""
    sockets: list[socket.socket] = []

    def start(respond: Callable[[socket.socket], None]) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        sockets.append(listener)

        def handle(conn: socket.socket) -> None:
            try:
                conn.recv(65536)
                respond(conn)
            except OSError:
                pass
            finally:
                conn.close()

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/api/"

    yield start
    for listener in sockets:
        listener.close()


def _client(url: str, deadline: float) -> object:
    settings = Settings().with_overrides(
        slack_bot_token="xoxb-test", slack_api_url=url, slack_call_timeout_s=deadline
    )
    return without_retries(make_web_client(settings))


@pytest.mark.parametrize("respond", [_respond_drip, _respond_silent], ids=["drip", "silent"])
def test_a_call_ends_at_its_deadline_however_the_server_stalls(
    server: Callable[[Callable[[socket.socket], None]], str],
    respond: Callable[[socket.socket], None],
) -> None:
    client = _client(server(respond), deadline=1.5)
    started = time.monotonic()
    with pytest.raises(SlackCallDeadlineExceeded) as caught:
        client.chat_postMessage(channel="C1", text="x")  # type: ignore[attr-defined]
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 6.0, elapsed  # generous: a loaded 2-core machine
    assert classify_exception(caught.value) is Outcome.TIMEOUT
    assert isinstance(caught.value, TimeoutError)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_dripping_answer_over_tls_ends_at_the_deadline(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return

            def handle(raw: socket.socket = raw) -> None:
                try:
                    with server_ctx.wrap_socket(raw, server_side=True) as conn:
                        conn.recv(65536)
                        _respond_drip(conn)  # type: ignore[arg-type]
                except OSError:
                    pass

            threading.Thread(target=handle, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/api/"
        settings = Settings().with_overrides(
            slack_bot_token="xoxb-test", slack_api_url=url, slack_call_timeout_s=1.5
        )
        client = make_web_client(settings)
        client.ssl = ssl.create_default_context(cafile=str(cert))
        bare = without_retries(client)
        started = time.monotonic()
        with pytest.raises(SlackCallDeadlineExceeded):
            bare.chat_postMessage(channel="C1", text="x")
        assert 1.4 <= time.monotonic() - started < 6.0
    finally:
        listener.close()


def test_a_fast_answer_and_an_error_answer_are_unchanged(
    server: Callable[[Callable[[socket.socket], None]], str],
) -> None:
    client = _client(server(_respond_ok), deadline=2.0)
    response = client.chat_postMessage(channel="C1", text="x")  # type: ignore[attr-defined]
    assert response["ts"] == "1.000001" and response.status_code == 200
    limited = _client(server(_respond_429("inf")), deadline=2.0)
    with pytest.raises(SlackApiError) as caught:
        limited.chat_postMessage(channel="C1", text="x")  # type: ignore[attr-defined]
    assert caught.value.response.status_code == 429
    assert caught.value.response["error"] == "ratelimited"
    assert retry_after_seconds(caught.value.response.headers, maximum=90.0) == 90.0


def test_many_calls_share_one_watchdog_thread(
    server: Callable[[Callable[[socket.socket], None]], str],
) -> None:
    client = _client(server(_respond_ok), deadline=5.0)
    client.api_test()  # type: ignore[attr-defined]
    before = threading.active_count()
    for _ in range(30):
        client.chat_postMessage(channel="C1", text="x")  # type: ignore[attr-defined]
    watchdogs = [t for t in threading.enumerate() if t.name == "slack-call-deadline"]
    assert len(watchdogs) == 1
    assert threading.active_count() <= before + 1


def test_the_deadline_comes_from_the_settings_and_survives_without_retries() -> None:
    settings = Settings().with_overrides(
        slack_bot_token="xoxb-test", slack_api_url="http://h:1/api", slack_call_timeout_s=7
    )
    client = make_web_client(settings)
    assert call_deadline(client) == 7.0 and client.timeout == 7.0
    assert call_deadline(without_retries(client)) == 7.0
    assert call_deadline(make_web_client(settings, timeout=3)) == 3.0
    assert call_deadline(make_web_client(settings, timeout=30, deadline=4)) == 4.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("inf", 120.0),
        ("Infinity", 120.0),
        ("-inf", 1.0),
        ("nan", 1.0),
        ("-5", 1.0),
        ("0", 1.0),
        ("1e300", 120.0),
        ("99999999999999999999999", 120.0),
        ("garbage", 1.0),
        ("", 1.0),
        ("30", 30.0),
        (["7"], 7.0),
        ([], 1.0),
    ],
)
def test_retry_after_is_bounded(value: object, expected: float) -> None:
    got = retry_after_seconds({"Retry-After": value})
    assert got == pytest.approx(expected)
    assert 1.0 <= got <= 120.0 and math.isfinite(got)


def test_retry_after_maximum_default_and_http_date() -> None:
    assert retry_after_seconds({"retry-after": "inf"}, maximum=15.0) == 15.0
    assert retry_after_seconds({"retry-after": "inf"}, maximum=math.inf) == 120.0
    assert retry_after_seconds(None, default=math.nan) == 1.0
    assert retry_after_seconds({}, default=500.0, maximum=60.0) == 60.0
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
    assert 30.0 <= retry_after_seconds({"Retry-After": soon}) <= 41.0
    past = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)
    assert retry_after_seconds({"Retry-After": past}) == 1.0


@pytest.mark.parametrize(
    ("ok", "error", "outcome"),
    [
        (True, None, "ok"),
        (False, "stale", "stale"),
        (False, "already_delivered", "duplicate"),
        (False, "ratelimited", "retry"),
        (False, "timeout", "retry"),
        (False, "connection_error", "retry"),
        (False, "http_503", "retry"),
        (False, "internal_error", "retry"),
        (False, "channel_not_found", "failed"),
        (False, "invalid_auth", "failed"),
        (False, "something_new", "failed"),
    ],
)
def test_response_outcomes(ok: bool, error: str | None, outcome: str) -> None:
    assert response_outcome(ok, error) == outcome
    record = build_response_record(
        alert_id="a", ok=ok, channel="C1", ts=None, error=error, attempts=1
    )
    assert record["outcome"] == outcome


def test_response_id_is_stable_for_one_outcome_and_differs_between_outcomes() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def rec(**changes: object) -> dict[str, object]:
        fields: dict[str, object] = {
            "alert_id": "org-1-env-connector-failure",
            "dedup_key": "connector_failure:00ff",
            "event_time": when,
            "ok": True,
            "channel": "C1",
            "ts": "1.000001",
            "error": None,
            "attempts": 1,
        }
        fields.update(changes)
        return build_response_record(
            **fields,  # type: ignore[arg-type]
            delivered_at=datetime.now(UTC),
        )

    first = rec()
    assert first["response_id"] == rec()["response_id"]  # written again after a crash
    assert first["dedup_key"] == "connector_failure:00ff"
    assert first["event_time"] == "2026-01-02T03:04:05Z"
    others = [
        rec(ts="2.000002"),
        rec(ok=False, ts=None, error="timeout"),
        rec(attempts=2),
        rec(dedup_key="connector_failure:00fe"),
        rec(event_time=when + timedelta(seconds=1)),
    ]
    ids = {first["response_id"], *(o["response_id"] for o in others)}
    assert len(ids) == 1 + len(others)


@pytest.mark.parametrize(
    "when",
    [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)],
    ids=["year-1", "year-9999"],
)
def test_response_record_takes_extreme_event_times(when: datetime) -> None:
    record = build_response_record(
        alert_id="a", ok=False, channel="C1", ts=None, error="stale", attempts=0, event_time=when
    )
    assert record["outcome"] == "stale" and record["event_time"]
