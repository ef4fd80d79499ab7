"""The uplink against a real Mosquitto over TLS and a router stand-in that acks, loses acks,
duplicates them and goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
import contextlib
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys
import time
from typing import IO

import pytest

from i4t_gateway.bus import TlsFiles
from i4t_gateway.cose import PacketError, Reason
from i4t_gateway.endpoint import Inbound, Receiver, Sender
from i4t_gateway.identity import Address, Identity
from i4t_gateway.links import (
    Forwarder,
    RateLimit,
    RateLimitedError,
    RouterLink,
    SourceRateLimiter,
    down_topic,
    up_topic,
)
from i4t_gateway.payloads import Command, Data, Reading
from i4t_gateway.queue import (
    GroupCommit,
    PacketQueue,
    PersistentDedup,
    QueueFullError,
    QueueLimits,
    RetryPolicy,
)
from i4t_gateway.settings import SettingsError
from i4t_gateway.store import open_store
from i4t_gateway.wire import Packet

from .brokers import Mosquitto, free_port, make_tls_certs
from .router_standin import RouterStandIn

ROUTER = Identity.from_seed(bytes([7]) * 32)
GATEWAY = Identity.from_seed(bytes([8]) * 32)
THING = Identity.from_seed(bytes([9]) * 32)
REMOTE = Address.for_public_key(Identity.from_seed(bytes([10]) * 32).public_bytes)
SERVED = Address.for_proxied(GATEWAY.public_bytes, b"ble:a4:c1:38:00:00:01")
FAST_RETRY = RetryPolicy(first=0.2, maximum=1.0)
UNLIMITED = RateLimit(rate=1e6, burst=1e6)
PROCESS = Path(__file__).with_name("forwarder_proc.py")


async def eventually(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - threads and the loop change what it reads
            await asyncio.sleep(0.01)


async def until_subscribed(forwarder: Forwarder, standin: RouterStandIn) -> None:
    """Wait until the gateway hears its down topic: send the router's acks (of nothing) until
    one arrives, as a router retransmits until it hears back."""
    async with asyncio.timeout(10):
        while not forwarder.stats().acks_received:
            standin.ack_down(GATEWAY.address, [bytes(16)])
            await asyncio.sleep(0.05)


@pytest.fixture
def standin(router_broker: Mosquitto) -> Iterator[RouterStandIn]:
    assert router_broker.tls is not None
    router = RouterStandIn(router_broker.port, router_broker.tls.ca_file, ROUTER)
    yield router
    router.close()


@dataclass
class Gateway:
    """A forwarder with its store, and what its deliver callback saw."""

    forwarder: Forwarder
    commits: GroupCommit
    delivered: list[Packet] = field(default_factory=list)


class GatewayFactory:
    def __init__(self, database: Path, broker: Mosquitto) -> None:
        self.database = database
        self.broker = broker
        self.running: list[Gateway] = []

    async def start(self, **options: object) -> Gateway:
        commits = GroupCommit(open_store(self.database))
        assert self.broker.tls is not None
        delivered: list[Packet] = []

        async def deliver(inbound: Inbound) -> None:
            if isinstance(inbound.packet.payload, Command) and inbound.packet.payload.name == "bad":
                raise PacketError(Reason.HOP_LIMIT, "undeliverable")
            delivered.append(inbound.packet)

        forwarder = Forwarder(
            sender=Sender(GATEWAY),
            receiver=Receiver(GATEWAY, dedup=PersistentDedup(commits)),
            link=RouterLink(
                "127.0.0.1",
                "router-token",
                ROUTER.address,
                port=self.broker.port,
                tls_files=TlsFiles(self.broker.tls.ca_file),
            ),
            queue=PacketQueue(commits, limits=options.pop("limits", None)),  # type: ignore[arg-type]
            deliver=deliver,
            serves=lambda address: address == SERVED,
            retry=options.pop("retry", FAST_RETRY),  # type: ignore[arg-type]
            max_backoff=0.3,
            rate_limit=options.pop("rate_limit", UNLIMITED),  # type: ignore[arg-type]
            **options,  # type: ignore[arg-type]
        )
        gateway = Gateway(forwarder, commits, delivered)
        await forwarder.start()
        self.running.append(gateway)
        return gateway

    async def stop(self, gateway: Gateway) -> None:
        await gateway.forwarder.stop()
        gateway.commits.flush()
        gateway.commits.connection.close()
        self.running.remove(gateway)


@pytest.fixture
async def gateways(tmp_path: Path, router_broker: Mosquitto) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path / "gateway.db", router_broker)
    yield factory
    for gateway in list(factory.running):
        await factory.stop(gateway)


def thing_packets(count: int, sender: Sender | None = None) -> list[tuple[Packet, bytes]]:
    thing = sender or Sender(THING)
    out = []
    for i in range(count):
        packet = thing.packet(REMOTE, Data((Reading("n", i),)))
        out.append((packet, thing.seal(packet)))
    return out


async def submit_all(forwarder: Forwarder, packets: list[tuple[Packet, bytes]]) -> None:
    await asyncio.gather(*(forwarder.submit(packet, data) for packet, data in packets))


def read_until_queued(stream: IO[bytes]) -> list[bytes]:
    """The message ids a forwarder_proc.py reported durable, up to its "queued" line."""
    lines: list[bytes] = []
    for line in stream:
        if line == b"queued\n":
            return lines
        lines.append(line.strip())
    raise AssertionError("the forwarding process ended before it queued everything")


def stored_rows(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT count(*) FROM hop_queue").fetchone()[0])


def test_topics_and_router_urls() -> None:
    assert up_topic("i4tabc") == "i4t/r/up/i4tabc"
    assert down_topic("i4tabc") == "i4t/r/down/i4tabc"
    link = RouterLink.from_url("mqtts://router.example", token="t", router=ROUTER.address)
    assert (link.host, link.port, link.tls, link.token) == ("router.example", 8883, True, "t")
    plain = RouterLink.from_url("mqtt://127.0.0.1:1884", token="t", router=ROUTER.address)
    assert (plain.port, plain.tls) == (1884, False)
    with pytest.raises(SettingsError):
        RouterLink.from_url("http://router.example", token="t", router=ROUTER.address)


@pytest.fixture
def batching_standin(router_broker: Mosquitto) -> Iterator[RouterStandIn]:
    """A router stand-in that acks every few ms, up to 64 ids per ack packet."""
    assert router_broker.tls is not None
    router = RouterStandIn(router_broker.port, router_broker.tls.ca_file, ROUTER, batch_acks=True)
    yield router
    router.close()


async def test_forwards_over_tls_and_forgets_what_the_router_acked(
    gateways: GatewayFactory, batching_standin: RouterStandIn
) -> None:
    standin = batching_standin
    gateway = await gateways.start(retry=RetryPolicy())
    forwarder = gateway.forwarder
    packets = thing_packets(300)
    await submit_all(forwarder, packets)
    await eventually(lambda: forwarder.stats().queued == 0)
    assert standin.unique() == {p.message_id for p, _ in packets}
    assert standin.delivered_count() == 300
    stats = forwarder.stats()
    assert stats.link_up is True
    assert stats.forwarded == 300
    assert stats.acked == 300
    assert stats.in_flight == 0
    assert stats.acks_received < 300  # the router acks up to 64 ids at once
    assert json.loads(json.dumps(stats.as_dict()))["forwarded"] == 300
    await gateway.commits.committed()
    assert stored_rows(gateways.database) == 0


async def test_lost_and_duplicated_acks_cause_retransmissions_not_duplicates(
    gateways: GatewayFactory, standin: RouterStandIn
) -> None:
    standin.drop_ack_share = 0.3
    standin.duplicate_acks = True
    gateway = await gateways.start(window=32, retry=RetryPolicy(first=0.1, maximum=0.4))
    forwarder = gateway.forwarder
    packets = thing_packets(150)
    await submit_all(forwarder, packets)
    await eventually(lambda: forwarder.stats().queued == 0)
    assert standin.delivered_count() == 150
    assert standin.unique() == {p.message_id for p, _ in packets}
    stats = forwarder.stats()
    assert stats.retransmitted > 0
    assert max(standin.copies.values()) > 1  # the router saw copies and de-duplicated them
    assert stats.dropped["replayed"] > 0  # the second copy of an ack: refused by the replay window


async def test_router_broker_outage_loses_and_duplicates_nothing(
    gateways: GatewayFactory, router_broker: Mosquitto, standin: RouterStandIn
) -> None:
    gateway = await gateways.start()
    forwarder = gateway.forwarder
    first, during, after = thing_packets(150), thing_packets(150), thing_packets(150)
    await submit_all(forwarder, first)
    await eventually(lambda: standin.delivered_count() >= 50)

    router_broker.stop()
    await eventually(lambda: not forwarder.stats().link_up)
    await submit_all(forwarder, during)  # queued while the router is away
    await asyncio.sleep(2)
    router_broker.start()
    await submit_all(forwarder, after)

    await eventually(lambda: forwarder.stats().queued == 0, 20)
    expected = {p.message_id for p, _ in first + during + after}
    assert standin.unique() == expected
    assert standin.delivered_count() == len(expected)
    stats = forwarder.stats()
    assert stats.link_downs >= 1
    assert stats.link_ups >= 2


async def test_kill_9_of_a_forwarding_process_delivers_everything_exactly_once(
    tmp_path: Path, router_broker: Mosquitto, standin: RouterStandIn
) -> None:
    assert router_broker.tls is not None
    database = tmp_path / "forwarder.db"
    args = [str(database), str(router_broker.port), str(router_broker.tls.ca_file)]

    def launch(count: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(PROCESS), *args, ROUTER.address.text, str(count)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    standin.drop_ack_share = 0.7  # most packets stay in flight when the process dies
    first = launch(400)
    try:
        assert first.stdout is not None
        queued = await asyncio.wait_for(asyncio.to_thread(read_until_queued, first.stdout), 30)
        await eventually(lambda: standin.delivered_count() >= 100)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        first.kill()
        first.wait()
    assert len(queued) == 400
    expected = {bytes.fromhex(line.decode()) for line in queued}
    assert standin.delivered_count() < 400 or stored_rows(database) > 0

    standin.drop_ack_share = 0.0
    second = launch(0)
    try:
        await eventually(lambda: standin.unique() == expected, 20)
        await asyncio.sleep(0.3)  # let the last acks arrive and commit
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        second.kill()
        second.wait()
    assert standin.delivered_count() == 400  # after the router's de-dup: each exactly once
    assert stored_rows(database) == 0


async def test_full_queue_refuses_and_counts(gateways: GatewayFactory) -> None:
    gateway = await gateways.start(limits=QueueLimits(max_rows=5))
    forwarder = gateway.forwarder
    packets = thing_packets(6)
    await forwarder.bus.stop()  # no link: nothing leaves the queue
    await submit_all(forwarder, packets[:5])
    with pytest.raises(QueueFullError) as refused:
        forwarder.submit(*packets[5])
    assert refused.value.reason == "queue_full"
    assert forwarder.stats().refused == {"queue_full": 1}
    assert forwarder.stats().queued == 5


def test_rate_limit_is_per_source_token_bucket() -> None:
    now = [0.0]
    limiter = SourceRateLimiter(RateLimit(rate=2.0, burst=3.0), monotonic=lambda: now[0])
    a, b = THING.address, REMOTE
    assert [limiter.allow(a) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow(b)  # another source has its own bucket
    now[0] += 0.5  # one token back at 2 per second
    assert [limiter.allow(a) for _ in range(2)] == [True, False]
    now[0] += 100
    assert sum(limiter.allow(a) for _ in range(10)) == 3  # refilled to the burst, no more


def test_rate_limiter_memory_is_bounded_and_eviction_only_forgives() -> None:
    limiter = SourceRateLimiter(RateLimit(rate=1.0, burst=1.0, max_sources=2), lambda: 0.0)
    a, b, c = THING.address, REMOTE, SERVED
    assert limiter.allow(a)
    assert not limiter.allow(a)
    assert limiter.allow(b)
    assert limiter.allow(c)  # a is forgotten ...
    assert limiter.allow(a)  # ... and comes back with a full bucket
    with pytest.raises(ValueError, match="rate"):
        SourceRateLimiter(RateLimit(rate=0.0))


async def test_rate_limited_source_is_refused_and_counted(gateways: GatewayFactory) -> None:
    gateway = await gateways.start(rate_limit=RateLimit(rate=1.0, burst=3.0))
    forwarder = gateway.forwarder
    await forwarder.bus.stop()
    packets = thing_packets(5)
    for packet, data in packets[:3]:
        forwarder.submit(packet, data)
    with pytest.raises(RateLimitedError) as refused:
        forwarder.submit(*packets[3])
    assert refused.value.reason == "rate_limited"
    other = thing_packets(1, Sender(Identity.from_seed(bytes([11]) * 32)))
    await forwarder.submit(*other[0])
    own = thing_packets(10, forwarder.sender)  # the gateway itself is not limited
    await submit_all(forwarder, own)
    assert forwarder.stats().refused == {"rate_limited": 1}
    assert forwarder.stats().queued == 14


async def test_downstream_only_what_the_gateway_serves_delivered_once_and_acked(
    gateways: GatewayFactory, standin: RouterStandIn
) -> None:
    gateway = await gateways.start()
    forwarder = gateway.forwarder
    await until_subscribed(forwarder, standin)
    remote = Sender(Identity.from_seed(bytes([12]) * 32))

    served = remote.packet(SERVED, Command("open"))
    served_bytes = remote.seal(served)
    unasked = remote.packet(REMOTE, Command("flood"))
    undeliverable = remote.packet(SERVED, Command("bad"))
    standin.send_down(GATEWAY.address, served_bytes)
    standin.send_down(GATEWAY.address, remote.seal(unasked))
    standin.send_down(GATEWAY.address, remote.seal(undeliverable))
    standin.send_down(GATEWAY.address, b"\xd2garbage")
    await eventually(lambda: len(standin.acked_by_gateway) == 2)
    assert [p.message_id for p in gateway.delivered] == [served.message_id]
    assert set(standin.acked_by_gateway) == {served.message_id, undeliverable.message_id}

    # A retransmission is acked again but not delivered again.
    standin.send_down(GATEWAY.address, served_bytes)
    await eventually(lambda: len(standin.acked_by_gateway) == 3)
    assert len(gateway.delivered) == 1

    # Acks are accepted only from the configured router.
    impostor = Sender(Identity.from_seed(bytes([13]) * 32))
    standin.send_down(GATEWAY.address, impostor.ack(GATEWAY.address, [served.message_id]))
    await eventually(lambda: forwarder.stats().dropped.get("ack_not_from_router") == 1)
    stats = forwarder.stats()
    assert stats.dropped == {
        "unasked": 1,
        "malformed": 1,
        "hop_limit": 1,
        "ack_not_from_router": 1,
    }
    assert stats.delivered == 1
    assert stats.duplicates == 1

    # The seen-window is persistent: after a restart the same packet is still a duplicate.
    await gateways.stop(gateway)
    restarted = await gateways.start()
    await until_subscribed(restarted.forwarder, standin)
    standin.send_down(GATEWAY.address, served_bytes)
    await eventually(lambda: len(standin.acked_by_gateway) == 4)
    assert restarted.delivered == []
    assert restarted.forwarder.stats().duplicates == 1


async def test_an_authentic_packet_the_replay_window_refuses_is_acked_not_delivered(
    gateways: GatewayFactory, standin: RouterStandIn
) -> None:
    gateway = await gateways.start()
    await until_subscribed(gateway.forwarder, standin)
    # Held back by the router for longer than the gateway's replay window accepts.
    week_ago = Sender(ROUTER, clock=lambda: int((time.time() - 7 * 86400) * 1000))
    stale = week_ago.packet(GATEWAY.address, Command("late"))
    standin.send_down(GATEWAY.address, week_ago.seal(stale))
    # A forged copy is not authentic: dropped, and no ack tells anyone about it.
    forged = bytearray(week_ago.seal(week_ago.packet(GATEWAY.address, Command("forged"))))
    forged[-1] ^= 1
    standin.send_down(GATEWAY.address, bytes(forged))
    # A stale ack is not acked: acks are never acked.
    standin.send_down(GATEWAY.address, week_ago.ack(GATEWAY.address, [bytes(16)]))
    await eventually(lambda: standin.acked_by_gateway == [stale.message_id])
    await eventually(lambda: gateway.forwarder.stats().dropped.get("bad_signature") == 1)
    await eventually(lambda: gateway.forwarder.stats().dropped.get("stale") == 2)
    await asyncio.sleep(0.3)  # room for a wrong ack to arrive
    assert gateway.delivered == []
    assert standin.acked_by_gateway == [stale.message_id]


async def test_downstream_refusals_and_a_failing_store(
    gateways: GatewayFactory, standin: RouterStandIn
) -> None:
    # A retained message is an old copy the broker hands to new subscribers, not the router
    # speaking now.
    remote = Sender(Identity.from_seed(bytes([12]) * 32))
    retained = remote.seal(remote.packet(SERVED, Command("old")))
    standin.client.publish(down_topic(GATEWAY.address.text), retained, qos=1, retain=True)
    gateway = await gateways.start()
    forwarder = gateway.forwarder
    await until_subscribed(forwarder, standin)
    # An ack from the router, but to someone else.
    standin.ack_down(GATEWAY.address, [bytes(16)], to=REMOTE)
    await eventually(lambda: forwarder.stats().dropped.get("retained") == 1)
    await eventually(lambda: forwarder.stats().dropped.get("ack_not_for_us") == 1)

    # The store fails once: no ack, so the router's retransmission gets it in.
    failures = [OSError("disk full")]
    original = forwarder.deliver

    async def flaky(inbound: Inbound) -> None:
        if failures:
            raise failures.pop()
        await original(inbound)

    forwarder.deliver = flaky
    command = remote.packet(SERVED, Command("open"))
    data = remote.seal(command)
    standin.send_down(GATEWAY.address, data)
    await eventually(lambda: forwarder.stats().dropped.get("deliver_failed") == 1)
    await asyncio.sleep(0.1)
    assert standin.acked_by_gateway == []
    standin.send_down(GATEWAY.address, data)
    await eventually(lambda: standin.acked_by_gateway == [command.message_id])
    assert [p.message_id for p in gateway.delivered] == [command.message_id]


async def link_comes_up(database: Path, port: int, token: str, tls_files: TlsFiles) -> bool:
    """Whether a forwarder with these credentials gets a session within a second."""
    commits = GroupCommit(open_store(database))
    forwarder = Forwarder(
        sender=Sender(GATEWAY),
        receiver=Receiver(GATEWAY),
        link=RouterLink("127.0.0.1", token, ROUTER.address, port=port, tls_files=tls_files),
        queue=PacketQueue(commits),
        deliver=lambda inbound: asyncio.sleep(0),
        serves=lambda address: False,
        max_backoff=0.2,
    )
    await forwarder.start()
    try:
        with contextlib.suppress(TimeoutError):
            await eventually(lambda: forwarder.stats().link_up, 1.0)
        return forwarder.stats().link_up
    finally:
        await forwarder.stop()
        commits.connection.close()


async def test_token_is_the_password_and_the_address_the_user_name(tmp_path: Path) -> None:
    certs = make_tls_certs(tmp_path / "certs")
    broker = Mosquitto(workdir=tmp_path, tls=certs, passwords={GATEWAY.address.text: "good-token"})
    broker.start()
    try:
        files = TlsFiles(certs.ca_file)
        assert not await link_comes_up(tmp_path / "a.db", broker.port, "bad-token", files)
        assert await link_comes_up(tmp_path / "b.db", broker.port, "good-token", files)
    finally:
        broker.stop()


async def test_client_certificate_when_the_router_broker_requires_one(tmp_path: Path) -> None:
    certs = make_tls_certs(tmp_path / "certs")
    broker = Mosquitto(workdir=tmp_path, tls=certs, require_client_cert=True)
    broker.start()
    try:
        without = TlsFiles(certs.ca_file)
        with_cert = TlsFiles(certs.ca_file, certs.client_cert_file, certs.client_key_file)
        assert not await link_comes_up(tmp_path / "a.db", broker.port, "t", without)
        assert await link_comes_up(tmp_path / "b.db", broker.port, "t", with_cert)
    finally:
        broker.stop()


async def test_unreachable_router_keeps_packets_queued(tmp_path: Path) -> None:
    commits = GroupCommit(open_store(tmp_path / "g.db"))
    forwarder = Forwarder(
        sender=Sender(GATEWAY),
        receiver=Receiver(GATEWAY),
        link=RouterLink("127.0.0.1", "t", ROUTER.address, port=free_port(), tls=False),
        queue=PacketQueue(commits),
        deliver=lambda inbound: asyncio.sleep(0),
        serves=lambda address: False,
        max_backoff=0.2,
    )
    await forwarder.start()
    try:
        await submit_all(forwarder, thing_packets(10))
        await asyncio.sleep(0.5)
        stats = forwarder.stats()
        assert stats.queued == 10
        assert stats.forwarded == 0
        assert stats.link_up is False
    finally:
        await forwarder.stop()
        commits.connection.close()


@pytest.mark.skipif(not os.environ.get("I4T_SOAK"), reason="soak test: set I4T_SOAK=1")
async def test_soak_outages_and_lost_acks(
    gateways: GatewayFactory, router_broker: Mosquitto, standin: RouterStandIn
) -> None:
    """About a minute: 20 000 packets through five broker outages and 20 % lost acks."""
    standin.drop_ack_share = 0.2
    gateway = await gateways.start(window=64)
    forwarder = gateway.forwarder
    expected: set[bytes] = set()
    for _ in range(5):
        for _ in range(4):
            batch = thing_packets(1000)
            expected |= {p.message_id for p, _ in batch}
            await submit_all(forwarder, batch)
            await asyncio.sleep(0.5)
        router_broker.stop()
        await asyncio.sleep(2)
        router_broker.start()
    await eventually(lambda: forwarder.stats().queued == 0, 120)
    assert standin.unique() == expected
    assert standin.delivered_count() == len(expected)
