"""Durability across a kill -9 of the real gateway process (the console script, as the add-on
runs it): what the gateway acked to a thing reaches the regional router exactly once."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from i4t_gateway import api
from i4t_gateway.identity import Address, Identity
from i4t_gateway.payloads import Ack, Command
from i4t_gateway.wire import open_packet

from .brokers import Mosquitto
from .gateway_harness import NativeThing
from .mqtt_probe import Probe
from .router_standin import RouterStandIn

ROUTER = Identity.from_seed(bytes([31]) * 32)
FAR_AWAY = Identity.from_seed(bytes([32]) * 32)
PACKETS = 40  # within one thing's burst allowance (links.RateLimit: 50)
_ids = itertools.count()


def start_gateway(data: Path, broker: Mosquitto, router: Mosquitto) -> subprocess.Popen[bytes]:
    assert router.tls is not None
    return subprocess.Popen(
        [
            sys.executable, "-m", "i4t_gateway",
            "--broker", broker.url, "--data-dir", str(data),
            "--upstream", f"mqtts://127.0.0.1:{router.port}",
            "--upstream-router", ROUTER.address.text,
            "--upstream-ca", str(router.tls.ca_file),
        ],
        env={**os.environ, "I4T_UPSTREAM_TOKEN": "token-for-tests"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait(condition: object, seconds: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def request(probe: Probe, base: str, command: str, **body: object) -> dict[str, object]:
    request_id = f"crash{next(_ids)}"
    probe.client.publish(f"{base}/cmd/{command}", json.dumps({"request_id": request_id, **body}))
    topic = f"{base}/reply/{request_id}"
    wait(lambda: probe.last(topic) is not None)
    reply: dict[str, object] = json.loads(probe.last(topic) or b"{}")
    return reply


def acked_ids(thing: NativeThing) -> set[bytes]:
    ids: set[bytes] = set()
    for raw in thing.received():
        payload = open_packet(raw).packet.payload
        if isinstance(payload, Ack):
            ids.update(payload.message_ids)
    return ids


def test_acked_packets_survive_kill_9_and_arrive_once(
    mosquitto: Mosquitto, router_broker: Mosquitto, tmp_path: Path
) -> None:
    assert router_broker.tls is not None
    standin = RouterStandIn(router_broker.port, router_broker.tls.ca_file, ROUTER)
    standin.acking = False  # the router hears but does not ack: everything stays queued
    probe = Probe(mosquitto.port, "i4t/#")
    gateway = start_gateway(tmp_path / "data", mosquitto, router_broker)
    try:
        wait(lambda: any(t.startswith(api.DISCOVERY_PREFIX + "/") for t, _, _ in probe.messages))
        gateway_id = next(
            t.rsplit("/", 1)[1] for t, _, _ in probe.messages if t.startswith(api.DISCOVERY_PREFIX)
        )
        base = f"i4t/{gateway_id}"
        wait(lambda: probe.last(f"{base}/availability") == api.ONLINE)
        thing = NativeThing(probe)
        reply = request(probe, base, "enroll", kind="native", name="Sender",
                        public_key=thing.identity.public_bytes.hex())  # fmt: skip
        assert reply["ok"], reply

        sent = [thing.send(FAR_AWAY.address, Command("n", {"i": i})) for i in range(PACKETS)]
        # Acked to the thing = durable in the gateway's queue.
        wait(lambda: acked_ids(thing) >= set(sent))
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(timeout=10)

        standin.acking = True
        gateway = start_gateway(tmp_path / "data", mosquitto, router_broker)
        wait(lambda: standin.unique() >= set(sent), seconds=60)
        # De-duplicated by message id at the receiver: each packet delivered once.
        delivered = [m for m in standin.delivered if m in set(sent)]
        assert len(delivered) == len(set(delivered)) == PACKETS

        # The restarted gateway found them in its queue and resent them: the router's acks
        # (it acks only now) drain the queue.
        def queue_empty() -> bool:
            state = json.loads(probe.last(f"{base}/state/gateway") or b"{}")
            return state.get("uplink", {}).get("queued") == 0

        wait(queue_empty, seconds=30)
        assert Address.from_text(gateway_id) != FAR_AWAY.address
    finally:
        gateway.send_signal(signal.SIGINT)
        try:
            gateway.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gateway.kill()
        probe.close()
        standin.close()
