"""A real 3-node NATS cluster on loopback for the router scale-out tests and benchmark.

Debian's ``nats-server`` (2.9), each node with JetStream (its MQTT listener needs it, and a
``server_name``) and an MQTT listener, routes between the three on free loopback ports. NATS's
MQTT speaks 3.1.1 only: clients of this fabric use ``mqtt5=False``.

Clients go on :attr:`NatsCluster.client_nodes`, the two nodes that do not lead the stream in
which NATS keeps MQTT QoS 1 messages (``$MQTT_msgs``): on 2.9, QoS 1 messages published on
another node to a subscriber connected to that stream's leader stall (a few hundred arrive,
then a trickle), with one replica or three; between the other two nodes, and from the leader
outwards, they flow (docs/ROUTER.md, scale-out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .brokers import free_ports, stop_process

NATS_CANDIDATES = ("nats-server", "/usr/bin/nats-server", "/usr/sbin/nats-server")
CLUSTER_NAME = "i4t-region"
READY_SECONDS = 30.0
MQTT_MESSAGES_STREAM = "$MQTT_msgs"


def nats_binary() -> str:
    for candidate in NATS_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("nats-server is not installed: run ./scripts/setup")


@dataclass
class NatsNode:
    name: str
    workdir: Path
    client_port: int
    cluster_port: int
    mqtt_port: int
    monitor_port: int
    store_root: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's MQTT listener, as a broker URL."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def config(self, peers: list[NatsNode]) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{peer.cluster_port}"' for peer in peers)
        store = (self.store_root or self.workdir) / f"js-{self.name}"
        return (
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            "jetstream {\n"
            f'  store_dir: "{store}"\n'
            "  max_memory_store: 64MB\n"
            "  max_file_store: 512MB\n"
            "}\n"
            "cluster {\n"
            f"  name: {CLUSTER_NAME}\n"
            f"  listen: 127.0.0.1:{self.cluster_port}\n"
            f"  routes: [{routes}]\n"
            "}\n"
            "mqtt {\n"
            f"  listen: 127.0.0.1:{self.mqtt_port}\n"
            # A router catching up after a stall has many QoS 1 messages unacked at once.
            "  max_ack_pending: 10000\n"
            # NATS keeps QoS 1 messages and each QoS 1 subscription in JetStream, by default
            # in three replicas: every message then costs a round of the cluster's consensus.
            # The fabric need not keep messages (every I4T hop retransmits until its next hop
            # acks, as Mosquitto runs with persistence off), so one replica. Measured here, raw
            # QoS 1 between two nodes: 3 300/s with three replicas, 7 600/s with one, and 43/s
            # with one and consumer_memory_storage (avoid that option on 2.9).
            "  stream_replicas: 1\n"
            "  consumer_replicas: 1\n"
            "}\n"
        )

    def start(self, peers: list[NatsNode]) -> None:
        path = self.workdir / f"nats-{self.name}.conf"
        path.write_text(self.config(peers))
        log = (self.workdir / f"nats-{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [nats_binary(), "-c", str(path)], stdout=log, stderr=log, env={**os.environ}
        )

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


@dataclass
class NatsCluster:
    """Three nodes routed to each other; start() returns once every MQTT listener serves."""

    workdir: Path
    nodes: list[NatsNode] = field(default_factory=list)
    # Where JetStream keeps the MQTT messages and sessions (default: the workdir). On disk, a
    # machine busy writing elsewhere stalls QoS 1 bursts for up to a minute: memory_folder().
    store_root: Path | None = None
    leader: NatsNode | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.nodes:
            ports = iter(free_ports(4 * 3))
            self.nodes = [
                NatsNode(
                    f"n{index}",
                    self.workdir,
                    client_port=next(ports),
                    cluster_port=next(ports),
                    mqtt_port=next(ports),
                    monitor_port=next(ports),
                    store_root=self.store_root,
                )
                for index in (1, 2, 3)
            ]

    def start(self) -> None:
        for node in self.nodes:
            node.start([peer for peer in self.nodes if peer is not node])
        deadline = time.monotonic() + READY_SECONDS
        for node in self.nodes:
            wait_until_healthy(node.monitor_port, deadline)
        for node in self.nodes:
            wait_until_mqtt_serves(node.mqtt_port, deadline)  # creates the MQTT streams
        self.leader = self._stream_leader(MQTT_MESSAGES_STREAM, deadline)

    @property
    def client_nodes(self) -> list[NatsNode]:
        """The nodes clients connect to: all but the QoS 1 message stream's leader."""
        return [node for node in self.nodes if node is not self.leader]

    def _stream_leader(self, stream: str, deadline: float) -> NatsNode:
        while time.monotonic() < deadline:
            for node in self.nodes:
                if stream in led_streams(node):
                    return node
            time.sleep(0.05)
        raise RuntimeError(f"no NATS node leads the stream {stream} in time")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def memory_folder() -> str | None:
    """/dev/shm where there is one (a parent for tempfile folders), else None: the default.

    The fabric need not keep messages across its own restart (every I4T hop retransmits), and
    in memory the router's scale-out figures stop depending on the disk: on disk, right after
    other benchmarks, two workers measured 0.1 to 0.7 of one; in memory about 2."""
    memory = Path("/dev/shm")
    return str(memory) if memory.is_dir() and os.access(memory, os.W_OK) else None


def qos1_rate(cluster: NatsCluster, messages: int, wait: float = 20.0) -> float | None:
    """Messages per second of a QoS 1 burst between the two client nodes, or None when not
    all arrived within ``wait`` seconds."""
    received = threading.Event()
    count = [0]

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        count[0] += 1
        if count[0] == messages:
            received.set()

    subscribed = threading.Event()
    subscriber = _client("i4t-burst-sub", cluster.client_nodes[0].mqtt_port)
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.subscribe("i4t-burst", 1)
    subscribed.wait(10)
    publisher = _client("i4t-burst-pub", cluster.client_nodes[1].mqtt_port)
    time.sleep(0.5)
    payload = os.urandom(230)  # about a signed DATA packet
    started = time.perf_counter()
    for _ in range(messages):
        publisher.publish("i4t-burst", payload, qos=1)
    finished = received.wait(wait)
    elapsed = time.perf_counter() - started
    for made in (publisher, subscriber):
        made.disconnect()
        made.loop_stop()
    return messages / elapsed if finished else None


def start_flowing_cluster(
    workdir: Path, store_root: Path, messages: int, attempts: int = 3
) -> tuple[NatsCluster, float]:
    """A started cluster whose QoS 1 deliveries flow, and the rate of its test burst.

    Clients on the client nodes avoid the stall this module's docstring describes; were a
    cluster slow anyway (it was, before the stall was understood: about one start in two), it
    is replaced rather than measured, and so is one that did not come up (its nodes stopped,
    not left running)."""
    for attempt in range(1, attempts + 1):
        cluster = NatsCluster(workdir / f"try-{attempt}", store_root=store_root / f"{attempt}")
        try:
            cluster.start()
            rate = qos1_rate(cluster, messages)
        except (RuntimeError, OSError):
            cluster.stop()
            if attempt == attempts:
                raise
            continue
        if rate is not None:
            return cluster, rate
        cluster.stop()
    raise RuntimeError(f"{attempts} NATS clusters in a row started with QoS 1 stalled")


def _client(client_id: str, port: int) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def led_streams(node: NatsNode) -> set[str]:
    """The streams ``node`` leads (from its monitoring's ``/jsz``)."""
    url = f"http://127.0.0.1:{node.monitor_port}/jsz?accounts=true&streams=true"
    with urllib.request.urlopen(url, timeout=2.0) as answer:
        report = json.load(answer)
    return {
        stream["name"]
        for account in report.get("account_details") or []
        for stream in account.get("stream_detail") or []
        if (stream.get("cluster") or {}).get("leader") == node.name
    }


def wait_until_healthy(port: int, deadline: float) -> None:
    """Until the node's monitoring says it is healthy: routed, and its JetStream current
    with a metadata leader elected.

    An MQTT client connecting before that makes the node create the MQTT streams while the
    JetStream cluster has no leader yet (the request times out after 4 s, then is made again),
    and clusters started that way were the ones whose QoS 1 deliveries then stalled."""
    url = f"http://127.0.0.1:{port}/healthz"
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:
                if answer.status == 200:
                    return
        except OSError as err:  # refused while starting; HTTPError (503) while not healthy
            last = str(err)
        time.sleep(0.05)
    raise RuntimeError(f"NATS node with monitoring on {port} not healthy in time: {last}")


def wait_until_mqtt_serves(port: int, deadline: float) -> None:
    """A CONNECT answered with CONNACK 0: the node's JetStream (the MQTT sessions' store) is
    up, which in a fresh cluster takes a leader election after the listener opens."""
    while time.monotonic() < deadline:
        if _connack(port) == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the NATS MQTT listener on {port} does not accept sessions")


def _connack(port: int) -> int | None:
    client_id = b"i4t-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # MQTT 3.1.1, clean session, keepalive 60 s
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            answer = sock.recv(4)
    except OSError:
        return None
    if len(answer) == 4 and answer[0] == 0x20:
        return answer[3]
    return None
