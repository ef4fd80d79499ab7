"""The I4T BLE status beacon (docs/PROTOCOL.md §14): a compact, authenticated status frame that an
I4T-native BLE thing broadcasts as service data under its own 128-bit service UUID.

Frame: ``header(1) || counter(4, little-endian) || readings || tag(4)``.

* header: bits 7-5 version (1), bit 4 broken, bit 3 reserved (0), bits 2-0 flags.
* readings: ``object id(1) || value`` pairs, ids strictly ascending, each id with a fixed value
  size; ids and scaling are those of BTHome v2 for the types defined here, so firmware can share
  one encoder table. The all-ones (unsigned) or most negative (signed) value means "no value".
* tag: the first 4 bytes of HMAC-SHA256(beacon key, UUID || MAC || frame without the tag).

This module is pure: it encodes, checks and authenticates frames. Replay protection (the
counter must grow) needs per-thing state and lives in the endpoint (ble.py).
"""

from __future__ import annotations

from dataclasses import dataclass
import enum
import hashlib
import hmac
from typing import Final
import uuid

from .ble_common import BleReading, mac_bytes

BEACON_UUID: Final = "17d234ab-de7a-4c3d-8846-9ca593acc999"
GATT_SERVICE_UUID: Final = BEACON_UUID
"""Connectable beacons expose this service for commands (PROTOCOL.md §14.7)."""
GATT_PACKET_IN_UUID: Final = "fd5adc69-d6b5-4079-82d9-38f607086c07"
"""Its one characteristic: the gateway writes a whole sealed I4T packet into it."""
"""The service UUID of the beacon (random, version 4), in HA's lower-case text form."""
BEACON_UUID_BYTES: Final = uuid.UUID(BEACON_UUID).bytes
VERSION: Final = 1
KEY_SIZE: Final = 16
TAG_SIZE: Final = 4
COUNTER_SIZE: Final = 4
HEADER_SIZE: Final = 1
MIN_FRAME: Final = HEADER_SIZE + COUNTER_SIZE + TAG_SIZE
LEGACY_MAX_FRAME: Final = 13
"""What fits a legacy (31-byte) advertisement next to the 18 bytes of the 128-bit service data
AD header, without a flags AD (a non-connectable beacon needs none)."""
MAX_FRAME: Final = 64
"""The largest frame accepted: room for extended (BLE 5) advertising, bounded parsing."""
MAX_COUNTER: Final = 0xFFFF_FFFF

_VERSION_SHIFT: Final = 5
_BROKEN_BIT: Final = 0x10
_RESERVED_BIT: Final = 0x08
_FLAG_MASK: Final = 0x07


class BeaconFlag(enum.IntFlag):
    """Bits 2-0 of the header: hints about the thing, not its status."""

    NONE = 0
    SLEEPY = 0x01
    """Sends on change only: do not learn a DEAD timeout from its advertising interval."""
    LOW_BATTERY = 0x02
    CONNECTABLE = 0x04
    """Accepts GATT writes (ble_gatt.py) while it advertises."""


class BeaconReason(enum.StrEnum):
    """Why a frame is refused; used as drop counter labels."""

    MALFORMED = "beacon_malformed"
    UNSUPPORTED_VERSION = "beacon_unsupported_version"
    BAD_TAG = "beacon_bad_tag"
    BAD_FIELD = "beacon_bad_field"


class BeaconError(ValueError):
    def __init__(self, reason: BeaconReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ReadingType:
    """One object id: its value size, signedness, decimal scale and meaning."""

    object_id: int
    key: str
    size: int
    signed: bool
    decimals: int
    unit: str | None
    device_class: str | None

    @property
    def no_value(self) -> int:
        """The raw value that means "no value" (a failed probe)."""
        return -(1 << (8 * self.size - 1)) if self.signed else (1 << (8 * self.size)) - 1

    def raw_range(self) -> tuple[int, int]:
        """Raw values that carry a value (the no-value sentinel excluded)."""
        bits = 8 * self.size
        if self.signed:
            return -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 2


READING_TYPES: Final[dict[int, ReadingType]] = {
    t.object_id: t
    for t in (
        ReadingType(0x01, "battery", 1, False, 0, "%", "battery"),
        ReadingType(0x02, "temperature", 2, True, 2, "°C", "temperature"),
        ReadingType(0x03, "humidity", 2, False, 2, "%", "humidity"),
        ReadingType(0x04, "pressure", 3, False, 2, "hPa", "pressure"),
        ReadingType(0x05, "illuminance", 3, False, 2, "lx", "illuminance"),
        ReadingType(0x0C, "voltage", 2, False, 3, "V", "voltage"),
        ReadingType(0x12, "carbon_dioxide", 2, False, 0, "ppm", "carbon_dioxide"),
        ReadingType(0x14, "moisture", 2, False, 2, "%", "moisture"),
        ReadingType(0x3E, "count", 4, False, 0, None, None),
    )
}
READING_TYPES_BY_KEY: Final = {t.key: t for t in READING_TYPES.values()}


@dataclass(frozen=True, slots=True)
class BeaconFrame:
    """The fields of one frame. ``readings`` maps a reading key of READING_TYPES to its value
    (None: no value); they travel in ascending object id order whatever the mapping order."""

    counter: int
    broken: bool = False
    flags: BeaconFlag = BeaconFlag.NONE
    readings: tuple[tuple[str, float | int | None], ...] = ()
    version: int = VERSION

    def ble_readings(self) -> tuple[BleReading, ...]:
        out = []
        for key, value in self.readings:
            kind = READING_TYPES_BY_KEY[key]
            out.append(BleReading(key, value, kind.unit, kind.device_class))
        return tuple(out)


def beacon_tag(key: bytes, mac: str, body: bytes) -> bytes:
    """The 4-byte tag of ``body`` (the frame without its tag) sent from ``mac``."""
    if len(key) != KEY_SIZE:
        raise ValueError("a beacon key is 16 bytes")
    message = BEACON_UUID_BYTES + mac_bytes(mac) + body
    return hmac.new(key, message, hashlib.sha256).digest()[:TAG_SIZE]


def encode_frame(frame: BeaconFrame, mac: str, key: bytes) -> bytes:
    """The service data bytes of ``frame`` sent from ``mac`` under ``key``."""
    if frame.version != VERSION:
        raise ValueError("only version 1 frames can be encoded")
    if not 1 <= frame.counter <= MAX_COUNTER:
        raise ValueError("the counter is 1 to 2^32-1")
    header = (frame.version << _VERSION_SHIFT) | int(frame.flags)
    if frame.broken:
        header |= _BROKEN_BIT
    body = bytes([header]) + frame.counter.to_bytes(COUNTER_SIZE, "little")
    body += _encode_readings(frame.readings)
    if len(body) + TAG_SIZE > MAX_FRAME:
        raise ValueError(f"a frame is at most {MAX_FRAME} bytes")
    return body + beacon_tag(key, mac, body)


def _encode_readings(readings: tuple[tuple[str, float | int | None], ...]) -> bytes:
    kinds = []
    for key, value in readings:
        kind = READING_TYPES_BY_KEY.get(key)
        if kind is None:
            raise ValueError(f"no beacon reading type {key!r}")
        kinds.append((kind, value))
    kinds.sort(key=lambda pair: pair[0].object_id)
    ids = [kind.object_id for kind, _ in kinds]
    if len(set(ids)) != len(ids):
        raise ValueError("each reading type at most once per frame")
    out = bytearray()
    for kind, value in kinds:
        out.append(kind.object_id)
        out += _raw(kind, value).to_bytes(kind.size, "little", signed=kind.signed)
    return bytes(out)


def _raw(kind: ReadingType, value: float | int | None) -> int:
    if value is None:
        return kind.no_value
    raw: int = round(value * 10**kind.decimals)
    low, high = kind.raw_range()
    if not low <= raw <= high:
        raise ValueError(f"{kind.key} {value} is out of range")
    return raw


def check_frame(data: bytes, mac: str, key: bytes) -> BeaconFrame:
    """Authenticate and decode a frame; BeaconError says why it is refused.

    The order is length, version, tag, then the fields: nothing past the version is read
    before the tag proves the frame came from the key holder.
    """
    if not MIN_FRAME <= len(data) <= MAX_FRAME:
        raise BeaconError(BeaconReason.MALFORMED, f"a frame is {MIN_FRAME}-{MAX_FRAME} bytes")
    header = data[0]
    version = header >> _VERSION_SHIFT
    if version != VERSION:
        raise BeaconError(BeaconReason.UNSUPPORTED_VERSION, str(version))
    body, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
    if not hmac.compare_digest(beacon_tag(key, mac, body), tag):
        raise BeaconError(BeaconReason.BAD_TAG)
    if header & _RESERVED_BIT:
        raise BeaconError(BeaconReason.BAD_FIELD, "reserved header bit set")
    counter = int.from_bytes(body[HEADER_SIZE : HEADER_SIZE + COUNTER_SIZE], "little")
    if counter == 0:
        raise BeaconError(BeaconReason.BAD_FIELD, "counter 0")
    return BeaconFrame(
        counter=counter,
        broken=bool(header & _BROKEN_BIT),
        flags=BeaconFlag(header & _FLAG_MASK),
        readings=_decode_readings(body[HEADER_SIZE + COUNTER_SIZE :]),
        version=version,
    )


def peek_counter(data: bytes) -> int | None:
    """The counter of a frame without checking anything (to refuse replays before the MAC)."""
    if len(data) < MIN_FRAME:
        return None
    return int.from_bytes(data[HEADER_SIZE : HEADER_SIZE + COUNTER_SIZE], "little")


def _decode_readings(data: bytes) -> tuple[tuple[str, float | int | None], ...]:
    out: list[tuple[str, float | int | None]] = []
    position, previous = 0, -1
    while position < len(data):
        kind = READING_TYPES.get(data[position])
        if kind is None:
            raise BeaconError(BeaconReason.BAD_FIELD, f"unknown object id {data[position]:#04x}")
        if kind.object_id <= previous:
            raise BeaconError(BeaconReason.BAD_FIELD, "object ids not strictly ascending")
        end = position + 1 + kind.size
        if end > len(data):
            raise BeaconError(BeaconReason.MALFORMED, f"{kind.key} runs past the end")
        raw = int.from_bytes(data[position + 1 : end], "little", signed=kind.signed)
        out.append((kind.key, _value(kind, raw)))
        position, previous = end, kind.object_id
    return tuple(out)


def _value(kind: ReadingType, raw: int) -> float | int | None:
    if raw == kind.no_value:
        return None
    if kind.decimals == 0:
        return raw
    scaled: float = round(raw / 10**kind.decimals, kind.decimals)
    return scaled
