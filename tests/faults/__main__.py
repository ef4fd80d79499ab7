"""``python -m tests.faults`` (``./scripts/faults``): the fault cases of issue #7 item 4.

1. 100k packets through a gateway process to an upstream whose broker is stopped for 60 s,
   the gateway killed with kill -9 twice: 0 lost, 0 duplicated at the destination.
2. The local broker, the router's broker and the router restart: reconnect times, 0 lost.
3. A full disk: a clear error, counted refusals, no crash, an intact queue after.

Prints a summary table; a full run (not ``--quick``) writes it to docs/PERFORMANCE.md between
the faults markers. Exits 1 if any case lost, duplicated or corrupted anything.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import os
from pathlib import Path
import shutil
import sys
import tempfile

from .delivery import Outcome, case_outage_and_kills, case_restarts
from .disk import case_full_disk
from .report import machine, table, write_section

RECONNECT_GOAL = 5.0


@dataclass(frozen=True)
class Sizes:
    packets_outage: int
    things_outage: int
    outage: float
    packets_restarts: int
    things_restarts: int
    packets_disk: int


FULL = Sizes(100_000, 1000, 60.0, 20_000, 200, 5000)
QUICK = Sizes(5000, 100, 10.0, 3000, 100, 3000)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/faults",
        description="Fault runs of the gateway: a 60 s upstream outage with two kill -9, "
        "broker and router restarts, a full disk (issue #7 item 4).",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, a 10 s outage")
    parser.add_argument(
        "--cases", default="1,2,3", help="which cases to run, e.g. 1,3 (default: all)"
    )
    parser.add_argument(
        "--write", action="store_true", help="write docs/PERFORMANCE.md after --quick too"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    return parser.parse_args(argv)


def run_cases(sizes: Sizes, cases: set[str], work: Path) -> list[Outcome]:
    outcomes: list[Outcome] = []

    def log(line: str) -> None:
        print(line, flush=True)

    if "1" in cases:
        log(f"case 1: {sizes.packets_outage} packets, {sizes.outage:.0f} s outage, 2 x kill -9")
        outcomes.append(
            case_outage_and_kills(
                work / "case1",
                packets=sizes.packets_outage,
                things=sizes.things_outage,
                outage=sizes.outage,
                log=log,
            )
        )
    if "2" in cases:
        log(f"case 2: {sizes.packets_restarts} packets, broker and router restarts")
        outcomes.append(
            case_restarts(
                work / "case2",
                packets=sizes.packets_restarts,
                things=sizes.things_restarts,
                log=log,
            )
        )
    if "3" in cases:
        log(f"case 3: full disk, {sizes.packets_disk} packets")
        outcomes.append(case_full_disk(work / "case3", packets=sizes.packets_disk, log=log))
    return outcomes


def summary(outcomes: list[Outcome], quick: bool) -> str:
    rows = [
        [
            o.name,
            f"{o.sent}",
            f"{o.acked}",
            f"{o.delivered}",
            f"**{o.lost}**",
            f"**{o.duplicated}**",
            f"{o.wire_copies - o.delivered}",
            f"{o.queue_left}",
            o.integrity,
            f"{o.seconds:.0f} s",
            "ok" if o.ok else "FAILED",
        ]
        for o in outcomes
    ]
    header = [
        "case", "sent", "acked to things", "delivered", "lost", "duplicated",
        "copies removed by id", "left in queue", "integrity", "took", "result",
    ]  # fmt: skip
    timing_rows = [
        [what, f"{seconds:.2f} s", _goal(what, seconds)]
        for o in outcomes
        for what, seconds in o.timings.items()
    ]
    notes = [f"- {o.name}: {note}" for o in outcomes for note in o.notes]
    parts = [
        f"Measured {machine()} by `./scripts/faults{' --quick' if quick else ''}`.",
        table(header, rows),
        "Recovery times (from the restart to the reconnect the process logged itself; "
        f"goal for a restart: under {RECONNECT_GOAL:.0f} s):",
        table(["event", "measured", "goal"], timing_rows) if timing_rows else "(none)",
    ]
    if notes:
        parts += ["Notes:", "\n".join(notes)]
    return "\n\n".join(parts)


def _goal(what: str, seconds: float) -> str:
    if "restart" not in what:
        return "(no goal: after a long outage the reconnect backoff is up to 30 s)"
    return "met" if 0 <= seconds < RECONNECT_GOAL else "NOT met"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0 and "3" in args.cases:
        print("case 3 mounts a tmpfs in a private mount namespace: run as root", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="i4t-faults-"))
    try:
        outcomes = run_cases(sizes, set(args.cases.split(",")), work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = summary(outcomes, args.quick)
    print()
    print(text)
    if not args.quick or args.write:
        write_section("faults", "Faults", _intro() + "\n\n" + text)
        print("\nwritten to docs/PERFORMANCE.md (faults section)")
    return 0 if all(o.ok for o in outcomes) else 1


def _intro() -> str:
    return (
        "Things publish signed packets on the local Mosquitto; the gateway is the console "
        "script in a process of its own; the destination (a router stand-in, in case 2 the "
        "parent of a real router process) counts every message id it receives. *Lost*: "
        "acked to a thing by the gateway and never delivered. *Duplicated*: delivered twice "
        "after the destination's de-duplication by message id. *Copies removed by id*: "
        "retransmissions that crossed the wire (after a kill -9 the gateway resends what it "
        "had in flight), which the destination recognised. Things resend whatever the gateway "
        "has not acked (refused, or lost with a killed process) every 5 s.\n\n"
        "Found and fixed by these runs: enrolments confirmed on the API were lost by a kill -9 "
        "within the 5 s between saves (now saved before the reply); a full disk ended the "
        "gateway's housekeeping for good (no more DEAD nodes, state or saves) and logged a "
        "traceback per failed commit (now one error a minute, refusals counted as "
        "`uplink.refused.store_failed`, saves retried); under load, a full disk lost a packet "
        "acked to its thing when the failing batch was the one its own write had filled (1 of "
        "5000; queue.py); announces of a gateway with over 900 things exceeded the 16 KiB "
        "packet limit and were never accepted (found by `./scripts/soak`). Not changed: after "
        "a long outage the uplink's reconnect backoff (capped at 30 s) makes the gateway "
        "notice the broker's return 7-22 s late (four runs); for restarts it is well under "
        "the 5 s goal.\n\n"
        "Case 1 kills the gateway at 15 % of the packets acked, stops the upstream broker at "
        "30 % for 60 s and kills the gateway again half way through the outage (with about "
        "77 000 rows queued); case 2 restarts the local broker, then the router's broker, then "
        "kills the router (1 000 things, then 200 things, each packet from one of them)."
    )


if __name__ == "__main__":
    sys.exit(main())
