"""A stand-in for a regional router in the uplink tests: a paho client on the router's broker.

It receives what gateways publish on ``i4t/r/up/<gateway>``, verifies every packet, de-duplicates
by message id (counting every copy) and answers with signed ack packets on
``i4t/r/down/<gateway>``. It can misbehave on request: swallow acks, drop a share of them, send
each ack twice. It also sends packets down and records the gateway's acks for them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
import random
import socket
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from i4t_gateway.cose import PacketError, Reason
from i4t_gateway.endpoint import Receiver, Sender
from i4t_gateway.identity import Address, Identity
from i4t_gateway.links import DOWN_TOPIC_PREFIX, UP_TOPIC_PREFIX, down_topic
from i4t_gateway.payloads import MAX_ACKS, Ack, PacketType
from i4t_gateway.replay import DEFAULT_DEDUP_CAPACITY, DedupCache
from i4t_gateway.wire import peek


def _no_delay(client: mqtt.Client, userdata: object, sock: Any) -> None:
    # Without it, Nagle holds back the acks 40 ms at a time (BRIEF section 4).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class RouterStandIn:
    """Thread-safe counters; the paho network thread does the work."""

    def __init__(
        self,
        port: int,
        ca_file: Path | None,
        identity: Identity,
        *,
        seed: int = 1,
        batch_acks: bool = False,
        dedup_capacity: int = DEFAULT_DEDUP_CAPACITY,
    ) -> None:
        self.me = identity
        self._sender = Sender(identity)
        # Long fault runs send more than the default window: keep every id to count copies.
        self._receiver = Receiver(identity, dedup=DedupCache(capacity=dedup_capacity))
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.acking = True
        self.drop_ack_share = 0.0
        self.duplicate_acks = False
        self.copies: Counter[bytes] = Counter()
        self.delivered: list[bytes] = []
        self.acked_by_gateway: list[bytes] = []
        self.rejected: Counter[str] = Counter()
        self._subscribed = threading.Event()
        # With batch_acks, acks are collected and sent every few ms, up to 64 ids per packet,
        # as a router under load would.
        self._unacked: dict[Address, list[bytes]] = {}
        self._closing = threading.Event()
        self._flusher: threading.Thread | None = None
        if batch_acks:
            self._flusher = threading.Thread(target=self._flush_acks_forever, daemon=True)
            self._flusher.start()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="router-standin",
            protocol=mqtt.MQTTv5,
        )
        if ca_file is not None:  # None: a plain broker (a parent router's, in the fault runs)
            self.client.tls_set_context(ssl.create_default_context(cafile=str(ca_file)))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = _no_delay
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the router stand-in could not subscribe")

    def close(self) -> None:
        self._closing.set()
        if self._flusher is not None:
            self._flusher.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(f"{UP_TOPIC_PREFIX}/+", qos=1)

    def unique(self) -> set[bytes]:
        with self._lock:
            return set(self.delivered)

    def delivered_count(self) -> int:
        with self._lock:
            return len(self.delivered)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        gateway = Address.from_text(msg.topic.rsplit("/", 1)[1])
        with self._lock:
            try:
                inbound = self._receiver.receive(msg.payload)
            except PacketError as err:
                self.rejected[err.reason] += 1
                # As the router does: an authentic packet for it that the replay window refuses
                # (queued before the gateway restarted, sent after newer ones) is acked, or it
                # would stay in the gateway's queue (docs/ROUTER.md).
                old = peek(msg.payload) if err.reason in (Reason.STALE, Reason.REPLAYED) else None
                if old is None or old.type is PacketType.ACK:
                    return
                ack = self._sender.ack(gateway, [old.message_id])
                client.publish(f"{DOWN_TOPIC_PREFIX}/{gateway.text}", ack, qos=1)
                return
            packet = inbound.packet
            if packet.type is PacketType.ACK:
                assert isinstance(packet.payload, Ack)
                self.acked_by_gateway.extend(packet.payload.message_ids)
                return
            self.copies[packet.message_id] += 1
            if not inbound.duplicate:
                self._receiver.handled(inbound)
                self.delivered.append(packet.message_id)
            if not self.acking or self._rng.random() < self.drop_ack_share:
                return
            if self._flusher is not None:
                self._unacked.setdefault(gateway, []).append(packet.message_id)
                return
            ack = self._sender.ack(gateway, [packet.message_id])
        for _ in range(2 if self.duplicate_acks else 1):
            client.publish(f"{DOWN_TOPIC_PREFIX}/{gateway.text}", ack, qos=1)

    def _flush_acks_forever(self) -> None:
        while not self._closing.wait(0.005):
            with self._lock:
                unacked, self._unacked = self._unacked, {}
                acks = [
                    (gateway, self._sender.ack(gateway, ids[start : start + MAX_ACKS]))
                    for gateway, ids in unacked.items()
                    for start in range(0, len(ids), MAX_ACKS)
                ]
            for gateway, ack in acks:
                self.send_down(gateway, ack)

    def send_down(self, gateway: Address, data: bytes) -> None:
        self.client.publish(down_topic(gateway.text), data, qos=1)

    def ack_down(
        self, gateway: Address, message_ids: list[bytes], to: Address | None = None
    ) -> None:
        """Send an ack of our own (with this router's sequence numbers) on gateway's down
        topic, addressed to ``to`` (default: the gateway)."""
        with self._lock:
            ack = self._sender.ack(gateway if to is None else to, message_ids)
        self.send_down(gateway, ack)
