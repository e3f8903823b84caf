"""Helpers the Hello Retail end-to-end tests share: loopback ports, polling, and the two
external services the app talks to (an SMTP sink and an image server)."""

from __future__ import annotations

import base64
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A 1x1 transparent PNG: what the photographer "uploads".
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float = 40.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Mailbox:
    """An SMTP sink on a loopback port (aiosmtpd) keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.port = 0
        self._controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.messages.append({"to": list(envelope.rcpt_tos),
                                  "text": envelope.content.decode("utf-8", "replace")})
        return "250 OK"

    def start(self) -> Mailbox:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.messages)

    def to(self, address: str) -> list[dict[str, Any]]:
        return [m for m in self.all() if address in m["to"]]


class ImageServer:
    """An HTTP server on a loopback port serving PNG at `only` (or at any path when None)
    and recording every path it is asked for."""

    def __init__(self, only: str | None = None) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Images(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                paths.append(urllib.parse.unquote(self.path))
                if only is not None and self.path != only:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Images)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/"

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
