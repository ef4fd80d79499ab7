"""Forwarding benchmark: signed, durable packets thing -> gateway -> upstream, against the
paho-mqtt QoS 1 ceiling measured on the same brokers in the same run.

    python bench/bench_forwarding.py       # about 40 s

The gateway is the console script in its own process, on a plain local Mosquitto, with its
uplink over TLS to a second Mosquitto where a router stand-in (tests/gateway/router_standin.py:
verifies every packet, acks in batches as a router under load does) takes the packets. Things
publish pre-signed packets for an address elsewhere at QoS 1, as fast as paho sends them; the
gateway verifies each, stores it durably (SQLite, group commit), acks it to its thing, sends it
up and deletes it once the stand-in's ack arrives. The rate is packets the stand-in received
per second, from the first publish to the last arrival.

Anchor: one paho client publishing QoS 1 messages of the same size through one broker to a
paho subscriber (the cheapest a one-hop QoS 1 message can be with this client library), on the
local broker and on the TLS broker, in the same run. Goal (issue #7): at least 0.75 of it.
"""

from __future__ import annotations

import os
from pathlib import Path
import statistics
import tempfile
import threading
import time

from gateway_rig import (
    Client,
    GatewayProcess,
    Mosquitto,
    Things,
    brokers,
    end_helper,
    helper_process,
    seed_gateway,
)

from i4t_gateway.identity import Identity

THINGS = 200  # the uplink allows a source 10 packets/s, bursts of 50 (links.py)
ROUNDS = 20  # packets per thing per run: within one burst
RUNS = 3
ANCHOR_MESSAGES = 4000
GOAL = 0.75
ROUTER_SEED = bytes([31]) * 32
ROUTER = Identity.from_seed(ROUTER_SEED)
FAR_AWAY = Identity.from_seed(bytes([32]) * 32).address


def anchor_rate(port: int, size: int, ca_file: Path | None = None) -> float:
    """Messages per second from one paho publisher through the broker to one subscriber."""
    received = threading.Event()
    count = [0]

    def arrived(topic: str, payload: bytes) -> None:
        count[0] += 1
        if count[0] == ANCHOR_MESSAGES:
            received.set()

    subscriber = Client(port, f"anchor-sub-{os.getpid()}", ca_file=ca_file)
    subscriber.on_message(arrived)
    subscriber.subscribe("bench/anchor")
    publisher = Client(port, f"anchor-pub-{os.getpid()}", ca_file=ca_file)
    payload = os.urandom(size)
    try:
        start = time.perf_counter()
        for _ in range(ANCHOR_MESSAGES):
            publisher.publish("bench/anchor", payload)
        if not received.wait(60):
            raise TimeoutError("anchor messages lost")
        return ANCHOR_MESSAGES / (time.perf_counter() - start)
    finally:
        publisher.close()
        subscriber.close()


class StandIn:
    """bench/standin_proc.py in its own process; ``delivered`` follows what it prints."""

    def __init__(self, upstream: Mosquitto) -> None:
        assert upstream.tls is not None
        self.process = helper_process(
            "standin_proc.py", upstream.port, upstream.tls.ca_file, ROUTER_SEED.hex()
        )
        self.delivered = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.delivered = int(line)
                self._changed.notify_all()

    def wait_for(self, count: int, seconds: float = 120) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.delivered >= count, seconds):
                raise TimeoutError(f"forwarded {self.delivered} of {count}")

    def close(self) -> None:
        end_helper(self.process)


def forward_rate(publisher: Client, standin: StandIn, packets: list[tuple[str, bytes]]) -> float:
    """Packets per second from the first publish until the stand-in holds all of them."""
    target = standin.delivered + len(packets)
    start = time.perf_counter()
    for topic, data in packets:
        publisher.publish(topic, data)
    standin.wait_for(target)
    return len(packets) / (time.perf_counter() - start)


def main() -> None:
    started = time.perf_counter()
    things = Things(THINGS)
    with (
        tempfile.TemporaryDirectory() as tmp,
        brokers(Path(tmp), 1) as (local,),
        brokers(Path(tmp) / "up", 1, tls=True) as (upstream,),
    ):
        assert upstream.tls is not None
        seed_gateway(Path(tmp) / "gateway", things.public_keys)
        standin = StandIn(upstream)
        gateway = GatewayProcess(
            Path(tmp) / "gateway", local, upstream=upstream, router=ROUTER.address
        )
        publisher = Client(local.port, "things")
        try:
            # One packet per thing first: the uplink connects, the things are announced.
            forward_rate(publisher, standin, things.signed(1, [FAR_AWAY]))
            size = len(things.signed(1, [FAR_AWAY])[0][1])
            rates, local_anchor, tls_anchor, cpu_per_packet = [], [], [], []
            for _ in range(RUNS):
                local_anchor.append(anchor_rate(local.port, size))
                tls_anchor.append(anchor_rate(upstream.port, size, upstream.tls.ca_file))
                time.sleep(1.0 / 10 * ROUNDS)  # the things' rate buckets fill up again
                packets = things.signed(ROUNDS, [FAR_AWAY])
                cpu_before = gateway.cpu_seconds()
                rates.append(forward_rate(publisher, standin, packets))
                cpu_per_packet.append((gateway.cpu_seconds() - cpu_before) / len(packets))
            cpu = gateway.cpu_seconds()
        finally:
            publisher.close()
            gateway.stop()
            standin.close()
    rate, ceiling_local, ceiling_tls = (
        statistics.median(values) for values in (rates, local_anchor, tls_anchor)
    )
    ceiling = min(ceiling_local, ceiling_tls)
    ratio = rate / ceiling
    print(
        f"forwarding: {THINGS} things x {ROUNDS} signed packets of {size} B a run,"
        f" medians of {RUNS} runs"
    )
    print(f"{'anchor: paho QoS 1, one hop, local broker':48s} {ceiling_local:>9,.0f} msg/s")
    print(f"{'anchor: paho QoS 1, one hop, TLS upstream broker':48s} {ceiling_tls:>9,.0f} msg/s")
    print(f"{'gateway: thing -> gateway -> upstream, durable':48s} {rate:>9,.0f} packets/s")
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(f"goal | forwarding rate / paho QoS 1 ceiling | {ratio:.2f} | >= {GOAL} | {verdict}")
    per_packet = statistics.median(cpu_per_packet)
    print(
        f"gateway CPU per forwarded packet: {per_packet * 1e6:.0f} us"
        f" (one core would forward at most {1 / per_packet:,.0f} packets/s)"
    )
    print(
        f"gateway process CPU, whole run: {cpu:.1f} s; total {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
