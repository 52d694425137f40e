"""HTTP front of the Slack sandbox: ``/api/<method>``, the ``/_sandbox/`` control API and ``/``.

A ``ThreadingHTTPServer`` (one daemon thread per connection) speaking HTTP/1.1 with keep-alive.
Control API (JSON in, JSON out):

- ``GET /_sandbox/health`` -> ``{"ok": true}``
- ``GET /_sandbox/messages[?channel=ID|name]`` -> accepted messages in arrival order
- ``GET /_sandbox/stats`` / ``GET /_sandbox/faults`` -> counters / pending faults
- ``POST /_sandbox/faults {"count", "kind": "500"|"429"|"hang", "hang_seconds", "hang_mode",
  "methods"}``; ``POST /_sandbox/rate_limit {"per_second", "burst"}``;
  ``POST /_sandbox/token {"revoked"}``; ``POST /_sandbox/reset``;
  ``POST /_sandbox/users {"id", "email", "name"}``; ``POST /_sandbox/channels {"id", "name"}``

The control API answers only requests whose ``Host`` header is a loopback name
(``127.0.0.1``, ``localhost``, ``[::1]``, with or without a port; 403 otherwise), and its POSTs
require ``Content-Type: application/json`` (415 otherwise): a web page a developer opens cannot
reach it through DNS rebinding nor post a "simple" cross-site form or ``text/plain`` body to it.
``/api/`` keeps Slack's behaviour (form-encoded or JSON bodies).

Faults apply to ``/api/`` calls before authentication. ``500`` answers HTTP 500
``{"ok": false, "error": "internal_error"}``; ``429`` answers ``Retry-After: 1``. ``hang``
with ``hang_mode`` ``"respond"`` (default) processes the call at once (a post *is* stored), holds
the response for ``hang_seconds`` and then sends it if the client is still there: the
"sent but unconfirmed" case. ``hang_mode`` ``"close"`` waits ``hang_seconds`` and closes the
connection without processing or answering (nothing stored).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import socketserver
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from alert_platform.local.sandbox.control_api import (
    CONTROL_POSTS,
    HOST_RULE,
    JSON_RULE,
    is_json_content_type,
    is_loopback_host,
)
from alert_platform.local.sandbox.methods import SlackApi
from alert_platform.local.sandbox.page import render_page
from alert_platform.local.sandbox.state import (
    DEFAULT_BURST,
    DEFAULT_PER_SECOND,
    SandboxState,
)
from alert_platform.settings import LOCAL_SLACK_TOKEN

# `python -m alert_platform.local.sandbox` reads the bot token from this variable (the stack sets
# it in the child's environment), so the token is never on a command line.
SANDBOX_TOKEN_ENV = "SLACK_BOT_TOKEN"
JSON_TYPE = "application/json; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
MAX_BODY = 16 * 1024 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class SandboxHTTPServer(ThreadingHTTPServer):
    """The listening server; tracks open connections so ``stop`` can cut keep-alive clients."""

    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], state: SandboxState, *, log_requests: bool = False
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state = state
        self.api = SlackApi(state)
        self.log_requests = log_requests
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN of the host, which can stall on a bad DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client connection (idle keep-alive ones included)."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: SandboxHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "SlackSandbox/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are closed after this many seconds

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    # -- plumbing --------------------------------------------------------------------------

    def _route(self, verb: str) -> None:
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            self._send_json(exc.status, {"ok": False, "error": exc.error})
            return
        parts = urlsplit(self.path)
        path = parts.path
        try:
            if path.startswith("/api/"):
                self._api(path[len("/api/") :], parts.query, body)
            elif path.startswith("/_sandbox/"):
                self._control(verb, path[len("/_sandbox/") :], parts.query, body)
            elif path in ("/", "/index.html") and verb == "GET":
                self._page(parts.query)
            else:
                self._send_json(404, {"ok": False, "error": "not_found"})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_json(500, {"ok": False, "error": "internal_error"})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if not raw:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise _BadRequest(400, "invalid_content_length") from None
        if length < 0 or length > MAX_BODY:
            raise _BadRequest(413, "request_too_large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "invalid_chunked_body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise _BadRequest(413, "request_too_large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)

    def _send(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, _dumps(payload), JSON_TYPE, headers)

    # -- Slack Web API ---------------------------------------------------------------------

    def _api(self, method: str, query: str, body: bytes) -> None:
        state = self.server.state
        fault = state.take_fault(method)
        if fault is not None and fault.kind != "hang":
            state.count_call(method)
            if fault.kind == "500":
                self._send_json(500, {"ok": False, "error": "internal_error"})
            else:
                self._send_json(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"})
            return
        if fault is not None and fault.hang_mode == "close":
            state.count_call(method)
            state.stopping.wait(fault.hang_seconds)
            self.close_connection = True  # drop the connection without an answer
            return

        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        body_error = None
        if body:
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type == "application/json":
                try:
                    decoded = json.loads(body)
                    if not isinstance(decoded, dict):
                        raise ValueError("not an object")
                    params.update(decoded)
                except ValueError:
                    body_error = "invalid_json"
            elif content_type.startswith("multipart/"):
                body_error = "invalid_form_data"
            else:
                params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else None

        status, headers, payload = self.server.api.call(
            method, params, bearer or None, body_error=body_error
        )
        if fault is not None:
            state.stopping.wait(fault.hang_seconds)
        self._send_json(status, payload, headers)

    # -- control API -----------------------------------------------------------------------

    def _control(self, verb: str, name: str, query: str, body: bytes) -> None:
        state = self.server.state
        if not is_loopback_host(self.headers.get("Host")):
            self._send_json(403, {"ok": False, "error": "forbidden_host", "detail": HOST_RULE})
            return
        if verb == "GET":
            if name == "health":
                self._send_json(200, {"ok": True})
            elif name == "messages":
                channel_id = None
                ref = dict(parse_qsl(query)).get("channel")
                if ref:
                    found = state.find_channel(ref, allow_user=True)
                    channel_id = found.id if found is not None else ref
                self._send_json(200, state.records(channel_id))
            elif name == "stats":
                self._send_json(200, state.snapshot_stats())
            elif name == "faults":
                self._send_json(200, state.pending_faults())
            else:
                self._send_json(404, {"ok": False, "error": "not_found"})
            return
        handler = CONTROL_POSTS.get(name)
        if handler is None:
            self._send_json(404, {"ok": False, "error": "not_found"})
            return
        if not is_json_content_type(self.headers.get("Content-Type")):
            self._send_json(
                415, {"ok": False, "error": "unsupported_media_type", "detail": JSON_RULE}
            )
            return
        try:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            result = handler(state, data)
        except (ValueError, TypeError, KeyError) as exc:
            self._send_json(400, {"ok": False, "error": "invalid_request", "detail": str(exc)})
            return
        self._send_json(200, {"ok": True, **result})

    def _page(self, query: str) -> None:
        raw = dict(parse_qsl(query)).get("refresh", "2")
        refresh = int(raw) if raw.isdigit() else 2
        self._send(200, render_page(self.server.state, refresh_seconds=refresh).encode(), HTML_TYPE)


# -- running it ------------------------------------------------------------------------------


def build_state(
    token: str,
    seed_path: str | Path | None = None,
    *,
    per_second: float | None = DEFAULT_PER_SECOND,
    burst: int = DEFAULT_BURST,
) -> SandboxState:
    """A fresh state with the default channels plus the seed file's users and channels."""
    if not token:
        raise ValueError("the sandbox needs a bot token")
    state = SandboxState(token, per_second=per_second, burst=burst)
    if seed_path is not None:
        try:
            state.load_seed(seed_path)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot load seed file {seed_path}: {exc!r}") from exc
    return state


def _base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def serve(
    host: str,
    port: int,
    token: str,
    seed_path: str | Path | None = None,
    *,
    per_second: float | None = DEFAULT_PER_SECOND,
    burst: int = DEFAULT_BURST,
    log_requests: bool = False,
) -> None:
    """Run the sandbox in the foreground until SIGINT or SIGTERM."""
    state = build_state(token, seed_path, per_second=per_second, burst=burst)
    httpd = SandboxHTTPServer((host, port), state, log_requests=log_requests)
    url = _base_url(host, httpd.server_port) + "api/"
    print(f"Slack sandbox listening on {url}", file=sys.stderr, flush=True)
    previous = None
    if threading.current_thread() is threading.main_thread():

        def _terminate(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        state.stopping.set()
        httpd.server_close()
        httpd.close_connections()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class SandboxServer:
    """The sandbox on a background thread: ``SandboxServer(...).start()`` ... ``.stop()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = LOCAL_SLACK_TOKEN,
        seed_path: str | Path | None = None,
        *,
        per_second: float | None = DEFAULT_PER_SECOND,
        burst: int = DEFAULT_BURST,
        log_requests: bool = False,
    ) -> None:
        self.host = host
        self.token = token
        self.state = build_state(token, seed_path, per_second=per_second, burst=burst)
        self._requested_port = port
        self._log_requests = log_requests
        self._httpd: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SandboxServer:
        """Bind (port 0 picks a free port) and serve on a daemon thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        self.state.stopping.clear()
        self._httpd = SandboxHTTPServer(
            (self.host, self._requested_port), self.state, log_requests=self._log_requests
        )
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"slack-sandbox:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging requests, close the socket and open connections."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self.state.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the sandbox is not running")
        return self._httpd.server_port

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT/`` (the web page; the control API is under ``_sandbox/``)."""
        return _base_url(self.host, self.port)

    @property
    def url(self) -> str:
        """The Slack API base URL for ``WebClient(base_url=...)``: ``http://HOST:PORT/api/``."""
        return self.root_url + "api/"

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
