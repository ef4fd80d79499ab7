"""Short versions of the fault runs (./scripts/faults runs the long ones and prints timings):
broker and router restarts lose nothing, a full disk is survived, an enrolment confirmed on the
API survives a kill -9. Behaviour only; recovery times are printed by the command, not asserted
here."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
import shutil
import sqlite3
import time

import pytest

from i4t_gateway.cose import DEFAULT_LIMITS
from i4t_gateway.endpoint import Sender
from i4t_gateway.identity import Identity
from i4t_gateway.payloads import MAX_ANNOUNCED, Announce
from i4t_gateway.queue import GroupCommit, PacketQueue, QueueError
from i4t_gateway.server import CORE_STATE_KEY
from i4t_gateway.store import WriteErrorLog, get_meta, open_store
from i4t_gateway.wire import open_packet
from tests.faults.delivery import PARENT, case_restarts
from tests.faults.disk import case_full_disk
from tests.faults.rig import GatewayProcess, ThingFleet, thing_identity

from .brokers import Mosquitto


def test_broker_and_router_restarts_lose_nothing(tmp_path: Path) -> None:
    outcome = case_restarts(tmp_path, packets=1000, things=40, log=print)
    print(outcome)
    assert outcome.sent == outcome.acked == outcome.delivered == 1000
    assert (outcome.lost, outcome.duplicated) == (0, 0)
    assert (outcome.queue_left, outcome.integrity) == (0, "ok")
    # Every restart happened and every client came back (how fast is the command's business).
    assert set(outcome.timings) == {
        "local broker restart: gateway reconnect",
        "router broker restart: gateway reconnect",
        "router broker restart: router reconnect",
        "router restart (kill -9): reconnect",
        "router restart (kill -9): packets flow again",
    }
    assert outcome.ok


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="mounts a tmpfs in a private mount namespace: needs root and unshare",
)
def test_full_disk_refuses_counts_and_recovers(tmp_path: Path) -> None:
    outcome = case_full_disk(tmp_path, packets=1000, log=print)
    print(outcome)
    assert not outcome.problems, outcome.problems
    assert outcome.sent == outcome.acked == outcome.delivered == 1000
    assert (outcome.lost, outcome.duplicated) == (0, 0)
    assert (outcome.queue_left, outcome.integrity) == (0, "ok")
    # The things had to retry: the full disk refused some of their packets.
    assert outcome.thing_retries > 0


def test_enrolment_confirmed_on_the_api_survives_kill_9(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A thing enrolled from the UI is saved before the reply (it was saved every 5 s: a kill
    -9 within them lost an enrolment the user had seen confirmed)."""
    gateway = GatewayProcess(tmp_path / "gateway", mosquitto.url, mosquitto.url, PARENT.address)
    first, second = (ThingFleet(mosquitto.port, 1, seed=f"enrol-kill-{n}") for n in (1, 2))
    try:
        gateway.start()
        first.enroll(gateway.gateway_id)
        time.sleep(1.5)  # a user enrolling the next thing: not a burst
        second.enroll(gateway.gateway_id)  # returns on the reply
        gateway.kill9()
    finally:
        first.close()
        second.close()
        gateway.stop()
    connection = sqlite3.connect(gateway.database)
    try:
        saved = json.dumps(json.loads(get_meta(connection, CORE_STATE_KEY) or "{}")["things"])
    finally:
        connection.close()
    assert first.address(0).text in saved
    assert second.address(0).text in saved


def test_a_failing_database_is_one_error_a_minute_and_one_line_when_it_works_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = WriteErrorLog(logging.getLogger("test"), "packets refused", monotonic=lambda: now[0])
    full = sqlite3.OperationalError("database or disk is full")
    with caplog.at_level(logging.DEBUG, logger="test"):
        for _ in range(500):
            log.failed(full)
        log.succeeded()
        log.succeeded()
        log.failed(full)  # flapping near a full disk: no second error within the minute
        log.succeeded()
        now[0] = 61.0
        log.failed(full)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "cannot write the database (database or disk is full): packets refused "
        "(1 failed writes so far)",
        "cannot write the database (database or disk is full): packets refused "
        "(502 failed writes so far)",
    ]
    recovered = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(recovered) == 1
    assert log.failures == 502


def test_a_full_announce_fits_within_the_packet_size_limit() -> None:
    """The soak's 10k things: announces of MAX_ANNOUNCED addresses must be accepted by the
    router (they were 18.6 KB against a 16 KB limit, refused as too_large)."""
    gateway = Identity.from_seed(bytes([5]) * 32)
    served = tuple(thing_identity("announce", i).address for i in range(MAX_ANNOUNCED))
    sender = Sender(gateway)
    packet = sender.packet(PARENT.address, Announce(served, 2**40))
    data = sender.seal(packet)
    assert len(data) <= DEFAULT_LIMITS.max_size
    opened = open_packet(data).packet.payload
    assert isinstance(opened, Announce)
    assert opened.addresses == served


async def test_a_batch_that_fails_when_full_refuses_the_packet_that_filled_it(
    tmp_path: Path,
) -> None:
    """A write that makes the batch max_rows long commits at once; when that commit fails (a
    full disk), the writer's committed() must fail too, not report it durable."""
    commits = GroupCommit(open_store(tmp_path / "q.db"), max_rows=2)
    queue = PacketQueue(commits)
    commits.write("INSERT INTO no_such_table VALUES (?)", (1,))
    doomed = queue.put("uplink", bytes(16), b"never stored")  # the second row: runs the batch
    with pytest.raises(QueueError):
        await doomed
    assert queue.read("uplink", 0, 10) == []
    await queue.put("uplink", bytes([1]) * 16, b"stored")  # a new batch: works again
    assert len(queue.read("uplink", 0, 10)) == 1
