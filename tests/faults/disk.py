"""Fault case 3: the gateway's data directory on a tiny filesystem that fills up.

Runs in a private mount namespace (``unshare --mount``, as root) so that the tmpfs it mounts
vanishes with it and no one else sees it: :func:`case_full_disk` starts this module as
``python -m tests.faults.disk WORK PACKETS`` under unshare and reads its JSON result from the
last line of its output.

Inside: the gateway (its own process) queues packets for a router stand-in that does not ack
yet, until the disk is full. It must log a clear error, refuse what it cannot store (a thing's
packet stays unacked, so the thing retries), and stay up. Then space is freed and the
stand-in acks: every packet the gateway acked is delivered once, the queue empties and
``PRAGMA integrity_check`` of its database says ok.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
from contextlib import closing
import json
import os
from pathlib import Path
import subprocess
import sys
import time

from i4t_gateway import api

from .delivery import Outcome, StandInRig, finish, pumping, standin_rig
from .rig import ThingFleet, integrity, wait_until

TMPFS_SIZE = "8m"
FILLER = "filler"
DISK_FULL = "cannot write the database (database or disk is full)"
SAVE_FAILED = "i4t_gateway.server: cannot write the database"
SAVED_AGAIN = "i4t_gateway.server: the database can be written again"
LEAVE_FREE = 256 * 1024  # bytes left when the filler is written: a few hundred packets


def case_full_disk(work: Path, *, packets: int, log: Callable[[str], None]) -> Outcome:
    """Run :func:`run` in a private mount namespace; its Outcome."""
    command = [
        "unshare", "--mount", "--propagation", "private",
        sys.executable, "-m", "tests.faults.disk", str(work), str(packets),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, check=False
    )
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        log(line)
    if done.returncode != 0 or not lines:
        outcome = Outcome("full disk")
        outcome.notes.append(f"exit {done.returncode}: {done.stderr.strip()[-2000:]}")
        return outcome
    result = json.loads(lines[-1])
    return Outcome(**result)


def store_failed(state: bytes | None) -> int:
    """Packets the gateway refused because its database could not be written, from its
    state topic."""
    uplink = json.loads(state or b"{}").get("uplink", {})
    return int(uplink.get("refused", {}).get("store_failed", 0))


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(data_dir: Path, leave: int) -> None:
    """Write a filler file so that about ``leave`` bytes stay free."""
    size = max(0, free_bytes(data_dir) - leave)
    with (data_dir / FILLER).open("wb") as filler:
        filler.truncate(0)
        chunk = b"\0" * 65536
        while size > 0:
            written = filler.write(chunk[: min(len(chunk), size)])
            size -= written
        filler.flush()
        os.fsync(filler.fileno())


def run(work: Path, packets: int) -> Outcome:
    """The case itself, in the namespace."""
    outcome = Outcome(f"full disk ({TMPFS_SIZE} tmpfs): {packets} packets")
    data_dir = work / "gateway"
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(data_dir)], check=True
    )
    started = time.monotonic()
    try:
        with (
            standin_rig(work, data_dir=data_dir) as rig,
            closing(ThingFleet(rig.local.port, 50, seed="case3")) as fleet,
        ):
            full_and_freed(outcome, rig, fleet, packets)
    finally:
        outcome.seconds = time.monotonic() - started
        subprocess.run(["umount", str(data_dir)], check=False)
    return outcome


def full_and_freed(outcome: Outcome, rig: StandInRig, fleet: ThingFleet, packets: int) -> None:
    """Fill the disk under a stream of packets, look at the gateway, free the space, finish."""
    gateway, standin, data_dir = rig.gateway, rig.standin, rig.gateway.data_dir
    standin.acking = False  # everything stays queued until the disk is full
    gateway.start()
    fleet.enroll(gateway.gateway_id)
    fill(data_dir, LEAVE_FREE)
    print(f"  disk filled: {free_bytes(data_dir)} bytes free", flush=True)
    with pumping(fleet, packets, window=500) as sender:
        wait_until(lambda: DISK_FULL in gateway.log_text(), 120, "the disk-full error")
        # Running full for a while: refused packets are counted, and retried by the things.
        state = api.GatewayTopics(gateway.gateway_id).gateway_state
        fleet.client.subscribe(state, 1)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: store_failed(fleet.last.get(state)) > 0, 30, "refusals")
        refused = store_failed(fleet.last.get(state))
        outcome.notes.append(f"refused while full (state: uplink.refused.store_failed): {refused}")
        outcome.notes.append(f"acked to things before space was freed: {fleet.acked_count()}")
        errors = [line[24:] for line in gateway.log_text().splitlines() if DISK_FULL in line]
        outcome.notes.append(f"{len(errors)} error lines logged while full, e.g. {errors[:1]}")
        outcome.integrity = integrity(gateway.database)  # beside the running gateway
        outcome.notes.append(f"integrity check while full: {outcome.integrity}")
        outcome.problems += [
            problem
            for problem, wrong in (
                ("the gateway exited while the disk was full", not gateway.alive()),
                ("no refusal counted", refused == 0),
                ("no clear error logged", not errors),
                ("an error logged more than twice a minute per part", len(errors) > 4),
            )
            if wrong
        ]
        (data_dir / FILLER).unlink()
        standin.acking = True
        print("  space freed; the stand-in acks now", flush=True)
        if SAVE_FAILED in gateway.log_text():
            # Housekeeping survived the failed saves: it saves again once it can.
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: SAVED_AGAIN in gateway.log_text(), 30, "saved again")
            if SAVED_AGAIN not in gateway.log_text():
                outcome.problems.append("the gateway's state was not saved again after")
            outcome.notes.append("its state, unsaved while full, was saved once space was back")
        finish(outcome, gateway, fleet, standin, sender, seconds=300)


if __name__ == "__main__":
    result = run(Path(sys.argv[1]), int(sys.argv[2]))
    print(json.dumps(vars(result)), flush=True)
