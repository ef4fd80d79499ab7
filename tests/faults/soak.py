"""``python -m tests.faults.soak`` (``./scripts/soak``): many simulated nodes against a real
gateway process for minutes (issue #7 item 6: 10k nodes, 10 minutes, memory growth under 5 %,
no queue growth).

The nodes are native things enrolled over the gateway's API; each sends a signed reading every
``--interval`` seconds (spread evenly, so the gateway sees a steady stream), one in ten of them
to an address beyond the regional router (a router stand-in that acks), so the durable uplink
queue works all the time. Every few seconds the gateway's resident memory and its queue depth
are sampled. After a warm-up (every node heard, the gateway's caches filled) memory may grow
less than 5 % and the queue must not grow. A full run writes docs/PERFORMANCE.md (soak).
"""

from __future__ import annotations

import argparse
from contextlib import closing
from dataclasses import dataclass, field
import json
from pathlib import Path
import shutil
import statistics
import sys
import tempfile
import time

from i4t_gateway.payloads import Data, Reading
from i4t_gateway.replay import DEFAULT_DEDUP_CAPACITY
from i4t_gateway.timeouts import HISTORY_SIZE

from .delivery import FAR_AWAY, standin_rig
from .report import machine, table, write_section
from .rig import GatewayProcess, ThingFleet

SAMPLE_SECONDS = 5.0
RETRY_AFTER = 10.0
UPSTREAM_EVERY = 10  # one reading in ten goes beyond the router
MEMORY_GOAL = 0.05
INTRO = (
    "The nodes are native things enrolled over the gateway's API, sending signed readings on "
    "one MQTT connection to a gateway process (the console script) on a local Mosquitto; one "
    "reading in ten goes beyond the router (a stand-in that acks), through the durable uplink "
    "queue. The warm-up lasts until the gateway's bounded memory is full: each node's history "
    "of 16 reporting gaps (17 readings) and the de-duplication window of 65 536 message ids. "
    "Memory growth compares the highest RSS of the last minute with the highest of the first "
    "minute after the warm-up (RSS also drops when memory is returned, so single samples or "
    "medians would read a dip as growth)."
)


@dataclass
class Sample:
    at: float  # seconds since the nodes started sending
    rss_kib: int
    queue_rows: int
    unacked: int  # at the things: sent, not acked yet


@dataclass
class SoakResult:
    nodes: int
    minutes: float
    interval: float
    warm_up: float
    enrol_seconds: float = 0.0
    sent: int = 0
    acked: int = 0
    upstream_delivered: int = 0
    samples: list[Sample] = field(default_factory=list)

    def after_warm_up(self) -> list[Sample]:
        return [s for s in self.samples if s.at >= self.warm_up]

    def memory_growth(self) -> float:
        """The highest RSS of the last minute against the highest of the first minute after the
        warm-up. High-water marks, because RSS also drops when the allocator returns memory:
        a median of a window that holds such a dip reads as growth that is not there."""
        window = self.after_warm_up()
        per_minute = int(60 / SAMPLE_SECONDS)
        first = max(s.rss_kib for s in window[:per_minute])
        last = max(s.rss_kib for s in window[-per_minute:])
        return (last - first) / first

    def queue_growing(self) -> bool:
        """The queue at the end is deeper than anything seen in the first minute after the
        warm-up plus one in-flight window: a backlog building up rather than noise."""
        window = self.after_warm_up()
        first_minute = [s.queue_rows for s in window if s.at < self.warm_up + 60] or [0]
        end = statistics.median(s.queue_rows for s in window[-3:])
        return end > max(first_minute) + 64

    @property
    def ok(self) -> bool:
        return self.memory_growth() < MEMORY_GOAL and not self.queue_growing()


def warm_up_seconds(nodes: int, interval: float) -> float:
    """Until the gateway's bounded per-node and per-packet memory is full, so that what grows
    after is growth, not filling: each node's history of reporting gaps (timeouts.HISTORY_SIZE
    gaps, one report more) and the de-duplication window (replay.DEFAULT_DEDUP_CAPACITY ids)
    at the readings' rate; a minute at least."""
    history = (HISTORY_SIZE + 1) * interval
    dedup = 1.2 * DEFAULT_DEDUP_CAPACITY * interval / nodes
    return max(60.0, history, dedup)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description="Soak run: simulated nodes against a gateway process, its memory "
        "and queue depth sampled (issue #7 item 6).",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="sending time (default 10)")
    parser.add_argument("--nodes", type=int, default=10_000, help="simulated nodes (10000)")
    parser.add_argument(
        "--interval", type=float, default=20.0, help="seconds between a node's readings (20)"
    )
    parser.add_argument(
        "--write", action="store_true", help="write docs/PERFORMANCE.md even for a short run"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    return parser.parse_args(argv)


def soak(work: Path, result: SoakResult) -> None:
    with (
        standin_rig(work) as rig,
        closing(ThingFleet(rig.local.port, result.nodes, seed="soak")) as fleet,
    ):
        rig.gateway.start()
        started = time.monotonic()
        fleet.enroll(rig.gateway.gateway_id, seconds=1800)
        result.enrol_seconds = time.monotonic() - started
        print(f"{result.nodes} nodes enrolled in {result.enrol_seconds:.0f} s", flush=True)
        send_readings(fleet, rig.gateway, result)
        result.sent, result.acked = len(fleet.sent), fleet.acked_count()
        result.upstream_delivered = len(rig.standin.unique())


def send_readings(fleet: ThingFleet, gateway: GatewayProcess, result: SoakResult) -> None:
    """Reading number j goes from node j mod N at j * interval / N: a steady stream in which
    every node reports once per interval."""
    nodes = result.nodes
    gateway_address = gateway.identity.address
    started = time.monotonic()
    end = started + result.minutes * 60
    sent = 0
    next_sample = started
    while (now := time.monotonic()) < end:
        due = int((now - started) * nodes / result.interval)
        for j in range(sent, due):
            to = FAR_AWAY if j % UPSTREAM_EVERY == 0 else gateway_address
            fleet.send(j % nodes, to, Data((Reading("temperature", 20 + j % 50 / 10, "°C"),)))
        sent = max(sent, due)
        fleet.retransmit_due(RETRY_AFTER)
        if now >= next_sample:
            next_sample += SAMPLE_SECONDS
            take_sample(fleet, gateway, result, now - started)
        time.sleep(0.02)


def take_sample(fleet: ThingFleet, gateway: GatewayProcess, result: SoakResult, at: float) -> None:
    sample = Sample(at, gateway.rss_kib(), gateway.queue_rows(), fleet.pending())
    result.samples.append(sample)
    if len(result.samples) % 6 == 1:
        print(
            f"  {at:5.0f} s: gateway RSS {sample.rss_kib / 1024:.1f} MiB, "
            f"queue {sample.queue_rows} rows, unacked at the nodes {sample.unacked}",
            flush=True,
        )


def summary(result: SoakResult) -> str:
    window = result.after_warm_up()
    growth = result.memory_growth()
    rows = [
        ["nodes (native things, enrolled over the API)", f"{result.nodes}"],
        ["enrolment of all nodes", f"{result.enrol_seconds:.0f} s"],
        ["readings", f"every {result.interval:.0f} s per node, 1 in {UPSTREAM_EVERY} upstream"],
        ["duration (sending)", f"{result.minutes:g} min, warm-up {result.warm_up:.0f} s"],
        [
            "gateway RSS when sending began / after warm-up / at the end",
            f"{result.samples[0].rss_kib / 1024:.1f} / {window[0].rss_kib / 1024:.1f}"
            f" / {window[-1].rss_kib / 1024:.1f} MiB",
        ],
        ["readings sent / acked by the gateway", f"{result.sent} / {result.acked}"],
        ["delivered upstream (unique)", f"{result.upstream_delivered}"],
        [
            "memory growth after warm-up (goal < 5 %)",
            f"**{growth:+.1%}** ({'met' if growth < MEMORY_GOAL else 'NOT met'})",
        ],
        [
            "queue rows after warm-up: max / last",
            f"{max(s.queue_rows for s in window)} / {window[-1].queue_rows}"
            f" ({'growing' if result.queue_growing() else 'not growing'})",
        ],
        ["unacked at the nodes at the end", f"{result.samples[-1].unacked}"],
    ]
    return "\n\n".join(
        [
            f"Measured {machine()} by `./scripts/soak --minutes {result.minutes:g}"
            f" --nodes {result.nodes} --interval {result.interval:g}`.",
            INTRO,
            table(["", "measured"], rows),
            f"Samples every {SAMPLE_SECONDS * 6:.0f} s (seconds since sending began: gateway "
            "RSS MiB / queue rows): "
            + ", ".join(
                f"{s.at:.0f}: {s.rss_kib / 1024:.1f}/{s.queue_rows}" for s in result.samples[::6]
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    warm_up = warm_up_seconds(args.nodes, args.interval)
    result = SoakResult(args.nodes, args.minutes, args.interval, warm_up)
    work = Path(tempfile.mkdtemp(prefix="i4t-soak-"))
    try:
        soak(work, result)
        (work / "samples.json").write_text(json.dumps([vars(s) for s in result.samples]))
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if len(result.after_warm_up()) < 10:
        print("too short to judge: run longer than the warm-up", file=sys.stderr)
        return 2
    text = summary(result)
    print()
    print(text)
    if args.write or (args.minutes >= 10 and args.nodes >= 10_000):
        write_section("soak", "Soak", text)
        print("\nwritten to docs/PERFORMANCE.md (soak section)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
