"""Node groups: membership, roles, classes, quorum, and the configuration agent.

Groups are configuration. Only the single ConfigAgent of a GroupRegistry may create, edit or
delete them, and it applies a ConfigRequest only after the authoriser the server plugs in (which
checks the request's signature and that the requester is an administrator) has accepted it.
Reads are open to everyone. Keys are plain ``bytes`` (a node's address). See docs/HEALTH.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
import heapq
from itertools import count
from typing import Any, Protocol

type Key = bytes
type GroupId = str


class NodeRole(StrEnum):
    """What a member does in its group; only temporary members lack a vote."""

    SEED = "seed"
    WORKER = "worker"
    TEMPORARY = "temporary"


class NodeClass(StrEnum):
    """What kind of thing a member is; timeouts can be overridden per class."""

    SENSOR = "sensor"
    PAYMENT = "payment"


class QuorumKind(StrEnum):
    """How a group's quorum is derived from its number of voting members."""

    MAJORITY = "majority"
    COUNT = "count"
    PERCENT = "percent"


@dataclass(frozen=True, slots=True)
class Quorum:
    """A group's quorum rule: a strict majority, a fixed count, or a percentage (rounded up)."""

    kind: QuorumKind = QuorumKind.MAJORITY
    value: int = 0

    def __post_init__(self) -> None:
        if self.kind is QuorumKind.MAJORITY and self.value != 0:
            raise ValueError("a majority quorum takes no value")
        if self.kind is QuorumKind.COUNT and self.value < 1:
            raise ValueError("a quorum count must be at least 1")
        if self.kind is QuorumKind.PERCENT and not 1 <= self.value <= 100:
            raise ValueError("a quorum percentage must be within 1..100")

    @classmethod
    def majority(cls) -> Quorum:
        """floor(n/2)+1, the default."""
        return cls()

    @classmethod
    def fixed(cls, members: int) -> Quorum:
        """Exactly ``members`` voting members, whatever the group's size."""
        return cls(QuorumKind.COUNT, members)

    @classmethod
    def percent(cls, percent: int) -> Quorum:
        """At least ``percent`` % of the voting members, rounded up (100: all of them)."""
        return cls(QuorumKind.PERCENT, percent)

    def size(self, voters: int) -> int:
        """The quorum for a group of ``voters`` voting members; never below 1."""
        if self.kind is QuorumKind.MAJORITY:
            return voters // 2 + 1
        if self.kind is QuorumKind.COUNT:
            return self.value
        # Integer ceiling of voters * percent / 100: exact, unlike float arithmetic.
        return max(1, -(-voters * self.value // 100))

    def export(self) -> dict[str, Any]:
        """As a plain dict."""
        return {"kind": self.kind.value, "value": self.value}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Quorum:
        """The inverse of export."""
        return cls(QuorumKind(data["kind"]), int(data["value"]))


@dataclass(frozen=True, slots=True)
class Member:
    """One node's membership: its id within the group, its key, role and class."""

    group_id: GroupId
    node_id: str
    key: Key
    role: NodeRole = NodeRole.WORKER
    node_class: NodeClass = NodeClass.SENSOR
    expires_at: float | None = None

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("a node id must not be empty")
        if not self.key:
            raise ValueError("a member needs a key")
        if (self.role is NodeRole.TEMPORARY) != (self.expires_at is not None):
            raise ValueError("temporary members, and only they, have an expiry time")

    @property
    def votes(self) -> bool:
        """Whether the member counts towards its group's status and quorum."""
        return self.role is not NodeRole.TEMPORARY

    def export(self) -> dict[str, Any]:
        """As a plain dict (the key in hex)."""
        return {
            "node_id": self.node_id,
            "key": self.key.hex(),
            "role": self.role.value,
            "class": self.node_class.value,
            "expires_at": self.expires_at,
        }

    @classmethod
    def restore(cls, group_id: GroupId, data: dict[str, Any]) -> Member:
        """The inverse of export."""
        expires_at = data.get("expires_at")
        return cls(
            group_id=group_id,
            node_id=str(data["node_id"]),
            key=bytes.fromhex(data["key"]),
            role=NodeRole(data["role"]),
            node_class=NodeClass(data["class"]),
            expires_at=None if expires_at is None else float(expires_at),
        )


class Group:
    """A node group as the registry holds it; read it, change it through the ConfigAgent."""

    __slots__ = ("_members", "_voters", "group_id", "quorum", "version")

    def __init__(self, group_id: GroupId, quorum: Quorum, version: int = 0) -> None:
        self.group_id = group_id
        self.quorum = quorum
        # The configuration version (group_config key 3); a replacement must bring a higher one.
        self.version = version
        self._members: dict[str, Member] = {}
        self._voters = 0

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    @property
    def voters(self) -> int:
        """How many members vote (all but the temporary ones)."""
        return self._voters

    def member(self, node_id: str) -> Member | None:
        """The member with ``node_id``, if any."""
        return self._members.get(node_id)

    def _add(self, member: Member) -> None:
        self._members[member.node_id] = member
        self._voters += member.votes

    def _remove(self, member: Member) -> None:
        del self._members[member.node_id]
        self._voters -= member.votes

    def export(self) -> dict[str, Any]:
        """As a plain dict."""
        return {
            "group_id": self.group_id,
            "quorum": self.quorum.export(),
            "version": self.version,
            "members": [self._members[node_id].export() for node_id in sorted(self._members)],
        }


class MembershipListener(Protocol):
    """Told of every membership change (the health engine is one)."""

    def group_added(self, group: Group) -> None:
        """A group was created, with the members it was created with (no member_added)."""

    def group_removed(self, group: Group) -> None:
        """A group was deleted with all its members (no member_removed); it still lists them."""

    def quorum_changed(self, group: Group) -> None:
        """A group's quorum rule changed."""

    def member_added(self, member: Member) -> None:
        """A member joined a group."""

    def member_removed(self, member: Member) -> None:
        """A member left a group (removed, or its temporary membership expired)."""

    def member_changed(self, old: Member, new: Member) -> None:
        """A member's definition changed (role, class, expiry or node id; same key and group)."""


class ConfigError(ValueError):
    """A configuration change that would break an invariant; nothing was changed."""


class NotAuthorizedError(PermissionError):
    """A configuration request that the authoriser refused; nothing was changed."""


# The configuration operations a ConfigRequest carries.


@dataclass(frozen=True, slots=True)
class CreateGroup:
    """Create a group, optionally with its first members."""

    group_id: GroupId
    quorum: Quorum = field(default_factory=Quorum.majority)
    members: tuple[Member, ...] = ()
    version: int = 0


@dataclass(frozen=True, slots=True)
class ReplaceGroup:
    """Make a group exactly this, creating it if needed: what a group_config packet carries.

    Members whose definition is unchanged stay as they are; the others leave or join.
    """

    group_id: GroupId
    quorum: Quorum
    members: tuple[Member, ...]
    version: int


@dataclass(frozen=True, slots=True)
class DeleteGroup:
    """Delete a group and all its memberships."""

    group_id: GroupId


@dataclass(frozen=True, slots=True)
class AddMember:
    """Add a member (its group_id names the group)."""

    member: Member


@dataclass(frozen=True, slots=True)
class RemoveMember:
    """Remove a member by its id within the group."""

    group_id: GroupId
    node_id: str


@dataclass(frozen=True, slots=True)
class SetQuorum:
    """Change a group's quorum rule."""

    group_id: GroupId
    quorum: Quorum


class ExtensionOperation:
    """Base of configuration operations that another component applies (e.g. ACL rules).

    They travel through the same ConfigAgent, so they are authorised like group edits; the
    registry hands each to the one handler registered for its type.
    """

    __slots__ = ()


type ConfigOperation = (
    CreateGroup
    | ReplaceGroup
    | DeleteGroup
    | AddMember
    | RemoveMember
    | SetQuorum
    | ExtensionOperation
)
type ExtensionHandler = Callable[[ExtensionOperation], None]


@dataclass(frozen=True, slots=True)
class ConfigRequest:
    """A configuration change as it arrives from the UI: who asks, what, and their signature.

    ``payload`` is the signed bytes the operation was decoded from; the authoriser verifies
    ``signature`` over it against ``requester`` (the registry does no cryptography itself).
    """

    requester: Key
    operation: ConfigOperation
    payload: bytes = b""
    signature: bytes = b""


type Authorizer = Callable[[ConfigRequest], bool]


class GroupRegistry:
    """All groups and memberships; O(1) lookup of a key's membership.

    A key belongs to at most one group, and a node id is unique within its group.
    """

    __slots__ = ("_by_key", "_expiries", "_groups", "_handlers", "_listeners", "_seq", "_token")

    def __init__(self) -> None:
        self._groups: dict[GroupId, Group] = {}
        self._by_key: dict[Key, Member] = {}
        self._expiries: list[tuple[float, int, Member]] = []
        self._seq = count()
        self._listeners: list[MembershipListener] = []
        self._handlers: dict[type[ExtensionOperation], ExtensionHandler] = {}
        self._token: object | None = None

    # Reading

    def group(self, group_id: GroupId) -> Group | None:
        """The group with ``group_id``, if any."""
        return self._groups.get(group_id)

    def groups(self) -> list[Group]:
        """All groups."""
        return list(self._groups.values())

    def membership(self, key: Key) -> Member | None:
        """The membership of ``key``, if it belongs to a group."""
        return self._by_key.get(key)

    def group_of(self, key: Key, now: float | None = None) -> GroupId | None:
        """The group ``key`` belongs to; with ``now``, an overdue temporary membership is none."""
        member = self._by_key.get(key)
        if member is None:
            return None
        if now is not None and member.expires_at is not None and member.expires_at <= now:
            return None
        return member.group_id

    def add_listener(self, listener: MembershipListener) -> None:
        """Tell ``listener`` about every change from now on."""
        self._listeners.append(listener)

    def add_extension(self, kind: type[ExtensionOperation], handler: ExtensionHandler) -> None:
        """Route authorised operations of type ``kind`` to ``handler`` (one handler per type)."""
        if kind in self._handlers:
            raise ConfigError(f"{kind.__name__} already has a handler")
        self._handlers[kind] = handler

    # Time

    def next_expiry(self) -> float | None:
        """When the next temporary membership ends, or None."""
        self._drop_stale_expiries()
        return self._expiries[0][0] if self._expiries else None

    def expire(self, now: float) -> list[Member]:
        """End the temporary memberships due at ``now``; this is not a configuration edit."""
        ended: list[Member] = []
        while self._expiries and self._expiries[0][0] <= now:
            _, _, member = heapq.heappop(self._expiries)
            if self._by_key.get(member.key) is member:
                self._remove_member(member)
                ended.append(member)
        return ended

    def _drop_stale_expiries(self) -> None:
        while (
            self._expiries
            and self._by_key.get(self._expiries[0][2].key) is not self._expiries[0][2]
        ):
            heapq.heappop(self._expiries)

    # Writing: reachable only through the ConfigAgent, which holds the token.

    def config_agent(self, authorize: Authorizer) -> ConfigAgent:
        """Issue the registry's one ConfigAgent; a second call is refused."""
        if self._token is not None:
            raise ConfigError("this registry already has its configuration agent")
        self._token = object()
        return ConfigAgent(self, self._token, authorize)

    def _check_token(self, token: object) -> None:
        if token is not self._token or token is None:
            raise NotAuthorizedError("only the configuration agent may change groups")

    def _apply(self, token: object, operation: ConfigOperation) -> None:
        self._check_token(token)
        match operation:
            case CreateGroup():
                self._create(operation)
            case ReplaceGroup():
                self._replace(operation)
            case DeleteGroup(group_id=group_id):
                self._delete(self._require(group_id))
            case AddMember(member=new_member):
                group = self._require(new_member.group_id)
                if group.member(new_member.node_id) is not None:
                    raise ConfigError(f"node id {new_member.node_id!r} is taken")
                self._check_members(group.group_id, (new_member,), may_own=None)
                self._add_member(new_member)
            case RemoveMember(group_id=group_id, node_id=node_id):
                group = self._require(group_id)
                leaving = group.member(node_id)
                if leaving is None:
                    raise ConfigError(f"group {group_id!r} has no member {node_id!r}")
                self._check_quorum(group, group.quorum, group.voters - leaving.votes)
                self._remove_member(leaving)
            case SetQuorum(group_id=group_id, quorum=quorum):
                group = self._require(group_id)
                self._check_quorum(group, quorum, group.voters)
                group.quorum = quorum
                for listener in self._listeners:
                    listener.quorum_changed(group)
            case ExtensionOperation():
                handler = self._handlers.get(type(operation))
                if handler is None:
                    raise ConfigError(f"nothing applies {type(operation).__name__}")
                handler(operation)

    def _require(self, group_id: GroupId) -> Group:
        group = self._groups.get(group_id)
        if group is None:
            raise ConfigError(f"no group {group_id!r}")
        return group

    def _create(self, operation: CreateGroup) -> None:
        if not operation.group_id:
            raise ConfigError("a group id must not be empty")
        if operation.group_id in self._groups:
            raise ConfigError(f"group {operation.group_id!r} exists")
        group = Group(operation.group_id, operation.quorum, operation.version)
        self._check_members(group.group_id, operation.members, may_own=None)
        self._check_quorum(group, operation.quorum, sum(m.votes for m in operation.members))
        self._groups[group.group_id] = group
        for member in operation.members:
            self._add_member(member, notify=False)
        for listener in self._listeners:
            listener.group_added(group)

    def _replace(self, operation: ReplaceGroup) -> None:
        group = self._groups.get(operation.group_id)
        if group is None:
            self._create(
                CreateGroup(
                    operation.group_id, operation.quorum, operation.members, operation.version
                )
            )
            return
        if operation.version <= group.version:
            raise ConfigError(f"version {operation.version} is not newer than {group.version}")
        self._check_members(group.group_id, operation.members, may_own=group.group_id)
        self._check_quorum(group, operation.quorum, sum(m.votes for m in operation.members))
        self._apply_replacement(group, operation)

    def _apply_replacement(self, group: Group, operation: ReplaceGroup) -> None:
        # Members are matched by key: a key that stays is changed in place, not re-added, so
        # its health carries over and a muted group stays silent.
        wanted = {member.key: member for member in operation.members}
        changed: list[tuple[Member, Member]] = []
        for member in group:
            replacement = wanted.get(member.key)
            if replacement is None:
                self._remove_member(member)
            elif replacement != member:
                changed.append((member, replacement))
        # All changed members leave the index before any comes back: node ids may be swapped.
        for old, _ in changed:
            group._remove(old)
        for _, new in changed:
            self._index_member(new)
        if group.quorum != operation.quorum:
            group.quorum = operation.quorum
            for listener in self._listeners:
                listener.quorum_changed(group)
        for old, new in changed:
            for listener in self._listeners:
                listener.member_changed(old, new)
        for member in operation.members:
            if member.key not in self._by_key:
                self._add_member(member)
        group.version = operation.version

    def _check_members(
        self, group_id: GroupId, members: tuple[Member, ...], may_own: GroupId | None
    ) -> None:
        """Members for ``group_id``: distinct ids and keys, keys free (or owned by ``may_own``)."""
        node_ids: set[str] = set()
        keys: set[Key] = set()
        for member in members:
            if member.group_id != group_id:
                raise ConfigError(f"member {member.node_id!r} names another group")
            if member.node_id in node_ids:
                raise ConfigError(f"node id {member.node_id!r} appears twice")
            if member.key in keys:
                raise ConfigError("a key appears twice")
            owner = self._by_key.get(member.key)
            if owner is not None and owner.group_id != may_own:
                raise ConfigError("this key already belongs to a group")
            node_ids.add(member.node_id)
            keys.add(member.key)

    @staticmethod
    def _check_quorum(group: Group, quorum: Quorum, voters: int) -> None:
        # A fixed count above the number of voters could never be met: refuse it up front
        # instead of showing a group that is QUORUM_DEAD by construction.
        if quorum.kind is QuorumKind.COUNT and quorum.value > voters:
            raise ConfigError(
                f"quorum {quorum.value} exceeds the {voters} voting members of {group.group_id!r}"
            )

    def _delete(self, group: Group) -> None:
        # The group keeps its member list so that listeners can still walk it.
        for member in group:
            del self._by_key[member.key]
        del self._groups[group.group_id]
        for listener in self._listeners:
            listener.group_removed(group)

    def _add_member(self, member: Member, *, notify: bool = True) -> None:
        self._index_member(member)
        if notify:
            for listener in self._listeners:
                listener.member_added(member)

    def _index_member(self, member: Member) -> None:
        self._groups[member.group_id]._add(member)
        self._by_key[member.key] = member
        if member.expires_at is not None:
            heapq.heappush(self._expiries, (member.expires_at, next(self._seq), member))

    def _remove_member(self, member: Member) -> None:
        self._groups[member.group_id]._remove(member)
        del self._by_key[member.key]
        # Its expiry entry, if any, is skipped when it surfaces (lazy deletion).
        for listener in self._listeners:
            listener.member_removed(member)

    # Persistence

    def export(self) -> dict[str, Any]:
        """All groups and members as plain dicts and lists."""
        return {"groups": [self._groups[gid].export() for gid in sorted(self._groups)]}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> GroupRegistry:
        """A registry holding what ``export`` wrote; its ConfigAgent is not issued yet."""
        registry = cls()
        token = object()
        registry._token = token
        for group_data in data["groups"]:
            group_id = str(group_data["group_id"])
            members = tuple(Member.restore(group_id, m) for m in group_data["members"])
            quorum = Quorum.restore(group_data["quorum"])
            version = int(group_data.get("version", 0))
            registry._apply(token, CreateGroup(group_id, quorum, members, version))
        registry._token = None
        return registry


class ConfigAgent:
    """The only writer of a GroupRegistry; every request passes the authoriser first."""

    __slots__ = ("_authorize", "_registry", "_token")

    def __init__(self, registry: GroupRegistry, token: object, authorize: Authorizer) -> None:
        self._registry = registry
        self._token = token
        self._authorize = authorize

    def submit(self, request: ConfigRequest) -> None:
        """Apply ``request`` if the authoriser accepts it; raise NotAuthorizedError otherwise."""
        if not self._authorize(request):
            raise NotAuthorizedError("configuration request refused")
        self._registry._apply(self._token, request.operation)
