"""Enrolled things and candidates: only enrolled things become nodes.

A thing is enrolled by one of: its public key (an I4T-native thing that signs for itself),
a BLE MAC with an optional BTHome bindkey, a BLE MAC with an I4T beacon key, or an adopted
MQTT device definition. Things that cannot sign get a proxied address under the gateway's key
(identity.Address.for_proxied), and the gateway signs for them.

Things heard but not enrolled are kept as a bounded list of candidates, most recently heard
last, so the user can enrol them; they never become nodes on their own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
import re
from typing import Any, Final

from .identity import PUBLIC_KEY_SIZE, Address

MAX_CANDIDATES: Final = 256
MAX_NAME: Final = 100
_MAC = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
# A proxied local id is at most 64 bytes and MQTT devices' ids carry the "mqtt:" prefix.
_LOCAL_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,58}$")


class ThingKind(StrEnum):
    NATIVE = "native"
    BTHOME = "bthome"
    BEACON = "beacon"
    MQTT = "mqtt"


class EnrolmentError(ValueError):
    """An enrolment request that cannot be carried out; the message says why."""


@dataclass(frozen=True, slots=True)
class Reading:
    """The latest value of one reading of a node, as shown on the local API."""

    value: float | int | str | bool | None
    unit: str | None
    device_class: str | None
    at: float

    def export(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "device_class": self.device_class,
            "at": round(self.at, 3),
        }


@dataclass(frozen=True, slots=True)
class Thing:
    """An enrolled thing. ``secret`` is the bindkey or beacon key (hex), never published."""

    address: Address
    kind: ThingKind
    name: str
    public_key: bytes | None = None
    mac: str | None = None
    secret: str | None = None
    device: dict[str, Any] | None = None
    enrolled_at: float = 0.0

    @property
    def key(self) -> bytes:
        """The node key the health engine and the groups use: the address bytes."""
        return self.address.bytes

    def export(self) -> dict[str, Any]:
        """For persistence (secrets included: the database is the gateway's own)."""
        return {
            "address": self.address.text,
            "kind": self.kind.value,
            "name": self.name,
            "public_key": None if self.public_key is None else self.public_key.hex(),
            "mac": self.mac,
            "secret": self.secret,
            "device": self.device,
            "enrolled_at": self.enrolled_at,
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Thing:
        public_key = data.get("public_key")
        return cls(
            address=Address.from_text(data["address"]),
            kind=ThingKind(data["kind"]),
            name=str(data["name"]),
            public_key=None if public_key is None else bytes.fromhex(public_key),
            mac=data.get("mac"),
            secret=data.get("secret"),
            device=data.get("device"),
            enrolled_at=float(data.get("enrolled_at", 0.0)),
        )


@dataclass(slots=True)
class Candidate:
    """A thing heard but not enrolled."""

    ident: str
    kind: ThingKind
    first_seen: float
    last_seen: float
    heard: int = 1
    rssi: int | None = None
    public_key: bytes | None = None
    hint: str | None = None

    def export(self) -> dict[str, Any]:
        return {
            "id": self.ident,
            "kind": self.kind.value,
            "first_seen": round(self.first_seen, 3),
            "last_seen": round(self.last_seen, 3),
            "heard": self.heard,
            "rssi": self.rssi,
            "public_key": None if self.public_key is None else self.public_key.hex(),
            "hint": self.hint,
        }


@dataclass(slots=True)
class Things:
    """The enrolled things by address (and by MAC for BLE), and the candidates."""

    gateway_key: bytes
    max_candidates: int = MAX_CANDIDATES
    _by_address: dict[Address, Thing] = field(default_factory=dict)
    _by_mac: dict[str, Thing] = field(default_factory=dict)
    _candidates: OrderedDict[str, Candidate] = field(default_factory=OrderedDict)
    readings: dict[Address, dict[str, Reading]] = field(default_factory=dict)
    rssi: dict[Address, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._by_address)

    def __iter__(self) -> Iterator[Thing]:
        return iter(list(self._by_address.values()))

    def get(self, address: Address) -> Thing | None:
        return self._by_address.get(address)

    def by_mac(self, mac: str) -> Thing | None:
        return self._by_mac.get(mac.upper())

    # Enrolment

    def enrol_native(self, public_key: bytes, name: str, now: float) -> Thing:
        if len(public_key) != PUBLIC_KEY_SIZE:
            raise EnrolmentError("a public key is 32 bytes (64 hex digits)")
        thing = Thing(
            Address.for_public_key(public_key),
            ThingKind.NATIVE,
            _name(name),
            public_key=public_key,
            enrolled_at=now,
        )
        return self._add(thing, candidate_id=thing.address.text)

    def enrol_ble(
        self, kind: ThingKind, mac: str, secret: str | None, name: str, now: float
    ) -> Thing:
        mac = _mac(mac)
        if kind is ThingKind.BEACON and not secret:
            raise EnrolmentError("an I4T beacon needs its beacon key")
        if secret is not None:
            _hex_key(secret)
        thing = Thing(
            self.proxied_address(f"{kind.value}:{mac}"),
            kind,
            _name(name),
            mac=mac,
            secret=None if secret is None else secret.lower(),
            enrolled_at=now,
        )
        return self._add(thing, candidate_id=mac)

    def enrol_mqtt(self, local_id: str, device: dict[str, Any], name: str, now: float) -> Thing:
        if not _LOCAL_ID.match(local_id):
            raise EnrolmentError("a device id is 1-59 of a-z, 0-9, '_', '.', '-'")
        thing = Thing(
            self.proxied_address(f"mqtt:{local_id}"),
            ThingKind.MQTT,
            _name(name),
            device=device,
            enrolled_at=now,
        )
        return self._add(thing, candidate_id=f"mqtt:{local_id}")

    def proxied_address(self, local_id: str) -> Address:
        """The address the gateway gives a thing it signs for."""
        return Address.for_proxied(self.gateway_key, local_id.encode())

    def _add(self, thing: Thing, candidate_id: str) -> Thing:
        if thing.address in self._by_address:
            raise EnrolmentError("this thing is enrolled already")
        self._by_address[thing.address] = thing
        if thing.mac is not None:
            self._by_mac[thing.mac] = thing
        self._candidates.pop(candidate_id, None)
        return thing

    def rename(self, address: Address, name: str) -> Thing:
        thing = self._require(address)
        renamed = replace(thing, name=_name(name))
        self._by_address[address] = renamed
        if renamed.mac is not None:
            self._by_mac[renamed.mac] = renamed
        return renamed

    def remove(self, address: Address) -> Thing:
        thing = self._require(address)
        del self._by_address[address]
        if thing.mac is not None:
            self._by_mac.pop(thing.mac, None)
        self.readings.pop(address, None)
        self.rssi.pop(address, None)
        return thing

    def _require(self, address: Address) -> Thing:
        thing = self._by_address.get(address)
        if thing is None:
            raise EnrolmentError("no such enrolled thing")
        return thing

    # Readings

    def record(
        self,
        address: Address,
        name: str,
        value: float | int | str | bool | None,
        *,
        unit: str | None,
        device_class: str | None,
        now: float,
    ) -> None:
        self.readings.setdefault(address, {})[name] = Reading(value, unit, device_class, now)

    # Candidates

    def heard_unenrolled(
        self,
        ident: str,
        kind: ThingKind,
        now: float,
        *,
        rssi: int | None = None,
        public_key: bytes | None = None,
        hint: str | None = None,
    ) -> bool:
        """Note a thing that is not enrolled; True when it is a new candidate."""
        candidate = self._candidates.get(ident)
        if candidate is not None:
            candidate.last_seen = now
            candidate.heard += 1
            candidate.rssi = rssi if rssi is not None else candidate.rssi
            self._candidates.move_to_end(ident)
            return False
        self._candidates[ident] = Candidate(ident, kind, now, now, 1, rssi, public_key, hint)
        while len(self._candidates) > self.max_candidates:
            self._candidates.popitem(last=False)
        return True

    def candidates(self) -> list[Candidate]:
        return list(self._candidates.values())

    # Persistence

    def export(self) -> list[dict[str, Any]]:
        return [thing.export() for thing in self._by_address.values()]

    def restore(self, data: list[dict[str, Any]]) -> None:
        for item in data:
            thing = Thing.restore(item)
            self._by_address[thing.address] = thing
            if thing.mac is not None:
                self._by_mac[thing.mac] = thing


def _name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise EnrolmentError(f"a name is 1 to {MAX_NAME} characters")
    return name


def _mac(mac: str) -> str:
    mac = mac.strip().upper().replace("-", ":")
    if not _MAC.match(mac):
        raise EnrolmentError("a BLE address looks like AA:BB:CC:DD:EE:FF")
    return mac


def _hex_key(secret: str) -> None:
    try:
        raw = bytes.fromhex(secret)
    except ValueError as err:
        raise EnrolmentError("a key is given in hex") from err
    if len(raw) != 16:
        raise EnrolmentError("a bindkey or beacon key is 16 bytes (32 hex digits)")
