"""Shared parts of the end-to-end benchmarks (forwarding, latency, cpu): real Mosquittos,
gateways as the console script in processes of their own (so that the bench's own clients do
not share their interpreter lock), things that publish pre-signed packets.

A gateway's things are enrolled before it starts, by writing the state its server loads at
start into its database: enrolling 100k things over the API would take minutes and measure the
API instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import contextlib
import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import threading
import time
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# I4T_BENCH_SRC=folder: the gateways and routers run that copy of addon/src (an A/B comparison
# of a change without touching the working tree others test in).
SOURCE = Path(os.environ.get("I4T_BENCH_SRC", ROOT / "addon" / "src"))
sys.path[:0] = [str(SOURCE), str(ROOT)]

import paho.mqtt.client as mqtt  # noqa: E402 - after the path set-up above
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from i4t_gateway import api  # noqa: E402
from i4t_gateway.core import GatewayCore  # noqa: E402
from i4t_gateway.endpoint import Sender  # noqa: E402
from i4t_gateway.identity import Address, Identity, load_or_create_identity  # noqa: E402
from i4t_gateway.payloads import Data, Payload, Reading  # noqa: E402
from i4t_gateway.server import CORE_STATE_KEY, DATABASE_FILE, KEY_FILE  # noqa: E402
from i4t_gateway.store import open_store, set_meta  # noqa: E402
from tests.gateway.brokers import Mosquitto, make_tls_certs, stop_process  # noqa: E402

# The gateways and routers started here take only the options given to them: an I4T_* variable
# of the shell (I4T_LAN_PEERS would advertise by multicast on the real network card) must not
# change the set-up. I4T_BENCH_* are the benches' own.
for _name in [name for name in os.environ if name.startswith("I4T_")]:
    if not _name.startswith("I4T_BENCH_"):
        del os.environ[_name]

os.environ["PYTHONPATH"] = str(SOURCE)  # for every process started from here

STARTUP_SECONDS = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def brokers(workdir: Path, count: int, *, tls: bool = False) -> Iterator[list[Mosquitto]]:
    """``count`` Mosquittos on free loopback ports (TLS with a throwaway CA if asked)."""
    started: list[Mosquitto] = []
    try:
        for n in range(count):
            certs = make_tls_certs(workdir / f"certs-{n}") if tls else None
            broker = Mosquitto(workdir=workdir, tls=certs)
            broker.start()
            started.append(broker)
        yield started
    finally:
        for broker in started:
            broker.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores together have spent busy since boot (Linux /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def seed_gateway(data_dir: Path, public_keys: Iterable[bytes]) -> Identity:
    """Make a gateway's key and enrol native things with these keys, as its saved state."""
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = load_or_create_identity(data_dir / KEY_FILE)
    now = time.time()
    core = GatewayCore(identity, lambda topic, payload, retain: None, now=now)
    for n, key in enumerate(public_keys):
        core.things.enrol_native(key, f"bench thing {n}", now)
    store = open_store(data_dir / DATABASE_FILE)
    set_meta(store, CORE_STATE_KEY, json.dumps(core.export()))
    store.close()
    return identity


def helper_process(script: str, *args: object) -> subprocess.Popen[str]:
    """One of bench/*_proc.py, started and ready (it printed "ready"); it exits when its
    stdin closes."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name(script)), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"{script} did not start")
    return process


def end_helper(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{memory_kb / 1024 / 1024:.1f} GiB",
        "python": sys.version.split()[0],
    }


class GatewayProcess:
    """``python -m i4t_gateway`` on a local broker, optionally with an uplink; SIGTERM stops it."""

    def __init__(
        self,
        data_dir: Path,
        broker: Mosquitto,
        *,
        upstream: Mosquitto | None = None,
        router: Address | None = None,
        token: str = "token-for-bench",
    ) -> None:
        self.data_dir = data_dir
        self.broker = broker
        self.identity = load_or_create_identity(data_dir / KEY_FILE)
        self.topics = api.GatewayTopics(self.identity.address.text)
        # I4T_BENCH_PROFILE=folder: the gateway runs under cProfile, its stats written there.
        profile = os.environ.get("I4T_BENCH_PROFILE")
        profiler = ["-m", "cProfile", "-o", f"{profile}/{data_dir.name}.prof"] if profile else []
        command = [
            sys.executable, *profiler, "-m", "i4t_gateway", "--broker", broker.url,
            "--data-dir", str(data_dir), "--log-level", "warning",
        ]  # fmt: skip
        env = {**os.environ}
        if upstream is not None:
            assert router is not None
            command += ["--upstream", upstream.url, "--upstream-router", router.text]
            if upstream.tls is not None:
                command += ["--upstream-ca", str(upstream.tls.ca_file)]
            env["I4T_UPSTREAM_TOKEN"] = token
        log = (data_dir / "gateway.log").open("ab")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            self._wait_online()
        except BaseException:
            self.stop()  # no stray gateway when the bench gives up
            raise

    @property
    def address(self) -> Address:
        return self.identity.address

    def _wait_online(self) -> None:
        online = threading.Event()
        watcher = Client(self.broker.port, "gateway-watcher")
        watcher.on_message(lambda topic, payload: online.set() if payload == api.ONLINE else None)
        watcher.subscribe(self.topics.availability)
        try:
            if not online.wait(STARTUP_SECONDS):
                raise TimeoutError(f"gateway did not come online; see {self.data_dir}")
        finally:
            watcher.close()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def wait_idle(self, below: float = 0.05, window: float = 0.5, limit: float = 120.0) -> None:
        """Wait until the process uses less than ``below`` of a core over ``window`` seconds
        (the publishing of every thing's state after start is over)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before = self.cpu_seconds()
            time.sleep(window)
            if self.cpu_seconds() - before < below * window:
                return
        raise TimeoutError("the gateway did not settle")

    def stop(self) -> None:
        stop_process(self.process, timeout=20)


def _no_delay(client: mqtt.Client, userdata: object, sock: Any) -> None:
    # Nagle would hold small publishes back up to 40 ms: latency figures would measure it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Client:
    """A paho client on its own network thread: QoS 1, a wide in-flight window, no Nagle."""

    def __init__(self, port: int, client_id: str, *, ca_file: Path | None = None) -> None:
        self._handlers: list[Any] = []
        self._connected = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id
        )
        if ca_file is not None:
            import ssl  # noqa: PLC0415 - only the TLS anchor needs it

            self.client.tls_set_context(ssl.create_default_context(cafile=str(ca_file)))
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_socket_open = _no_delay
        self.client.on_connect = lambda *_: self._connected.set()
        self.client.on_message = self._dispatch
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError(f"could not connect to 127.0.0.1:{port}")

    def on_message(self, handler: Any) -> None:
        """``handler(topic, payload)`` runs on the network thread for every message."""
        self._handlers.append(handler)

    def _dispatch(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        for handler in self._handlers:
            handler(msg.topic, msg.payload)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos=1)
        if not done.wait(10):
            raise TimeoutError(f"could not subscribe to {topic}")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Things:
    """Native things with their own keys; packets are signed ahead of the timed part."""

    def __init__(self, count: int) -> None:
        self.identities = [Identity.generate() for _ in range(count)]
        self.senders = [Sender(identity) for identity in self.identities]

    @property
    def public_keys(self) -> list[bytes]:
        return [identity.public_bytes for identity in self.identities]

    def addresses(self) -> list[Address]:
        return [identity.address for identity in self.identities]

    def signed(
        self, rounds: int, destination: list[Address], payload: Payload | None = None
    ) -> list[tuple[str, bytes]]:
        """``rounds`` packets from every thing (round robin: each thing's in sequence order),
        thing n's to ``destination[n % len(destination)]``, as (up topic, sealed bytes)."""
        body = payload or Data((Reading("temperature", 21.5, "°C"),))
        out = []
        for _ in range(rounds):
            for n, sender in enumerate(self.senders):
                packet = sender.packet(destination[n % len(destination)], body)
                out.append((api.thing_up(sender.me.address.text), sender.seal(packet)))
        return out
