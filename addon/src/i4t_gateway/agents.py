"""The gateway as status agent of its node groups (IINP), beside the configuration agent in core.

- It asks its native members for their health (HEALTH_REQUEST) and for a status refresh
  (STATUS_REQUEST) at intervals; their answers count as being heard.
- It answers members' status refresh requests: the addresses in use in their group, the
  at-cost prices, and the members added since the member's cursor.
- It gossips the seeds of each group it hosts to the group's members (SEED_GOSSIP).
- It listens to members' gossip: a member that says another member of its own group is DEAD is
  taken at its word until that node is heard again.
- It keeps transaction feeds for payment nodes: a TX_FEED_REQUEST with a milestone cursor is
  answered with the transactions after it, from a Ledger (the local ledger first).

Nothing here does I/O: packets leave through the ``send`` callable the core gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import hashlib
from typing import Final, Protocol

from .groups import GroupRegistry, Member, NodeClass, NodeRole
from .health import HealthEngine, NodeStatus
from .identity import Address
from .payloads import (
    HealthRequest,
    MemberGossip,
    NodeHealth,
    Payload,
    Price,
    Seed,
    SeedGossip,
    StatusRequest,
    StatusResponse,
    TxFeedRequest,
    TxFeedUpdate,
)
from .wire import Packet

GROUP_WIRE_ID_SIZE: Final = 16
MAX_FEED_TRANSACTIONS: Final = 32
MAX_ADDRESSES: Final = 256

Send = Callable[[Address, Payload], None]


def wire_group_id(gateway_key: bytes, group_id: str) -> bytes:
    """The 16-byte group id of the wire (docs/HEALTH.md): unique across gateways."""
    digest = hashlib.sha256(b"i4t-group\x00" + gateway_key + group_id.encode()).digest()
    return digest[:GROUP_WIRE_ID_SIZE]


class Ledger(Protocol):
    """Where payment nodes' transactions come from; milestones are increasing integers."""

    def head(self) -> int:
        """The newest milestone (0 when empty)."""
        ...

    def since(self, cursor: int, limit: int) -> tuple[int, list[bytes]]:
        """Up to ``limit`` transactions after ``cursor`` and the milestone of the last one."""
        ...


@dataclass
class MemoryLedger:
    """The local ledger: transactions recorded on this gateway, in order."""

    transactions: list[bytes] = field(default_factory=list)

    def append(self, transaction: bytes) -> int:
        self.transactions.append(transaction)
        return len(self.transactions)

    def head(self) -> int:
        return len(self.transactions)

    def since(self, cursor: int, limit: int) -> tuple[int, list[bytes]]:
        chosen = self.transactions[cursor : cursor + limit]
        return cursor + len(chosen), chosen


@dataclass(frozen=True, slots=True)
class AgentSettings:
    health_poll_seconds: float = 300.0
    refresh_seconds: float = 900.0
    gossip_seconds: float = 60.0
    prices: tuple[Price, ...] = ()


class StatusAgent:
    """Periodic requests and gossip to native members, and answers to their requests."""

    def __init__(
        self,
        gateway_key: bytes,
        registry: GroupRegistry,
        health: HealthEngine,
        is_native: Callable[[Address], bool],
        send: Send,
        *,
        settings: AgentSettings | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self._gateway_key = gateway_key
        self._registry = registry
        self._health = health
        self._is_native = is_native
        self._send = send
        self.settings = settings or AgentSettings()
        self.ledger: Ledger = ledger or MemoryLedger()
        self._next_poll = 0.0
        self._next_refresh = 0.0
        self._next_gossip = 0.0
        self._cursors: dict[bytes, int] = {}  # the last status cursor each node sent us
        self._joined: dict[bytes, int] = {}  # member key -> change number when it joined
        self._changes = 0

    # -- periodic work ---------------------------------------------------------------------

    def next_due(self) -> float:
        return min(self._next_poll, self._next_refresh, self._next_gossip)

    def tick(self, now: float) -> None:
        self._note_new_members()
        if now >= self._next_poll:
            self._next_poll = now + self.settings.health_poll_seconds
            for address in self._native_members():
                self._send(address, HealthRequest())
        if now >= self._next_refresh:
            self._next_refresh = now + self.settings.refresh_seconds
            for address in self._native_members():
                self._send(address, StatusRequest(self._cursors.get(address.bytes, 0)))
        if now >= self._next_gossip:
            self._next_gossip = now + self.settings.gossip_seconds
            self._gossip_seeds()

    def _native_members(self) -> list[Address]:
        return [
            address
            for group in self._registry.groups()
            for member in group
            if self._is_native(address := Address.from_bytes(member.key))
        ]

    def _note_new_members(self) -> None:
        # Numbers memberships in the order they appear, for "members added since" answers.
        for group in self._registry.groups():
            for member in group:
                if member.key not in self._joined:
                    self._changes += 1
                    self._joined[member.key] = self._changes

    def _gossip_seeds(self) -> None:
        for group in self._registry.groups():
            seeds = [m for m in group if m.role is NodeRole.SEED]
            if not seeds:
                continue
            gossip = SeedGossip(
                wire_group_id(self._gateway_key, group.group_id),
                tuple(Seed(Address.from_bytes(m.key), self._heard_ms(m)) for m in seeds),
            )
            for member in group:
                address = Address.from_bytes(member.key)
                if self._is_native(address):
                    self._send(address, gossip)

    def _heard_ms(self, member: Member) -> int:
        if self._health.node_status(member.key) is None:
            return 0
        heard = self._health.node_view(member.key).last_heard
        return 0 if heard is None else int(heard * 1000)

    # -- what members send -------------------------------------------------------------------

    def handle(self, packet: Packet) -> bool:
        """Handle a member's request or gossip; False when it is not an agent's business."""
        payload = packet.payload
        if isinstance(payload, StatusRequest):
            self._answer_status(packet, payload)
        elif isinstance(payload, StatusResponse):
            self._cursors[packet.src.bytes] = payload.cursor
        elif isinstance(payload, MemberGossip):
            self._take_gossip(packet.src, payload)
        elif isinstance(payload, TxFeedRequest):
            self._answer_feed(packet, payload)
        else:
            return False
        return True

    def _answer_status(self, packet: Packet, request: StatusRequest) -> None:
        self._note_new_members()
        member = self._registry.membership(packet.src.bytes)
        group = None if member is None else self._registry.group(member.group_id)
        in_use = [] if group is None else [Address.from_bytes(m.key) for m in group]
        added = [
            address for address in in_use if self._joined.get(address.bytes, 0) > request.since
        ]
        self._send(
            packet.src,
            StatusResponse(
                packet.message_id,
                self._changes,
                tuple(in_use[:MAX_ADDRESSES]),
                self.settings.prices,
                tuple(added[:MAX_ADDRESSES]),
            ),
        )

    def _take_gossip(self, sender: Address, gossip: MemberGossip) -> None:
        member = self._registry.membership(sender.bytes)
        if member is None:
            return
        if gossip.group != wire_group_id(self._gateway_key, member.group_id):
            return  # gossip about another group: not this sender's to tell
        for seen in gossip.members:
            subject = self._registry.membership(seen.address.bytes)
            if (
                seen.health is NodeHealth.DEAD
                and subject is not None
                and subject.group_id == member.group_id
                and self._health.node_status(seen.address.bytes) is not NodeStatus.DEAD
            ):
                self._health.declare_dead(seen.address.bytes)

    def _answer_feed(self, packet: Packet, request: TxFeedRequest) -> None:
        member = self._registry.membership(packet.src.bytes)
        if member is None or member.node_class is not NodeClass.PAYMENT:
            return  # feeds are for payment nodes only
        cursor = min(request.cursor, self.ledger.head())
        until, transactions = self.ledger.since(cursor, MAX_FEED_TRANSACTIONS)
        self._send(packet.src, TxFeedUpdate(packet.message_id, cursor, until, tuple(transactions)))
