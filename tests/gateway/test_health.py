"""The health engine: node and group status rules, events, mutes, persistence.

The property tests run random event sequences through the engine and through a deliberately
simple model that recomputes everything from scratch after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
import math

from hypothesis import given, settings, strategies as st
import pytest

from i4t_gateway.groups import (
    AddMember,
    ConfigAgent,
    ConfigError,
    ConfigRequest,
    CreateGroup,
    DeleteGroup,
    GroupRegistry,
    Member,
    NodeClass,
    NodeRole,
    Quorum,
    QuorumKind,
    RemoveMember,
    ReplaceGroup,
    SetQuorum,
)
from i4t_gateway.health import (
    GroupStatus,
    GroupStatusChanged,
    HealthEngine,
    NodeStatus,
    NodeStatusChanged,
    StatusEvent,
    group_status,
    health_response,
)
from i4t_gateway.timeouts import TimeoutPolicy

H, B, D = NodeStatus.HEALTHY, NodeStatus.BROKEN, NodeStatus.DEAD
ADMIN = b"admin"


def key(n: int) -> bytes:
    return n.to_bytes(8, "big")


class World:
    """A registry, its agent and an engine, with every delivered event recorded."""

    def __init__(self, policy: TimeoutPolicy | None = None, **engine_kw: object) -> None:
        self.registry = GroupRegistry()
        self.agent: ConfigAgent = self.registry.config_agent(lambda r: r.requester == ADMIN)
        self.events: list[StatusEvent] = []
        self.engine = HealthEngine(
            self.registry,
            policy=policy or TimeoutPolicy(fixed=10.0),
            on_event=self.events.append,
            **engine_kw,  # type: ignore[arg-type]
        )

    def submit(self, operation: object) -> None:
        self.agent.submit(ConfigRequest(ADMIN, operation))  # type: ignore[arg-type]

    def group(self, group_id: str, *nodes: int, quorum: Quorum | None = None, **kw: object) -> None:
        members = tuple(Member(group_id, f"n{n}", key(n), **kw) for n in nodes)  # type: ignore[arg-type]
        self.submit(CreateGroup(group_id, quorum or Quorum.majority(), members))

    def take(self) -> list[StatusEvent]:
        taken, self.events[:] = list(self.events), []
        return taken


# The group status rules, one example per row of the table in docs/HEALTH.md


@pytest.mark.parametrize(
    ("healthy", "broken", "dead", "expected"),
    [
        (0, 0, 0, GroupStatus.DEAD),  # empty group
        (0, 0, 3, GroupStatus.DEAD),
        (1, 0, 2, GroupStatus.QUORUM_DEAD),  # 1 alive < quorum 2
        (0, 1, 2, GroupStatus.QUORUM_DEAD),
        (1, 1, 1, GroupStatus.QUORUM_BROKEN),  # 2 alive >= 2, but 1 healthy < 2
        (0, 3, 0, GroupStatus.QUORUM_BROKEN),
        (2, 1, 0, GroupStatus.PARTIALLY_BROKEN),
        (2, 0, 1, GroupStatus.PARTIALLY_BROKEN),
        (3, 0, 0, GroupStatus.HEALTHY),
        (1, 0, 0, GroupStatus.HEALTHY),  # group of one
        (0, 1, 0, GroupStatus.QUORUM_BROKEN),
        (0, 0, 1, GroupStatus.DEAD),
        (3, 1, 1, GroupStatus.PARTIALLY_BROKEN),  # n=5, quorum 3
        (2, 1, 2, GroupStatus.QUORUM_BROKEN),
        (2, 0, 3, GroupStatus.QUORUM_DEAD),
    ],
)
def test_group_status_table(healthy: int, broken: int, dead: int, expected: GroupStatus) -> None:
    n = healthy + broken + dead
    assert group_status(healthy, broken, dead, Quorum.majority().size(n)) is expected


def test_health_response_mapping() -> None:
    assert health_response(GroupStatus.HEALTHY) is H
    assert health_response(GroupStatus.PARTIALLY_BROKEN) is H
    assert health_response(GroupStatus.QUORUM_BROKEN) is B
    assert health_response(GroupStatus.QUORUM_DEAD) is B
    assert health_response(GroupStatus.DEAD) is D


# Nodes


def test_first_report_tracks_the_node() -> None:
    world = World()
    events = world.engine.report(key(1), H, now=0.0)
    assert events == [NodeStatusChanged(key(1), None, H)]
    assert world.events == events
    assert world.engine.report(key(1), H, now=1.0) == []


def test_returned_events_belong_to_their_call() -> None:
    world = World()
    returned = world.engine.report(key(1), H, now=0.0)
    world.group("g", 2)  # configuration events reach the callback only
    assert returned == [NodeStatusChanged(key(1), None, H)]
    assert world.events[-1] == GroupStatusChanged("g", None, GroupStatus.DEAD)


def test_a_node_cannot_report_itself_dead() -> None:
    with pytest.raises(ValueError, match="cannot report itself dead"):
        World().engine.report(key(1), D, now=0.0)


def test_timeout_declares_dead_and_a_report_revives_with_its_status() -> None:
    world = World()
    world.engine.report(key(1), H, now=0.0)
    assert world.engine.next_deadline() == 10.0
    assert world.engine.expire(9.99) == []
    assert world.engine.expire(10.0) == [NodeStatusChanged(key(1), H, D)]
    assert world.engine.next_deadline() is None
    assert world.engine.report(key(1), B, now=50.0) == [NodeStatusChanged(key(1), D, B)]
    assert world.engine.next_deadline() == 60.0


def test_reports_postpone_the_deadline() -> None:
    world = World()
    for t in range(0, 100, 5):
        world.engine.report(key(1), H, now=float(t))
        assert world.engine.expire(float(t)) == []
    assert world.engine.next_deadline() == 105.0


def test_a_reordered_report_is_ignored() -> None:
    world = World()
    world.engine.report(key(1), H, now=10.0)
    assert world.engine.report(key(1), B, now=5.0) == []
    assert world.engine.node_status(key(1)) is H


def test_declare_dead_by_a_neighbour() -> None:
    world = World()
    world.engine.report(key(1), H, now=0.0)
    assert world.engine.declare_dead(key(1)) == [NodeStatusChanged(key(1), H, D)]
    assert world.engine.next_deadline() is None
    assert world.engine.report(key(1), H, now=1.0) == [NodeStatusChanged(key(1), D, H)]
    assert world.engine.declare_dead(key(99)) == []  # gossip about a stranger
    assert world.engine.node_status(key(99)) is None


def test_learned_timeout_with_defaults() -> None:
    world = World(policy=TimeoutPolicy())
    engine = world.engine
    engine.report(key(1), H, now=0.0)
    assert engine.node_view(key(1)).timeout == 900.0  # fallback until learned
    for i in range(1, 17):
        engine.report(key(1), H, now=10.0 * i)
    view = engine.node_view(key(1))
    assert view.gaps_seen == 16
    assert view.largest_gap == 10.0
    assert view.timeout == 30.0  # 3 x 10 s
    assert engine.next_deadline() == 190.0
    assert engine.expire(190.0) == [NodeStatusChanged(key(1), H, D)]


def test_an_outage_gap_is_capped_at_the_timeout_in_force() -> None:
    world = World(policy=TimeoutPolicy())
    engine = world.engine
    for i in range(17):
        engine.report(key(1), H, now=10.0 * i)
    engine.expire(10_000.0)
    engine.report(key(1), H, now=100_000.0)
    view = engine.node_view(key(1))
    assert view.largest_gap == 30.0  # not 99 840 s: only "at least the timeout"
    assert view.timeout == 90.0


def test_a_slow_node_converges_after_outages() -> None:
    """A node reporting hourly under the 900 s fallback: each outage raises its timeout."""
    world = World(policy=TimeoutPolicy())
    engine = world.engine
    now = 0.0
    engine.report(key(1), H, now=now)
    deaths = 0
    for _ in range(30):
        now += 3600.0
        deaths += sum(1 for e in engine.expire(now - 0.001) if isinstance(e, NodeStatusChanged))
        engine.report(key(1), H, now=now)
    assert deaths == 2  # 900 s, then 2700 s, then 8100 s covers the hour
    assert engine.node_view(key(1)).timeout >= 3600.0


def test_node_and_class_overrides() -> None:
    world = World(
        policy=TimeoutPolicy(),
        class_policies={NodeClass.PAYMENT: TimeoutPolicy(fixed=5.0)},
    )
    world.group("g", 1, node_class=NodeClass.PAYMENT)
    world.group("h", 2)
    world.engine.report(key(1), H, now=0.0)
    world.engine.report(key(2), H, now=0.0)
    assert world.engine.node_view(key(1)).timeout == 5.0
    assert world.engine.node_view(key(2)).timeout == 900.0
    world.engine.set_timeout_override(key(2), 7.0)
    assert world.engine.node_view(key(2)).timeout == 7.0
    assert world.engine.next_deadline() == 5.0
    world.engine.set_timeout_override(key(1), 20.0)  # a node override beats its class
    assert world.engine.next_deadline() == 7.0
    world.engine.set_timeout_override(key(2), None)
    assert world.engine.next_deadline() == 20.0
    with pytest.raises(ValueError, match="positive"):
        world.engine.set_timeout_override(key(2), 0.0)


def test_forget_only_ungrouped_nodes() -> None:
    world = World()
    world.group("g", 1)
    world.engine.report(key(2), H, now=0.0)
    with pytest.raises(ValueError, match="group"):
        world.engine.forget(key(1))
    world.engine.forget(key(2))
    assert world.engine.node_status(key(2)) is None
    assert world.engine.next_deadline() is None


# Groups


def test_new_group_members_are_dead_until_heard() -> None:
    world = World()
    world.group("g", 1, 2, 3)
    assert world.take() == [
        NodeStatusChanged(key(1), None, D),
        NodeStatusChanged(key(2), None, D),
        NodeStatusChanged(key(3), None, D),
        GroupStatusChanged("g", None, GroupStatus.DEAD),
    ]
    world.engine.report(key(1), H, now=0.0)
    assert world.engine.group_status("g") is GroupStatus.QUORUM_DEAD
    world.engine.report(key(2), B, now=0.0)
    assert world.engine.group_status("g") is GroupStatus.QUORUM_BROKEN
    world.engine.report(key(3), H, now=0.0)
    assert world.engine.group_status("g") is GroupStatus.PARTIALLY_BROKEN
    events = world.engine.report(key(2), H, now=1.0)
    assert events == [
        NodeStatusChanged(key(2), B, H),
        GroupStatusChanged("g", GroupStatus.PARTIALLY_BROKEN, GroupStatus.HEALTHY),
    ]
    view = world.engine.group_view("g")
    assert (view.healthy, view.broken, view.dead, view.quorum) == (3, 0, 0, 2)
    assert view.response is H


def test_expiry_moves_the_group() -> None:
    world = World()
    world.group("g", 1, 2, 3)
    for n in (1, 2, 3):
        world.engine.report(key(n), H, now=0.0)
    world.engine.report(key(1), H, now=5.0)
    world.take()
    # One node event at a time: the group passes through every status on the way.
    assert world.engine.expire(10.0) == [
        NodeStatusChanged(key(2), H, D),
        GroupStatusChanged("g", GroupStatus.HEALTHY, GroupStatus.PARTIALLY_BROKEN),
        NodeStatusChanged(key(3), H, D),
        GroupStatusChanged("g", GroupStatus.PARTIALLY_BROKEN, GroupStatus.QUORUM_DEAD),
    ]
    assert world.engine.expire(15.0) == [
        NodeStatusChanged(key(1), H, D),
        GroupStatusChanged("g", GroupStatus.QUORUM_DEAD, GroupStatus.DEAD),
    ]


def test_empty_group_and_group_of_one() -> None:
    world = World()
    world.group("empty")
    assert world.engine.group_status("empty") is GroupStatus.DEAD
    assert world.engine.group_view("empty").quorum == 1
    world.group("one", 1)
    world.engine.report(key(1), B, now=0.0)
    assert world.engine.group_status("one") is GroupStatus.QUORUM_BROKEN
    world.engine.report(key(1), H, now=1.0)
    assert world.engine.group_status("one") is GroupStatus.HEALTHY


def test_temporary_members_do_not_vote_and_expire() -> None:
    world = World()
    world.group("g", 1)
    world.engine.report(key(1), H, now=0.0)
    world.submit(AddMember(Member("g", "visitor", key(9), NodeRole.TEMPORARY, expires_at=4.0)))
    assert world.engine.group_status("g") is GroupStatus.HEALTHY  # a dead visitor counts not
    world.engine.report(key(9), B, now=1.0)
    assert world.engine.group_status("g") is GroupStatus.HEALTHY
    assert world.engine.next_deadline() == 4.0  # the membership ends before any timeout
    world.take()
    assert world.engine.expire(4.0) == []  # leaving changes no status
    assert world.registry.group_of(key(9)) is None
    assert world.engine.node_status(key(9)) is B  # still tracked, ungrouped


def test_quorum_rules_are_applied_per_group() -> None:
    world = World()
    world.group("g", 1, 2, 3, 4, quorum=Quorum.percent(100))
    for n in (1, 2, 3):
        world.engine.report(key(n), H, now=0.0)
    world.engine.report(key(4), B, now=0.0)
    assert world.engine.group_status("g") is GroupStatus.QUORUM_BROKEN
    world.take()
    world.submit(SetQuorum("g", Quorum.fixed(3)))
    assert world.take() == [
        GroupStatusChanged("g", GroupStatus.QUORUM_BROKEN, GroupStatus.PARTIALLY_BROKEN)
    ]


def test_membership_changes_recount() -> None:
    world = World()
    world.group("g", 1, 2)
    world.engine.report(key(1), H, now=0.0)
    world.engine.report(key(3), H, now=0.0)
    assert world.engine.group_status("g") is GroupStatus.QUORUM_DEAD
    world.submit(RemoveMember("g", "n2"))
    assert world.engine.group_status("g") is GroupStatus.HEALTHY
    world.submit(AddMember(Member("g", "n3", key(3))))
    assert world.engine.group_view("g").healthy == 2
    world.take()
    world.submit(DeleteGroup("g"))
    assert world.take() == [GroupStatusChanged("g", GroupStatus.HEALTHY, None)]
    assert world.engine.group_status("g") is None
    assert world.engine.node_view(key(1)).group_id is None


# Mutes


def test_muted_node_is_silent_but_visible() -> None:
    world = World()
    world.engine.report(key(1), H, now=0.0)
    assert world.engine.mute_node(key(1)) == []
    assert world.engine.report(key(1), B, now=1.0) == []
    assert world.engine.node_status(key(1)) is B
    assert world.engine.node_view(key(1)).quiet
    world.engine.report(key(1), H, now=2.0)
    assert world.engine.mute_node(key(1), muted=False) == []  # back where it was: no event
    world.engine.mute_node(key(1))
    world.engine.expire(100.0)
    assert world.events == [NodeStatusChanged(key(1), None, H)]
    assert world.engine.mute_node(key(1), muted=False) == [NodeStatusChanged(key(1), H, D)]


def test_muted_node_still_moves_its_group() -> None:
    world = World()
    world.group("g", 1, 2, 3)
    for n in (1, 2, 3):
        world.engine.report(key(n), H, now=0.0)
    world.engine.mute_node(key(3))
    events = world.engine.report(key(3), B, now=1.0)
    assert events == [GroupStatusChanged("g", GroupStatus.HEALTHY, GroupStatus.PARTIALLY_BROKEN)]


def test_muted_group_silences_itself_and_its_members() -> None:
    world = World()
    world.group("g", 1, 2, 3)
    for n in (1, 2, 3):
        world.engine.report(key(n), H, now=0.0)
    world.take()
    assert world.engine.mute_group("g") == []
    world.engine.report(key(1), B, now=1.0)
    world.engine.report(key(2), B, now=1.0)
    world.engine.report(key(3), B, now=1.0)
    world.engine.report(key(3), H, now=2.0)
    assert world.events == []
    assert world.engine.group_status("g") is GroupStatus.QUORUM_BROKEN
    assert world.engine.group_view("g").muted
    events = world.engine.mute_group("g", muted=False)
    assert events == [
        NodeStatusChanged(key(1), H, B),
        NodeStatusChanged(key(2), H, B),
        GroupStatusChanged("g", GroupStatus.HEALTHY, GroupStatus.QUORUM_BROKEN),
    ]


def test_leaving_a_muted_group_reports_the_change() -> None:
    world = World()
    world.group("g", 1, 2)
    world.engine.report(key(1), H, now=0.0)
    world.engine.mute_group("g")
    world.engine.report(key(1), B, now=1.0)
    world.take()
    world.submit(RemoveMember("g", "n1"))
    assert NodeStatusChanged(key(1), H, B) in world.take()


def test_config_requests_need_authorisation() -> None:
    world = World()
    with pytest.raises(PermissionError):
        world.agent.submit(ConfigRequest(b"stranger", CreateGroup("g")))
    assert world.engine.group_status("g") is None


# Persistence


def test_round_trip_restores_state_without_events() -> None:
    world = World(policy=TimeoutPolicy())
    world.group("g", 1, 2, 3)
    for i in range(20):
        world.engine.report(key(1), H, now=float(i))
    world.engine.report(key(2), B, now=19.0)
    world.engine.report(key(7), H, now=19.0)
    world.engine.set_timeout_override(key(7), 60.0)
    world.engine.mute_node(key(2))
    world.engine.report(key(2), H, now=20.0)
    world.engine.mute_group("g")
    data = world.engine.export()
    registry = GroupRegistry.restore(world.registry.export())
    events: list[StatusEvent] = []
    restored = HealthEngine.restore(
        registry, data, now=1000.0, policy=TimeoutPolicy(), on_event=events.append
    )
    assert events == []
    assert restored.export() == data
    for n in (1, 2, 3, 7):
        assert restored.node_status(key(n)) is world.engine.node_status(key(n))
    assert restored.group_view("g") == world.engine.group_view("g")
    assert restored.node_view(key(1)).timeout == 30.0
    assert restored.node_view(key(7)).timeout == 60.0
    # Live nodes get a full timeout from the restore; the first report records no gap.
    assert restored.next_deadline() == 1030.0
    restored.report(key(1), H, now=1001.0)
    assert restored.node_view(key(1)).gaps_seen == 16
    assert restored.node_view(key(1)).largest_gap == 1.0
    # The mute baseline survived: unmuting reports what changed before the restart.
    assert restored.mute_node(key(2), muted=False) == []
    assert restored.mute_group("g", muted=False) == [NodeStatusChanged(key(2), B, H)]


def test_restore_rejects_unknown_versions() -> None:
    with pytest.raises(ValueError, match="version"):
        HealthEngine.restore(GroupRegistry(), {"version": 99}, now=0.0)


# Property tests against a model that recomputes everything from scratch

TIMEOUT = 10.0
NODES = range(6)
GROUPS = ("a", "b")


@dataclass
class ModelNode:
    reported: NodeStatus | None = None
    last_report: float = -math.inf
    declared_dead: bool = False
    muted: bool = False

    def status(self, now: float) -> NodeStatus:
        del now
        if self.reported is None or self.declared_dead:
            return D
        return self.reported


@dataclass
class ModelGroup:
    quorum: Quorum
    muted: bool = False


@dataclass
class Model:
    now: float = 0.0
    nodes: dict[int, ModelNode] = field(default_factory=dict)
    groups: dict[str, ModelGroup] = field(default_factory=dict)
    # node -> (group, temporary, expires_at)
    membership: dict[int, tuple[str, bool, float]] = field(default_factory=dict)

    def voters(self, group_id: str) -> list[int]:
        return [n for n, (g, temp, _) in self.membership.items() if g == group_id and not temp]

    def quorum(self, group_id: str) -> int:
        rule, voters = self.groups[group_id].quorum, len(self.voters(group_id))
        if rule.kind is QuorumKind.MAJORITY:
            return voters // 2 + 1
        if rule.kind is QuorumKind.COUNT:
            return rule.value
        return max(1, math.ceil(Fraction(voters * rule.value, 100)))

    def group_status(self, group_id: str) -> GroupStatus:
        statuses = [self.nodes[n].status(self.now) for n in self.voters(group_id)]
        alive = [s for s in statuses if s is not D]
        healthy = [s for s in statuses if s is H]
        quorum = self.quorum(group_id)
        if not alive:
            return GroupStatus.DEAD
        if len(alive) < quorum:
            return GroupStatus.QUORUM_DEAD
        if len(healthy) < quorum:
            return GroupStatus.QUORUM_BROKEN
        if len(healthy) < len(statuses):
            return GroupStatus.PARTIALLY_BROKEN
        return GroupStatus.HEALTHY

    def node_quiet(self, n: int) -> bool:
        member = self.membership.get(n)
        return self.nodes[n].muted or (member is not None and self.groups[member[0]].muted)

    def tick(self, dt: float) -> None:
        self.now += dt
        for n, (_, temp, expires) in list(self.membership.items()):
            if temp and expires <= self.now:
                del self.membership[n]
        for node in self.nodes.values():
            if node.reported is not None and node.last_report + TIMEOUT <= self.now:
                node.declared_dead = True

    def next_deadline(self) -> float | None:
        times = [
            node.last_report + TIMEOUT
            for node in self.nodes.values()
            if node.status(self.now) is not D
        ]
        times += [expires for _, temp, expires in self.membership.values() if temp]
        return min(times) if times else None


QUORUMS = st.sampled_from(
    [Quorum.majority(), Quorum.percent(100), Quorum.percent(50), Quorum.percent(34)]
)
OPS = st.one_of(
    st.tuples(st.just("report"), st.sampled_from(NODES), st.sampled_from([H, B])),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 1.0, 3.0, 5.0, 10.0, 25.0])),
    st.tuples(st.just("declare_dead"), st.sampled_from(NODES)),
    st.tuples(st.just("mute_node"), st.sampled_from(NODES), st.booleans()),
    st.tuples(st.just("mute_group"), st.sampled_from(GROUPS), st.booleans()),
    st.tuples(
        st.just("join"),
        st.sampled_from(NODES),
        st.sampled_from(GROUPS),
        st.sampled_from([None, 2.0, 12.0]),  # None: worker, else a temporary member's ttl
    ),
    st.tuples(st.just("leave"), st.sampled_from(NODES)),
    st.tuples(st.just("create"), st.sampled_from(GROUPS), QUORUMS),
    st.tuples(st.just("delete"), st.sampled_from(GROUPS)),
    st.tuples(
        st.just("quorum"),
        st.sampled_from(GROUPS),
        st.one_of(QUORUMS, st.integers(1, 4).map(Quorum.fixed)),
    ),
    st.tuples(
        st.just("replace"),
        st.sampled_from(GROUPS),
        st.lists(
            st.tuples(st.sampled_from(NODES), st.sampled_from([None, 12.0])),
            unique_by=lambda member: member[0],
            max_size=5,
        ).map(tuple),
        st.one_of(QUORUMS, st.integers(1, 3).map(Quorum.fixed)),
    ),
)


class Harness:
    """Runs one op on the engine and the model, then checks every invariant."""

    def __init__(self) -> None:
        self.world = World(policy=TimeoutPolicy(fixed=TIMEOUT))
        self.model = Model()
        self.node_view: dict[bytes, NodeStatus | None] = {}
        self.group_view: dict[str, GroupStatus | None] = {}
        self.quiet_before: set[int] = set()
        self.versions: dict[str, int] = {}

    @property
    def engine(self) -> HealthEngine:
        return self.world.engine

    def known(self, n: int) -> bool:
        return self.engine.node_status(key(n)) is not None

    def run(self, op: tuple[object, ...]) -> None:
        if op[0] == "join" and op[1] in self.model.membership:
            # Moving is two configuration changes; check each on its own.
            self.run(("leave", op[1]))
            if op[1] in self.model.membership:
                return
        self.quiet_before = {n for n in self.model.nodes if self.model.node_quiet(n)}
        returned = self.apply(op)
        delivered = self.world.take()
        if returned is not None:
            assert returned == delivered
        for event in delivered:
            self.consume(event)
        self.check()

    def apply(self, op: tuple[object, ...]) -> list[StatusEvent] | None:
        model, engine = self.model, self.engine
        match op:
            case ("report", int() as n, NodeStatus() as status):
                node = model.nodes.setdefault(n, ModelNode())
                node.reported, node.last_report, node.declared_dead = status, model.now, False
                return engine.report(key(n), status, model.now)
            case ("tick", float() as dt):
                model.tick(dt)
                return engine.expire(model.now)
            case ("declare_dead", int() as n) if self.known(n):
                model.nodes[n].declared_dead = True
                return engine.declare_dead(key(n))
            case ("mute_node", int() as n, bool() as muted) if self.known(n):
                model.nodes[n].muted = muted
                return engine.mute_node(key(n), muted)
            case ("mute_group", str() as group_id, bool() as muted) if group_id in model.groups:
                model.groups[group_id].muted = muted
                return engine.mute_group(group_id, muted)
            case ("join", int() as n, str() as group_id, ttl):
                assert ttl is None or isinstance(ttl, float)
                self.join(n, group_id, ttl)
            case ("leave", int() as n):
                self.leave(n)
            case ("create", str() as group_id, Quorum() as quorum) if group_id not in model.groups:
                model.groups[group_id] = ModelGroup(quorum)
                self.versions[group_id] = 0
                self.world.submit(CreateGroup(group_id, quorum))
            case ("replace", str() as group_id, tuple() as members, Quorum() as quorum):
                self.replace(group_id, members, quorum)
            case ("delete", str() as group_id) if group_id in model.groups:
                del model.groups[group_id]
                self.versions.pop(group_id, None)
                for n in [n for n, m in model.membership.items() if m[0] == group_id]:
                    del model.membership[n]
                self.world.submit(DeleteGroup(group_id))
            case ("quorum", str() as group_id, Quorum() as quorum) if group_id in model.groups:
                self.set_quorum(group_id, quorum)
        return None

    def leave(self, n: int) -> bool:
        member = self.model.membership.get(n)
        if member is None:
            return True
        group_id, temporary, _ = member
        rule = self.model.groups[group_id].quorum
        voters_after = len(self.model.voters(group_id)) - (not temporary)
        refused = rule.kind is QuorumKind.COUNT and rule.value > voters_after
        try:
            self.world.submit(RemoveMember(group_id, f"n{n}"))
        except ConfigError:
            assert refused
            return False
        assert not refused
        del self.model.membership[n]
        return True

    def join(self, n: int, group_id: str, ttl: float | None) -> None:
        if group_id not in self.model.groups or not self.leave(n):
            return
        role = NodeRole.WORKER if ttl is None else NodeRole.TEMPORARY
        expires = None if ttl is None else self.model.now + ttl
        self.model.nodes.setdefault(n, ModelNode())
        self.model.membership[n] = (group_id, ttl is not None, expires or 0.0)
        self.world.submit(AddMember(Member(group_id, f"n{n}", key(n), role, expires_at=expires)))

    def replace(
        self, group_id: str, members: tuple[tuple[int, float | None], ...], quorum: Quorum
    ) -> None:
        model = self.model
        wanted = {n: None if ttl is None else model.now + ttl for n, ttl in members}
        voters = sum(1 for expires in wanted.values() if expires is None)
        taken = any(n in model.membership and model.membership[n][0] != group_id for n in wanted)
        refused = taken or (quorum.kind is QuorumKind.COUNT and quorum.value > voters)
        version = self.versions.get(group_id, 0) + 1
        definition = tuple(
            Member(
                group_id,
                f"n{n}",
                key(n),
                NodeRole.WORKER if expires is None else NodeRole.TEMPORARY,
                expires_at=expires,
            )
            for n, expires in wanted.items()
        )
        try:
            self.world.submit(ReplaceGroup(group_id, quorum, definition, version))
        except ConfigError:
            assert refused
            return
        assert not refused
        self.versions[group_id] = version
        model.groups.setdefault(group_id, ModelGroup(quorum)).quorum = quorum
        for n in [n for n, m in model.membership.items() if m[0] == group_id and n not in wanted]:
            del model.membership[n]
        for n, expires in wanted.items():
            model.nodes.setdefault(n, ModelNode())
            model.membership[n] = (group_id, expires is not None, expires or 0.0)

    def set_quorum(self, group_id: str, quorum: Quorum) -> None:
        refused = quorum.kind is QuorumKind.COUNT and quorum.value > len(
            self.model.voters(group_id)
        )
        try:
            self.world.submit(SetQuorum(group_id, quorum))
        except ConfigError:
            assert refused
            return
        assert not refused
        self.model.groups[group_id].quorum = quorum

    def consume(self, event: StatusEvent) -> None:
        """Apply an event to what a consumer sees; it must start from what it saw."""
        assert event.old != event.new
        if isinstance(event, NodeStatusChanged):
            assert self.node_view.get(event.key) == event.old
            self.node_view[event.key] = event.new
            n = int.from_bytes(event.key, "big")
            stayed_quiet = n in self.quiet_before and self.model.node_quiet(n)
            assert event.old is None or not stayed_quiet
        else:
            assert self.group_view.get(event.group_id) == event.old
            self.group_view[event.group_id] = event.new

    def check(self) -> None:
        model, engine = self.model, self.engine
        for n, node in model.nodes.items():
            if not self.known(n):
                continue
            status = node.status(model.now)
            assert engine.node_status(key(n)) is status
            if not model.node_quiet(n):
                assert self.node_view[key(n)] is status
        for group_id, group in model.groups.items():
            expected = model.group_status(group_id)
            assert engine.group_status(group_id) is expected
            view = engine.group_view(group_id)
            # The incremental counters equal a full recount.
            recount = [engine.node_status(key(n)) for n in model.voters(group_id)]
            assert (view.healthy, view.broken, view.dead) == (
                recount.count(H),
                recount.count(B),
                recount.count(D),
            )
            assert view.quorum == model.quorum(group_id)
            if not group.muted:
                assert self.group_view[group_id] is expected
        for group_id in GROUPS:
            if group_id not in model.groups:
                assert engine.group_status(group_id) is None
                assert self.group_view.get(group_id) is None
        assert engine.next_deadline() == model.next_deadline()

    def check_round_trip(self) -> None:
        registry = GroupRegistry.restore(self.world.registry.export())
        data = self.engine.export()
        restored = HealthEngine.restore(
            registry, data, now=self.model.now, policy=TimeoutPolicy(fixed=TIMEOUT)
        )
        assert restored.export() == data
        assert registry.export() == self.world.registry.export()
        for n in self.model.nodes:
            assert restored.node_status(key(n)) is self.engine.node_status(key(n))
        for group_id in self.model.groups:
            assert restored.group_view(group_id) == self.engine.group_view(group_id)


# Start from populated groups so that short random sequences reach the interesting statuses.
PRELUDE: list[tuple[object, ...]] = [
    ("create", "a", Quorum.majority()),
    ("create", "b", Quorum.majority()),
    *(("join", n, "a", None) for n in (0, 1, 2)),
    *(("join", n, "b", None) for n in (3, 4)),
]


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(OPS, max_size=50))
def test_engine_matches_the_model(ops: list[tuple[object, ...]]) -> None:
    harness = Harness()
    for op in [*PRELUDE, *ops]:
        harness.run(op)
    harness.check_round_trip()
