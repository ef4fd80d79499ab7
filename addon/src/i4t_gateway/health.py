"""The IINP health engine: node status, group status, mutes, and the events between them.

Single-threaded and clock-free: the server calls ``report``, ``expire(now)`` and reads
``next_deadline()`` from its event loop. Every call costs O(1) per node event (group status is
kept by counters, never by rescanning), and expiry costs O(expired log n). The rules are
specified in docs/HEALTH.md; this module is their implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
import math
from typing import Any

from .groups import Group, GroupId, GroupRegistry, Key, Member, NodeClass, Quorum
from .timeouts import DeadlineQueue, IntervalLearner, TimeoutPolicy

EXPORT_VERSION = 1


class NodeStatus(StrEnum):
    """A node's status; also the three values of the IINP Health Status Response."""

    HEALTHY = "healthy"
    BROKEN = "broken"
    DEAD = "dead"


class GroupStatus(StrEnum):
    """A group's status over its voting members."""

    HEALTHY = "healthy"
    PARTIALLY_BROKEN = "partially_broken"
    QUORUM_BROKEN = "quorum_broken"
    QUORUM_DEAD = "quorum_dead"
    DEAD = "dead"


def group_status(healthy: int, broken: int, dead: int, quorum: int) -> GroupStatus:
    """The group status for these member counts; the first rule that holds wins."""
    alive = healthy + broken
    if alive == 0:
        return GroupStatus.DEAD
    if alive < quorum:
        return GroupStatus.QUORUM_DEAD
    if healthy < quorum:
        return GroupStatus.QUORUM_BROKEN
    if broken or dead:
        return GroupStatus.PARTIALLY_BROKEN
    return GroupStatus.HEALTHY


_RESPONSE = {
    GroupStatus.HEALTHY: NodeStatus.HEALTHY,
    GroupStatus.PARTIALLY_BROKEN: NodeStatus.HEALTHY,
    GroupStatus.QUORUM_BROKEN: NodeStatus.BROKEN,
    GroupStatus.QUORUM_DEAD: NodeStatus.BROKEN,
    GroupStatus.DEAD: NodeStatus.DEAD,
}


def health_response(status: GroupStatus) -> NodeStatus:
    """The three-valued IINP Health Status Response for a group in ``status``."""
    return _RESPONSE[status]


@dataclass(frozen=True, slots=True)
class NodeStatusChanged:
    """A node's status changed; ``old`` is None when the engine starts tracking the node."""

    key: Key
    old: NodeStatus | None
    new: NodeStatus


@dataclass(frozen=True, slots=True)
class GroupStatusChanged:
    """A group's status changed; ``old`` is None on creation, ``new`` None on deletion."""

    group_id: GroupId
    old: GroupStatus | None
    new: GroupStatus | None


type StatusEvent = NodeStatusChanged | GroupStatusChanged


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the server shows about a node (diagnostics included)."""

    key: Key
    status: NodeStatus
    muted: bool
    quiet: bool
    group_id: GroupId | None
    timeout: float
    largest_gap: float | None
    gaps_seen: int
    last_heard: float | None
    deadline: float | None


@dataclass(frozen=True, slots=True)
class GroupView:
    """What the server shows about a group."""

    group_id: GroupId
    status: GroupStatus
    response: NodeStatus
    healthy: int
    broken: int
    dead: int
    quorum: int
    muted: bool


class _GroupHealth:
    __slots__ = (
        "broken",
        "dead",
        "group_id",
        "healthy",
        "muted",
        "quiet_status",
        "quorum",
        "status",
    )

    def __init__(self, group_id: GroupId, quorum: Quorum) -> None:
        self.group_id = group_id
        self.quorum = quorum
        self.healthy = 0
        self.broken = 0
        self.dead = 0
        self.status = GroupStatus.DEAD
        self.muted = False
        # The status when its events were silenced; None while they are not.
        self.quiet_status: GroupStatus | None = None

    def count(self, status: NodeStatus, delta: int) -> None:
        if status is NodeStatus.HEALTHY:
            self.healthy += delta
        elif status is NodeStatus.BROKEN:
            self.broken += delta
        else:
            self.dead += delta

    def computed_status(self) -> GroupStatus:
        voters = self.healthy + self.broken + self.dead
        return group_status(self.healthy, self.broken, self.dead, self.quorum.size(voters))


class _NodeHealth:
    __slots__ = (
        "deadline",
        "group",
        "key",
        "learner",
        "muted",
        "node_class",
        "queued",
        "quiet_status",
        "since",
        "status",
        "timeout_override",
        "votes",
    )

    def __init__(self, key: Key, status: NodeStatus) -> None:
        self.key = key
        self.status = status
        self.learner = IntervalLearner()
        self.group: _GroupHealth | None = None
        self.votes = False
        self.node_class: NodeClass | None = None
        self.timeout_override: float | None = None
        self.muted = False
        self.quiet_status: NodeStatus | None = None
        # The time the current deadline counts from: the last report, or a restore.
        self.since = -math.inf
        self.deadline = math.inf
        self.queued = math.inf


class HealthEngine:
    """Node and group health over a GroupRegistry, whose changes it follows as a listener.

    Mutating calls return the events they caused (muted ones left out) and also pass each one
    to ``on_event`` if given. Events caused by configuration changes reach ``on_event`` only,
    except for temporary memberships ending inside ``expire``, which its return includes too.
    The MembershipListener methods are for the registry to call, not the server.
    """

    def __init__(
        self,
        registry: GroupRegistry,
        *,
        policy: TimeoutPolicy | None = None,
        class_policies: Mapping[NodeClass, TimeoutPolicy] | None = None,
        on_event: Callable[[StatusEvent], None] | None = None,
    ) -> None:
        self._registry = registry
        self._policy = policy or TimeoutPolicy()
        self._class_policies = dict(class_policies or {})
        self._on_event = on_event
        self._nodes: dict[Key, _NodeHealth] = {}
        self._groups: dict[GroupId, _GroupHealth] = {}
        self._deadlines: DeadlineQueue[_NodeHealth] = DeadlineQueue()
        # Collects the events of the public call under way; None between calls.
        self._batch: list[StatusEvent] | None = None
        self._silent = True
        for group in registry.groups():
            self.group_added(group)
        self._silent = False
        registry.add_listener(self)

    # Node events

    def report(self, key: Key, status: NodeStatus, now: float) -> list[StatusEvent]:
        """The node ``key`` was heard at ``now`` saying ``status`` (HEALTHY or BROKEN).

        A proxied thing's status is derived by its bridge (e.g. a probe error is BROKEN).
        """
        if status is NodeStatus.DEAD:
            raise ValueError("a node cannot report itself dead; DEAD is declared by timeout")
        node = self._nodes.get(key)
        if node is not None and now < node.since:
            return []  # older than what we already know: reordered delivery
        self._batch = []
        if node is None:
            node = self._track(key, status)
        # After an outage the gap says only that the interval is at least the timeout.
        cap = self._timeout(node) if node.status is NodeStatus.DEAD else None
        node.learner.heard(now, cap)
        self._set_status(node, status)
        node.since = now
        self._arm(node)
        return self._end()

    def expire(self, now: float) -> list[StatusEvent]:
        """Declare DEAD every node not heard within its timeout, end due temporary memberships."""
        self._batch = []
        self._registry.expire(now)
        for node in self._deadlines.pop_expired(now):
            node.deadline = math.inf
            self._set_status(node, NodeStatus.DEAD)
        return self._end()

    def declare_dead(self, key: Key) -> list[StatusEvent]:
        """A neighbour declared ``key`` DEAD (gossip); it comes back with its next report.

        Gossip about a node this gateway does not track is ignored.
        """
        node = self._nodes.get(key)
        if node is None:
            return []
        self._batch = []
        self._deadlines.cancel(node)
        self._set_status(node, NodeStatus.DEAD)
        return self._end()

    def next_deadline(self) -> float | None:
        """When ``expire`` next has something to do, or None."""
        node_deadline = self._deadlines.next_deadline()
        membership_expiry = self._registry.next_expiry()
        if node_deadline is None:
            return membership_expiry
        if membership_expiry is None:
            return node_deadline
        return min(node_deadline, membership_expiry)

    def forget(self, key: Key) -> None:
        """Stop tracking a node that belongs to no group (e.g. an unenrolled thing)."""
        node = self._nodes[key]
        if node.group is not None:
            raise ValueError("remove the node from its group first")
        self._deadlines.cancel(node)
        del self._nodes[key]

    # Overrides and mutes

    @property
    def policy(self) -> TimeoutPolicy:
        """The default timeout policy (class policies and per-node overrides come first)."""
        return self._policy

    def set_policy(self, policy: TimeoutPolicy) -> None:
        """Change the default policy; every live node's deadline is recomputed (O(n), rare)."""
        self._policy = policy
        for node in self._nodes.values():
            if node.status is not NodeStatus.DEAD:
                self._arm(node)

    def set_timeout_override(self, key: Key, seconds: float | None) -> None:
        """Fix ``key``'s timeout to ``seconds`` (None: back to its class policy or learning)."""
        if seconds is not None and not seconds > 0:
            raise ValueError("a timeout must be positive")
        node = self._nodes[key]
        node.timeout_override = seconds
        self._arm(node)

    def mute_node(self, key: Key, muted: bool = True) -> list[StatusEvent]:
        """Silence (or restore) ``key``'s events; unmuting reports a change made while muted."""
        node = self._nodes[key]
        self._batch = []
        node.muted = muted
        self._refresh_node_quiet(node)
        return self._end()

    def mute_group(self, group_id: GroupId, muted: bool = True) -> list[StatusEvent]:
        """Silence (or restore) a group's events and its members'."""
        health = self._groups[group_id]
        self._batch = []
        health.muted = muted
        group = self._registry.group(group_id)
        if group is not None:
            for member in group:
                self._refresh_node_quiet(self._nodes[member.key])
        self._refresh_group_quiet(health)
        return self._end()

    # Reading

    def node_status(self, key: Key) -> NodeStatus | None:
        """``key``'s status, or None if it is not tracked."""
        node = self._nodes.get(key)
        return None if node is None else node.status

    def group_status(self, group_id: GroupId) -> GroupStatus | None:
        """The group's status, or None if there is no such group."""
        health = self._groups.get(group_id)
        return None if health is None else health.status

    def node_view(self, key: Key) -> NodeView:
        """Everything about a tracked node."""
        node = self._nodes[key]
        return NodeView(
            key=key,
            status=node.status,
            muted=node.muted,
            quiet=node.quiet_status is not None,
            group_id=None if node.group is None else node.group.group_id,
            timeout=self._timeout(node),
            largest_gap=node.learner.largest_gap(),
            gaps_seen=node.learner.gaps_seen,
            last_heard=node.learner.last_heard,
            deadline=None if node.deadline == math.inf else node.deadline,
        )

    def group_view(self, group_id: GroupId) -> GroupView:
        """Everything about a group's health."""
        health = self._groups[group_id]
        voters = health.healthy + health.broken + health.dead
        return GroupView(
            group_id=group_id,
            status=health.status,
            response=health_response(health.status),
            healthy=health.healthy,
            broken=health.broken,
            dead=health.dead,
            quorum=health.quorum.size(voters),
            muted=health.muted,
        )

    def nodes(self) -> list[Key]:
        """The keys of all tracked nodes."""
        return list(self._nodes)

    # MembershipListener: the registry calls these on configuration changes.

    def group_added(self, group: Group) -> None:
        """Start following a new group and its members."""
        health = _GroupHealth(group.group_id, group.quorum)
        self._groups[group.group_id] = health
        for member in group:
            self._attach(member, health)
        health.status = health.computed_status()
        self._emit(GroupStatusChanged(group.group_id, None, health.status), health)

    def group_removed(self, group: Group) -> None:
        """Stop following a deleted group; its nodes stay tracked, ungrouped."""
        health = self._groups.pop(group.group_id)
        for member in group:
            self._detach(self._nodes[member.key])
        # Announced even when muted (consumers must drop the group's entities), from the
        # status they last saw.
        last_seen = health.status if health.quiet_status is None else health.quiet_status
        self._emit(GroupStatusChanged(group.group_id, last_seen, None), None)

    def quorum_changed(self, group: Group) -> None:
        """Re-evaluate a group under its new quorum rule."""
        health = self._groups[group.group_id]
        health.quorum = group.quorum
        self._recompute(health)

    def member_added(self, member: Member) -> None:
        """Count a new member in its group."""
        health = self._groups[member.group_id]
        self._attach(member, health)
        self._recompute(health)

    def member_removed(self, member: Member) -> None:
        """Stop counting a member that left its group."""
        node = self._nodes[member.key]
        health = node.group
        self._detach(node)
        if health is not None:
            self._recompute(health)

    def member_changed(self, old: Member, new: Member) -> None:
        """Recount a member whose role or class changed; its health carries over."""
        del old
        node = self._nodes[new.key]
        health = self._groups[new.group_id]
        if node.votes:
            health.count(node.status, -1)
        node.votes = new.votes
        node.node_class = new.node_class
        if node.votes:
            health.count(node.status, +1)
        self._arm(node)
        self._recompute(health)

    # Persistence

    def export(self) -> dict[str, Any]:
        """Node health, learned intervals, overrides and mutes as plain dicts (no times).

        Sorted by key and group id, so that equal states export equal data.
        """
        return {
            "version": EXPORT_VERSION,
            "nodes": [_export_node(self._nodes[key]) for key in sorted(self._nodes)],
            "groups": [
                {
                    "group_id": health.group_id,
                    "muted": health.muted,
                    "quiet_status": _value(health.quiet_status),
                }
                for _, health in sorted(self._groups.items())
            ],
        }

    @classmethod
    def restore(
        cls,
        registry: GroupRegistry,
        data: Mapping[str, Any],
        now: float,
        *,
        policy: TimeoutPolicy | None = None,
        class_policies: Mapping[NodeClass, TimeoutPolicy] | None = None,
        on_event: Callable[[StatusEvent], None] | None = None,
    ) -> HealthEngine:
        """An engine in the exported state, without events; live nodes get a full timeout."""
        if data.get("version") != EXPORT_VERSION:
            raise ValueError(f"unsupported health export version {data.get('version')!r}")
        engine = cls(registry, policy=policy, class_policies=class_policies, on_event=on_event)
        engine._silent = True
        for node_data in data["nodes"]:
            engine._restore_node(node_data, now)
        for group_data in data["groups"]:
            health = engine._groups.get(group_data["group_id"])
            if health is not None:
                health.muted = bool(group_data["muted"])
                health.quiet_status = _parse(GroupStatus, group_data["quiet_status"])
        engine._silent = False
        return engine

    def _restore_node(self, data: Mapping[str, Any], now: float) -> None:
        key = bytes.fromhex(data["key"])
        node = self._nodes.get(key) or self._track(key, NodeStatus(data["status"]))
        node.learner = IntervalLearner.restore([float(gap) for gap in data["gaps"]])
        override = data.get("timeout_override")
        node.timeout_override = None if override is None else float(override)
        node.muted = bool(data["muted"])
        self._set_status(node, NodeStatus(data["status"]))
        node.quiet_status = _parse(NodeStatus, data["quiet_status"])
        if node.status is not NodeStatus.DEAD:
            # We could not hear anything while down: give every live node a full timeout.
            node.since = now
            self._arm(node)

    # Internals

    def _track(self, key: Key, status: NodeStatus) -> _NodeHealth:
        node = _NodeHealth(key, status)
        self._nodes[key] = node
        self._emit(NodeStatusChanged(key, None, status), None)
        return node

    def _attach(self, member: Member, health: _GroupHealth) -> None:
        node = self._nodes.get(member.key)
        if node is None:
            # Never heard: a member that has not spoken within any timeout is DEAD.
            node = self._track(member.key, NodeStatus.DEAD)
        node.group = health
        node.votes = member.votes
        node.node_class = member.node_class
        if node.votes:
            health.count(node.status, +1)
        self._refresh_node_quiet(node)
        self._arm(node)

    def _detach(self, node: _NodeHealth) -> None:
        health = node.group
        if health is not None and node.votes:
            health.count(node.status, -1)
        node.group = None
        node.votes = False
        node.node_class = None
        self._refresh_node_quiet(node)
        self._arm(node)

    def _timeout(self, node: _NodeHealth) -> float:
        if node.timeout_override is not None:
            return node.timeout_override
        policy = self._policy
        if node.node_class is not None:
            policy = self._class_policies.get(node.node_class, policy)
        return policy.timeout_for(node.learner.largest_gap(), node.learner.gaps_seen)

    def _arm(self, node: _NodeHealth) -> None:
        if node.status is NodeStatus.DEAD:
            self._deadlines.cancel(node)
            return
        node.deadline = node.since + self._timeout(node)
        self._deadlines.schedule(node)

    def _set_status(self, node: _NodeHealth, status: NodeStatus) -> None:
        old = node.status
        if old is status:
            return
        node.status = status
        health = node.group
        if health is not None and node.votes:
            health.count(old, -1)
            health.count(status, +1)
        self._emit(NodeStatusChanged(node.key, old, status), node)
        if health is not None and node.votes:
            self._recompute(health)

    def _recompute(self, health: _GroupHealth) -> None:
        old = health.status
        new = health.computed_status()
        if new is not old:
            health.status = new
            self._emit(GroupStatusChanged(health.group_id, old, new), health)

    def _refresh_node_quiet(self, node: _NodeHealth) -> None:
        quiet = node.muted or (node.group is not None and node.group.muted)
        if quiet and node.quiet_status is None:
            node.quiet_status = node.status
        elif not quiet and node.quiet_status is not None:
            old, node.quiet_status = node.quiet_status, None
            if old is not node.status:
                self._emit(NodeStatusChanged(node.key, old, node.status), node)

    def _refresh_group_quiet(self, health: _GroupHealth) -> None:
        if health.muted and health.quiet_status is None:
            health.quiet_status = health.status
        elif not health.muted and health.quiet_status is not None:
            old, health.quiet_status = health.quiet_status, None
            if old is not health.status:
                self._emit(GroupStatusChanged(health.group_id, old, health.status), health)

    def _end(self) -> list[StatusEvent]:
        events = self._batch or []
        self._batch = None
        return events

    def _emit(self, event: StatusEvent, source: _NodeHealth | _GroupHealth | None) -> None:
        if self._silent or (source is not None and source.quiet_status is not None):
            return
        if self._batch is not None:
            self._batch.append(event)
        if self._on_event is not None:
            self._on_event(event)


def _export_node(node: _NodeHealth) -> dict[str, Any]:
    return {
        "key": node.key.hex(),
        "status": node.status.value,
        "gaps": node.learner.export(),
        "timeout_override": node.timeout_override,
        "muted": node.muted,
        "quiet_status": _value(node.quiet_status),
    }


def _value(status: StrEnum | None) -> str | None:
    return None if status is None else status.value


def _parse[S: StrEnum](kind: type[S], value: str | None) -> S | None:
    return None if value is None else kind(value)
