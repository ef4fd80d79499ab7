"""The gateway's SQLite database: one file under the data folder, in WAL mode.

Later modules (queue, groups, nodes) add their own tables through migrations
registered here, so that one schema version describes the whole file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import logging
from pathlib import Path
import sqlite3
import time

SCHEMA_VERSION = 2

# Each entry migrates from version index to index + 1.
_MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    """,
    # queue.py: packets waiting for the next hop's ack (AUTOINCREMENT: ids are never reused,
    # so a forwarder's read cursor never skips a new row), and message ids already handled.
    """
    CREATE TABLE hop_queue (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        hop TEXT NOT NULL,
        message_id BLOB NOT NULL,
        packet BLOB NOT NULL,
        enqueued_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX hop_queue_by_hop ON hop_queue (hop, id);
    CREATE TABLE seen_message (
        message_id BLOB PRIMARY KEY,
        seen_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX seen_message_by_time ON seen_message (seen_ms);
    """,
)


class StoreError(RuntimeError):
    """The database cannot be opened or is newer than this gateway understands."""


def open_store(path: Path) -> sqlite3.Connection:
    """Open (creating when missing) the database at path and bring its schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives process crashes (kill -9) without an fsync per commit;
        # only a power cut can lose the last commits, which the hop-by-hop acks then redeliver.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open the gateway database {path}: {err}") from err
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this gateway ({SCHEMA_VERSION})"
        )
    for target in range(version, SCHEMA_VERSION):
        with conn:
            conn.execute("BEGIN")
            for statement in _split(_MIGRATIONS[target]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target + 1}")


def _split(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """A value of the meta table, or None."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    """Set a value of the meta table."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


WRITE_ERROR_LOG_SECONDS = 60.0


class WriteErrorLog:
    """Failed writes to the database, logged as one clear error a minute (the rest at debug)
    and once more when writing works again.

    A full disk fails every write, which for the queue is a commit every few milliseconds:
    logged each time, with a traceback, the log would bury everything else (and fill the disk
    holding it). ``consequence`` says what the failure means for the user.
    """

    def __init__(
        self,
        logger: logging.Logger,
        consequence: str,
        *,
        every: float = WRITE_ERROR_LOG_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._consequence = consequence
        self._every = every
        self._monotonic = monotonic
        self._logged_at = float("-inf")
        self._told = False  # an error was logged and its end not yet
        self.failures = 0

    def failed(self, err: sqlite3.Error) -> None:
        self.failures += 1
        level = logging.DEBUG
        if self._monotonic() - self._logged_at >= self._every:
            self._logged_at = self._monotonic()
            self._told = True
            level = logging.ERROR
        self._logger.log(
            level,
            "cannot write the database (%s): %s (%d failed writes so far)",
            err,
            self._consequence,
            self.failures,
        )

    def succeeded(self) -> None:
        # Near a full disk some writes pass between failures: at most one such line a minute.
        if self._told:
            self._told = False
            self._logger.warning("the database can be written again")
