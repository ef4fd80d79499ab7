"""Real brokers for the gateway's tests: Mosquitto on a free loopback port."""

from __future__ import annotations

from dataclasses import dataclass, field
import os
from pathlib import Path
import shutil
import socket
import subprocess
import time

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def mosquitto_binary() -> str:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("mosquitto is not installed: run ./scripts/setup")


@dataclass
class Mosquitto:
    """A Mosquitto process with a config written for the test; restartable on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    # Mosquitto drops messages silently past this queue length (BRIEF section 4): set on purpose.
    max_queued_messages: int = 100_000
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        config = self.workdir / f"mosquitto-{self.port}.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"max_queued_messages {self.max_queued_messages}\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        return config

    def start(self) -> None:
        """Start on self.port; if another process took that port meanwhile, move to a free one.

        free_port() cannot reserve a port, and test runs of several checkouts share loopback.
        """
        for _ in range(5):
            if self._start_once():
                return
            self.port = free_port()
        raise RuntimeError(f"mosquitto would not start; see {self.workdir}")

    def _start_once(self) -> bool:
        config = self._write_config()
        log = (self.workdir / f"mosquitto-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(config)],
            stdout=log,
            stderr=log,
            env={**os.environ},
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            return False
        # Something answered; make sure it is our process and not a neighbour on that port.
        time.sleep(0.05)
        if self.process.poll() is not None:
            self.process = None
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
