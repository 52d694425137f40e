"""A tiny local HTTP server that plays the Slack Web API from a script per method, for unit
tests of the deliverer's HTTP behaviour (retry handlers, pagination, Retry-After). Integration
tests use the real Slack sandbox instead."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, Any], dict[str, str]]


class FakeSlack(ThreadingHTTPServer):
    """Answers each method from its script (first entries first), else from ``default``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scripts: dict[str, list[Answer | Callable[[dict], Answer]]] = defaultdict(list)
        self.default: dict[str, Callable[[dict], Answer]] = {}
        self.requests: list[tuple[float, str, dict[str, Any]]] = []
        self.posted: list[dict[str, Any]] = []

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [params for _, name, params in self.requests if name == method]

    def times(self, method: str) -> list[float]:
        return [when for when, name, _ in self.requests if name == method]


class _Handler(BaseHTTPRequestHandler):
    server: FakeSlack

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if "json" in (self.headers.get("Content-Type") or ""):
            params = json.loads(raw or "{}")
        else:
            params = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
        method = self.path.rsplit("/", 1)[-1]
        self.server.requests.append((time.monotonic(), method, params))
        script = self.server.scripts[method]
        answer = script.pop(0) if script else self.server.default[method]
        status, body, headers = answer(params) if callable(answer) else answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def running_fake_slack() -> Iterator[FakeSlack]:
    """A :class:`FakeSlack` serving on a free loopback port until the block ends."""
    server = FakeSlack()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
