"""Fixtures for end-to-end platform tests: real local HTTP and SMTP servers, a running app."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from trapeze import App

APP_SOURCE = Path(__file__).parent / "app"


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        body = f"page {self.path}".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def web_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    server.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[tuple[Controller, _Inbox]]:
    inbox = _Inbox()
    # aiosmtpd cannot bind port 0 (it probes the port it was given), so pick a free one.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield controller, inbox
    controller.stop()


def make_app(tmp_path: Path, web_port: int, smtp_port: int) -> App:
    app_dir = tmp_path / "app"
    shutil.copytree(APP_SOURCE, app_dir)
    template = (app_dir / "trapeze.toml.in").read_text()
    (app_dir / "trapeze.toml").write_text(
        template.replace("{http_port}", str(web_port)).replace("{smtp_port}", str(smtp_port))
    )
    return App.load(app_dir)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, web_server: ThreadingHTTPServer,
            smtp_server: tuple[Controller, _Inbox]) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("platform")
    controller, _ = smtp_server
    app = make_app(tmp, web_server.server_address[1], controller.port)
    with app.start(store=f"sqlite:///{tmp / 'app.db'}", http=True) as rt:
        yield rt


@pytest.fixture
def app_factory() -> Any:
    """`make_app(tmp_path, web_port, smtp_port)` for tests that run the app themselves."""
    return make_app
