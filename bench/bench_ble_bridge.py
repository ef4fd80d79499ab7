"""BLE bridge benchmark: the integration's time in HA's event loop per forwarded advert.

    .venv/bin/python bench/bench_ble_bridge.py        # about 10 s on the 2-core reference machine

Runs a bare ``HomeAssistant`` instance (no test harness) with the bridge's AdvertForwarder and
feeds it adverts the way HA's bluetooth manager does: one call of the registered callback per
advert, on the loop. Timed per advert: the callback (the hot path) and its share of the batch
build (JSON of the batch and the start of its publish task; the publish itself is a no-op here,
it is the MQTT integration's cost, once per batch). Goal: under 20 us per advert in total.

The anchor, measured in the same run on the same adverts: the least any forwarder must do, a
plain dict built and appended per advert and one json.dumps per batch. The ratio is what the
bridge costs on top (bounded buffer, coalescing, liveness tracking, schema limits, batching).
Not a test: absolute numbers depend on the machine, the ratio much less.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
import gc
import json
from pathlib import Path
import statistics
import sys
import tempfile
import time
from typing import Any
from unittest.mock import patch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from homeassistant.components.bluetooth import BluetoothChange, BluetoothServiceInfoBleak
from homeassistant.core import HomeAssistant

from custom_components.i4t import ble_bridge

ADVERTS = 100_000
THINGS = 500
BATCH = 256  # adverts per flush: a busy site (512 adverts/s at the 0.5 s window)
RUNS = 5
BTHOME = ble_bridge.BTHOME_UUID


class BenchEntry:
    """The one ConfigEntry method the forwarder uses."""

    def async_create_background_task(
        self, hass: HomeAssistant, target: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        return hass.async_create_background_task(target, name)


async def no_publish(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for mqtt.async_publish: the broker round trip is not the bridge's cost."""


def make_adverts() -> list[BluetoothServiceInfoBleak]:
    """BTHome v2 adverts of THINGS sensors, each with a new packet id (new data every time)."""
    out = []
    for n in range(ADVERTS):
        thing = n % THINGS
        address = f"A4:C1:38:{thing >> 8:02X}:{thing & 0xFF:02X}:01"
        data = bytes([0x40, 0x00, (n // THINGS) & 0xFF, 0x02, 0xCA, 0x09, 0x03, 0xBF, 0x13])
        name = f"ATC_{thing:06X}"
        advertisement = AdvertisementData(name, {}, {BTHOME: data}, [], -127, -60, ())
        out.append(
            BluetoothServiceInfoBleak(
                name=name,
                address=address,
                rssi=-60 - thing % 30,
                manufacturer_data={},
                service_data={BTHOME: data},
                service_uuids=[],
                source="00:1A:7D:DA:71:13",
                device=BLEDevice(address, name, {}, -60),
                advertisement=advertisement,
                connectable=False,
                time=1000.0 + n * 0.002,
                tx_power=-127,
            )
        )
    return out


def bench_bridge(
    forwarder: ble_bridge.AdvertForwarder, adverts: list[BluetoothServiceInfoBleak]
) -> tuple[float, float]:
    """Seconds in the callback and in the flushes, for all adverts."""
    on_advert = forwarder.async_on_advert
    change = BluetoothChange.ADVERTISEMENT
    in_callback = in_flush = 0.0
    clock = time.perf_counter
    for start in range(0, len(adverts), BATCH):
        chunk = adverts[start : start + BATCH]
        t0 = clock()
        for info in chunk:
            on_advert(info, change)
        t1 = clock()
        handle = forwarder._flush_handle
        assert handle is not None
        handle.cancel()  # the timer would fire it; run it now instead
        forwarder._flush()
        t2 = clock()
        in_callback += t1 - t0
        in_flush += t2 - t1
    return in_callback, in_flush


def bench_anchor(adverts: list[BluetoothServiceInfoBleak]) -> float:
    """A plain dict per advert appended to a list, one json.dumps per batch."""
    clock = time.perf_counter
    total = 0.0
    for start in range(0, len(adverts), BATCH):
        chunk = adverts[start : start + BATCH]
        t0 = clock()
        batch: list[dict[str, Any]] = []
        for info in chunk:
            batch.append(
                {
                    "address": info.address,
                    "rssi": info.rssi,
                    "time": info.time,
                    "source": info.source,
                    "local_name": info.name,
                    "service_data": {k: v.hex() for k, v in info.service_data.items()},
                }
            )
        json.dumps({"api": 1, "adverts": batch}, separators=(",", ":")).encode()
        total += clock() - t0
    return total


async def main() -> None:
    adverts = make_adverts()
    with tempfile.TemporaryDirectory() as config_dir:
        hass = HomeAssistant(config_dir)
        entry: Any = BenchEntry()
        callback_us, flush_us, anchor_us = [], [], []
        with patch.object(ble_bridge.mqtt, "async_publish", no_publish):
            for _ in range(RUNS):
                forwarder = ble_bridge.AdvertForwarder(hass, entry, "i4tbenchgateway2345")
                gc.collect()
                in_callback, in_flush = bench_bridge(forwarder, adverts)
                await asyncio.sleep(0)  # let the publish tasks end
                await hass.async_block_till_done(wait_background_tasks=True)
                assert forwarder.stats.forwarded == ADVERTS, forwarder.stats
                assert forwarder.stats.coalesced == forwarder.stats.dropped_full == 0
                gc.collect()
                anchor = bench_anchor(adverts)
                callback_us.append(in_callback / ADVERTS * 1e6)
                flush_us.append(in_flush / ADVERTS * 1e6)
                anchor_us.append(anchor / ADVERTS * 1e6)
                forwarder.async_stop()
        await hass.async_stop(force=True)

    callback = statistics.median(callback_us)
    flush = statistics.median(flush_us)
    anchor = statistics.median(anchor_us)
    total = statistics.median(c + f for c, f in zip(callback_us, flush_us, strict=True))
    print(
        f"BLE bridge, {ADVERTS} BTHome adverts from {THINGS} things, batches of {BATCH}, "
        f"median of {RUNS} runs (Python {sys.version.split()[0]})"
    )
    print(f"  callback (hot path)               {callback:6.2f} us/advert")
    print(f"  its share of the batch build      {flush:6.2f} us/advert")
    print(f"  integration total in the loop     {total:6.2f} us/advert   (goal < 20 us)")
    print(f"  anchor: dict + append + json.dumps {anchor:5.2f} us/advert")
    print(f"  ratio total / anchor              {total / anchor:6.2f}")
    verdict = "met" if total < 20 else "NOT met"
    print(f"goal | HA event loop time per BLE advert | {total:.1f} us | < 20 us | {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
