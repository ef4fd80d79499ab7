"""BTHome v2 adverts: decoding with the ``bthome-ble`` library, and a small encoder.

bthome-ble's ``BTHomeBluetoothDeviceData.update(service_info)`` reads only plain attributes of
HA's ``BluetoothServiceInfoBleak`` (name, address, rssi, manufacturer_data, service_data,
service_uuids, source, time), so :class:`ServiceInfo` supplies exactly those and nothing of
Home Assistant or bleak is constructed. The library keeps per-device state (BTHome packet id
de-duplication, the last encryption counter), so there is one :class:`BTHomeDevice` per
enrolled sensor.

What this module adds around the library, because the gateway must count every refusal by
reason and the library only logs: a header check (version, downgrade to plaintext when a
bindkey is set, encrypted without a bindkey), a persisted counter that must strictly grow
(the library accepts counters below 100 again after a "restart", which would let a recorded
advert be replayed), and telling a failed decryption from a success after the call.

The encoder exists for the simulator, the tests and the benchmark: real sensors make their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
import enum
import logging
from typing import Any, Final

from bthome_ble import BTHomeBluetoothDeviceData
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from .ble_common import BleReading, ReadingValue, mac_bytes

BTHOME_UUID: Final = "0000fcd2-0000-1000-8000-00805f9b34fb"
BINDKEY_SIZE: Final = 16
COUNTER_SIZE: Final = 4
MIC_SIZE: Final = 4
_UUID_LE: Final = b"\xd2\xfc"
_ENCRYPTED: Final = 0x01
_MAC_INCLUDED: Final = 0x02
_SLEEPY: Final = 0x04
_VERSION_2: Final = 2 << 5
_NOT_READINGS: Final = frozenset({"packet_id", "signal_strength"})
_PROBLEM: Final = "problem"

# bthome-ble logs device names and addresses at warning level for every bad advert; the
# endpoint counts those cases itself, and the brief wants no identifying data in logs.
_LIBRARY_LOGGER: Final = "bthome_ble"


class BTHomeReason(enum.StrEnum):
    """Why a BTHome advert is dropped; used as drop counter labels."""

    MALFORMED = "bthome_malformed"
    UNSUPPORTED_VERSION = "bthome_unsupported_version"
    DOWNGRADE = "bthome_plaintext_with_bindkey"
    NO_BINDKEY = "bthome_encrypted_without_bindkey"
    DECRYPT_FAILED = "bthome_decrypt_failed"
    REPLAYED = "bthome_replayed"
    DUPLICATE = "bthome_duplicate"


class BTHomeError(ValueError):
    def __init__(self, reason: BTHomeReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """The attributes bthome-ble reads of HA's BluetoothServiceInfoBleak (duck-typed)."""

    name: str
    address: str
    rssi: int
    manufacturer_data: dict[int, bytes]
    service_data: dict[str, bytes]
    service_uuids: list[str]
    source: str
    time: float


@dataclass(frozen=True, slots=True)
class BTHomeResult:
    """What one accepted advert said: its fresh readings, whether a problem sensor is on."""

    readings: tuple[BleReading, ...]
    problem: bool
    sleepy: bool
    encrypted: bool
    counter: int | None


def quiet_library_logs() -> None:
    """Keep bthome-ble's per-advert warnings (names, addresses) out of the logs, unless the
    operator configured that logger explicitly."""
    logger = logging.getLogger(_LIBRARY_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


def header_of(data: bytes) -> tuple[bool, bool]:
    """(encrypted, sleepy) from a BTHome v2 device information byte; BTHomeError otherwise."""
    if len(data) < 2:
        raise BTHomeError(BTHomeReason.MALFORMED, "no payload")
    info = data[0]
    if info >> 5 != 2:
        raise BTHomeError(BTHomeReason.UNSUPPORTED_VERSION, str(info >> 5))
    return bool(info & _ENCRYPTED), bool(info & _SLEEPY)


@dataclass(slots=True)
class BTHomeDevice:
    """One enrolled BTHome sensor: the library's parser and the state around it."""

    mac: str
    bindkey: bytes | None = None
    last_counter: int = 0
    _parser: Any = field(init=False, repr=False)
    _seen: dict[Any, object] = field(init=False, repr=False, default_factory=dict)
    _descriptions: dict[Any, tuple[str | None, str | None]] = field(
        init=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if self.bindkey is not None and len(self.bindkey) != BINDKEY_SIZE:
            raise ValueError("a BTHome bindkey is 16 bytes")
        self._parser = BTHomeBluetoothDeviceData(bindkey=self.bindkey)

    def decode(self, info: ServiceInfo) -> BTHomeResult:
        """Readings of one advert that carries BTHome service data; BTHomeError otherwise."""
        data = info.service_data[BTHOME_UUID]
        encrypted, sleepy = header_of(data)
        counter = self._check_encryption(data, encrypted)
        try:
            update = self._parser.update(info)
        except Exception as err:  # a third-party parser on hostile input: never let it out
            raise BTHomeError(BTHomeReason.MALFORMED, type(err).__name__) from None
        if counter is not None:
            if self._parser.decryption_failed or self._parser.encryption_counter != counter:
                raise BTHomeError(BTHomeReason.DECRYPT_FAILED)
            self.last_counter = counter
        readings = self._fresh_readings(update)
        if not readings:
            # The library skipped it (same BTHome packet id heard again, e.g. by two scanners).
            raise BTHomeError(BTHomeReason.DUPLICATE)
        problem = any(r.device_class == _PROBLEM and r.value is True for r in readings)
        return BTHomeResult(readings, problem, sleepy, encrypted, counter)

    def authentic(self, data: bytes) -> bool:
        """Whether an encrypted advert decrypts under the bindkey, whatever its counter.

        Used only for adverts refused as replayed, to tell a genuine old advert (a replay, or
        a sensor whose counter restarted) from a forgery that merely claims a low counter.
        """
        if self.bindkey is None or len(data) < 1 + COUNTER_SIZE + MIC_SIZE:
            return False
        mac_length = 6 if data[0] & _MAC_INCLUDED else 0
        mac = data[1:7][::-1] if mac_length else mac_bytes(self.mac)
        payload = data[1 + mac_length :]
        counter, sealed = payload[-8:-4], payload[:-8] + payload[-4:]
        nonce = mac + _UUID_LE + data[:1] + counter
        try:
            AESCCM(self.bindkey, tag_length=MIC_SIZE).decrypt(nonce, sealed, None)
        except (InvalidTag, ValueError):
            return False
        return True

    def _check_encryption(self, data: bytes, encrypted: bool) -> int | None:
        if not encrypted:
            if self.bindkey is not None:
                raise BTHomeError(BTHomeReason.DOWNGRADE)
            return None
        if self.bindkey is None:
            raise BTHomeError(BTHomeReason.NO_BINDKEY)
        mac_length = 6 if data[0] & _MAC_INCLUDED else 0
        if len(data) < 1 + mac_length + 2 + COUNTER_SIZE + MIC_SIZE:
            raise BTHomeError(BTHomeReason.MALFORMED, "too short for an encrypted advert")
        counter = int.from_bytes(data[-8:-4], "little")
        # Checked before decrypting: cheap, and a forged advert cannot move the counter
        # because it only advances after a successful decryption.
        if counter == self.last_counter:
            raise BTHomeError(BTHomeReason.DUPLICATE)
        if counter < self.last_counter:
            raise BTHomeError(BTHomeReason.REPLAYED)
        return counter

    def _fresh_readings(self, update: Any) -> tuple[BleReading, ...]:
        """The values this advert set. The library returns every value it ever saw; the ones
        it set now are new objects (its values are frozen dataclasses made per update)."""
        out: list[BleReading] = []
        seen = self._seen
        for device_key, value in update.entity_values.items():
            if seen.get(device_key) is value or device_key.key in _NOT_READINGS:
                continue
            unit, device_class = self._meta(device_key, update.entity_descriptions)
            out.append(BleReading(device_key.key, _plain(value.native_value), unit, device_class))
        for device_key, value in update.binary_entity_values.items():
            if seen.get(device_key) is value:
                continue
            _, device_class = self._meta(device_key, update.binary_entity_descriptions)
            out.append(BleReading(device_key.key, value.native_value, None, device_class))
        for device_key, event in update.events.items():
            out.append(BleReading(device_key.key, event.event_type, None, "event"))
        self._seen = {**update.entity_values, **update.binary_entity_values}
        return tuple(out)

    def _meta(self, device_key: Any, descriptions: Any) -> tuple[str | None, str | None]:
        """(unit, device class) of a key as text; cached, the library's enums print slowly."""
        meta = self._descriptions.get(device_key)
        if meta is None:
            description = descriptions.get(device_key)
            meta = (
                _text(getattr(description, "native_unit_of_measurement", None)),
                _text(getattr(description, "device_class", None)),
            )
            self._descriptions[device_key] = meta
        return meta


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _plain(value: object) -> ReadingValue:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


# -- encoder (simulator, tests, benchmark) ---------------------------------------------------

_OBJECTS: Final[dict[str, tuple[int, int, bool, int]]] = {
    # key: (object id, size, signed, decimals), from the BTHome v2 format table
    "packet_id": (0x00, 1, False, 0),
    "battery": (0x01, 1, False, 0),
    "temperature": (0x02, 2, True, 2),
    "humidity": (0x03, 2, False, 2),
    "voltage": (0x0C, 2, False, 3),
    "problem": (0x26, 1, False, 0),
}


def encode_objects(values: Mapping[str, float | int | bool]) -> bytes:
    """BTHome v2 objects for ``values``, in ascending object id order as the format asks."""
    parts = []
    for key, value in values.items():
        object_id, size, signed, decimals = _OBJECTS[key]
        raw = round(float(value) * 10**decimals)
        parts.append((object_id, bytes([object_id]) + raw.to_bytes(size, "little", signed=signed)))
    return b"".join(part for _, part in sorted(parts))


def encode_plain(values: Mapping[str, float | int | bool], *, sleepy: bool = False) -> bytes:
    """Service data of an unencrypted BTHome v2 advert."""
    return bytes([_VERSION_2 | (_SLEEPY if sleepy else 0)]) + encode_objects(values)


def encode_encrypted(
    values: Mapping[str, float | int | bool], *, mac: str, bindkey: bytes, counter: int
) -> bytes:
    """Service data of an encrypted BTHome v2 advert (AES-CCM, 4-byte MIC)."""
    info = _VERSION_2 | _ENCRYPTED
    counter_bytes = counter.to_bytes(COUNTER_SIZE, "little")
    nonce = mac_bytes(mac) + _UUID_LE + bytes([info]) + counter_bytes
    sealed = AESCCM(bindkey, tag_length=MIC_SIZE).encrypt(nonce, encode_objects(values), None)
    return bytes([info]) + sealed[:-MIC_SIZE] + counter_bytes + sealed[-MIC_SIZE:]
