"""A stand-in for Home Assistant's Supervisor: the two endpoints the add-on uses, over real HTTP.

It listens on 127.0.0.1 and a free port, checks the bearer token like the Supervisor does,
hands out an MQTT service (or answers 400 "Service not enabled" while there is none) and keeps
every discovery POSTed to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import threading
from typing import Any
import uuid

TOKEN = "supervisor-token-for-tests"


@dataclass
class SupervisorStandIn:
    """Start with start(); point I4T_SUPERVISOR_URL at ``url``."""

    token: str = TOKEN
    mqtt_service: dict[str, Any] | None = None
    # The first N service requests answer "Service not enabled", as while Mosquitto starts.
    unavailable_for: int = 0
    discoveries: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, bool]] = field(default_factory=list)
    # Canned answers by path, (status, body), for the Supervisor's odd days.
    canned: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        with self._lock:
            self.requests.append((method, request.path, authorized))
        if not authorized:
            _answer(request, HTTPStatus.UNAUTHORIZED, {"result": "error", "message": "no"})
            return
        if request.path in self.canned:
            status, body = self.canned[request.path]
            _send(request, status, body)
            return
        if method == "GET" and request.path == "/services/mqtt":
            self._service(request)
        elif method == "POST" and request.path == "/discovery":
            length = int(request.headers.get("Content-Length", "0"))
            body = json.loads(request.rfile.read(length))
            with self._lock:
                self.discoveries.append(body)
            _answer(request, HTTPStatus.OK, {"result": "ok", "data": {"uuid": uuid.uuid4().hex}})
        else:
            _answer(request, HTTPStatus.NOT_FOUND, {"result": "error", "message": "not found"})

    def _service(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            waiting = self.unavailable_for > 0
            self.unavailable_for -= 1
        if waiting or self.mqtt_service is None:
            message = {"result": "error", "message": "Service not enabled"}
            _answer(request, HTTPStatus.BAD_REQUEST, message)
            return
        _answer(request, HTTPStatus.OK, {"result": "ok", "data": self.mqtt_service})


def _answer(request: BaseHTTPRequestHandler, status: HTTPStatus, body: dict[str, Any]) -> None:
    _send(request, status, json.dumps(body).encode())


def _send(request: BaseHTTPRequestHandler, status: int, encoded: bytes) -> None:
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(encoded)))
    request.end_headers()
    request.wfile.write(encoded)
