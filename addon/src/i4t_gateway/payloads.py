"""Packet types and their payload schemas (docs/PROTOCOL.md §6).

Every payload is a CBOR map with small unsigned integer keys. Optional keys are omitted when
they hold their default (None, empty, False), never sent with it, so that one payload has one
encoding. Unknown keys are refused: a new field means a new packet type or a new version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
import enum
from typing import ClassVar, Final, Self

from . import schema as s
from .cose import PacketError, Reason
from .identity import Address
from .names import MAX_NAME_LENGTH

MESSAGE_ID_SIZE: Final = 16
GROUP_ID_SIZE: Final = 16
MAX_ACKS: Final = 64
# 768 addresses of 18 bytes leave room for the envelope within cose.Limits.max_size (16 KiB);
# 1024 did not: a gateway with over 900 things sent announces every receiver refused as
# too_large, which then sat in its uplink queue for a day (found by ./scripts/soak).
MAX_ANNOUNCED: Final = 768
MAX_NAME_RECORD: Final = 1024
MAX_TRANSACTION: Final = 4096
_R: Final = Reason.BAD_PAYLOAD
_NONE: Final[frozenset[int]] = frozenset()


class PacketType(enum.IntEnum):
    DATA = 1
    COMMAND = 2
    ACK = 3
    HEALTH_REQUEST = 4
    HEALTH_RESPONSE = 5
    STATUS_REQUEST = 6
    STATUS_RESPONSE = 7
    SEED_GOSSIP = 8
    MEMBER_GOSSIP = 9
    ANNOUNCE = 10
    NAME_RECORD = 11
    GROUP_CONFIG = 12
    TX_FEED_REQUEST = 13
    TX_FEED_UPDATE = 14
    NAME_QUERY = 15
    NAME_ANSWER = 16


class NodeHealth(enum.StrEnum):
    """The three-valued node health of IINP as it travels."""

    HEALTHY = "healthy"
    BROKEN = "broken"
    DEAD = "dead"


class NodeRole(enum.StrEnum):
    SEED = "seed"
    WORKER = "worker"
    TEMPORARY = "temporary"


class NodeClass(enum.StrEnum):
    SENSOR = "sensor"
    PAYMENT = "payment"


_HEALTH: Final = frozenset(NodeHealth)
_REPORTED_HEALTH: Final = frozenset({NodeHealth.HEALTHY, NodeHealth.BROKEN})
_ROLES: Final = frozenset(NodeRole)
_CLASSES: Final = frozenset(NodeClass)


def _keys(
    value: object, required: set[int], optional: set[int], where: str
) -> Mapping[int, object]:
    return s.fields(value, frozenset(required), frozenset(optional), _R, where)


def _addresses(value: object, where: str, *, minimum: int = 0) -> tuple[Address, ...]:
    return tuple(s.address(item, _R, where) for item in s.array(value, _R, where, minimum=minimum))


def _message_id(value: object, where: str) -> bytes:
    return s.byte_string(value, _R, where, size=MESSAGE_ID_SIZE)


def _put(target: dict[int, object], key: int, value: object) -> None:
    """Set an optional key only when it differs from its default."""
    if value is not None and value is not False and value not in ((), {}):
        target[key] = value


class Payload:
    """Base of all payloads: ``to_cbor`` gives the map, ``from_cbor`` validates one."""

    __slots__ = ()
    TYPE: ClassVar[PacketType]

    def to_cbor(self) -> dict[int, object]:
        raise NotImplementedError

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Reading:
    """One named value; ``unit`` as in HA (e.g. "°C"), absent when unitless."""

    name: str
    value: s.Scalar
    unit: str | None = None

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {1: self.name, 2: self.value}
        _put(out, 3, self.unit)
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2}, {3}, "reading")
        unit = s.text(m[3], _R, "unit", minimum=1, maximum=32) if 3 in m else None
        return cls(
            s.text(m[1], _R, "reading name", minimum=1, maximum=64),
            s.scalar(m[2], _R, "value"),
            unit,
        )


@dataclass(frozen=True, slots=True)
class Data(Payload):
    """Readings from a thing; ``health`` is what the node says of itself (healthy/broken)."""

    TYPE: ClassVar[PacketType] = PacketType.DATA
    readings: tuple[Reading, ...]
    health: NodeHealth | None = None

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {1: [r.to_cbor() for r in self.readings]}
        _put(out, 2, None if self.health is None else str(self.health))
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1}, {2}, "data")
        readings = tuple(Reading.from_cbor(r) for r in s.array(m[1], _R, "readings", minimum=1))
        health = NodeHealth(s.choice(m[2], _REPORTED_HEALTH, _R, "health")) if 2 in m else None
        return cls(readings, health)


@dataclass(frozen=True, slots=True)
class Command(Payload):
    TYPE: ClassVar[PacketType] = PacketType.COMMAND
    name: str
    args: Mapping[str, s.Scalar] = field(default_factory=dict)

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {1: self.name}
        _put(out, 2, dict(self.args))
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1}, {2}, "command")
        args: dict[str, s.Scalar] = {}
        if 2 in m:
            raw = m[2]
            if not isinstance(raw, Mapping) or not raw or len(raw) > 64:
                raise PacketError(_R, "command args: expected a map of 1-64 entries")
            for key, item in raw.items():
                name = s.text(key, _R, "command arg name", minimum=1, maximum=64)
                args[name] = s.scalar(item, _R, "command arg")
        return cls(s.text(m[1], _R, "command name", minimum=1, maximum=64), args)


@dataclass(frozen=True, slots=True)
class Ack(Payload):
    """Hop-by-hop acknowledgement of stored packets, by message id."""

    TYPE: ClassVar[PacketType] = PacketType.ACK
    message_ids: tuple[bytes, ...]

    def to_cbor(self) -> dict[int, object]:
        return {1: list(self.message_ids)}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1}, set(), "ack")
        ids = s.array(m[1], _R, "acked ids", minimum=1, maximum=MAX_ACKS)
        return cls(tuple(_message_id(i, "acked id") for i in ids))


@dataclass(frozen=True, slots=True)
class HealthRequest(Payload):
    """Ask for the health of ``subject`` (absent: of the destination itself)."""

    TYPE: ClassVar[PacketType] = PacketType.HEALTH_REQUEST
    subject: Address | None = None

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {}
        _put(out, 1, None if self.subject is None else self.subject.bytes)
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, set(), {1}, "health request")
        return cls(s.address(m[1], _R, "subject") if 1 in m else None)


@dataclass(frozen=True, slots=True)
class HealthResponse(Payload):
    TYPE: ClassVar[PacketType] = PacketType.HEALTH_RESPONSE
    request_id: bytes
    health: NodeHealth
    detail: str | None = None
    subject: Address | None = None

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {1: self.request_id, 2: str(self.health)}
        _put(out, 3, self.detail)
        _put(out, 4, None if self.subject is None else self.subject.bytes)
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2}, {3, 4}, "health response")
        health = NodeHealth(s.choice(m[2], _HEALTH, _R, "health"))
        if health is NodeHealth.DEAD and 4 not in m:
            # Dead is what others conclude from silence; a node cannot say it of itself.
            raise PacketError(_R, "dead needs a subject")
        return cls(
            _message_id(m[1], "request id"),
            health,
            s.text(m[3], _R, "detail", minimum=1, maximum=256) if 3 in m else None,
            s.address(m[4], _R, "subject") if 4 in m else None,
        )


@dataclass(frozen=True, slots=True)
class StatusRequest(Payload):
    """Ask for what changed since ``since`` (a cursor from an earlier response; 0 = all)."""

    TYPE: ClassVar[PacketType] = PacketType.STATUS_REQUEST
    since: int = 0

    def to_cbor(self) -> dict[int, object]:
        return {1: self.since}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1}, set(), "status request")
        return cls(s.uint(m[1], _R, "since"))


@dataclass(frozen=True, slots=True)
class Price:
    """An at-cost price: ``amount`` in millionths of ``currency`` per ``item``."""

    item: str
    amount: int
    currency: str

    def to_cbor(self) -> dict[int, object]:
        return {1: self.item, 2: self.amount, 3: self.currency}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2, 3}, set(), "price")
        return cls(
            s.text(m[1], _R, "price item", minimum=1, maximum=64),
            s.uint(m[2], _R, "price amount"),
            s.text(m[3], _R, "currency", minimum=3, maximum=8),
        )


@dataclass(frozen=True, slots=True)
class StatusResponse(Payload):
    TYPE: ClassVar[PacketType] = PacketType.STATUS_RESPONSE
    request_id: bytes
    cursor: int
    addresses: tuple[Address, ...] = ()
    prices: tuple[Price, ...] = ()
    members_added: tuple[Address, ...] = ()

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {1: self.request_id, 2: self.cursor}
        _put(out, 3, [a.bytes for a in self.addresses] or None)
        _put(out, 4, [p.to_cbor() for p in self.prices] or None)
        _put(out, 5, [a.bytes for a in self.members_added] or None)
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2}, {3, 4, 5}, "status response")
        prices = s.array(m[4], _R, "prices", minimum=1) if 4 in m else ()
        return cls(
            _message_id(m[1], "request id"),
            s.uint(m[2], _R, "cursor"),
            _addresses(m[3], "addresses", minimum=1) if 3 in m else (),
            tuple(Price.from_cbor(p) for p in prices),
            _addresses(m[5], "members added", minimum=1) if 5 in m else (),
        )


@dataclass(frozen=True, slots=True)
class Seed:
    address: Address
    heard_ms: int
    endpoint: str | None = None

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {1: self.address.bytes, 2: self.heard_ms}
        _put(out, 3, self.endpoint)
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2}, {3}, "seed")
        endpoint = s.text(m[3], _R, "endpoint", minimum=1, maximum=256) if 3 in m else None
        return cls(s.address(m[1], _R, "seed"), s.uint(m[2], _R, "heard"), endpoint)


@dataclass(frozen=True, slots=True)
class SeedGossip(Payload):
    TYPE: ClassVar[PacketType] = PacketType.SEED_GOSSIP
    group: bytes
    seeds: tuple[Seed, ...]

    def to_cbor(self) -> dict[int, object]:
        return {1: self.group, 2: [seed.to_cbor() for seed in self.seeds]}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2}, set(), "seed gossip")
        seeds = s.array(m[2], _R, "seeds", minimum=1)
        group = s.byte_string(m[1], _R, "group", size=GROUP_ID_SIZE)
        return cls(group, tuple(Seed.from_cbor(x) for x in seeds))


@dataclass(frozen=True, slots=True)
class Member:
    address: Address
    health: NodeHealth
    heard_ms: int

    def to_cbor(self) -> dict[int, object]:
        return {1: self.address.bytes, 2: str(self.health), 3: self.heard_ms}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2, 3}, set(), "member")
        return cls(
            s.address(m[1], _R, "member"),
            NodeHealth(s.choice(m[2], _HEALTH, _R, "health")),
            s.uint(m[3], _R, "heard"),
        )


@dataclass(frozen=True, slots=True)
class MemberGossip(Payload):
    """A member's view of its group; ``epoch`` orders views of one sender."""

    TYPE: ClassVar[PacketType] = PacketType.MEMBER_GOSSIP
    group: bytes
    epoch: int
    members: tuple[Member, ...]

    def to_cbor(self) -> dict[int, object]:
        return {1: self.group, 2: self.epoch, 3: [m.to_cbor() for m in self.members]}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2, 3}, set(), "member gossip")
        members = s.array(m[3], _R, "members", minimum=1)
        return cls(
            s.byte_string(m[1], _R, "group", size=GROUP_ID_SIZE),
            s.uint(m[2], _R, "epoch"),
            tuple(Member.from_cbor(x) for x in members),
        )


@dataclass(frozen=True, slots=True)
class Announce(Payload):
    """The addresses a gateway serves, valid until ``expires_ms`` (Unix ms)."""

    TYPE: ClassVar[PacketType] = PacketType.ANNOUNCE
    addresses: tuple[Address, ...]
    expires_ms: int

    def to_cbor(self) -> dict[int, object]:
        return {1: [a.bytes for a in self.addresses], 2: self.expires_ms}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2}, set(), "announce")
        served = _addresses(m[1], "served", minimum=1)
        if len(served) > MAX_ANNOUNCED:
            raise PacketError(_R, f"served: at most {MAX_ANNOUNCED} addresses")
        return cls(served, s.uint(m[2], _R, "expires"))


@dataclass(frozen=True, slots=True)
class NameRecordPayload(Payload):
    """Carries a signed name record (names.py) as its own COSE_Sign1 bytes, so it can be relayed
    and stored by anyone and still be verified against its owner's key."""

    TYPE: ClassVar[PacketType] = PacketType.NAME_RECORD
    record: bytes

    def to_cbor(self) -> dict[int, object]:
        return {1: self.record}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1}, set(), "name record")
        return cls(s.byte_string(m[1], _R, "record", maximum=MAX_NAME_RECORD))


@dataclass(frozen=True, slots=True)
class GroupMember:
    address: Address
    role: NodeRole
    node_class: NodeClass

    def to_cbor(self) -> dict[int, object]:
        return {1: self.address.bytes, 2: str(self.role), 3: str(self.node_class)}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2, 3}, set(), "group member")
        return cls(
            s.address(m[1], _R, "group member"),
            NodeRole(s.choice(m[2], _ROLES, _R, "role")),
            NodeClass(s.choice(m[3], _CLASSES, _R, "class")),
        )


@dataclass(frozen=True, slots=True)
class GroupConfig(Payload):
    """A node group as the configuration agent defines it; a higher ``version`` replaces."""

    TYPE: ClassVar[PacketType] = PacketType.GROUP_CONFIG
    group: bytes
    name: str
    version: int
    members: tuple[GroupMember, ...]
    quorum: int | None = None
    muted: bool = False

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {
            1: self.group,
            2: self.name,
            3: self.version,
            4: [m.to_cbor() for m in self.members],
        }
        _put(out, 5, self.quorum)
        _put(out, 6, self.muted)
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2, 3, 4}, {5, 6}, "group config")
        members = tuple(GroupMember.from_cbor(x) for x in s.array(m[4], _R, "members"))
        quorum = s.uint(m[5], _R, "quorum", maximum=len(members)) if 5 in m else None
        if quorum == 0:
            raise PacketError(_R, "quorum: at least 1")
        muted = s.boolean(m[6], _R, "muted") if 6 in m else False
        if 6 in m and not muted:
            raise PacketError(_R, "muted: omitted when false")
        return cls(
            s.byte_string(m[1], _R, "group", size=GROUP_ID_SIZE),
            s.text(m[2], _R, "group name", minimum=1, maximum=64),
            s.uint(m[3], _R, "version"),
            members,
            quorum,
            muted,
        )


@dataclass(frozen=True, slots=True)
class TxFeedRequest(Payload):
    """A payment node asks for the transactions after milestone ``cursor``."""

    TYPE: ClassVar[PacketType] = PacketType.TX_FEED_REQUEST
    cursor: int

    def to_cbor(self) -> dict[int, object]:
        return {1: self.cursor}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1}, set(), "tx feed request")
        return cls(s.uint(m[1], _R, "cursor"))


@dataclass(frozen=True, slots=True)
class TxFeedUpdate(Payload):
    """Transactions (opaque bytes) after milestone ``since`` up to and including ``until``."""

    TYPE: ClassVar[PacketType] = PacketType.TX_FEED_UPDATE
    request_id: bytes
    since: int
    until: int
    transactions: tuple[bytes, ...] = ()

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {1: self.request_id, 2: self.since, 3: self.until}
        _put(out, 4, list(self.transactions) or None)
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1, 2, 3}, {4}, "tx feed update")
        since, until = s.uint(m[2], _R, "since"), s.uint(m[3], _R, "until")
        if until < since:
            raise PacketError(_R, "until < since")
        txs = s.array(m[4], _R, "transactions", minimum=1) if 4 in m else ()
        return cls(
            _message_id(m[1], "request id"),
            since,
            until,
            tuple(s.byte_string(t, _R, "transaction", maximum=MAX_TRANSACTION) for t in txs),
        )


@dataclass(frozen=True, slots=True)
class NameQuery(Payload):
    """Ask a router which address ``name`` stands for; the message id correlates the answer."""

    TYPE: ClassVar[PacketType] = PacketType.NAME_QUERY
    name: str

    def to_cbor(self) -> dict[int, object]:
        return {1: self.name}

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1}, set(), "name query")
        return cls(s.text(m[1], _R, "queried name", minimum=1, maximum=MAX_NAME_LENGTH))


@dataclass(frozen=True, slots=True)
class NameAnswer(Payload):
    """The answer to a name query: the owner's signed record, or none (not known there)."""

    TYPE: ClassVar[PacketType] = PacketType.NAME_ANSWER
    request_id: bytes
    record: bytes | None = None

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {1: self.request_id}
        _put(out, 2, self.record)
        return out

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        m = _keys(value, {1}, {2}, "name answer")
        record = s.byte_string(m[2], _R, "record", maximum=MAX_NAME_RECORD) if 2 in m else None
        if record is not None and not record:
            raise PacketError(_R, "record: omitted when there is none")
        return cls(_message_id(m[1], "request id"), record)


PAYLOAD_CLASSES: Final[dict[PacketType, type[Payload]]] = {
    cls.TYPE: cls
    for cls in (
        Data,
        Command,
        Ack,
        HealthRequest,
        HealthResponse,
        StatusRequest,
        StatusResponse,
        SeedGossip,
        MemberGossip,
        Announce,
        NameRecordPayload,
        GroupConfig,
        TxFeedRequest,
        TxFeedUpdate,
        NameQuery,
        NameAnswer,
    )
}


def parse_payload(packet_type: PacketType, value: object) -> Payload:
    return PAYLOAD_CLASSES[packet_type].from_cbor(value)
