"""Router benchmark (issue #5 item 8): route lookups in a region of 1k / 100k / 1M registered
addresses, and forwarding rates through a region on a 3-node NATS cluster with one worker and
with two, each next to an anchor measured in the same run, as ratios.

    python bench/bench_router.py            # about two minutes

Route lookup: ``RegionTable.gateway_for`` (the router's next-hop lookup: a dict plus the
claim's expiry check), and ``HashRing.owner`` (which worker takes a gateway's packets), against
a plain dict lookup of the same keys in the same order. The table is filled through
``RegionTable.announce`` in 1024-address announces from gateways holding up to 100 000 each (the
router's cap), as a router fills it.

Forwarding: source gateways (the real durable uplink, links.Forwarder, each with a thing
behind it) send packets to things behind destination gateways through router worker processes;
the rate is packets delivered at the destinations per second, from the first submit to the
last delivery. The anchor is raw QoS 1 publishing through the same fabric: a paho client on one
node to a subscriber on another, counted when all arrived. Every router hop costs two QoS 1
messages at least (up, down) and the acks back, each signed and verified, so the ceiling is
well below the anchor. On a machine with few cores the gateways (all in this process), the
workers and three nats-servers share them: the 2-worker figure then shows what the second
worker costs as much as what it brings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import os
from pathlib import Path
import random
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "addon" / "src"), str(ROOT)]


from i4t_gateway.identity import Address, AddressSuite, Identity  # noqa: E402
from i4t_gateway.queue import GroupCommit  # noqa: E402
from i4t_gateway.registry import RegionTable  # noqa: E402
from i4t_gateway.sharding import HashRing  # noqa: E402
from i4t_gateway.store import open_store  # noqa: E402
from i4t_gateway.tokens import TokenLimits  # noqa: E402
from i4t_gateway.workers import DEAD_AFTER_SECONDS  # noqa: E402
from tests.gateway.bare_gateway import BareGateway  # noqa: E402
from tests.gateway.nats_cluster import (  # noqa: E402
    NatsCluster,
    memory_folder,
    start_flowing_cluster,
)
from tests.gateway.router_harness import RouterProcess, issue, router_address  # noqa: E402

TABLE_SIZES = (1_000, 100_000, 1_000_000)
LOOKUPS = 200_000
PER_GATEWAY = 100_000
CHUNK = 1024
PAIRS = 4
PACKETS_PER_PAIR = 750
RAW_MESSAGES = 4000
OPEN_LIMITS = TokenLimits(
    bytes_in_per_second=100_000_000, bytes_out_per_second=100_000_000, packets_per_second=100_000
)


# -- route lookup ------------------------------------------------------------------------------


def random_addresses(count: int) -> list[Address]:
    prefix = bytes([AddressSuite.ED25519_SHA256_128])
    return [Address.from_bytes(prefix + os.urandom(16)) for _ in range(count)]


async def filled_table(directory: Path, addresses: list[Address]) -> RegionTable:
    commits = GroupCommit(open_store(directory / f"region-{len(addresses)}.db"))
    table = RegionTable(commits)
    expires_ms = int((time.time() + 3600) * 1000)
    chunks_per_holder = PER_GATEWAY // CHUNK  # a gateway may claim 100 000 addresses
    holders = random_addresses(len(addresses) // (chunks_per_holder * CHUNK) + 1)
    for start in range(0, len(addresses), CHUNK):
        holder = holders[start // CHUNK // chunks_per_holder]
        table.announce(
            holder, addresses[start : start + CHUNK], expires_ms, protected=lambda _: False
        )
        if start % (64 * CHUNK) == 0:
            await asyncio.sleep(0)  # let the group commit run
    commits.flush()
    return table


def per_lookup_ns(lookup: Callable[[Address], object], keys: list[Address]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for key in keys:
            lookup(key)
        best = min(best, time.perf_counter() - started)
    return best / len(keys) * 1e9


async def route_lookups(directory: Path) -> None:
    print("\nroute lookup, ns per lookup (best of 3 passes over 200k registered keys)")
    print(f"{'addresses':>10} {'dict':>8} {'gateway_for':>12} {'ratio':>6} {'ring owner':>11}")
    ring = HashRing(["w1", "w2"])
    for size in TABLE_SIZES:
        addresses = random_addresses(size)
        table = await filled_table(directory, addresses)
        assert len(table) == size, (len(table), size)
        anchor = {address: table.gateway_for(address) for address in addresses}
        keys = random.choices(addresses, k=LOOKUPS)
        texts = [key.text for key in keys[:20_000]]
        dict_ns = per_lookup_ns(anchor.get, keys)
        table_ns = per_lookup_ns(table.gateway_for, keys)
        ring_ns = ring_owner_ns(ring, texts)
        print(
            f"{size:>10} {dict_ns:>8.0f} {table_ns:>12.0f} {table_ns / dict_ns:>6.1f} "
            f"{ring_ns:>11.0f}"
        )
        del table, anchor


def ring_owner_ns(ring: HashRing, texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        ring.owner(text)
    return (time.perf_counter() - started) / len(texts) * 1e9


# -- forwarding through a region on NATS ---------------------------------------------------------


async def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - gateways change it from their tasks
            await asyncio.sleep(0.01)


async def forwarding_rate(cluster: NatsCluster, directory: Path, workers: int) -> float:
    """Packets per second delivered through a region served by ``workers`` processes."""
    region = directory / f"region-{workers}"
    router = router_address(region)
    names = [f"w{index + 1}" for index in range(workers)]
    processes = [
        RouterProcess(region, cluster.client_nodes[index % 2], extra_args=("--worker", name))
        for index, name in enumerate(names)
    ]
    gateways = []
    for index in range(2 * PAIRS):
        identity = Identity.generate()
        gateways.append(
            BareGateway(
                directory / f"gw-{workers}-{index}",
                cluster.client_nodes[index % 2].mqtt_port,
                issue(region, identity.address, OPEN_LIMITS),
                router,
                mqtt5=False,
                identity=identity,
            )
        )
    sources, destinations = gateways[:PAIRS], gateways[PAIRS:]
    try:
        for process in processes:
            process.start()
        await asyncio.sleep(DEAD_AFTER_SECONDS + 2.0)  # workers up, heard each other, warm
        for gateway in gateways:
            await gateway.start()
        await wait_for(lambda: all(g.queued() == 0 for g in gateways), 60)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                source.send(destination.thing.address, PACKETS_PER_PAIR)
                for source, destination in zip(sources, destinations, strict=True)
            )
        )
        total = PAIRS * PACKETS_PER_PAIR
        await wait_for(lambda: sum(len(d.delivered) for d in destinations) >= total, 180)
        return total / (time.perf_counter() - started)
    finally:
        for gateway in gateways:
            await gateway.stop()
        for process in processes:
            process.stop()


async def forwarding(directory: Path, fabric_store: Path) -> None:
    # The fabric's JetStream in memory (memory_folder): it need not survive, and the figures
    # then do not depend on what the disk is writing back from the benchmarks before.
    print(f"forwarding through a region on a 3-node NATS cluster ({os.cpu_count()} cores)")
    print("each run on a cluster of its own, next to that cluster's raw QoS 1 rate")
    print("(workers, gateways and the raw burst on the two nodes not leading the QoS 1 stream)")
    rates = {}
    for workers in (1, 2):
        label = f"{workers}w"
        cluster, raw = start_flowing_cluster(
            directory / f"nats-{label}", fabric_store / label, RAW_MESSAGES
        )
        try:
            rates[workers] = await forwarding_rate(cluster, directory, workers)
        finally:
            cluster.stop()
        print(
            f"{workers} worker{'s' if workers > 1 else ' '}, {PAIRS} gateway pairs: "
            f"{rates[workers]:8.0f} packets/s, raw {raw:6.0f} messages/s: "
            f"{rates[workers] / raw:.2f} x raw"
        )
    print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f}")


async def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="i4t-bench-router-") as folder,
        tempfile.TemporaryDirectory(prefix="i4t-bench-nats-", dir=memory_folder()) as store,
    ):
        directory = Path(folder)
        # Forwarding first: a million live addresses make every garbage collection of the
        # process that hosts the gateways slower.
        await forwarding(directory, Path(store))
        await route_lookups(directory)


if __name__ == "__main__":
    asyncio.run(main())
