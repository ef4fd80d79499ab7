"""The parts the fault and soak runs are built from: the gateway as its own process (the console
script, as the add-on runs it), a fleet of native things on one MQTT connection that retry
until the gateway acks, and small waiting and reading helpers."""

from __future__ import annotations

from collections.abc import Callable
import contextlib
from dataclasses import dataclass, field
import datetime
import hashlib
import json
import os
from pathlib import Path
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from i4t_gateway import api
from i4t_gateway.cose import PacketError
from i4t_gateway.endpoint import Sender
from i4t_gateway.identity import Address, Identity, load_or_create_identity
from i4t_gateway.payloads import Ack, Payload
from i4t_gateway.server import DATABASE_FILE, KEY_FILE
from i4t_gateway.wire import peek
from tests.gateway.brokers import stop_process

_CONNECTED = re.compile(r"^(\S+ \S+) .*connected to MQTT broker (\S+)$")
THING_DOWN_FILTER = "i4t/thing/+/down"


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll until ``condition`` holds; the seconds it took. Bounded: TimeoutError after."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise TimeoutError(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - started


def _no_delay(client: mqtt.Client, userdata: object, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class GatewayProcess:
    """``python -m i4t_gateway`` with an uplink; restartable on the same data directory.

    Its log (stderr, INFO) goes to ``log_file``; :meth:`connected_since` reads the reconnect
    times from it, stamped by the gateway itself to the millisecond.
    """

    data_dir: Path
    broker_url: str
    upstream_url: str
    router: Address
    token: str = "token-for-tests"
    ca_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_or_create_identity(self.data_dir / KEY_FILE)
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def gateway_id(self) -> str:
        return self.identity.address.text

    @property
    def database(self) -> Path:
        return self.data_dir / DATABASE_FILE

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "i4t_gateway",
            "--broker", self.broker_url, "--data-dir", str(self.data_dir),
            "--upstream", self.upstream_url, "--upstream-router", self.router.text,
        ]  # fmt: skip
        if self.ca_file is not None:
            command += ["--upstream-ca", str(self.ca_file)]
        return command

    def start(self, prefix: list[str] | None = None) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [*(prefix or []), *self.command()],
                env={**os.environ, "I4T_UPSTREAM_TOKEN": self.token},
                stdout=log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM (a clean stop); its exit code."""
        if self.process is None:
            return None
        stop_process(self.process, timeout=20)
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def connected_since(self, broker_port: int, since: float) -> float | None:
        """Unix time of the first "connected to MQTT broker …:port" logged at or after
        ``since``; None if there is none yet."""
        return first_connect(self.log_text(), broker_port, since)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def queue_rows(self) -> int:
        """Rows in its queue, read beside it (SQLite WAL lets a reader in)."""
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        try:
            return int(connection.execute("SELECT count(*) FROM hop_queue").fetchone()[0])
        finally:
            connection.close()


def first_connect(log: str, broker_port: int, since: float) -> float | None:
    """The first connect to ``broker_port`` in a gateway or router log at or after ``since``."""
    for line in log.splitlines():
        match = _CONNECTED.match(line)
        if match is None or not match.group(2).endswith(f":{broker_port}"):
            continue
        stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if stamp >= since:
            return stamp
    return None


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def integrity(database: Path) -> str:
    """``PRAGMA integrity_check`` of a gateway database: "ok" when intact."""
    connection = sqlite3.connect(database, timeout=5)
    try:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        connection.close()


def thing_identity(seed: str, index: int) -> Identity:
    """Deterministic keys, so that a rerun enrols the same things."""
    return Identity.from_seed(hashlib.sha256(f"{seed}/{index}".encode()).digest())


@dataclass
class _Pending:
    topic: str
    data: bytes
    sent_at: float
    sends: int = 1


class ThingFleet:
    """Native things sharing one MQTT connection, each with its own key and topics.

    Each packet stays pending until the gateway's ack for its message id arrives, and is
    published again (the same bytes) every ``retry_after`` seconds until then, as a thing
    does. Thread-safe: paho's network thread takes the acks.
    """

    def __init__(self, port: int, count: int, *, seed: str = "fleet") -> None:
        self.senders = [Sender(thing_identity(seed, i)) for i in range(count)]
        self._lock = threading.Lock()
        self._pending: dict[bytes, _Pending] = {}
        self.acked: set[bytes] = set()
        self.sent: list[bytes] = []
        self.retransmitted = 0
        self.replies: dict[str, dict[str, Any]] = {}
        self.last: dict[str, bytes] = {}  # the last payload on each gateway topic seen
        self._subscribed = threading.Event()
        self._reply_filter: str | None = None
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"i4t-fleet-{seed}-{os.getpid()}",
        )
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_socket_open = _no_delay
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the thing fleet could not subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def address(self, index: int) -> Address:
        return self.senders[index].me.address

    # -- enrolment --------------------------------------------------------------------------

    def enroll(self, gateway_id: str, seconds: float = 600.0) -> None:
        """Enrol every thing (requests pipelined, 200 at a time); asks again for lost ones."""
        base = f"i4t/{gateway_id}"
        self.wait_online(gateway_id)
        self._reply_filter = f"{base}/reply/+"
        self.client.subscribe(self._reply_filter, 1)
        deadline = time.monotonic() + seconds
        for start in range(0, len(self.senders), 200):
            batch = range(start, min(start + 200, len(self.senders)))
            while not all(self._enrolled(i) for i in batch):
                if time.monotonic() > deadline:
                    raise TimeoutError("things not enrolled in time")
                for i in batch:
                    if not self._enrolled(i):
                        self._ask_enrol(base, i)
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda b=batch: all(map(self._enrolled, b)), 10, "replies")  # type: ignore[misc]

    def wait_online(self, gateway_id: str, seconds: float = 60) -> float:
        """Wait for the gateway's retained availability to say online; how long it took."""
        topic = api.GatewayTopics(gateway_id).availability
        self.client.subscribe(topic, 1)
        return wait_until(lambda: self.last.get(topic) == api.ONLINE, seconds, "gateway online")

    def _enrolled(self, index: int) -> bool:
        reply = self.replies.get(f"enrol{index}")
        if reply is not None and not reply.get("ok") and "already" not in json.dumps(reply):
            raise RuntimeError(f"enrolment refused: {reply}")
        return reply is not None

    def _ask_enrol(self, base: str, index: int) -> None:
        body = {
            "request_id": f"enrol{index}",
            "kind": "native",
            "name": f"Thing {index}",
            "public_key": self.senders[index].me.public_bytes.hex(),
        }
        self.client.publish(f"{base}/cmd/enroll", json.dumps(body), qos=1)

    # -- sending ----------------------------------------------------------------------------

    def send(self, index: int, to: Address, payload: Payload) -> bytes:
        sender = self.senders[index]
        packet = sender.packet(to, payload)
        data = sender.seal(packet)
        topic = api.thing_up(sender.me.address.text)
        with self._lock:
            self._pending[packet.message_id] = _Pending(topic, data, time.monotonic())
            self.sent.append(packet.message_id)
        self.client.publish(topic, data, qos=1)
        return packet.message_id

    def retransmit_due(self, retry_after: float) -> int:
        """Publish again what waited ``retry_after`` seconds for its ack; how many."""
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._pending.values() if now - p.sent_at >= retry_after]
            for pending in due:
                pending.sent_at = now
                pending.sends += 1
            self.retransmitted += len(due)
        for pending in due:
            self.client.publish(pending.topic, pending.data, qos=1)
        return len(due)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    # -- paho callbacks ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(THING_DOWN_FILTER, 1)
        if self._reply_filter is not None:
            client.subscribe(self._reply_filter, 1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.topic.startswith("i4t/thing/"):
            self.last[msg.topic] = msg.payload
        if "/reply/" in msg.topic:
            self.replies[msg.topic.rsplit("/", 1)[1]] = json.loads(msg.payload)
            return
        try:
            # The gateway's signature is not what is measured here: decode only.
            payload = peek(msg.payload).payload
        except PacketError:
            return
        if isinstance(payload, Ack):
            with self._lock:
                for message_id in payload.message_ids:
                    if self._pending.pop(message_id, None) is not None:
                        self.acked.add(message_id)


def pump(
    fleet: ThingFleet,
    total: int,
    destination: Address,
    payload: Callable[[int], Payload],
    *,
    window: int,
    retry_after: float,
    stop: threading.Event,
) -> None:
    """Send ``total`` packets round-robin over the fleet, at most ``window`` unacked at a time
    (so as fast as the gateway takes them), retrying until all are acked or ``stop`` is set."""
    things = len(fleet.senders)
    next_index = 0
    while not stop.is_set():
        room = window - fleet.pending()
        for _ in range(max(0, min(room, total - next_index, 200))):
            fleet.send(next_index % things, destination, payload(next_index))
            next_index += 1
        fleet.retransmit_due(retry_after)
        if next_index >= total and fleet.pending() == 0:
            return
        if room <= 0 or next_index >= total:
            time.sleep(0.01)
