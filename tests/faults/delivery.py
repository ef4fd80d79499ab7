"""Fault cases 1 and 2: packets from things through a real gateway process to an upstream that
counts every message id, while brokers, the gateway and the router fail and come back.

Each case returns a :class:`Outcome`: what the things sent and had acked, what the destination
delivered after de-duplication by message id (lost, duplicated), how many copies crossed the
wire, and the measured recovery times (printed, not asserted: timing goals are for the report).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
import threading
import time

from i4t_gateway.identity import Identity
from i4t_gateway.payloads import Data, Payload, Reading
from i4t_gateway.replay import DEFAULT_DEDUP_CAPACITY
from tests.gateway.brokers import Mosquitto, make_tls_certs
from tests.gateway.router_harness import RouterProcess, Upstream, issue, router_address
from tests.gateway.router_standin import RouterStandIn

from .rig import GatewayProcess, ThingFleet, first_connect, integrity, pump, wait_until

PARENT = Identity.from_seed(bytes([71]) * 32)
"""The destination: a router stand-in (the upstream of case 1, the parent router of case 2)."""
FAR_AWAY = Identity.from_seed(bytes([72]) * 32).address
"""Where the things send: known to no gateway, so every packet goes all the way up."""
RETRY_AFTER = 5.0


Watcher = Callable[[int, float], float | None]
"""When a client logged its connect to a broker port at or after a time (None: not yet)."""


@dataclass
class Outcome:
    """What one case measured."""

    name: str
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    wire_copies: int = 0
    thing_retries: int = 0
    queue_left: int = -1
    integrity: str = "?"
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # behaviour wrong beyond the counts

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.lost == 0
            and self.duplicated == 0
            and self.acked == self.sent
            and self.queue_left == 0
            and self.integrity == "ok"
        )


def reading(index: int) -> Payload:
    return Data((Reading("n", index),))


def count(outcome: Outcome, fleet: ThingFleet, standin: RouterStandIn) -> None:
    """Lost: acked to a thing, never delivered. Duplicated: delivered twice after the
    destination's de-duplication by message id. Wire copies: every copy that arrived."""
    sent = set(fleet.sent)
    delivered = [m for m in list(standin.delivered) if m in sent]
    outcome.sent = len(sent)
    outcome.acked = fleet.acked_count()
    outcome.delivered = len(set(delivered))
    outcome.lost = len(fleet.acked - set(delivered))
    outcome.duplicated = len(delivered) - len(set(delivered))
    outcome.wire_copies = sum(standin.copies[m] for m in sent)
    outcome.thing_retries = fleet.retransmitted


@contextlib.contextmanager
def pumping(fleet: ThingFleet, total: int, window: int) -> Iterator[threading.Thread]:
    """Send in a background thread for the duration of the block (stopped on the way out)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=pump,
        args=(fleet, total, FAR_AWAY, reading),
        kwargs={"window": window, "retry_after": RETRY_AFTER, "stop": stop},
        daemon=True,
    )
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(10)


def finish(
    outcome: Outcome,
    gateway: GatewayProcess,
    fleet: ThingFleet,
    standin: RouterStandIn,
    sender: threading.Thread,
    seconds: float,
) -> None:
    """Wait until every packet is acked to its thing and delivered, stop the gateway cleanly,
    read its queue and check its database."""
    sender.join(seconds)
    if sender.is_alive():
        outcome.notes.append(f"{fleet.pending()} packets never acked to their things")

    def all_delivered() -> bool:
        return fleet.acked <= standin.unique()

    try:
        wait_until(all_delivered, seconds, "every acked packet delivered")
    except TimeoutError as err:
        outcome.notes.append(str(err))
        lost = sorted(fleet.acked - standin.unique())[:5]
        outcome.notes.append(
            "lost: " + ", ".join(f"{m.hex()} ({standin.copies[m]} copies seen)" for m in lost)
        )
        outcome.notes.append(f"queued at the gateway: {gateway.queue_rows()} rows")
    count(outcome, fleet, standin)
    with contextlib.suppress(TimeoutError):
        # The last acks from the destination release the gateway's last queued packets.
        wait_until(lambda: gateway.queue_rows() == 0, 30, "queue drained")
    gateway.stop()
    outcome.queue_left = gateway.queue_rows()
    outcome.integrity = integrity(gateway.database)


def case_outage_and_kills(
    work: Path, *, packets: int, things: int, outage: float, log: Callable[[str], None]
) -> Outcome:
    """Case 1: ``packets`` from ``things`` through the gateway to a router stand-in whose
    broker is stopped for ``outage`` seconds in the middle; the gateway is killed with
    SIGKILL (and restarted) once before the outage and once during it."""
    outcome = Outcome(f"{packets} packets: {outage:.0f} s upstream outage + 2 x kill -9")
    started = time.monotonic()
    with (
        standin_rig(work, dedup_capacity=packets * 2) as rig,
        closing(ThingFleet(rig.local.port, things, seed="case1")) as fleet,
    ):
        gateway, upstream = rig.gateway, rig.upstream
        gateway.start()
        fleet.enroll(gateway.gateway_id)
        log(f"  {things} things enrolled; sending {packets} packets")
        with pumping(fleet, packets, window=2000) as sender:
            wait_until(lambda: fleet.acked_count() >= packets * 0.15, 600, "15% acked")
            gateway.kill9()
            log(f"  kill -9 of the gateway at {fleet.acked_count()} acked; restarted")
            gateway.start()
            wait_until(lambda: fleet.acked_count() >= packets * 0.3, 600, "30% acked")
            upstream.stop()
            down_at = time.time()
            log(f"  upstream broker stopped at {fleet.acked_count()} acked")
            time.sleep(outage / 2)
            queued = gateway.queue_rows()
            gateway.kill9()
            log(f"  kill -9 of the gateway with {queued} rows queued; restarted")
            gateway.start()
            time.sleep(max(0.0, outage - (time.time() - down_at)))
            log(f"  upstream broker back after {time.time() - down_at:.0f} s")
            took = _restart_broker(upstream, {"uplink reconnect": gateway.connected_since}, True)
            outcome.timings["uplink reconnect after the outage"] = took["uplink reconnect"]
            finish(outcome, gateway, fleet, rig.standin, sender, seconds=1200)
    outcome.seconds = time.monotonic() - started
    return outcome


@dataclass
class StandInRig:
    """A gateway process between a local Mosquitto and a TLS router broker on which a router
    stand-in acks (and counts) what the gateway forwards."""

    local: Mosquitto
    upstream: Mosquitto
    standin: RouterStandIn
    gateway: GatewayProcess


@contextlib.contextmanager
def standin_rig(
    work: Path, *, dedup_capacity: int = DEFAULT_DEDUP_CAPACITY, data_dir: Path | None = None
) -> Iterator[StandInRig]:
    """The brokers and the stand-in started, the gateway not yet; all stopped on the way out."""
    work.mkdir(parents=True, exist_ok=True)
    local = Mosquitto(workdir=work)
    upstream = Mosquitto(workdir=work, tls=make_tls_certs(work / "certs"))
    local.start()
    upstream.start()
    assert upstream.tls is not None
    ca_file = upstream.tls.ca_file
    standin = RouterStandIn(
        upstream.port, ca_file, PARENT, batch_acks=True, dedup_capacity=dedup_capacity
    )
    gateway = GatewayProcess(
        data_dir or work / "gateway", local.url, upstream.url, PARENT.address, ca_file=ca_file
    )
    try:
        yield StandInRig(local, upstream, standin, gateway)
    finally:
        gateway.stop()
        standin.close()
        upstream.stop()
        local.stop()


def case_restarts(work: Path, *, packets: int, things: int, log: Callable[[str], None]) -> Outcome:
    """Case 2: a steady stream through the gateway and a real router (console script) to the
    router's parent (a stand-in), while the gateway's local broker, the router's broker and
    the router restart in turn. Reconnect times are read from the processes' own logs."""
    outcome = Outcome(f"{packets} packets: local broker, router broker and router restarts")
    work.mkdir(parents=True, exist_ok=True)
    local, router_broker, parent_broker = (Mosquitto(workdir=work) for _ in range(3))
    for broker in (local, router_broker, parent_broker):
        broker.start()
    standin = RouterStandIn(
        parent_broker.port, None, PARENT, batch_acks=True, dedup_capacity=packets * 2
    )
    router_dir = work / "router"
    router = RouterProcess(
        router_dir, router_broker, Upstream(parent_broker.url, PARENT.address, "parent-token")
    )
    gateway = GatewayProcess(
        work / "gateway", local.url, router_broker.url, router_address(router_dir)
    )
    gateway.token = issue(router_dir, gateway.identity.address)
    fleet = ThingFleet(local.port, things, seed="case2")
    started = time.monotonic()
    try:
        router.start()
        gateway.start()
        fleet.enroll(gateway.gateway_id)
        log(f"  {things} things enrolled; sending {packets} packets")
        with pumping(fleet, packets, window=500) as sender:
            router_log = router.data_dir / "router.log"

            def router_connected(port: int, since: float) -> float | None:
                return first_connect(router_log.read_text(errors="replace"), port, since)

            steps: list[tuple[Mosquitto, dict[str, Watcher]]] = [
                (local, {"local broker restart: gateway reconnect": gateway.connected_since}),
                (
                    router_broker,
                    {
                        "router broker restart: gateway reconnect": gateway.connected_since,
                        "router broker restart: router reconnect": router_connected,
                    },
                ),
            ]
            for number, (broker, watchers) in enumerate(steps, start=1):
                share = number / (len(steps) + 2)
                wait_until(lambda s=share: fleet.acked_count() >= packets * s, 600, f"{share:.0%}")  # type: ignore[misc]
                outcome.timings.update(_restart_broker(broker, watchers))
                log(f"  restarted: {_shown(outcome.timings)}")
            wait_until(lambda: fleet.acked_count() >= packets * 0.75, 600, "75% acked")
            outcome.timings.update(_restart_router(router, router_broker.port, standin))
            log(f"  router killed and restarted: {_shown(outcome.timings)}")
            finish(outcome, gateway, fleet, standin, sender, seconds=600)
    finally:
        outcome.seconds = time.monotonic() - started
        fleet.close()
        gateway.stop()
        router.stop()
        standin.close()
        for broker in (local, router_broker, parent_broker):
            broker.stop()
    return outcome


def _shown(timings: dict[str, float]) -> str:
    return ", ".join(f"{what} {seconds:.2f} s" for what, seconds in timings.items())


def _restart_broker(
    broker: Mosquitto, watchers: dict[str, Watcher], stopped: bool = False
) -> dict[str, float]:
    """Stop (unless ``stopped`` already) and start a broker on its port; for each client,
    seconds from the broker's start to its reconnect (as the client logged it)."""
    port = broker.port
    if not stopped:
        broker.stop()
    broker.start()
    back_at = time.time()
    if broker.port != port:
        raise RuntimeError("the broker's port was taken meanwhile")
    took: dict[str, float] = {}
    for what, connected_since in watchers.items():
        wait_until(lambda c=connected_since: c(port, back_at) is not None, 120, what)  # type: ignore[misc]
        reconnected = connected_since(port, back_at)
        assert reconnected is not None
        took[what] = reconnected - back_at
    return took


def _restart_router(router: RouterProcess, port: int, standin: RouterStandIn) -> dict[str, float]:
    """SIGKILL the router and start it again: seconds from its start to its connect to its
    broker (as it logged it), and until packets reach the parent through it again."""
    router.kill()
    time.sleep(1.0)  # what the dead router had sent has arrived: later deliveries are new
    before = standin.delivered_count()
    router.start()
    back_at = time.time()
    log = router.data_dir / "router.log"

    def connected() -> float | None:
        return first_connect(log.read_text(errors="replace"), port, back_at)

    wait_until(lambda: connected() is not None, 60, "the router's reconnect")
    wait_until(lambda: standin.delivered_count() > before, 60, "packets through the router")
    flowing = time.time() - back_at
    return {
        "router restart (kill -9): reconnect": (connected() or back_at) - back_at,
        "router restart (kill -9): packets flow again": flowing,
    }
