"""Remote BLE scanners over MQTT, fed into HA's bluetooth stack (docs/API.md, remote BLE scanners).

ESP32 scanners, other I4T gateways and the simulator publish what they hear on
``i4t/scanner/<scanner id>/adverts`` in the advert batch format of the gateway's BLE API
(schema ``ble_adverts``, plus the optional ``service_uuids`` and ``tx_power``), and keep their
name in a retained ``i4t/scanner/<scanner id>/info``. Each scanner id becomes one
non-connectable remote scanner registered with HA, so every BLE integration in HA hears
through it, the BLE bridge included.

The broker is untrusted transport: every field is checked, sizes and the number of scanners
are bounded, nothing here raises on input. An advert whose ``source`` is a scanner HA already
has (a local adapter, a proxy, one of these scanners) is dropped: it is HA's own advert coming
back, for example the BLE bridge's output republished on a scanner topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import logging
import math
import re
import time
from typing import Any, Final, TypeGuard

from bluetooth_data_tools import monotonic_time_coarse
from homeassistant.components import bluetooth, mqtt
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.util.hass_dict import HassKey

_LOGGER = logging.getLogger(__name__)

CONF_REMOTE_SCANNERS: Final = "remote_scanners"
"""Entry option: accept remote scanners from the broker (default on)."""

API_VERSION: Final = 1
TOPIC_PREFIX: Final = "i4t/scanner"
SOURCE_PREFIX: Final = "i4t-scanner-"
MAX_SCANNERS: Final = 32
MAX_BATCH_BYTES: Final = 256 * 1024
MAX_ADVERTS: Final = 512
MAX_INFO_BYTES: Final = 4096
MAX_NAME: Final = 64
MAX_DATA_ENTRIES: Final = 8
MAX_DATA_BYTES: Final = 255
MAX_SERVICE_UUIDS: Final = 16
MAX_AGE_SECONDS: Final = 30.0
"""An advert's age (now minus its ``time``) is trusted up to this; older or future times are
clamped, so a scanner with a wrong clock cannot push adverts far into HA's past or future."""

_SCANNER_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_MAC: Final = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_UUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_COMPANY: Final = re.compile(r"^[0-9]{1,5}$")
_HEX: Final = re.compile(r"^(?:[0-9a-fA-F]{2})*$")
_NO_DETAILS: Final[dict[str, Any]] = {}
_SHARED: HassKey[_Shared] = HassKey("i4t_remote_scanners")


def adverts_topic(scanner_id: str) -> str:
    return f"{TOPIC_PREFIX}/{scanner_id}/adverts"


def info_topic(scanner_id: str) -> str:
    return f"{TOPIC_PREFIX}/{scanner_id}/info"


def scanner_source(scanner_id: str) -> str:
    """The scanner's source in HA (BluetoothServiceInfo.source)."""
    return f"{SOURCE_PREFIX}{scanner_id}"


class ScannerMessageError(ValueError):
    """A batch, advert or info message that breaks the format."""


@dataclass(frozen=True, slots=True)
class RemoteAdvert:
    """One checked advert of a scanner's batch."""

    address: str
    rssi: int
    time: float
    source: str
    local_name: str | None
    service_uuids: list[str]
    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes]
    tx_power: int | None


def parse_batch(payload: str | bytes | bytearray) -> list[Any]:
    """The advert items of a batch, not yet checked one by one."""
    if len(payload) > MAX_BATCH_BYTES:
        raise ScannerMessageError("batch too large")
    document = _json_object(payload)
    items = document.get("adverts")
    if not isinstance(items, list) or len(items) > MAX_ADVERTS:
        raise ScannerMessageError("adverts is a list of at most 512")
    return items


def parse_advert(item: Any) -> RemoteAdvert:
    """One advert, checked as the ble_adverts schema says (plus the two scanner fields)."""
    if not isinstance(item, dict):
        raise ScannerMessageError("an advert is an object")
    address = item.get("address")
    rssi = item.get("rssi")
    stamp = item.get("time")
    source = item.get("source")
    name = item.get("local_name")
    tx_power = item.get("tx_power")
    if not isinstance(address, str) or not _MAC.match(address):
        raise ScannerMessageError("bad address")
    if not _is_int(rssi) or not -127 <= rssi <= 20:
        raise ScannerMessageError("rssi is an integer from -127 to 20")
    if not _is_number(stamp) or not (math.isfinite(stamp) and stamp >= 0):
        raise ScannerMessageError("time is Unix seconds")
    if not isinstance(source, str) or not 1 <= len(source) <= 64:
        raise ScannerMessageError("source is 1-64 characters")
    if name is not None and (not isinstance(name, str) or len(name) > 248):
        raise ScannerMessageError("local_name is a string of at most 248 characters")
    if tx_power is not None and (not _is_int(tx_power) or not -127 <= tx_power <= 20):
        raise ScannerMessageError("tx_power is an integer from -127 to 20")
    uuids = item.get("service_uuids", [])
    if (
        not isinstance(uuids, list)
        or len(uuids) > MAX_SERVICE_UUIDS
        or not all(isinstance(u, str) and _UUID.match(u) for u in uuids)
    ):
        raise ScannerMessageError("service_uuids is a list of lower-case 128-bit UUIDs")
    service_data = _data(item.get("service_data", {}), _UUID)
    manufacturer_data = {
        int(k): v for k, v in _data(item.get("manufacturer_data", {}), _COMPANY).items()
    }
    if any(k > 0xFFFF for k in manufacturer_data):
        raise ScannerMessageError("a company id is 0-65535")
    return RemoteAdvert(
        address.upper(),
        rssi,
        float(stamp),
        source,
        name or None,
        list(uuids),
        service_data,
        manufacturer_data,
        tx_power,
    )


def parse_info(payload: str | bytes | bytearray) -> str:
    """The scanner's name from its info message."""
    if len(payload) > MAX_INFO_BYTES:
        raise ScannerMessageError("info too large")
    name = _json_object(payload).get("name")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME:
        raise ScannerMessageError("name is 1-64 characters")
    return name.strip()


def _json_object(payload: str | bytes | bytearray) -> dict[str, Any]:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise ScannerMessageError("not JSON") from None
    if not isinstance(document, dict) or document.get("api") != API_VERSION:
        raise ScannerMessageError("not an api 1 object")
    return document


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _data(raw: Any, key_pattern: re.Pattern[str]) -> dict[str, bytes]:
    if not isinstance(raw, dict) or len(raw) > MAX_DATA_ENTRIES:
        raise ScannerMessageError("data maps are objects of at most 8 entries")
    out: dict[str, bytes] = {}
    for key, value in raw.items():
        if not key_pattern.match(key):
            raise ScannerMessageError("bad service UUID or company id")
        if not isinstance(value, str) or len(value) > 2 * MAX_DATA_BYTES or not _HEX.match(value):
            raise ScannerMessageError("data is hex of at most 255 bytes")
        out[key] = bytes.fromhex(value)
    return out


class I4TRemoteScanner(bluetooth.BaseHaRemoteScanner):
    """A scanner that publishes on ``i4t/scanner/<id>/adverts``; it cannot connect."""

    @callback
    def async_on_advert(self, advert: RemoteAdvert, monotonic: float) -> None:
        self._async_on_advertisement(
            advert.address,
            advert.rssi,
            advert.local_name,
            advert.service_uuids,
            advert.service_data,
            advert.manufacturer_data,
            advert.tx_power,
            _NO_DETAILS,
            monotonic,
        )


@dataclass(slots=True)
class _Registered:
    scanner: I4TRemoteScanner
    undo: list[CALLBACK_TYPE] = field(default_factory=list)
    adverts: int = 0
    dropped: int = 0


class RemoteScanners:
    """Registers a remote scanner for each scanner id heard on the broker."""

    def __init__(self, hass: HomeAssistant) -> None:
        self._hass = hass
        self._scanners: dict[str, _Registered] = {}
        self._unsubs: list[CALLBACK_TYPE] = []
        self.refused_scanners = 0
        self.dropped_batches = 0
        self.looped = 0

    async def async_start(self) -> None:
        for topic, handler, qos in (
            (info_topic("+"), self._async_on_info, 1),
            (adverts_topic("+"), self._async_on_adverts, 0),
        ):
            self._unsubs.append(await mqtt.async_subscribe(self._hass, topic, handler, qos=qos))

    @callback
    def async_stop(self) -> None:
        """Unsubscribe and unregister every scanner (HA keeps their history for next time)."""
        while self._unsubs:
            self._unsubs.pop()()
        for scanner_id in list(self._scanners):
            self._unregister(scanner_id)

    def diagnostics(self) -> dict[str, Any]:
        return {
            "scanners": {
                scanner_id: {"name": r.scanner.adapter, "adverts": r.adverts, "dropped": r.dropped}
                for scanner_id, r in self._scanners.items()
            },
            "refused_scanners": self.refused_scanners,
            "dropped_batches": self.dropped_batches,
            "looped": self.looped,
        }

    @callback
    def _async_on_info(self, message: mqtt.ReceiveMessage) -> None:
        scanner_id = _scanner_id(message.topic)
        if scanner_id is None:
            return
        if not message.payload:
            # The retained info was cleared: the scanner is gone for good.
            if scanner_id in self._scanners:
                self._unregister(scanner_id)
                bluetooth.async_remove_scanner(self._hass, scanner_source(scanner_id))
            return
        try:
            name = parse_info(message.payload)
        except ScannerMessageError as err:
            _LOGGER.debug("scanner info ignored: %s", err)
            return
        registered = self._scanners.get(scanner_id)
        if registered is not None and registered.scanner.adapter == name:
            return
        if registered is not None:
            # HA's manager files a scanner by its name too: a renamed scanner is registered
            # again under the same source (HA hands its advert history over).
            self._unregister(scanner_id)
        self._register(scanner_id, name)

    @callback
    def _async_on_adverts(self, message: mqtt.ReceiveMessage) -> None:
        scanner_id = _scanner_id(message.topic)
        if scanner_id is None or message.retain:
            # A retained batch would be replayed at every reconnect.
            self.dropped_batches += 1
            return
        try:
            items = parse_batch(message.payload)
        except ScannerMessageError as err:
            self.dropped_batches += 1
            _LOGGER.debug("scanner batch from %s ignored: %s", scanner_id, err)
            return
        registered = self._scanners.get(scanner_id) or self._register(scanner_id, scanner_id)
        if registered is None:
            self.dropped_batches += 1
            return
        now_unix = time.time()
        now_mono = monotonic_time_coarse()
        scanner = registered.scanner
        known_sources: dict[str, bool] = {}
        for item in items:
            try:
                advert = parse_advert(item)
            except ScannerMessageError:
                registered.dropped += 1
                continue
            looped = known_sources.get(advert.source)
            if looped is None:
                looped = known_sources[advert.source] = (
                    bluetooth.async_scanner_by_source(self._hass, advert.source) is not None
                )
            if looped:
                self.looped += 1
                continue
            age = min(max(now_unix - advert.time, 0.0), MAX_AGE_SECONDS)
            registered.adverts += 1
            scanner.async_on_advert(advert, now_mono - age)

    def _register(self, scanner_id: str, name: str) -> _Registered | None:
        if len(self._scanners) >= MAX_SCANNERS:
            if not self.refused_scanners:
                _LOGGER.warning(
                    "More than %d remote BLE scanners on the broker; ignoring the others",
                    MAX_SCANNERS,
                )
            self.refused_scanners += 1
            return None
        source = scanner_source(scanner_id)
        scanner = I4TRemoteScanner(source, name, None, False)
        registered = _Registered(scanner)
        registered.undo.append(bluetooth.async_register_scanner(self._hass, scanner))
        registered.undo.append(scanner.async_setup())
        self._scanners[scanner_id] = registered
        _LOGGER.debug("remote BLE scanner %s registered", source)
        return registered

    def _unregister(self, scanner_id: str) -> None:
        registered = self._scanners.pop(scanner_id)
        while registered.undo:
            registered.undo.pop()()


@dataclass(slots=True)
class _Shared:
    scanners: RemoteScanners
    users: int = 0


async def async_use_remote_scanners(
    hass: HomeAssistant,
) -> tuple[RemoteScanners, CALLBACK_TYPE]:
    """The remote scanners of this HA instance and the callback that releases them.

    Scanners belong to HA, not to one gateway: with several I4T config entries the first
    starts them, the others share them, and the last release stops them.
    """
    shared = hass.data.get(_SHARED)
    if shared is None:
        shared = hass.data[_SHARED] = _Shared(RemoteScanners(hass))
        try:
            await shared.scanners.async_start()
        except BaseException:
            del hass.data[_SHARED]
            shared.scanners.async_stop()
            raise
    shared.users += 1
    released = False

    @callback
    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        shared.users -= 1
        if not shared.users:
            shared.scanners.async_stop()
            hass.data.pop(_SHARED, None)

    return shared.scanners, release


def _scanner_id(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) != 4 or not _SCANNER_ID.match(parts[2]):
        return None
    return parts[2]
