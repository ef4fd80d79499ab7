"""The SQLite store: WAL mode, migrations, refusing a newer schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from i4t_gateway.store import SCHEMA_VERSION, StoreError, get_meta, open_store, set_meta


def test_creates_database_in_wal_mode_with_current_schema(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "sub" / "gateway.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    set_meta(conn, "k", "v1")
    set_meta(conn, "k", "v2")
    conn.close()
    reopened = open_store(tmp_path / "sub" / "gateway.db")
    assert get_meta(reopened, "k") == "v2"
    assert get_meta(reopened, "missing") is None
    reopened.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "gateway.db")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(tmp_path / "gateway.db")


def test_unreadable_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "gateway.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError):
        open_store(tmp_path / "gateway.db")
