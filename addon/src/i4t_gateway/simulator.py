"""A fleet of simulated I4T things for demos, tests and benchmarks (script ``i4t-simulator``).

N Wi-Fi things, each an I4T-native node with its own Ed25519 identity, publish signed DATA
packets on ``i4t/thing/<address>/up`` and answer HEALTH_REQUEST and COMMAND packets that
arrive on ``i4t/thing/<address>/down``. M BLE things (BTHome v2 plain, BTHome v2 encrypted and
I4T beacons, in rotation) produce adverts that are sent in batches to the gateway's BLE
endpoint on ``i4t/<gateway id>/ble/adverts``, the way the HA integration forwards them, or,
with ``--scanner ID``, as a remote BLE scanner on ``i4t/scanner/<ID>/adverts``: then they
travel the way a real radio's do, through HA's bluetooth stack and the BLE bridge.

Every thing is healthy, broken, silent or flapping (sim_things.py), set at start with
``--broken/--silent/--flapping`` counts or ``--state INDEX=STATE``, and at run time by a JSON
message on ``i4t/sim/<sim id>/control``: ``{"thing": 3, "state": "silent"}`` (``thing`` is an
index, a native thing's address, a BLE MAC, or ``"all"``); ``"interval": <seconds>`` changes a
thing's reporting interval the same way. Each applied change is echoed on
``i4t/sim/<sim id>/event``.

At start the simulator prints one JSON line, its enrolment manifest: every thing's kind,
address and public key, or MAC with bindkey or beacon key, so the gateway and tests can enrol
them. Keys derive from ``--seed``: the same seed is the same fleet.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
import contextlib
from dataclasses import dataclass, field
import heapq
import json
import logging
import os
from pathlib import Path
import re
import signal
import sys
import time
from typing import Any, Final

from . import api
from .ble import MAX_ADVERTS, Advert, adverts_topic, encode_batch
from .bus import MqttBus
from .identity import Address, AddressError
from .settings import BrokerAddress, SettingsError
from .sim_things import BleThing, SimThing, ThingState, WifiThing, make_ble, make_wifi

_LOGGER = logging.getLogger(__name__)

MAX_THINGS: Final = 1000
MIN_INTERVAL: Final = 0.05
MAX_INTERVAL: Final = 3600.0
MAX_CONTROL_BYTES: Final = 1024
MAX_BATCH: Final = min(100, MAX_ADVERTS)
MAX_WAIT: Final = 0.5
DOWN_FILTER: Final = f"{api.THING_PREFIX}/+/down"
DISCOVERY_FILTER: Final = f"{api.DISCOVERY_PREFIX}/+"
SCANNER_TOPIC_PREFIX: Final = "i4t/scanner"
"""Remote BLE scanners publish here (docs/API.md); the HA integration feeds them into HA."""
SCANNER_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class SimulatorError(ValueError):
    """A configuration the simulator cannot run with."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    broker: BrokerAddress
    gateway_id: str | None = None
    sim_id: str = "sim"
    seed: bytes = b"i4t-sim"
    wifi: int = 3
    ble: int = 3
    states: Mapping[int, ThingState] = field(default_factory=dict)
    interval: float = 5.0
    jitter: float = 0.2
    batch_interval: float = 1.0
    discover_timeout: float = 10.0
    duration: float | None = None
    scanner_id: str | None = None
    """Publish BLE adverts as this remote scanner (docs/API.md, remote BLE scanners), so they
    reach the gateway through HA's bluetooth stack and the BLE bridge, as a real radio's would;
    without it they go straight to the gateway's BLE endpoint."""

    def __post_init__(self) -> None:
        if not (0 <= self.wifi <= MAX_THINGS and 0 <= self.ble <= MAX_THINGS):
            raise SimulatorError(f"at most {MAX_THINGS} Wi-Fi and {MAX_THINGS} BLE things")
        intervals = (self.interval, self.batch_interval)
        if not all(MIN_INTERVAL <= i <= MAX_INTERVAL for i in intervals):
            raise SimulatorError(f"intervals are {MIN_INTERVAL}-{MAX_INTERVAL} s")
        if not 0 <= self.jitter < 1:
            raise SimulatorError("jitter is a fraction from 0 to below 1")
        if not self.sim_id or any(c in self.sim_id for c in "/+#"):
            raise SimulatorError("the sim id is a single MQTT topic level")
        for index in self.states:
            if not 0 <= index < self.wifi + self.ble:
                raise SimulatorError(f"no thing {index}")
        if self.scanner_id is not None and not SCANNER_ID.match(self.scanner_id):
            raise SimulatorError("a scanner id is 1-32 letters, digits, '-' or '_'")

    @property
    def control_topic(self) -> str:
        return f"{api.TOPIC_ROOT}/sim/{self.sim_id}/control"

    @property
    def event_topic(self) -> str:
        return f"{api.TOPIC_ROOT}/sim/{self.sim_id}/event"


def scanner_topic(scanner_id: str) -> str:
    return f"{SCANNER_TOPIC_PREFIX}/{scanner_id}/adverts"


def spread_states(
    wifi: int, ble: int, *, broken: int = 0, silent: int = 0, flapping: int = 0
) -> dict[int, ThingState]:
    """Give the counts of non-healthy states to things alternating Wi-Fi and BLE, so both
    kinds get some: broken first, then silent, then flapping. Indexes: Wi-Fi things are
    0..wifi-1, BLE things follow."""
    order = []
    for i in range(max(wifi, ble)):
        order += [i] if i < wifi else []
        order += [wifi + i] if i < ble else []
    wanted = [ThingState.BROKEN] * broken + [ThingState.SILENT] * silent
    wanted += [ThingState.FLAPPING] * flapping
    if len(wanted) > len(order):
        raise SimulatorError("more non-healthy things asked for than there are things")
    return dict(zip(order, wanted, strict=False))


class Simulator:
    """The fleet and its MQTT connection; ``run`` until stopped or ``duration`` is over."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.gateway_id = config.gateway_id
        self.wifi: list[WifiThing] = []
        self.ble: list[BleThing] = []
        for index in range(config.wifi):
            state = config.states.get(index, ThingState.HEALTHY)
            self.wifi.append(make_wifi(config.seed, index, state))
        for ble_index in range(config.ble):
            index = config.wifi + ble_index
            state = config.states.get(index, ThingState.HEALTHY)
            self.ble.append(make_ble(config.seed, index, ble_index, state))
        self._by_address = {t.address: t for t in self.wifi}
        self._by_mac = {t.mac: t for t in self.ble}
        self.stats: Counter[str] = Counter()
        self._bus = MqttBus(config.broker, client_id=f"i4t-sim-{config.sim_id}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._discovered: asyncio.Future[str] | None = None
        self._pending: list[Advert] = []

    @property
    def things(self) -> list[SimThing]:
        return [*self.wifi, *self.ble]

    def manifest(self) -> dict[str, Any]:
        return {
            "sim_id": self.config.sim_id,
            "gateway_id": self.gateway_id,
            "control_topic": self.config.control_topic,
            "event_topic": self.config.event_topic,
            "things": [
                *(t.manifest() for t in self.wifi),
                *(t.manifest() for t in self.ble),
            ],
        }

    # -- state changes -----------------------------------------------------------------------

    def set_state(
        self, selector: object, state: ThingState | None, interval: float | None = None
    ) -> list[int]:
        """Apply ``state`` and/or a reporting ``interval`` to the things ``selector`` names;
        returns their indexes. A new interval counts from the thing's next report."""
        chosen = self._select(selector)
        for thing in chosen:
            if state is not None:
                thing.state = state
            if interval is not None:
                thing.interval = interval
        return [t.index for t in chosen]

    def _select(self, selector: object) -> list[SimThing]:
        things = self.things
        if selector == "all":
            return things
        if isinstance(selector, int) and not isinstance(selector, bool):
            return [things[selector]] if 0 <= selector < len(things) else []
        if isinstance(selector, str):
            thing = self._by_address.get(selector.lower()) or self._by_mac.get(selector.upper())
            return [thing] if thing is not None else []
        return []

    def handle_control(self, topic: str, payload: bytes, retained: bool) -> None:
        """``{"thing": <index|address|mac|"all">, "state": <state>, "interval": <seconds>}``
        (state, interval or both); bad commands are counted and otherwise ignored."""
        if retained or len(payload) > MAX_CONTROL_BYTES:
            self.stats["control_refused"] += 1
            return
        try:
            command = json.loads(payload)
            state = ThingState(command["state"]) if "state" in command else None
            interval = _interval(command["interval"]) if "interval" in command else None
            if state is None and interval is None:
                raise KeyError("state")
            changed = self.set_state(command["thing"], state, interval)
        except (ValueError, KeyError, TypeError):
            self.stats["control_refused"] += 1
            return
        if not changed:
            self.stats["control_refused"] += 1
            return
        self.stats["control_applied"] += 1
        event: dict[str, Any] = {"things": changed}
        if state is not None:
            event["state"] = state.value
        if interval is not None:
            event["interval"] = interval
        _LOGGER.info("things %s changed: %s", changed, event)
        self._bus.publish(self.config.event_topic, api.encode(event), qos=1)

    # -- traffic -----------------------------------------------------------------------------

    def handle_down(self, topic: str, payload: bytes, retained: bool) -> None:
        parts = topic.split("/")
        thing = self._by_address.get(parts[2]) if len(parts) == 4 else None
        if thing is None or thing.silent or retained:
            return
        for packet in thing.handle_down(payload):
            self._publish(thing.up, packet, "answers")

    def _publish(self, topic: str, payload: bytes, what: str) -> None:
        if self._bus.publish(topic, payload, qos=0):
            self.stats[what] += 1
        else:
            self.stats["unsent"] += 1

    def _report(self, thing: SimThing, gateway: Address) -> None:
        if thing.silent:
            return
        if isinstance(thing, WifiThing):
            self._publish(thing.up, thing.report(gateway), "packets")
        elif isinstance(thing, BleThing):
            self._pending.append(thing.advert(time.time()))
            if len(self._pending) >= MAX_BATCH:
                self._flush()

    def _flush(self) -> None:
        if not self._pending or self.gateway_id is None:
            return
        batch, self._pending = self._pending, []
        scanner = self.config.scanner_id
        topic = adverts_topic(self.gateway_id) if scanner is None else scanner_topic(scanner)
        self._publish(topic, encode_batch(batch), "batches")
        self.stats["adverts"] += len(batch)

    def _next_interval(self, thing: SimThing) -> float:
        jitter = self.config.jitter
        interval = self.config.interval if thing.interval is None else thing.interval
        return interval * thing.rng.uniform(1 - jitter, 1 + jitter)

    # -- run ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Connect, find the gateway if not given, print nothing, send until stopped."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event() if stop is None else stop
        self._bus.subscribe(self.config.control_topic, self.handle_control)
        self._bus.subscribe(DOWN_FILTER, self.handle_down, qos=0)
        await self._bus.start()
        try:
            async with asyncio.timeout(self.config.discover_timeout):
                await self._bus.wait_connected()
                await self._subscribed()
                if self.gateway_id is None:
                    self.gateway_id = await self._discover()
            self._introduce_scanner()
            await self.started()
            await self._send_until_stopped(self._stop)
        finally:
            await self._bus.stop()

    def _introduce_scanner(self) -> None:
        """Retained, as a real scanner keeps it: HA registers the scanner when it sees it."""
        scanner = self.config.scanner_id
        if scanner is not None:
            info = {"api": api.API_VERSION, "name": f"I4T simulator {self.config.sim_id}"}
            topic = f"{SCANNER_TOPIC_PREFIX}/{scanner}/info"
            self._bus.publish(topic, api.encode(info), qos=1, retain=True)

    async def started(self) -> None:
        """Called once connected and the gateway is known; the CLI prints the manifest."""

    def request_stop(self) -> None:
        """Stop from any thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _subscribed(self) -> None:
        """Return once the broker has our subscriptions: it handles a client's packets in
        order, so a message to ourselves on a topic subscribed last proves the ones before."""
        assert self._loop is not None
        echo: asyncio.Future[None] = self._loop.create_future()
        nonce = os.urandom(8).hex().encode()

        def heard(topic: str, payload: bytes, retained: bool) -> None:
            if payload == nonce and not echo.done():
                echo.set_result(None)

        topic = f"{api.TOPIC_ROOT}/sim/{self.config.sim_id}/ready"
        self._bus.subscribe(topic, heard, qos=1)
        while not echo.done():
            self._bus.publish(topic, nonce, qos=1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(echo), 0.5)

    async def _discover(self) -> str:
        assert self._loop is not None
        self._discovered = self._loop.create_future()
        self._bus.subscribe(DISCOVERY_FILTER, self._handle_announcement, qos=1)
        return await self._discovered

    def _handle_announcement(self, topic: str, payload: bytes, retained: bool) -> None:
        if self._discovered is None or self._discovered.done():
            return
        with contextlib.suppress(ValueError, AttributeError):
            info = json.loads(payload)
            gateway_id = info.get("id")
            if info.get("role") == "gateway" and isinstance(gateway_id, str):
                self._discovered.set_result(Address.from_text(gateway_id).text)

    async def _send_until_stopped(self, stop: asyncio.Event) -> None:
        assert self.gateway_id is not None
        gateway = Address.from_text(self.gateway_id)
        now = time.monotonic()
        ends = None if self.config.duration is None else now + self.config.duration
        due = [(now + t.rng.uniform(0, self.config.interval), t.index) for t in self.things]
        heapq.heapify(due)
        things = self.things
        next_flush = now + self.config.batch_interval
        while not stop.is_set():
            now = time.monotonic()
            if ends is not None and now >= ends:
                break
            while due and due[0][0] <= now:
                _, index = heapq.heappop(due)
                thing = things[index]
                self._report(thing, gateway)
                heapq.heappush(due, (now + self._next_interval(thing), index))
            if now >= next_flush:
                self._flush()
                next_flush = now + self.config.batch_interval
            wake = min(due[0][0] if due else next_flush, next_flush)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(max(wake - now, 0.001), MAX_WAIT))
        self._flush()


class _CliSimulator(Simulator):
    def __init__(self, config: SimConfig, manifest_path: Path | None) -> None:
        super().__init__(config)
        self._manifest_path = manifest_path

    async def started(self) -> None:
        text = json.dumps(self.manifest(), separators=(",", ":"))
        if self._manifest_path is not None:
            _write_private(self._manifest_path, text + "\n")
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _interval(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("an interval is a number of seconds")
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise ValueError(f"an interval is {MIN_INTERVAL}-{MAX_INTERVAL} s")
    return float(value)


def _write_private(path: Path, text: str) -> None:
    """Write the manifest readable by its owner only: it holds bindkeys and beacon keys."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        os.fchmod(stream.fileno(), 0o600)
        stream.write(text)


def _state_pair(text: str) -> tuple[int, ThingState]:
    index, _, state = text.partition("=")
    try:
        return int(index), ThingState(state)
    except ValueError:
        raise argparse.ArgumentTypeError("INDEX=healthy|broken|silent|flapping") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i4t-simulator", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--broker", default="mqtt://127.0.0.1:1883", help="mqtt[s]://[user:pw@]host[:port]")
    add("--gateway-id", help="the gateway's address; default: the first gateway announced")
    add("--sim-id", default="sim", help="names the control topic i4t/sim/<sim id>/control")
    add("--seed", default="i4t-sim", help="the same seed makes the same keys and addresses")
    add("--wifi", type=int, default=3, help="I4T-native Wi-Fi things")
    add("--ble", type=int, default=3, help="BLE things (BTHome, encrypted BTHome, beacon)")
    add("--broken", type=int, default=0, help="how many things start broken")
    add("--silent", type=int, default=0, help="how many things start silent")
    add("--flapping", type=int, default=0, help="how many things start flapping")
    add("--state", type=_state_pair, action="append", default=[], help="INDEX=STATE")
    add("--interval", type=float, default=5.0, help="seconds between reports per thing")
    add("--jitter", type=float, default=0.2, help="fraction of the interval, random +/-")
    add("--batch-interval", type=float, default=1.0, help="seconds between advert batches")
    add("--duration", type=float, help="stop after this many seconds")
    add("--scanner", help="send BLE adverts as this remote scanner, through HA's bluetooth")
    add("--manifest", type=Path, help="also write the manifest to this file")
    add("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> tuple[SimConfig, Path | None]:
    args = _parser().parse_args(argv)
    try:
        broker = BrokerAddress.from_url(args.broker)
        gateway_id = None if args.gateway_id is None else Address.from_text(args.gateway_id).text
    except (SettingsError, AddressError) as err:
        raise SimulatorError(str(err)) from None
    states = spread_states(
        args.wifi, args.ble, broken=args.broken, silent=args.silent, flapping=args.flapping
    )
    states.update(dict(args.state))
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    config = SimConfig(
        broker,
        gateway_id,
        args.sim_id,
        args.seed.encode(),
        args.wifi,
        args.ble,
        states,
        args.interval,
        args.jitter,
        args.batch_interval,
        duration=args.duration,
        scanner_id=args.scanner,
    )
    return config, args.manifest


async def _run(simulator: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await simulator.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the simulator until Ctrl-C, SIGTERM or --duration."""
    try:
        config, manifest_path = config_from_args(argv)
    except SimulatorError as err:
        sys.stderr.write(f"i4t-simulator: {err}\n")
        return 2
    try:
        asyncio.run(_run(_CliSimulator(config, manifest_path)))
    except TimeoutError:
        sys.stderr.write("i4t-simulator: no broker connection or gateway announcement in time\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
