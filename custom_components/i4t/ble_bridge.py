"""The BLE bridge: HA's bluetooth stack on one side, the gateway's BLE topics on the other.

BLE reaches the gateway only through Home Assistant's own bluetooth stack, so local adapters,
ESPHome Bluetooth proxies and the remote scanners of remote_scanner.py all count.

Adverts, HA -> gateway (``i4t/<gateway id>/ble/adverts``, schema ``ble_adverts``)
    One passive, non-connectable callback per matcher (BTHome service data, I4T beacon service
    data). The callback only snapshots the advert into a bounded buffer; a timer builds the
    batch JSON and publishes it (QoS 0, not retained) at most FLUSH_SECONDS after the first
    advert of a batch, or at once when BATCH_ADVERTS are waiting. When the buffer is full the
    oldest advert is dropped and counted.

    Coalescing: an advert whose data (service data, manufacturer data, name) equals the newest
    advert of the same address still waiting in the buffer replaces it (the newest RSSI, time
    and source win). So within one batch window a thing is sent once per distinct payload;
    adverts with new data (a new BTHome packet id, a new beacon counter) are never merged.

    Liveness refresh: HA's bluetooth manager calls callbacks only when an advert's data
    changed, so a plain BTHome sensor whose values hold still would look silent to the
    gateway and be declared DEAD. Every REFRESH_SECONDS the bridge looks up the last advert HA
    heard from each address it has forwarded and forwards it again if HA heard it since.

GATT writes, gateway -> HA (``.../ble/gatt/request`` in, ``.../ble/gatt/result`` out)
    Each request runs as a background task of the config entry: resolve a connectable
    BLEDevice, connect with bleak-retry-connector, write, publish the result, disconnect.
    Every failure becomes an error result (schema ``ble_gatt_result``), never a traceback.
    Requests to one address run one after another; at most MAX_GATT_TASKS run at once.

With the entry option ``ble_bridge`` off, no advert is forwarded and GATT requests are
answered ``not_allowed``. async_setup_ble_bridge() wires all of it (and the remote scanners)
and returns one function that undoes everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
import json
import logging
import re
import time
from typing import Any, Final

from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
import bleak_retry_connector
from bleak_retry_connector import (
    BleakClientWithServiceCache,
    BleakOutOfConnectionSlotsError,
    establish_connection,
)
from bluetooth_data_tools import monotonic_time_coarse
from homeassistant.components import bluetooth, mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_track_time_interval

from .remote_scanner import CONF_REMOTE_SCANNERS, RemoteScanners, async_use_remote_scanners

_LOGGER = logging.getLogger(__name__)

CONF_BLE_BRIDGE: Final = "ble_bridge"
"""Entry option: forward adverts and carry out GATT writes (default on)."""

API_VERSION: Final = 1
BTHOME_UUID: Final = "0000fcd2-0000-1000-8000-00805f9b34fb"
BEACON_UUID: Final = "17d234ab-de7a-4c3d-8846-9ca593acc999"
MATCHED_UUIDS: Final = (BTHOME_UUID, BEACON_UUID)

FLUSH_SECONDS: Final = 0.5
BATCH_ADVERTS: Final = 512
"""The schema's maxItems: a full batch is sent at once."""
MAX_PENDING: Final = 2048
MAX_BATCH_BYTES: Final = 256 * 1024
MAX_PUBLISHING: Final = 8
"""Batches in flight to the broker; more are dropped (and counted) rather than queued."""
REFRESH_SECONDS: Final = 10.0
MAX_TRACKED: Final = 4096
MAX_DATA_ENTRIES: Final = 8
MAX_DATA_BYTES: Final = 255
MAX_SOURCE: Final = 64
MAX_NAME: Final = 248

MAX_GATT_TASKS: Final = 8
MAX_GATT_PAYLOAD: Final = 8192
GATT_CONNECT_ATTEMPTS: Final = 3
DISCONNECT_SECONDS: Final = 5.0

_ID: Final = re.compile(r"^[0-9a-f]{32}$")
_MAC: Final = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
_UUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HEX: Final = re.compile(r"^(?:[0-9a-f]{2}){1,512}$")

# What the callback keeps of an advert: address, rssi, monotonic time, source, name (HA's
# name: the local name, or the address when there is none), service data, manufacturer data.
type _Advert = tuple[str, int, float, str, str, dict[str, bytes], dict[int, bytes]]


def adverts_topic(gateway_id: str) -> str:
    return f"i4t/{gateway_id}/ble/adverts"


def gatt_request_topic(gateway_id: str) -> str:
    return f"i4t/{gateway_id}/ble/gatt/request"


def gatt_result_topic(gateway_id: str) -> str:
    return f"i4t/{gateway_id}/ble/gatt/result"


def advert_matchers() -> list[bluetooth.BluetoothCallbackMatcher]:
    """The same two matchers as the manifest's ``bluetooth`` key."""
    return [
        bluetooth.BluetoothCallbackMatcher(service_data_uuid=uuid, connectable=False)
        for uuid in MATCHED_UUIDS
    ]


@dataclass(slots=True)
class BridgeStats:
    """Counters for diagnostics."""

    received: int = 0
    coalesced: int = 0
    dropped_full: int = 0
    refreshed: int = 0
    forwarded: int = 0
    batches: int = 0
    batches_dropped: int = 0
    gatt_requests: int = 0
    gatt_ok: int = 0
    gatt_failed: int = 0
    gatt_ignored: int = 0


def advert_json(advert: _Advert, clock_offset: float) -> dict[str, Any]:
    """One advert in the ble_adverts format; ``clock_offset`` turns monotonic into Unix time."""
    address, rssi, mono, source, name, service_data, manufacturer_data = advert
    if not -127 <= rssi <= 20:
        rssi = -127 if rssi < -127 else 20
    out: dict[str, Any] = {
        "address": address,
        "rssi": rssi,
        "time": round(mono + clock_offset, 3),
        "source": source[:MAX_SOURCE],
    }
    if name != address:
        out["local_name"] = name[:MAX_NAME]
    if len(service_data) <= MAX_DATA_ENTRIES:
        out["service_data"] = {u: v.hex() for u, v in service_data.items() if len(v) <= 255}
    else:
        out["service_data"] = _limited(dict(service_data))
    if manufacturer_data:
        if len(manufacturer_data) <= MAX_DATA_ENTRIES:
            out["manufacturer_data"] = {
                str(k): v.hex() for k, v in manufacturer_data.items() if len(v) <= 255
            }
        else:
            out["manufacturer_data"] = _limited({str(k): v for k, v in manufacturer_data.items()})
    return out


def _limited(data: dict[str, bytes]) -> dict[str, str]:
    """At most MAX_DATA_ENTRIES entries of at most MAX_DATA_BYTES, as hex (rare path)."""
    fitting = [(k, v.hex()) for k, v in data.items() if len(v) <= MAX_DATA_BYTES]
    return dict(fitting[:MAX_DATA_ENTRIES])


def encode_batches(adverts: list[dict[str, Any]]) -> list[tuple[bytes, int]]:
    """Batch messages of at most BATCH_ADVERTS adverts and MAX_BATCH_BYTES bytes each, with
    the number of adverts in each."""
    out: list[tuple[bytes, int]] = []
    for start in range(0, len(adverts), BATCH_ADVERTS):
        _encode_into(adverts[start : start + BATCH_ADVERTS], out)
    return out


def _encode_into(adverts: list[dict[str, Any]], out: list[tuple[bytes, int]]) -> None:
    payload = json.dumps(
        {"api": API_VERSION, "adverts": adverts}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    if len(payload) <= MAX_BATCH_BYTES or len(adverts) == 1:
        # One advert is at most about 9 KB (8 + 8 entries of 255 bytes), far below the limit.
        out.append((payload, len(adverts)))
        return
    half = len(adverts) // 2
    _encode_into(adverts[:half], out)
    _encode_into(adverts[half:], out)


class AdvertForwarder:
    """Buffers matched adverts and publishes them in batches (see the module docstring)."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry, gateway_id: str) -> None:
        self._hass = hass
        self._entry = entry
        self._topic = adverts_topic(gateway_id)
        self.stats = BridgeStats()
        # Insertion-ordered: sequence number -> advert. _latest: address -> its newest seq.
        self._pending: dict[int, _Advert] = {}
        self._latest: dict[str, int] = {}
        self._seq = 0
        # Address -> monotonic time of the newest advert forwarded (for the refresh).
        self._tracked: dict[str, float] = {}
        self._flush_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._publishing = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubs: list[CALLBACK_TYPE] = []

    @callback
    def async_start(self) -> None:
        for matcher in advert_matchers():
            self._unsubs.append(
                bluetooth.async_register_callback(
                    self._hass,
                    self.async_on_advert,
                    matcher,
                    bluetooth.BluetoothScanningMode.PASSIVE,
                )
            )
        self._unsubs.append(
            async_track_time_interval(
                self._hass,
                self._async_refresh,
                timedelta(seconds=REFRESH_SECONDS),
                name="i4t BLE bridge refresh",
                cancel_on_shutdown=True,
            )
        )

    @callback
    def async_stop(self) -> None:
        """Unregister, cancel the timer and the publishes in flight; drop what is buffered."""
        while self._unsubs:
            self._unsubs.pop()()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for task in self._tasks:
            task.cancel()
        self._pending.clear()
        self._latest.clear()
        self._tracked.clear()

    @callback
    def async_on_advert(
        self, info: bluetooth.BluetoothServiceInfoBleak, change: bluetooth.BluetoothChange
    ) -> None:
        """HA's bluetooth callback: snapshot the advert, nothing else (hot path)."""
        self._add(
            (
                info.address,
                info.rssi,
                info.time,
                info.source,
                info.name,
                info.service_data,
                info.manufacturer_data,
            )
        )

    def _add(self, advert: _Advert) -> None:
        self.stats.received += 1
        address = advert[0]
        pending = self._pending
        self._tracked[address] = advert[2]
        if (
            (seq := self._latest.get(address)) is not None
            and (prev := pending.get(seq)) is not None
            and (prev[5] is advert[5] or prev[5] == advert[5])
            and (prev[6] is advert[6] or prev[6] == advert[6])
            and prev[4] == advert[4]
        ):
            pending[seq] = advert
            self.stats.coalesced += 1
            return
        self._seq = seq = self._seq + 1
        pending[seq] = advert
        self._latest[address] = seq
        if len(pending) > MAX_PENDING:
            del pending[next(iter(pending))]
            self.stats.dropped_full += 1
        if (handle := self._flush_handle) is None:
            self._flush_handle = self._hass.loop.call_later(FLUSH_SECONDS, self._flush)
        elif len(pending) >= BATCH_ADVERTS and isinstance(handle, asyncio.TimerHandle):
            # A full batch goes at once (TimerHandle: not yet moved to call_soon).
            handle.cancel()
            self._flush_handle = self._hass.loop.call_soon(self._flush)

    @callback
    def _flush(self) -> None:
        """Build the batches from the buffer and start publishing them."""
        self._flush_handle = None
        adverts = list(self._pending.values())
        self._pending.clear()
        self._latest.clear()
        if len(self._tracked) > MAX_TRACKED:
            for address in list(self._tracked)[: len(self._tracked) - MAX_TRACKED]:
                del self._tracked[address]
        offset = time.time() - monotonic_time_coarse()
        for payload, count in encode_batches([advert_json(a, offset) for a in adverts]):
            if self._publishing >= MAX_PUBLISHING:
                self.stats.batches_dropped += 1
                continue
            self.stats.batches += 1
            self.stats.forwarded += count
            self._publishing += 1
            task = self._entry.async_create_background_task(
                self._hass, self._publish(payload), "i4t BLE advert batch"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _publish(self, payload: bytes) -> None:
        try:
            await mqtt.async_publish(self._hass, self._topic, payload, qos=0, retain=False)
        except HomeAssistantError as err:
            _LOGGER.debug("BLE advert batch not published: %s", err)
        finally:
            self._publishing -= 1

    @callback
    def _async_refresh(self, _now: Any = None) -> None:
        """Forward again what HA heard since from addresses whose data did not change."""
        for address, forwarded in list(self._tracked.items()):
            info = bluetooth.async_last_service_info(self._hass, address, connectable=False)
            if info is None:
                del self._tracked[address]
            elif info.time > forwarded and any(u in info.service_data for u in MATCHED_UUIDS):
                self.stats.refreshed += 1
                self.async_on_advert(info, bluetooth.BluetoothChange.ADVERTISEMENT)


@dataclass(frozen=True, slots=True)
class GattRequest:
    """A checked GATT write request (schema ble_gatt_request)."""

    id: str
    address: str
    service: str
    characteristic: str
    data: bytes
    response: bool
    timeout: float


class GattRequestError(ValueError):
    """A request that breaks the schema; ``request_id`` when it still carried a usable id."""

    def __init__(self, detail: str, request_id: str | None) -> None:
        super().__init__(detail)
        self.request_id = request_id


def parse_gatt_request(payload: str | bytes | bytearray) -> GattRequest:
    """The request in ``payload``, checked as the schema says; GattRequestError otherwise."""
    if len(payload) > MAX_GATT_PAYLOAD:
        raise GattRequestError("request too large", None)
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise GattRequestError("not JSON", None) from None
    if not isinstance(document, dict):
        raise GattRequestError("not a JSON object", None)
    request_id = document.get("id")
    if not isinstance(request_id, str) or not _ID.match(request_id):
        raise GattRequestError("no usable id", None)
    if document.get("api") != API_VERSION:
        raise GattRequestError("unsupported api version", request_id)
    address = document.get("address")
    service = document.get("service")
    characteristic = document.get("characteristic")
    data = document.get("data")
    response = document.get("response")
    timeout = document.get("timeout")
    problem = None
    if not isinstance(address, str) or not _MAC.match(address):
        problem = "address is an upper-case BLE address"
    elif not all(isinstance(u, str) and _UUID.match(u) for u in (service, characteristic)):
        problem = "service and characteristic are lower-case 128-bit UUIDs"
    elif not isinstance(data, str) or not _HEX.match(data):
        problem = "data is 1-512 bytes of lower-case hex"
    elif not isinstance(response, bool):
        problem = "response is a boolean"
    elif (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not 0.5 <= timeout <= 60
    ):
        problem = "timeout is 0.5-60 seconds"
    if problem is not None:
        raise GattRequestError(problem, request_id)
    assert isinstance(address, str)
    assert isinstance(data, str)
    assert isinstance(response, bool)
    assert isinstance(service, str)
    assert isinstance(characteristic, str)
    assert isinstance(timeout, int | float)
    return GattRequest(
        request_id, address, service, characteristic, bytes.fromhex(data), response, timeout
    )


class _GattFailedError(Exception):
    """Ends a request with an error code of the result schema."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


def gatt_result(request_id: str, error: str | None = None, detail: str | None = None) -> bytes:
    document: dict[str, Any] = {"api": API_VERSION, "id": request_id, "ok": error is None}
    if error is not None:
        document["error"] = error
    if detail:
        document["detail"] = detail[:256]
    return json.dumps(document, separators=(",", ":")).encode()


class GattWriter:
    """Carries out the gateway's GATT write requests through HA's bluetooth stack."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        gateway_id: str,
        stats: BridgeStats,
        *,
        allowed: bool,
    ) -> None:
        self._hass = hass
        self._entry = entry
        self._gateway_id = gateway_id
        self._result_topic = gatt_result_topic(gateway_id)
        self._allowed = allowed
        self.stats = stats
        self._running: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._unsub: CALLBACK_TYPE | None = None

    async def async_start(self) -> None:
        self._unsub = await mqtt.async_subscribe(
            self._hass, gatt_request_topic(self._gateway_id), self._async_on_request, qos=1
        )

    @callback
    def async_stop(self) -> None:
        if self._unsub is not None:
            self._unsub()
            self._unsub = None
        for task in self._running.values():
            task.cancel()
        self._running.clear()

    @callback
    def _async_on_request(self, message: mqtt.ReceiveMessage) -> None:
        self.stats.gatt_requests += 1
        try:
            request = parse_gatt_request(message.payload)
        except GattRequestError as err:
            if err.request_id is None:
                self.stats.gatt_ignored += 1
                _LOGGER.debug("GATT request ignored: %s", err)
                return
            self._start(err.request_id, self._answer(err.request_id, "bad_request", str(err)))
            return
        if message.retain:
            # A retained request would be carried out again at every reconnect.
            self._start(request.id, self._answer(request.id, "bad_request", "retained request"))
        elif request.id in self._running:
            self.stats.gatt_ignored += 1  # a QoS 1 duplicate of a request under way
        elif not self._allowed:
            self._start(request.id, self._answer(request.id, "not_allowed", "BLE bridge is off"))
        elif len(self._running) >= MAX_GATT_TASKS:
            self._start(request.id, self._answer(request.id, "busy", "too many requests"))
        else:
            self._start(request.id, self._async_run(request))

    def _start(self, request_id: str, coro: Any) -> None:
        task = self._entry.async_create_background_task(
            self._hass, coro, f"i4t GATT request {request_id[:8]}"
        )
        self._running[request_id] = task
        task.add_done_callback(lambda _t: self._running.pop(request_id, None))

    async def _answer(self, request_id: str, error: str | None, detail: str | None) -> None:
        if error is None:
            self.stats.gatt_ok += 1
        else:
            self.stats.gatt_failed += 1
        try:
            await mqtt.async_publish(
                self._hass, self._result_topic, gatt_result(request_id, error, detail), qos=1
            )
        except HomeAssistantError as err:
            _LOGGER.debug("GATT result not published: %s", err)

    async def _async_run(self, request: GattRequest) -> None:
        lock = self._locks.setdefault(request.address, asyncio.Lock())
        try:
            async with lock:
                await self._async_write(request)
        finally:
            if not lock.locked() and self._locks.get(request.address) is lock:
                del self._locks[request.address]

    async def _async_write(self, request: GattRequest) -> None:
        client: BleakClientWithServiceCache | None = None
        error: str | None = None
        detail: str | None = None
        try:
            async with asyncio.timeout(request.timeout):
                client = await self._async_connect(request.address)
                await self._async_write_char(client, request)
        except TimeoutError:
            error, detail = "timeout", f"no result within {request.timeout} s"
        except _GattFailedError as failure:
            error, detail = failure.error, failure.detail
        except Exception as err:
            _LOGGER.debug("GATT request %s failed", request.id[:8], exc_info=True)
            error = "connect_failed" if client is None else "write_failed"
            detail = type(err).__name__
        await self._answer(request.id, error, detail)
        if client is not None:
            await self._async_disconnect(client)

    async def _async_connect(self, address: str) -> BleakClientWithServiceCache:
        hass = self._hass
        device = bluetooth.async_ble_device_from_address(hass, address, connectable=True)
        if device is None:
            if bluetooth.async_address_present(hass, address, connectable=False):
                raise _GattFailedError(
                    "not_connectable", "heard only by scanners that cannot connect"
                )
            raise _GattFailedError("not_found", "not heard by any Bluetooth adapter or proxy")

        def latest_device() -> BLEDevice:
            # Each retry may go through a better adapter or proxy.
            newer = bluetooth.async_ble_device_from_address(hass, address, connectable=True)
            return newer or device

        # Looked up now, not at import: HA's bluetooth swaps in its own client class (which
        # connects through the best adapter or ESPHome proxy) when it starts.
        client_class = bleak_retry_connector.BleakClientWithServiceCache
        try:
            return await establish_connection(
                client_class,
                device,
                device.name or address,
                max_attempts=GATT_CONNECT_ATTEMPTS,
                ble_device_callback=latest_device,
            )
        except BleakOutOfConnectionSlotsError as err:
            raise _GattFailedError("busy", "no free connection slot") from err
        except (BleakError, OSError, EOFError) as err:
            raise _GattFailedError("connect_failed", type(err).__name__) from err

    @staticmethod
    async def _async_write_char(client: BleakClientWithServiceCache, request: GattRequest) -> None:
        service = client.services.get_service(request.service)
        if service is None:
            raise _GattFailedError("service_not_found", request.service)
        characteristic = service.get_characteristic(request.characteristic)
        if characteristic is None:
            raise _GattFailedError("characteristic_not_found", request.characteristic)
        try:
            await client.write_gatt_char(characteristic, request.data, response=request.response)
        except (BleakError, OSError, EOFError) as err:
            raise _GattFailedError("write_failed", type(err).__name__) from err

    @staticmethod
    async def _async_disconnect(client: BleakClientWithServiceCache) -> None:
        try:
            async with asyncio.timeout(DISCONNECT_SECONDS):
                await client.disconnect()
        except (TimeoutError, BleakError, OSError, EOFError) as err:
            _LOGGER.debug("GATT disconnect failed: %s", type(err).__name__)


class BleBridge:
    """Everything of the BLE bridge for one config entry."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry, gateway_id: str) -> None:
        self.forwarding = bool(entry.options.get(CONF_BLE_BRIDGE, True))
        self.forwarder = AdvertForwarder(hass, entry, gateway_id)
        self.gatt = GattWriter(
            hass, entry, gateway_id, self.forwarder.stats, allowed=self.forwarding
        )
        self._hass = hass
        self._use_scanners = bool(entry.options.get(CONF_REMOTE_SCANNERS, True))
        self.scanners: RemoteScanners | None = None
        self._release_scanners: CALLBACK_TYPE | None = None

    async def async_start(self) -> None:
        try:
            if self.forwarding:
                self.forwarder.async_start()
            await self.gatt.async_start()
            if self._use_scanners:
                self.scanners, self._release_scanners = await async_use_remote_scanners(self._hass)
        except BaseException:
            self.async_stop()
            raise

    @callback
    def async_stop(self) -> None:
        self.forwarder.async_stop()
        self.gatt.async_stop()
        if self._release_scanners is not None:
            self._release_scanners()

    def diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"forwarding": self.forwarding, **asdict(self.forwarder.stats)}
        if self.scanners is not None:
            out["remote_scanners"] = self.scanners.diagnostics()
        return out


async def async_setup_ble_bridge(
    hass: HomeAssistant, entry: ConfigEntry, gateway_id: str
) -> Callable[[], None]:
    """Start the BLE bridge of ``entry``'s gateway; returns the function that undoes it all.

    Call it after MQTT is up (mqtt.async_wait_for_mqtt_client) and pass the result to
    entry.async_on_unload. The bridge object is reachable as ``undo.__self__`` (diagnostics).
    """
    bridge = BleBridge(hass, entry, gateway_id)
    await bridge.async_start()
    return bridge.async_stop
