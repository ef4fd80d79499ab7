"""The router's parts without brokers: tokens, the region table, the name registry, usage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
import sqlite3

import pytest

from i4t_gateway.__main__ import main
from i4t_gateway.identity import Address, Identity
from i4t_gateway.names import sign_name_record
from i4t_gateway.queue import GroupCommit
from i4t_gateway.registry import NameRefusedError, NameRegistry, RegionTable
from i4t_gateway.settings import SettingsError, settings_from_args
from i4t_gateway.store import open_store
from i4t_gateway.tokens import (
    Admission,
    TokenBook,
    TokenClaims,
    TokenError,
    TokenLimits,
    open_token_book,
    read_token,
    sign_token,
    token_expiry_ms,
)
from i4t_gateway.usage import Accounting, CostModel

NOW = 1_763_700_000_000
OPERATOR = Identity.from_seed(bytes([41]) * 32)
GATEWAY = Identity.from_seed(bytes([42]) * 32).address
OTHER = Identity.from_seed(bytes([43]) * 32).address
THING = Identity.from_seed(bytes([44]) * 32).address


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    store = open_store(tmp_path / "router.db")
    yield store
    store.close()


def test_a_token_carries_its_claims_and_only_the_operator_signs_it(
    conn: sqlite3.Connection,
) -> None:
    clock = Clock()
    book = TokenBook(conn, OPERATOR.public_bytes, clock=clock)
    limits = TokenLimits(connections=1, packets_per_second=5)
    token = book.issue(OPERATOR, GATEWAY, 2, limits)
    claims = read_token(token, OPERATOR.public_bytes)
    assert (claims.gateway, claims.limits) == (GATEWAY, limits)
    assert claims.expires_ms == NOW + 2 * 86_400_000
    admission = book.admission(GATEWAY)
    assert admission is not None
    assert admission.token_id == claims.id_text
    with pytest.raises(TokenError):
        read_token(token, Identity.from_seed(bytes(32)).public_bytes)  # another operator
    with pytest.raises(TokenError):
        read_token(token[:-4] + "AAAA", OPERATOR.public_bytes)  # tampered
    with pytest.raises(TokenError):
        book.issue(Identity.from_seed(bytes(32)), GATEWAY, 1, limits)
    clock.now += 3 * 86_400_000
    assert book.admission(GATEWAY) is None  # expired
    with pytest.raises(TokenError):
        book.admit(token)


def test_admit_and_revoke(conn: sqlite3.Connection, tmp_path: Path) -> None:
    # A token issued elsewhere with the operator's key (say by the operator's laptop).
    other_book = TokenBook(open_store(tmp_path / "elsewhere.db"), OPERATOR.public_bytes)
    token = other_book.issue(OPERATOR, OTHER, 1, TokenLimits())
    book = TokenBook(conn, OPERATOR.public_bytes)
    assert book.admission(OTHER) is None
    admission = book.admit(token)
    assert admission.gateway == OTHER
    assert book.admission(OTHER) == admission
    assert book.admitted() == {OTHER.text: (token, TokenLimits())}  # for dynsec's reconcile
    assert book.revoke(admission.token_id)
    assert book.admitted() == {}
    assert book.admission(OTHER) is None
    with pytest.raises(TokenError, match="revoked"):
        book.admit(token)
    assert not book.revoke("00" * 16)
    assert not book.revoke("not hex")
    with pytest.raises(TokenError):
        book.admit("i4tk1.bm90IGEgdG9rZW4")


def test_token_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main(["token", *data, "issue", "--gateway", GATEWAY.text, "--days", "3"]) == 0
    token = capsys.readouterr().out.strip()
    assert (tmp_path / "operator.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "router.db").stat().st_mode & 0o777 == 0o600  # it holds the tokens
    book, _ = open_token_book(tmp_path)
    admission = book.admission(GATEWAY)
    assert admission is not None
    assert read_token(token, book.operator_key).gateway == GATEWAY
    assert main(["token", *data, "list"]) == 0
    listed = capsys.readouterr().out
    assert admission.token_id in listed
    assert "active" in listed
    assert main(["token", *data, "revoke", admission.token_id]) == 0
    assert main(["token", *data, "revoke", admission.token_id[::-1]]) == 1
    assert main(["token", *data, "list"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["token", *data, "issue", "--gateway", "not-an-address"]) == 2
    book.reload()
    assert book.admission(GATEWAY) is None


def test_router_role_settings(tmp_path: Path) -> None:
    settings = settings_from_args(
        ["--role", "router", "--broker", "mqtt://127.0.0.1:1", "--data-dir", str(tmp_path)]
    )
    assert settings.role == "router"
    assert settings_from_args(["--data-dir", str(tmp_path)]).role == "gateway"
    with pytest.raises(SettingsError, match="existing broker"):
        settings_from_args(["--role", "router", "--data-dir", str(tmp_path)])


def test_region_table_first_come_until_expiry(conn: sqlite3.Connection) -> None:
    clock = Clock()
    table = RegionTable(GroupCommit(conn), clock=clock, max_per_gateway=3)
    result = table.announce(GATEWAY, [GATEWAY, THING], NOW + 60_000, protected=lambda a: False)
    assert result.accepted == 2
    assert table.gateway_for(THING) == GATEWAY.text
    # Another gateway cannot take an address in use, the router's or an admitted gateway's.
    taken = table.announce(OTHER, [OTHER, THING, GATEWAY], NOW + 60_000, protected=GATEWAY.__eq__)
    assert dict(taken.refused) == {"claimed": 1, "protected": 1}
    assert table.gateway_for(THING) == GATEWAY.text
    assert table.announce(OTHER, [Address.BROADCAST], NOW + 1, protected=lambda a: False).refused
    # Bounded per gateway.
    many = [Identity.from_seed(bytes([50 + i]) * 32).address for i in range(5)]
    full = table.announce(GATEWAY, many, NOW + 60_000, protected=lambda a: False)
    assert full.refused["gateway_full"] == 4
    # Once the holder's claim lapses the thing can move.
    clock.now += 61_000
    moved = table.announce(OTHER, [THING], NOW + 200_000, protected=lambda a: False)
    assert moved.accepted == 1
    assert table.gateway_for(THING) == OTHER.text
    assert table.expire() >= 1
    assert table.announce(OTHER, [THING], NOW, protected=lambda a: False).refused["expired"]


def test_region_table_survives_a_restart(conn: sqlite3.Connection) -> None:
    commits = GroupCommit(conn)
    table = RegionTable(commits)
    table.announce(GATEWAY, [GATEWAY, THING], 2**62, protected=lambda a: False)
    commits.flush()
    again = RegionTable(GroupCommit(conn))
    assert again.gateway_for(THING) == GATEWAY.text
    assert again.count(GATEWAY.text) == 2


def test_names_first_come_higher_seq_replaces_expiry(conn: sqlite3.Connection) -> None:
    clock = Clock()
    commits = GroupCommit(conn)
    names = NameRegistry(commits, clock=clock, max_names=2)
    owner, rival = Identity.from_seed(bytes([61]) * 32), Identity.from_seed(bytes([62]) * 32)
    first = sign_name_record(owner, "kitchen", seq=1, expires_ms=NOW + 60_000)
    assert names.register(first)[1]
    assert not names.register(first)[1]  # the same record again changes nothing
    with pytest.raises(NameRefusedError, match="name_taken"):
        names.register(sign_name_record(rival, "kitchen", seq=9, expires_ms=NOW + 60_000))
    with pytest.raises(NameRefusedError, match="stale_seq"):
        names.register(sign_name_record(owner, "kitchen", seq=1, expires_ms=NOW + 90_000))
    second = sign_name_record(owner, "kitchen", seq=2, expires_ms=NOW + 90_000)
    assert names.register(second)[1]
    assert names.lookup("kitchen") == second
    with pytest.raises(NameRefusedError, match="record_bad_signature"):
        names.register(second[:-1] + bytes([second[-1] ^ 1]))
    assert names.register(sign_name_record(rival, "hall", seq=1, expires_ms=NOW + 1000))[1]
    with pytest.raises(NameRefusedError, match="registry_full"):
        names.register(sign_name_record(rival, "attic", seq=1, expires_ms=NOW + 1000))
    commits.flush()
    assert NameRegistry(GroupCommit(conn), clock=clock).lookup("kitchen") == second
    clock.now += 91_000
    assert names.lookup("kitchen") is None  # expired: the name is free again
    assert names.register(sign_name_record(rival, "kitchen", seq=1, expires_ms=clock.now + 1))


def test_name_cache_expires(conn: sqlite3.Connection) -> None:
    clock = Clock()
    names = NameRegistry(GroupCommit(conn), clock=clock, cache_ms=10_000, cache_size=1)
    owner = Identity.from_seed(bytes([63]) * 32)
    record = sign_name_record(owner, "porch", seq=1, expires_ms=NOW + 60_000)
    assert names.cache(b"not a record") is None
    assert names.cache(record) is not None
    assert names.lookup("porch") == record
    assert names.records() == []  # cached answers are not this region's registrations
    clock.now += 10_001
    assert names.lookup("porch") is None
    names.cache(record)
    names.cache(sign_name_record(owner, "shed", seq=1, expires_ms=NOW + 60_000))
    assert names.lookup("porch") is None  # bounded: the least recently used went


def test_usage_limits_and_cost() -> None:
    accounting = Accounting(session_gap=10.0)
    book_limits = TokenLimits(packets_per_second=2, bytes_in_per_second=1000)
    admission = Admission(TokenClaims(bytes(16), GATEWAY, 0, 2**40, book_limits))
    gateway = GATEWAY.text
    assert accounting.allow_in(gateway, admission, 100, 0.0)
    assert accounting.allow_in(gateway, admission, 100, 0.01)
    assert not accounting.allow_in(gateway, admission, 100, 0.02)  # a burst of 2 spent
    assert accounting.allow_in(gateway, admission, 100, 5.0)
    assert not accounting.allow_in(gateway, admission, 20_000, 9.0)  # over the byte burst
    usage = accounting.of(gateway)
    assert (usage.packets_in, usage.bytes_in, usage.dropped_over_limit) == (3, 300, 2)
    assert usage.connected_seconds == pytest.approx(5.0)  # 0 -> 0.01 -> 5, gaps under 10 s
    assert accounting.allow_in(gateway, admission, 10, 100.0)
    assert usage.connected_seconds == pytest.approx(5.0)  # a 95 s silence is not connected
    slow = Admission(TokenClaims(bytes(16), GATEWAY, 0, 2**40, TokenLimits(bytes_out_per_second=1)))
    assert accounting.allow_out(gateway, slow, 16_000, 0.0)
    assert not accounting.allow_out(gateway, slow, 16_000, 0.1)
    assert usage.held_back_out == 1
    restored = Accounting(session_gap=1.0)
    restored.restore(accounting.export())
    assert restored.of(gateway).bytes_in == 310
    costs = CostModel(monthly_cost=10.0, currency="EUR")
    assert costs.per_thing_month(0) is None
    assert costs.per_thing_month(10_000) == pytest.approx(0.001)


def test_a_gateway_reads_its_own_tokens_expiry_without_the_operator_key() -> None:
    operator = Identity.from_seed(bytes([41]) * 32)
    gateway = Identity.from_seed(bytes([42]) * 32).address
    claims = TokenClaims(bytes(16), gateway, 1_000, 1_795_000_000_000, TokenLimits())
    assert token_expiry_ms(sign_token(operator, claims)) == 1_795_000_000_000
    assert token_expiry_ms("token-for-tests") is None
    assert token_expiry_ms("") is None
