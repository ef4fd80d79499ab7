"""Router scale-out (docs/ROUTER.md): one region on a real 3-node NATS cluster (MQTT 3.1.1
listeners on loopback), served by two router worker processes that split the gateways by
consistent hashing; a worker is killed with SIGKILL in the middle of a stream of PACKETS.

Exactly once at the destination thing rests on two things: the survivor takes over the dead
worker's queued packets (workers.adopt_queues), and the destination gateway drops copies by
message id (its persistent de-duplication), since a packet the dead worker had queued may also
be sent again by the source gateway (when the worker died before its ack got out) and taken by
the survivor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
import os
from pathlib import Path
import sqlite3
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
import pytest

from i4t_gateway.identity import Identity
from i4t_gateway.router import DOWN_HOP_PREFIX, STATE_TOPIC
from i4t_gateway.sharding import HashRing
from i4t_gateway.tokens import ROUTER_DATABASE_FILE, TokenLimits
from i4t_gateway.workers import DEAD_AFTER_SECONDS, HEARTBEAT_FILTER, worker_dir

from .bare_gateway import BareGateway
from .gateway_harness import eventually
from .nats_cluster import NatsCluster, memory_folder, start_flowing_cluster
from .router_harness import RouterProcess, issue, router_address

# 600 by default; I4T_SCALEOUT_PACKETS=2000 (or more) for a longer stream. QoS 1 under NATS's
# MQTT goes through JetStream, which on a 2-core machine shared with other work is slow at
# times; the hops' round-trip timers (queue.RoundTripTimer) keep retransmissions from swamping
# it (docs/ROUTER.md, scale-out, for the figures).
PACKETS = int(os.environ.get("I4T_SCALEOUT_PACKETS", "600"))
WORKERS = ("w1", "w2")
# The stream is the point, not the rates: the region must not throttle it.
OPEN_LIMITS = TokenLimits(
    bytes_in_per_second=100_000_000, bytes_out_per_second=100_000_000, packets_per_second=100_000
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with tempfile.TemporaryDirectory(prefix="i4t-nats-", dir=memory_folder()) as store:
        nats, _ = start_flowing_cluster(tmp_path / "nats", Path(store), messages=500)
        try:
            yield nats
        finally:
            nats.stop()


class Heartbeats:
    """Which workers the fabric hears, and their last state (a plain MQTT 3.1.1 client)."""

    def __init__(self, port: int) -> None:
        self.heard: dict[str, float] = {}
        self.states: dict[str, bytes] = {}
        self.history: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="i4t-test-heartbeats",
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(HEARTBEAT_FILTER, 0), (f"{STATE_TOPIC}/+", 0)]
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        worker = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            if msg.topic.startswith(STATE_TOPIC):
                self.states[worker] = msg.payload
                self.history.append((worker, msg.payload))
            else:
                self.heard[worker] = time.monotonic()

    def alive(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            return {w for w, at in self.heard.items() if now - at < DEAD_AFTER_SECONDS}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def queued_down(region: Path, worker: str) -> int:
    conn = sqlite3.connect(worker_dir(region, worker) / ROUTER_DATABASE_FILE)
    try:
        row = conn.execute(
            "SELECT count(*) FROM hop_queue WHERE hop LIKE ?", (DOWN_HOP_PREFIX + "%",)
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


async def test_a_killed_worker_s_share_is_taken_over_without_loss(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    region = tmp_path / "region"
    router = router_address(region)
    source, destination = Identity.generate(), Identity.generate()
    # The worker that owns the source gateway queues the stream for the destination: kill it.
    victim = HashRing(WORKERS).owner(source.address.text)
    assert victim is not None
    survivor = next(w for w in WORKERS if w != victim)
    # Two workers and two gateways over the two client nodes (nats_cluster.py: the third
    # node leads the stream that holds the QoS 1 messages, and takes no clients).
    near, far = cluster.client_nodes
    node_of = {"w1": near, "w2": far}
    workers = {w: RouterProcess(region, node_of[w], extra_args=("--worker", w)) for w in WORKERS}
    beats = Heartbeats(far.mqtt_port)
    gateways = [
        BareGateway(
            tmp_path / name,
            (far, near)[index].mqtt_port,
            issue(region, identity.address, OPEN_LIMITS),
            router,
            mqtt5=False,  # NATS speaks MQTT 3.1.1 only
            identity=identity,
        )
        for index, (name, identity) in enumerate((("a", source), ("b", destination)))
    ]
    sender, receiver = gateways
    try:
        for worker in workers.values():
            worker.start()
        await eventually(lambda: beats.alive() == set(WORKERS), seconds=30)
        await asyncio.sleep(DEAD_AFTER_SECONDS + 0.5)  # past the workers' warm-up
        for gateway in gateways:
            await gateway.start()
        await eventually(lambda: sender.queued() == 0 and receiver.queued() == 0, seconds=30)

        sent = await sender.send(receiver.thing.address, PACKETS)
        await eventually(lambda: len(receiver.delivered) >= PACKETS // 4, seconds=60)
        workers[victim].kill()
        killed_at = time.monotonic()
        delivered_at_kill = len(receiver.delivered)

        # The survivor's ring covers the source gateway again: its queue drains.
        try:
            # Generous: on a loaded machine the fabric itself slows down (see PACKETS).
            await eventually(lambda: sender.queued() == 0, seconds=90)
        except TimeoutError:
            print(sender.forwarder.stats().as_dict(), receiver.forwarder.stats().as_dict())
            for worker, state in beats.history:
                print(worker, state.decode()[-700:])
            raise
        took_over = time.monotonic() - killed_at
        await eventually(lambda: len(receiver.delivered) >= PACKETS, seconds=120)
        await asyncio.sleep(1.0)  # room for a late copy to show up (it must not)

        assert beats.alive() == {survivor}
        assert len(receiver.delivered) == PACKETS  # no copy delivered twice
        assert set(receiver.delivered) == set(sent)  # and none lost
        assert queued_down(region, victim) == 0  # the dead worker's queue was taken over
        print(
            f"killed {victim} after {delivered_at_kill}/{PACKETS} delivered; through "
            f"{survivor} alone the source gateway's queue was empty {took_over:.1f} s later"
        )
    finally:
        beats.close()
        for gateway in gateways:
            await gateway.stop()
        for worker in workers.values():
            worker.stop()
