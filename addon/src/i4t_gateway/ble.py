"""The gateway's BLE endpoint: advert batches from the HA integration in, readings and status out.

BLE never reaches the gateway directly. HA's bluetooth stack (local adapters and ESPHome
proxies alike) hears adverts; the integration forwards them in JSON batches on
``i4t/<gateway id>/ble/adverts`` (docs/API.md, BLE, schema ``ble_adverts``). This module checks
each batch against that contract, then each advert:

* from an enrolled BTHome sensor: decoded with bthome-ble (ble_bthome.py), plain or encrypted;
* from an enrolled I4T beacon: authenticated and decoded (beacon.py);
* in either format but not enrolled: offered as a candidate for enrolment;
* anything else (phones, other vendors' formats): ignored, counted as ``ignored``.

Encrypted BTHome and beacon counters must strictly grow; the last accepted counter per MAC is
kept in a mapping the caller persists. Every refused advert is dropped and counted by reason in
``dropped``; nothing here raises on input from the network.

Derived status (docs/API.md, BLE): BROKEN when the advert says so (a beacon's broken bit, a
BTHome "problem" binary sensor that is on), when three adverts in a row from an enrolled MAC
fail authentication (wrong bindkey or key, or someone else using the address), or when three
authentic adverts in a row carry a counter below the last accepted one (the thing restarted
its counter, or its old adverts are replayed); HEALTHY when an accepted advert says nothing
wrong. DEAD is not decided here: the health engine declares it when
a thing is not heard within its timeout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, replace
import enum
import json
import math
import re
from typing import Any, Final

from .beacon import (
    BEACON_UUID,
    KEY_SIZE,
    BeaconError,
    BeaconFlag,
    BeaconReason,
    check_frame as check_beacon_frame,
    peek_counter as peek_beacon_counter,
)
from .ble_bthome import (
    BINDKEY_SIZE,
    BTHOME_UUID,
    BTHomeDevice,
    BTHomeError,
    BTHomeReason,
    ServiceInfo,
    quiet_library_logs,
)
from .ble_common import BleReading, MacError, normalise_mac
from .health import NodeStatus

API_VERSION: Final = 1
MAX_BATCH_BYTES: Final = 256 * 1024
MAX_ADVERTS: Final = 512
MAX_DATA_ENTRIES: Final = 8
MAX_DATA_BYTES: Final = 255
MAX_NAME: Final = 248
MAX_SOURCE: Final = 64
MAX_ENROLLED: Final = 4096
FAILURES_FOR_BROKEN: Final = 3
REPEAT_GAP: Final = 4.0
"""Seconds after which an unchanged advert counts as the thing heard again, not as a copy
(bthome-ble uses the same 4 s for BTHome packet ids)."""

_UUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_COMPANY: Final = re.compile(r"^[0-9]{1,5}$")
_HEX: Final = re.compile(r"^(?:[0-9a-fA-F]{2})*$")


def adverts_topic(gateway_id: str) -> str:
    return f"i4t/{gateway_id}/ble/adverts"


class BleKind(enum.StrEnum):
    """The BLE formats the gateway understands (the same values as things.ThingKind)."""

    BTHOME = "bthome"
    BEACON = "beacon"


class BatchReason(enum.StrEnum):
    """Why a whole batch or one advert of it is refused (drop counter labels)."""

    TOO_LARGE = "batch_too_large"
    MALFORMED_JSON = "batch_malformed_json"
    BAD_BATCH = "batch_bad"
    TOO_MANY_ADVERTS = "batch_too_many_adverts"
    RETAINED = "batch_retained"
    WRONG_TOPIC = "batch_wrong_topic"
    BAD_ADVERT = "advert_bad"


class AdvertError(ValueError):
    """An advert or batch that does not match the ble_adverts schema."""

    def __init__(self, detail: str, reason: BatchReason = BatchReason.BAD_ADVERT) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Advert:
    """One advert as the integration forwards it; bytes already decoded from hex."""

    address: str
    rssi: int
    time: float
    source: str
    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes]
    local_name: str | None = None

    def service_info(self) -> ServiceInfo:
        return ServiceInfo(
            name=self.local_name or self.address,
            address=self.address,
            rssi=self.rssi,
            manufacturer_data=self.manufacturer_data,
            service_data=self.service_data,
            service_uuids=list(self.service_data),
            source=self.source,
            time=self.time,
        )

    def to_json(self) -> dict[str, Any]:
        """The advert in the batch format (for the simulator, tests and the integration)."""
        out: dict[str, Any] = {
            "address": self.address,
            "rssi": self.rssi,
            "time": self.time,
            "source": self.source,
            "service_data": {uuid: data.hex() for uuid, data in self.service_data.items()},
            "manufacturer_data": {str(k): v.hex() for k, v in self.manufacturer_data.items()},
        }
        if self.local_name is not None:
            out["local_name"] = self.local_name
        return out


def encode_batch(adverts: list[Advert]) -> bytes:
    """A batch message for ``i4t/<gateway id>/ble/adverts``."""
    batch = {"api": API_VERSION, "adverts": [a.to_json() for a in adverts]}
    return json.dumps(batch, separators=(",", ":"), ensure_ascii=False).encode()


def parse_batch(payload: bytes) -> list[Any]:
    """The advert items of a batch (not yet checked one by one); AdvertError with a reason."""
    if len(payload) > MAX_BATCH_BYTES:
        raise AdvertError("too large", BatchReason.TOO_LARGE)
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise AdvertError("not JSON", BatchReason.MALFORMED_JSON) from None
    if not isinstance(document, dict) or document.get("api") != API_VERSION:
        raise AdvertError("bad batch", BatchReason.BAD_BATCH)
    items = document.get("adverts")
    if not isinstance(items, list):
        raise AdvertError("bad batch", BatchReason.BAD_BATCH)
    if len(items) > MAX_ADVERTS:
        raise AdvertError("too many adverts", BatchReason.TOO_MANY_ADVERTS)
    return items


def parse_advert(item: object) -> Advert:
    """One advert of a batch, checked as the ble_adverts schema says; AdvertError otherwise."""
    if not isinstance(item, dict):
        raise AdvertError("an advert is an object")
    try:
        address = normalise_mac(_require(item, "address", str))
    except MacError as err:
        raise AdvertError(str(err)) from None
    rssi = _require(item, "rssi", int)
    if isinstance(rssi, bool) or not -127 <= rssi <= 20:
        raise AdvertError("rssi is an integer from -127 to 20")
    time = _require(item, "time", int | float)
    if isinstance(time, bool) or not (math.isfinite(time) and time >= 0):
        raise AdvertError("time is Unix seconds")
    source = _require(item, "source", str)
    if not 1 <= len(source) <= MAX_SOURCE:
        raise AdvertError("source is 1-64 characters")
    name = item.get("local_name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
        raise AdvertError("local_name is a string of at most 248 characters")
    return Advert(
        address,
        rssi,
        float(time),
        source,
        _data_map(item.get("service_data", {}), _UUID, str),
        _data_map(item.get("manufacturer_data", {}), _COMPANY, _company_id),
        name,
    )


def _require(item: dict[str, Any], key: str, kind: Any) -> Any:
    value = item.get(key)
    if not isinstance(value, kind):
        raise AdvertError(f"{key} is missing or of the wrong type")
    return value


def _company_id(text: str) -> int:
    value = int(text)
    if value > 0xFFFF:
        raise AdvertError("a company id is 0-65535")
    return value


def _data_map[K](
    raw: object, key_pattern: re.Pattern[str], key: Callable[[str], K]
) -> dict[K, bytes]:
    if not isinstance(raw, dict) or len(raw) > MAX_DATA_ENTRIES:
        raise AdvertError("service_data and manufacturer_data are objects of at most 8 entries")
    out: dict[K, bytes] = {}
    for name, value in raw.items():
        if not key_pattern.match(name):
            raise AdvertError("bad service UUID or company id")
        if not isinstance(value, str) or len(value) > 2 * MAX_DATA_BYTES or not _HEX.match(value):
            raise AdvertError("data is hex of at most 255 bytes")
        out[key(name)] = bytes.fromhex(value)
    return out


@dataclass(frozen=True, slots=True)
class BleUpdate:
    """An accepted advert of an enrolled thing, or an authentication failure streak (BROKEN,
    no readings). ``detail`` says why a thing is BROKEN."""

    mac: str
    kind: BleKind
    status: NodeStatus
    readings: tuple[BleReading, ...]
    time: float
    rssi: int
    source: str
    sleepy: bool = False
    low_battery: bool = False
    detail: str | None = None
    repeat: bool = False
    """No new data: the thing's last accepted advert heard again (it is alive); the status is
    the one it last reported and there are no readings."""


@dataclass(frozen=True, slots=True)
class BleCandidate:
    """An advert in a known format from a MAC that is not enrolled."""

    mac: str
    kind: BleKind
    encrypted: bool
    local_name: str | None
    rssi: int
    time: float


@dataclass(slots=True)
class _Enrolment:
    kind: BleKind
    key: bytes | None
    bthome: BTHomeDevice | None
    failures: int = 0
    """Adverts in a row that failed authentication."""
    rewinds: int = 0
    """Authentic adverts in a row whose counter was below the last accepted one."""
    last_data: bytes | None = None
    last_update: BleUpdate | None = None
    last_heard: float = 0.0


UpdateCallback = Callable[[BleUpdate], None]
CandidateCallback = Callable[[BleCandidate], None]


class BleEndpoint:
    """Turns advert batches into readings, status and candidates for the server.

    ``counters`` maps a MAC to the last accepted counter (encrypted BTHome and beacons); pass a
    mapping the server persists so a replay stays refused across restarts.
    """

    def __init__(
        self,
        gateway_id: str,
        *,
        on_update: UpdateCallback,
        on_candidate: CandidateCallback | None = None,
        counters: MutableMapping[str, int] | None = None,
    ) -> None:
        self.topic = adverts_topic(gateway_id)
        self._on_update = on_update
        self._on_candidate = on_candidate
        self.counters: MutableMapping[str, int] = {} if counters is None else counters
        self._enrolled: dict[str, _Enrolment] = {}
        self.dropped: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        quiet_library_logs()

    # -- enrolment ---------------------------------------------------------------------------

    def enroll(self, mac: str, kind: BleKind | str, key: bytes | None = None) -> None:
        """Accept adverts from ``mac``: BTHome (``key`` = bindkey or None) or a beacon (``key``
        = its 16-byte beacon key). Enrolling again replaces the key (a corrected bindkey) and
        keeps the counter; :meth:`forget` clears both."""
        mac = normalise_mac(mac)
        kind = BleKind(kind)
        if mac not in self._enrolled and len(self._enrolled) >= MAX_ENROLLED:
            raise ValueError(f"at most {MAX_ENROLLED} BLE things")
        if kind is BleKind.BEACON:
            if key is None or len(key) != KEY_SIZE:
                raise ValueError("a beacon key is 16 bytes")
            self._enrolled[mac] = _Enrolment(kind, key, None)
            return
        if key is not None and len(key) != BINDKEY_SIZE:
            raise ValueError("a BTHome bindkey is 16 bytes")
        device = BTHomeDevice(mac, key, self.counters.get(mac, 0))
        self._enrolled[mac] = _Enrolment(kind, key, device)

    def forget(self, mac: str) -> None:
        """Stop accepting ``mac`` and drop its counter (a re-enrolled thing starts afresh)."""
        mac = normalise_mac(mac)
        self._enrolled.pop(mac, None)
        self.counters.pop(mac, None)

    def is_enrolled(self, mac: str) -> bool:
        return normalise_mac(mac) in self._enrolled

    def diagnostics(self) -> dict[str, object]:
        """Counts for the gateway's state and HA diagnostics; no addresses, no keys."""
        kinds = Counter(e.kind.value for e in self._enrolled.values())
        return {
            "enrolled": dict(sorted(kinds.items())),
            "stats": dict(sorted(self.stats.items())),
            "dropped": {str(k): v for k, v in sorted(self.dropped.items())},
        }

    # -- input -------------------------------------------------------------------------------

    def handle_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """The MQTT handler for ``self.topic`` (bus.MessageHandler); never raises on input."""
        if topic != self.topic:
            self.dropped[BatchReason.WRONG_TOPIC] += 1
            return
        if retained:
            # A retained batch would be replayed at every reconnect.
            self.dropped[BatchReason.RETAINED] += 1
            return
        self.handle_batch(payload)

    def handle_batch(self, payload: bytes) -> None:
        try:
            items = parse_batch(payload)
        except AdvertError as err:
            self.dropped[err.reason] += 1
            return
        self.stats["batches"] += 1
        for item in items:
            try:
                advert = parse_advert(item)
            except AdvertError:
                self.dropped[BatchReason.BAD_ADVERT] += 1
                continue
            self.handle_advert(advert)

    def handle_advert(self, advert: Advert) -> None:
        self.stats["adverts"] += 1
        if BEACON_UUID in advert.service_data:
            kind = BleKind.BEACON
        elif BTHOME_UUID in advert.service_data:
            kind = BleKind.BTHOME
        else:
            self.stats["ignored"] += 1
            return
        enrolment = self._enrolled.get(advert.address)
        if enrolment is None:
            self._offer(advert, kind)
        elif enrolment.kind is not kind:
            self.stats["ignored"] += 1
        elif kind is BleKind.BEACON:
            self._beacon(advert, enrolment)
        else:
            self._bthome(advert, enrolment)

    def _offer(self, advert: Advert, kind: BleKind) -> None:
        self.stats["candidates"] += 1
        if self._on_candidate is None:
            return
        data = advert.service_data[BTHOME_UUID] if kind is BleKind.BTHOME else b""
        encrypted = kind is BleKind.BEACON or bool(data[:1] and data[0] & 0x01)
        self._on_candidate(
            BleCandidate(
                advert.address, kind, encrypted, advert.local_name, advert.rssi, advert.time
            )
        )

    def _beacon(self, advert: Advert, enrolment: _Enrolment) -> None:
        assert enrolment.key is not None
        data = advert.service_data[BEACON_UUID]
        last = self.counters.get(advert.address, 0)
        counter = peek_beacon_counter(data)
        if counter is not None and counter == last:
            self._heard_again(advert, enrolment, data, "beacon_duplicate")
            return
        try:
            frame = check_beacon_frame(data, advert.address, enrolment.key)
        except BeaconError as err:
            self.dropped[err.reason] += 1
            if err.reason is BeaconReason.BAD_TAG:
                self._authentication_failed(advert, enrolment)
            return
        if frame.counter < last:
            # Authentic but old: a replay, or a thing whose counter restarted.
            self.dropped["beacon_replayed"] += 1
            self._rewound(advert, enrolment)
            return
        self.counters[advert.address] = frame.counter
        enrolment.failures = enrolment.rewinds = 0
        self._accept(
            advert,
            BleKind.BEACON,
            NodeStatus.BROKEN if frame.broken else NodeStatus.HEALTHY,
            frame.ble_readings(),
            sleepy=BeaconFlag.SLEEPY in frame.flags,
            low_battery=BeaconFlag.LOW_BATTERY in frame.flags,
            detail="reported broken" if frame.broken else None,
            enrolment=enrolment,
            data=data,
        )

    def _bthome(self, advert: Advert, enrolment: _Enrolment) -> None:
        device = enrolment.bthome
        assert device is not None
        try:
            result = device.decode(advert.service_info())
        except BTHomeError as err:
            reason = err.reason
            data = advert.service_data[BTHOME_UUID]
            if reason is BTHomeReason.DUPLICATE:
                self._heard_again(advert, enrolment, data, reason)
                return
            if reason is BTHomeReason.REPLAYED and not device.authentic(data):
                reason = BTHomeReason.DECRYPT_FAILED  # a forgery that claims an old counter
            self.dropped[reason] += 1
            if reason is BTHomeReason.DECRYPT_FAILED:
                self._authentication_failed(advert, enrolment)
            elif reason is BTHomeReason.REPLAYED:
                self._rewound(advert, enrolment)
            return
        if result.counter is not None:
            self.counters[advert.address] = result.counter
        enrolment.failures = enrolment.rewinds = 0
        self._accept(
            advert,
            BleKind.BTHOME,
            NodeStatus.BROKEN if result.problem else NodeStatus.HEALTHY,
            result.readings,
            sleepy=result.sleepy,
            detail="problem sensor on" if result.problem else None,
            enrolment=enrolment,
            data=advert.service_data[BTHOME_UUID],
        )

    def _heard_again(self, advert: Advert, enrolment: _Enrolment, data: bytes, reason: str) -> None:
        """An advert with the last accepted counter (or BTHome packet id).

        Within REPEAT_GAP of the last hearing it is a copy (a second scanner, another
        advertising channel) and is dropped. Later, and byte-identical to the last accepted
        advert, it says the thing is still there with nothing new: HA calls its callbacks only
        for changed data, so the integration re-forwards unchanged adverts now and then, and a
        thing whose values hold still must not be declared DEAD. Like HA's own availability,
        this cannot tell the thing repeating itself from someone replaying its last advert; it
        never brings new values.
        """
        previous = enrolment.last_update
        fresh_enough = advert.time - enrolment.last_heard >= REPEAT_GAP
        if previous is None or data != enrolment.last_data or not fresh_enough:
            self.dropped[reason] += 1
            return
        enrolment.last_heard = advert.time
        self.stats["repeats"] += 1
        self._on_update(
            replace(
                previous,
                readings=(),
                time=advert.time,
                rssi=advert.rssi,
                source=advert.source,
                repeat=True,
            )
        )

    def _authentication_failed(self, advert: Advert, enrolment: _Enrolment) -> None:
        enrolment.failures += 1
        if enrolment.failures >= FAILURES_FOR_BROKEN:
            self._accept(
                advert,
                enrolment.kind,
                NodeStatus.BROKEN,
                (),
                detail="adverts fail authentication (wrong key?)",
            )

    def _rewound(self, advert: Advert, enrolment: _Enrolment) -> None:
        """Authentic adverts below the last counter, three in a row: the thing restarted its
        counter (a battery change) or someone replays its old adverts. Either way the user has
        to look: re-enrolling accepts the new counter."""
        enrolment.rewinds += 1
        if enrolment.rewinds >= FAILURES_FOR_BROKEN:
            detail = "counter went back (battery change? replay?): re-enrol to accept it"
            self._accept(advert, enrolment.kind, NodeStatus.BROKEN, (), detail=detail)

    def _accept(
        self,
        advert: Advert,
        kind: BleKind,
        status: NodeStatus,
        readings: tuple[BleReading, ...],
        *,
        sleepy: bool = False,
        low_battery: bool = False,
        detail: str | None = None,
        enrolment: _Enrolment | None = None,
        data: bytes | None = None,
    ) -> None:
        """Report an update; with ``enrolment`` and ``data`` it is an accepted advert, which
        an identical repeat may later confirm (:meth:`_heard_again`)."""
        self.stats["updates"] += 1
        update = BleUpdate(
            advert.address,
            kind,
            status,
            readings,
            advert.time,
            advert.rssi,
            advert.source,
            sleepy,
            low_battery,
            detail,
        )
        if enrolment is not None:
            enrolment.last_data, enrolment.last_update = data, update
            enrolment.last_heard = advert.time
        self._on_update(update)
