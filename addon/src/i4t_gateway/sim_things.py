"""The simulated things of simulator.py: I4T-native Wi-Fi things and BLE advertisers.

Everything a thing is derives from the simulator seed and its index, so two runs with the same
seed are the same fleet (same keys, addresses, MACs, bindkeys). Each thing has a state that
the command line or the control topic sets: healthy, broken (it says so: a native thing's DATA
carries health "broken" and a null temperature; a BTHome sensor turns its problem sensor on; a
beacon sets its broken bit), silent (it stops sending and answering, so the gateway must declare
it DEAD) or flapping (broken and healthy on alternate reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import enum
import hashlib
import random
import time
from typing import Any, Final

from . import api
from .beacon import BEACON_UUID, BeaconFrame, encode_frame
from .ble import Advert
from .ble_bthome import BTHOME_UUID, encode_encrypted, encode_plain
from .ble_common import mac_text
from .cose import PacketError
from .endpoint import Receiver, Sender
from .identity import Address, Identity
from .payloads import (
    Command,
    Data,
    HealthRequest,
    HealthResponse,
    NodeHealth,
    PacketType,
    Reading,
)

COUNTER_EPOCH: Final = 1_735_689_600  # 2025-01-01 UTC
COUNTER_RATE: Final = 8
"""Counters start at (now - epoch) * 8, so each run starts above the last one's as long as a
thing averaged under 8 adverts a second, and 2^32 lasts until about 2042."""


class ThingState(enum.StrEnum):
    HEALTHY = "healthy"
    BROKEN = "broken"
    SILENT = "silent"
    FLAPPING = "flapping"


class BleFormat(enum.StrEnum):
    BTHOME = "bthome"
    BTHOME_ENCRYPTED = "bthome_encrypted"
    BEACON = "beacon"


def derive(seed: bytes, label: str, index: int, size: int = 32) -> bytes:
    """A reproducible secret for thing ``index``: SHA-256(seed || label || index)."""
    return hashlib.sha256(seed + label.encode() + index.to_bytes(4, "big")).digest()[:size]


def counter_start(now: float | None = None) -> int:
    return max(1, int(((time.time() if now is None else now) - COUNTER_EPOCH) * COUNTER_RATE))


@dataclass(slots=True)
class SimThing:
    """What every simulated thing shares: index, state, schedule, reproducible randomness."""

    index: int
    state: ThingState
    rng: random.Random
    reports: int = 0
    interval: float | None = None
    """Seconds between reports; None: the simulator's default."""

    @property
    def silent(self) -> bool:
        return self.state is ThingState.SILENT

    def broken_now(self) -> bool:
        """Whether the current report says broken (flapping alternates, starting broken)."""
        if self.state is ThingState.FLAPPING:
            return self.reports % 2 == 0
        return self.state is ThingState.BROKEN

    def walk(self, centre: float, spread: float) -> float:
        return round(centre + self.rng.uniform(-spread, spread), 2)


@dataclass(slots=True)
class WifiThing(SimThing):
    """An I4T-native thing on Wi-Fi: signs its packets, talks on i4t/thing/<address>/up|down."""

    identity: Identity = field(default_factory=Identity.generate)
    sender: Sender = field(init=False)
    receiver: Receiver = field(init=False)
    acked: int = 0
    commands: int = 0

    def __post_init__(self) -> None:
        self.sender = Sender(self.identity)
        self.receiver = Receiver(self.identity)

    @property
    def address(self) -> str:
        return self.identity.address.text

    @property
    def up(self) -> str:
        return api.thing_up(self.address)

    @property
    def down(self) -> str:
        return api.thing_down(self.address)

    def health(self) -> NodeHealth:
        return NodeHealth.BROKEN if self.broken_now() else NodeHealth.HEALTHY

    def report(self, gateway: Address) -> bytes:
        """A signed DATA packet with readings and the thing's own health."""
        broken = self.broken_now()
        temperature = None if broken else self.walk(21.0, 1.5)
        data = Data(
            (
                Reading("temperature", temperature, "°C"),
                Reading("humidity", self.walk(48.0, 5.0), "%"),
            ),
            NodeHealth.BROKEN if broken else NodeHealth.HEALTHY,
        )
        self.reports += 1
        return self.sender.seal(self.sender.packet(gateway, data))

    def handle_down(self, payload: bytes) -> list[bytes]:
        """Answer what the gateway sent: health requests with a response, commands with an ack.

        Returns the packets to publish on the up topic; refused packets are counted by the
        receiver and answered with nothing.
        """
        try:
            inbound = self.receiver.receive(payload)
        except PacketError:
            return []
        packet = inbound.packet
        if not inbound.for_me:
            return []
        if inbound.duplicate:
            # A retransmitted command means our ack was lost: ack again, act once.
            if packet.type is PacketType.COMMAND:
                return [self.sender.ack(packet.src, [packet.message_id])]
            return []
        out: list[bytes] = []
        if packet.type is PacketType.HEALTH_REQUEST:
            assert isinstance(packet.payload, HealthRequest)
            response = HealthResponse(packet.message_id, self.health())
            out.append(self.sender.seal(self.sender.packet(packet.src, response)))
        elif packet.type is PacketType.COMMAND:
            assert isinstance(packet.payload, Command)
            self.commands += 1
            out.append(self.sender.ack(packet.src, [packet.message_id]))
        elif packet.type is PacketType.ACK:
            self.acked += 1
        self.receiver.handled(inbound)
        return out

    def manifest(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": "native",
            "address": self.address,
            "public_key": self.identity.public_bytes.hex(),
            "state": self.state.value,
            "up": self.up,
            "down": self.down,
        }


@dataclass(slots=True)
class BleThing(SimThing):
    """A BLE advertiser: BTHome v2 (plain or encrypted) or an I4T beacon."""

    mac: str = "C0:00:00:00:00:00"
    format: BleFormat = BleFormat.BTHOME
    key: bytes | None = None
    counter: int = field(default_factory=counter_start)
    source: str = "sim-proxy"

    @property
    def local_name(self) -> str:
        return f"I4T-SIM {self.index}"

    def advert(self, now: float) -> Advert:
        """The next advert (counter and BTHome packet id move on with each)."""
        self.counter += 1
        broken = self.broken_now()
        if self.format is BleFormat.BEACON:
            uuid, data = BEACON_UUID, self._beacon(broken)
        else:
            uuid, data = BTHOME_UUID, self._bthome(broken)
        self.reports += 1
        rssi = -50 - self.rng.randrange(40)
        return Advert(self.mac, rssi, now, self.source, {uuid: data}, {}, self.local_name)

    def _bthome(self, broken: bool) -> bytes:
        values: dict[str, float | int | bool] = {
            "packet_id": self.counter % 256,
            "battery": 90,
            "humidity": self.walk(50.0, 5.0),
        }
        if broken:
            values["problem"] = True
        else:
            values["temperature"] = self.walk(20.0, 1.5)
        if self.format is BleFormat.BTHOME_ENCRYPTED:
            assert self.key is not None
            del values["packet_id"]  # the counter orders encrypted adverts
            return encode_encrypted(values, mac=self.mac, bindkey=self.key, counter=self.counter)
        return encode_plain(values)

    def _beacon(self, broken: bool) -> bytes:
        # A legacy advert has room for one reading: rotate them, as MiBeacon sensors do.
        rotation: list[tuple[str, float | int | None]] = [
            ("temperature", None if broken else self.walk(20.0, 1.5)),
            ("humidity", self.walk(50.0, 5.0)),
            ("battery", 90),
        ]
        frame = BeaconFrame(
            self.counter, broken=broken, readings=(rotation[self.reports % len(rotation)],)
        )
        assert self.key is not None
        return encode_frame(frame, self.mac, self.key)

    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "kind": "beacon" if self.format is BleFormat.BEACON else "bthome",
            "format": self.format.value,
            "mac": self.mac,
            "state": self.state.value,
            "local_name": self.local_name,
        }
        if self.format is BleFormat.BEACON:
            out["beacon_key"] = None if self.key is None else self.key.hex()
        else:
            out["bindkey"] = None if self.key is None else self.key.hex()
        return out


def make_wifi(seed: bytes, index: int, state: ThingState) -> WifiThing:
    rng = random.Random(derive(seed, "rng", index))  # noqa: S311 - readings, not secrets
    return WifiThing(index, state, rng, identity=Identity.from_seed(derive(seed, "wifi", index)))


def make_ble(seed: bytes, index: int, ble_index: int, state: ThingState) -> BleThing:
    """BLE thing ``ble_index`` (0-based among BLE things): formats rotate plain, encrypted,
    beacon; the MAC is a static random address (top two bits set)."""
    rng = random.Random(derive(seed, "rng", index))  # noqa: S311 - readings, not secrets
    raw = bytearray(derive(seed, "mac", index, 6))
    raw[0] |= 0xC0
    mac = mac_text(bytes(raw))
    ble_format = list(BleFormat)[ble_index % len(BleFormat)]
    key = None if ble_format is BleFormat.BTHOME else derive(seed, "key", index, 16)
    return BleThing(index, state, rng, mac=mac, format=ble_format, key=key)
