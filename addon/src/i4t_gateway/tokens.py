"""Router access tokens: signed by the router operator's Ed25519 key, carrying limits.

A token is a COSE_Sign1 (the same envelope as packets and name records, cose.py, with an empty
unprotected header) over a CBOR claims map, signed by the **operator key** (``operator.key`` in
the router's data folder), and travels as text: ``i4tk1.`` followed by the COSE bytes in
unpadded base64url. Claims (all required):

| key | claim | type |
|---|---|---|
| 1 | token id | bstr(16), random |
| 2 | gateway | the address it admits (the MQTT user name and ``<gateway id>`` of its topics) |
| 3 | issued | Unix ms |
| 4 | expires | Unix ms |
| 5 | limits | map: 1 connections, 2 subscriptions, 3 bytes/s in, 4 bytes/s out, 5 packets/s in |

COSE rather than a JWT: the router already verifies COSE_Sign1 with EdDSA for every packet, a
C gateway on an ESP32 already has the decoder, and a CBOR claims map is a third of a JSON one.

:class:`TokenBook` keeps the tokens a router knows in its database: those its operator issued
(``i4t-gateway token issue``) and those presented to :meth:`TokenBook.admit` (the broker
provisioning in dynsec.py calls it with the password a gateway shows). Revocation is by token
id and wins over everything. The running router re-reads the table every few seconds, so a token
issued or revoked by the command line (another process) takes effect without a restart.
"""

from __future__ import annotations

import argparse
import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
import datetime
import os
from pathlib import Path
import sqlite3
import sys
from typing import Final

from . import schema as s
from .cose import PacketError, Reason, decode, decode_sign1, encode, sign1
from .identity import Address, AddressError, Identity, load_or_create_identity
from .replay import Clock, wall_clock_ms
from .store import open_store

TOKEN_PREFIX: Final = "i4tk1."  # noqa: S105 - a format marker, not a secret
TOKEN_ID_SIZE: Final = 16
OPERATOR_KEY_FILE: Final = "operator.key"
ROUTER_DATABASE_FILE: Final = "router.db"
MAX_TOKEN_TEXT: Final = 2048
_DAY_MS: Final = 86_400_000
_R: Final = Reason.BAD_FIELD
_CLAIMS: Final = frozenset({1, 2, 3, 4, 5})
_LIMIT_KEYS: Final = frozenset({1, 2, 3, 4, 5})

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS router_token ("
    " token_id BLOB PRIMARY KEY, gateway TEXT NOT NULL, token TEXT NOT NULL,"
    " issued_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, revoked_ms INTEGER"
    ") STRICT"
)


class TokenError(ValueError):
    """A token that admits nobody: malformed, not the operator's, expired or revoked."""


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """What one admitted gateway may use. The router enforces the rates (packets and bytes per
    second, counting and dropping what is over); connections and subscriptions are for the
    broker's provisioning (dynsec.py), the router cannot see them."""

    connections: int = 1
    subscriptions: int = 4
    bytes_in_per_second: int = 256_000
    bytes_out_per_second: int = 256_000
    packets_per_second: int = 500

    def to_cbor(self) -> dict[int, int]:
        return {
            1: self.connections,
            2: self.subscriptions,
            3: self.bytes_in_per_second,
            4: self.bytes_out_per_second,
            5: self.packets_per_second,
        }

    @classmethod
    def from_cbor(cls, value: object) -> TokenLimits:
        m = s.fields(value, _LIMIT_KEYS, frozenset(), _R, "limits")
        return cls(*(s.uint(m[key], _R, "limit") for key in sorted(_LIMIT_KEYS)))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class TokenClaims:
    token_id: bytes
    gateway: Address
    issued_ms: int
    expires_ms: int
    limits: TokenLimits = field(default_factory=TokenLimits)

    @property
    def id_text(self) -> str:
        return self.token_id.hex()

    def to_cbor(self) -> dict[int, object]:
        return {
            1: self.token_id,
            2: self.gateway.bytes,
            3: self.issued_ms,
            4: self.expires_ms,
            5: self.limits.to_cbor(),
        }


def sign_token(operator: Identity, claims: TokenClaims) -> str:
    raw = sign1(encode(claims.to_cbor()), operator, {})
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_token(text: str, operator_key: bytes) -> TokenClaims:
    """The claims of a token signed by ``operator_key``, expired or not; TokenError if the
    text is not such a token."""
    if not text.startswith(TOKEN_PREFIX) or len(text) > MAX_TOKEN_TEXT:
        raise TokenError("not an I4T router token")
    body = text.removeprefix(TOKEN_PREFIX)
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        envelope = decode_sign1(raw)
        if envelope.unprotected:
            raise PacketError(Reason.BAD_HEADER, "tokens have an empty unprotected header")
        envelope.verify(operator_key)
        m = s.fields(decode(envelope.payload), _CLAIMS, frozenset(), _R, "token")
        return TokenClaims(
            s.byte_string(m[1], _R, "token id", size=TOKEN_ID_SIZE),
            s.address(m[2], _R, "gateway"),
            s.uint(m[3], _R, "issued"),
            s.uint(m[4], _R, "expires"),
            TokenLimits.from_cbor(m[5]),
        )
    except (binascii.Error, ValueError, PacketError) as err:
        raise TokenError(f"not a valid token of this operator: {err}") from None


def token_expiry_ms(text: str) -> int | None:
    """When a token expires, read without verifying it: a gateway shows its own token's expiry
    (it does not hold the operator's key, and trusts its own configuration). None if the text
    is not a token."""
    if not text.startswith(TOKEN_PREFIX) or len(text) > MAX_TOKEN_TEXT:
        return None
    body = text.removeprefix(TOKEN_PREFIX)
    try:
        envelope = decode_sign1(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        m = s.fields(decode(envelope.payload), _CLAIMS, frozenset(), _R, "token")
        return s.uint(m[4], _R, "expires")
    except (binascii.Error, ValueError, PacketError):
        return None


@dataclass(frozen=True, slots=True)
class Admission:
    """A gateway admitted by a valid token: who, until when, with which limits."""

    claims: TokenClaims

    @property
    def gateway(self) -> Address:
        return self.claims.gateway

    @property
    def limits(self) -> TokenLimits:
        return self.claims.limits

    @property
    def token_id(self) -> str:
        return self.claims.id_text


@dataclass(frozen=True, slots=True)
class TokenRow:
    claims: TokenClaims
    token: str
    revoked_ms: int | None

    def as_dict(self) -> dict[str, object]:
        return {
            "token_id": self.claims.id_text,
            "gateway": self.claims.gateway.text,
            "issued_ms": self.claims.issued_ms,
            "expires_ms": self.claims.expires_ms,
            "revoked_ms": self.revoked_ms,
            "limits": self.claims.limits.as_dict(),
        }


class TokenBook:
    """The tokens a router knows, in its database; which gateways they admit right now."""

    def __init__(
        self, conn: sqlite3.Connection, operator_key: bytes, *, clock: Clock = wall_clock_ms
    ) -> None:
        self._conn = conn
        self.operator_key = operator_key
        self._clock = clock
        conn.execute(_SCHEMA)
        self._active: dict[Address, Admission] = {}
        self._verified: dict[bytes, TokenClaims] = {}
        self._foreign: set[bytes] = set()
        self.reload()

    def reload(self) -> None:
        """Re-read the table: tokens issued or revoked by another process take effect."""
        now = self._clock()
        active: dict[Address, Admission] = {}
        for row in self.rows():
            claims = row.claims
            if row.revoked_ms is None and claims.expires_ms > now:
                best = active.get(claims.gateway)
                if best is None or claims.expires_ms > best.claims.expires_ms:
                    active[claims.gateway] = Admission(claims)
        self._active = active

    def rows(self) -> list[TokenRow]:
        """Every token of this operator the table holds, oldest first."""
        result = []
        for token_id, token, revoked in self._conn.execute(
            "SELECT token_id, token, revoked_ms FROM router_token ORDER BY issued_ms"
        ):
            claims = self._claims_of(bytes(token_id), str(token))
            if claims is not None:
                revoked_ms = None if revoked is None else int(revoked)
                result.append(TokenRow(claims, str(token), revoked_ms))
        return result

    def _claims_of(self, token_id: bytes, token: str) -> TokenClaims | None:
        # Signatures are checked once per token, not at every reload.
        claims = self._verified.get(token_id)
        if claims is None and token_id not in self._foreign:
            try:
                claims = self._verified[token_id] = read_token(token, self.operator_key)
            except TokenError:
                self._foreign.add(token_id)  # signed by an earlier operator key: admits nobody
        return claims

    def admission(self, gateway: Address) -> Admission | None:
        """The gateway's admission if it holds a valid, unrevoked token now."""
        admission = self._active.get(gateway)
        if admission is not None and admission.claims.expires_ms <= self._clock():
            del self._active[gateway]
            return None
        return admission

    def admitted(self) -> dict[str, tuple[str, TokenLimits]]:
        """Gateway address text -> (its current token, its limits): exactly what the broker
        should admit, in the form ``dynsec.DynsecAdmin.reconcile`` takes."""
        self.reload()
        current = {admission.token_id: address.text for address, admission in self._active.items()}
        return {
            current[row.claims.id_text]: (row.token, row.claims.limits)
            for row in self.rows()
            if row.claims.id_text in current
        }

    def issue(self, operator: Identity, gateway: Address, days: float, limits: TokenLimits) -> str:
        """A new token for ``gateway`` valid ``days`` from now, recorded as admitted."""
        if operator.public_bytes != self.operator_key:
            raise TokenError("this is not the router operator's key")
        now = self._clock()
        expires = now + int(days * _DAY_MS)
        claims = TokenClaims(os.urandom(TOKEN_ID_SIZE), gateway, now, expires, limits)
        token = sign_token(operator, claims)
        self._record(claims, token)
        return token

    def admit(self, token: str) -> Admission:
        """Check a token a gateway presents (TokenError if it admits nobody) and remember it."""
        claims = read_token(token, self.operator_key)
        if claims.expires_ms <= self._clock():
            raise TokenError("the token has expired")
        row = self._conn.execute(
            "SELECT revoked_ms FROM router_token WHERE token_id = ?", (claims.token_id,)
        ).fetchone()
        if row is not None and row[0] is not None:
            raise TokenError("the token was revoked")
        if row is None:
            self._record(claims, token)
        admission = Admission(claims)
        best = self._active.get(claims.gateway)
        if best is None or claims.expires_ms >= best.claims.expires_ms:
            self._active[claims.gateway] = admission
        return admission

    def revoke(self, token_id: str) -> bool:
        """Revoke a token by its id (hex); False if no such token is known."""
        try:
            raw = bytes.fromhex(token_id)
        except ValueError:
            return False
        cursor = self._conn.execute(
            "UPDATE router_token SET revoked_ms = coalesce(revoked_ms, ?) WHERE token_id = ?",
            (self._clock(), raw),
        )
        self.reload()
        return cursor.rowcount > 0

    def _record(self, claims: TokenClaims, token: str) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO router_token (token_id, gateway, token, issued_ms, expires_ms)"
            " VALUES (?, ?, ?, ?, ?)",
            (claims.token_id, claims.gateway.text, token, claims.issued_ms, claims.expires_ms),
        )
        self.reload()


def open_router_store(data_dir: Path) -> sqlite3.Connection:
    """The router's database, readable by its owner only: the tokens in it are the gateways'
    broker passwords. SQLite gives its -wal and -shm files the database file's mode."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ROUTER_DATABASE_FILE
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    return open_store(path)


def open_token_book(data_dir: Path) -> tuple[TokenBook, Identity]:
    """The router's token book and operator key (created 0600 on first use)."""
    operator = load_or_create_identity(data_dir / OPERATOR_KEY_FILE)
    return TokenBook(open_router_store(data_dir), operator.public_bytes), operator


# -- the command line: i4t-gateway token issue | list | revoke --------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="i4t-gateway token", description="Issue, list and revoke router access tokens."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("I4T_DATA_DIR", "i4t-data")),
        help="the router's data folder (operator key and database) (env I4T_DATA_DIR)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser("issue", help="issue a token and print it")
    issue.add_argument("--gateway", required=True, help="the gateway's I4T address")
    issue.add_argument("--days", type=float, default=365.0, help="validity in days")
    defaults = TokenLimits()
    for name in TokenLimits.__slots__:
        issue.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    commands.add_parser("list", help="list the tokens this router knows")
    revoke = commands.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")
    return parser


def token_main(argv: list[str]) -> int:
    """``i4t-gateway token ...``; prints results on stdout, exits 2 on a usage error."""
    args = _parser().parse_args(argv)
    book, operator = open_token_book(args.data_dir)
    if args.command == "issue":
        try:
            gateway = Address.from_text(args.gateway)
        except AddressError as err:
            print(f"i4t-gateway token: --gateway is not an I4T address: {err}", file=sys.stderr)
            return 2
        limits = TokenLimits(*(getattr(args, name) for name in TokenLimits.__slots__))
        if args.days <= 0 or min(limits.as_dict().values()) < 0:
            print("i4t-gateway token: --days must be positive, limits >= 0", file=sys.stderr)
            return 2
        print(book.issue(operator, gateway, args.days, limits))
        return 0
    if args.command == "list":
        for row in book.rows():
            _print_row(row.as_dict())
        return 0
    if not book.revoke(args.token_id):
        print(f"i4t-gateway token: no token {args.token_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.token_id}")
    return 0


def _print_row(row: Mapping[str, object]) -> None:
    expires = datetime.datetime.fromtimestamp(int(str(row["expires_ms"])) / 1000, datetime.UTC)
    state = "revoked" if row["revoked_ms"] is not None else "active"
    print(f"{row['token_id']}  {row['gateway']}  expires {expires:%Y-%m-%d %H:%M}Z  {state}")
