"""Node groups: quorum rules, membership invariants, the configuration agent, persistence."""

from __future__ import annotations

from fractions import Fraction
import math

from hypothesis import given, strategies as st
import pytest

from i4t_gateway.groups import (
    AddMember,
    ConfigAgent,
    ConfigError,
    ConfigRequest,
    CreateGroup,
    DeleteGroup,
    Group,
    GroupRegistry,
    Member,
    NodeClass,
    NodeRole,
    NotAuthorizedError,
    Quorum,
    QuorumKind,
    RemoveMember,
    ReplaceGroup,
    SetQuorum,
)

ADMIN = b"\x01" * 16
INTRUDER = b"\x02" * 16


def key(n: int) -> bytes:
    return n.to_bytes(16, "big")


def member(group: str, n: int, role: NodeRole = NodeRole.WORKER, **kw: object) -> Member:
    expires = kw.pop("expires_at", 100.0 if role is NodeRole.TEMPORARY else None)
    return Member(group, f"node-{n}", key(n), role, expires_at=expires, **kw)  # type: ignore[arg-type]


def admin_only(request: ConfigRequest) -> bool:
    return request.requester == ADMIN


def setup() -> tuple[GroupRegistry, ConfigAgent]:
    registry = GroupRegistry()
    return registry, registry.config_agent(admin_only)


def submit(agent: ConfigAgent, operation: object) -> None:
    agent.submit(ConfigRequest(ADMIN, operation))  # type: ignore[arg-type]


class Recorder:
    """A MembershipListener that writes down what it hears."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def group_added(self, group: Group) -> None:
        self.calls.append(("group_added", f"{group.group_id}:{len(group)}"))

    def group_removed(self, group: Group) -> None:
        self.calls.append(("group_removed", f"{group.group_id}:{len(group)}"))

    def quorum_changed(self, group: Group) -> None:
        self.calls.append(("quorum_changed", group.group_id))

    def member_added(self, member: Member) -> None:
        self.calls.append(("member_added", member.node_id))

    def member_removed(self, member: Member) -> None:
        self.calls.append(("member_removed", member.node_id))

    def member_changed(self, old: Member, new: Member) -> None:
        self.calls.append(("member_changed", f"{old.node_id}>{new.node_id}"))


# Quorum


@pytest.mark.parametrize(("voters", "size"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_majority(voters: int, size: int) -> None:
    assert Quorum.majority().size(voters) == size


def test_fixed_and_percent() -> None:
    assert Quorum.fixed(2).size(10) == 2
    assert Quorum.percent(100).size(7) == 7
    assert Quorum.percent(50).size(4) == 2  # "at least half", unlike the strict majority
    assert Quorum.percent(70).size(10) == 7  # exact: no float rounding up to 8
    assert Quorum.percent(1).size(0) == 1


@given(
    voters=st.integers(min_value=0, max_value=10_000), pct=st.integers(min_value=1, max_value=100)
)
def test_percent_is_an_exact_ceiling(voters: int, pct: int) -> None:
    assert Quorum.percent(pct).size(voters) == max(1, math.ceil(Fraction(voters * pct, 100)))


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (QuorumKind.MAJORITY, 2),
        (QuorumKind.COUNT, 0),
        (QuorumKind.PERCENT, 0),
        (QuorumKind.PERCENT, 101),
    ],
)
def test_quorum_rejects_nonsense(kind: QuorumKind, value: int) -> None:
    with pytest.raises(ValueError, match="quorum"):
        Quorum(kind, value)


# Members


def test_member_rules() -> None:
    assert member("g", 1).votes
    assert member("g", 1, NodeRole.SEED).votes
    assert not member("g", 1, NodeRole.TEMPORARY).votes
    with pytest.raises(ValueError, match="expiry"):
        Member("g", "n", key(1), NodeRole.TEMPORARY)
    with pytest.raises(ValueError, match="expiry"):
        Member("g", "n", key(1), NodeRole.WORKER, expires_at=5.0)
    with pytest.raises(ValueError, match="node id"):
        Member("g", "", key(1))
    with pytest.raises(ValueError, match="key"):
        Member("g", "n", b"")


# The configuration agent


def test_only_one_agent_and_only_authorised_requests() -> None:
    registry, agent = setup()
    with pytest.raises(ConfigError):
        registry.config_agent(lambda _request: True)
    with pytest.raises(NotAuthorizedError):
        agent.submit(ConfigRequest(INTRUDER, CreateGroup("g")))
    assert registry.groups() == []


def test_registry_refuses_a_forged_token() -> None:
    registry, _agent = setup()
    with pytest.raises(NotAuthorizedError):
        registry._apply(object(), CreateGroup("g"))
    fresh = GroupRegistry()
    with pytest.raises(NotAuthorizedError):
        fresh._apply(None, CreateGroup("g"))


def test_create_edit_delete() -> None:
    registry, agent = setup()
    submit(agent, CreateGroup("g", Quorum.majority(), (member("g", 1), member("g", 2))))
    group = registry.group("g")
    assert group is not None
    assert len(group) == 2
    assert group.voters == 2
    assert registry.group_of(key(1)) == "g"
    submit(agent, AddMember(member("g", 3, NodeRole.SEED, node_class=NodeClass.PAYMENT)))
    assert group.voters == 3
    membership = registry.membership(key(3))
    assert membership is not None
    assert membership.node_class is NodeClass.PAYMENT
    submit(agent, RemoveMember("g", "node-1"))
    assert registry.group_of(key(1)) is None
    submit(agent, SetQuorum("g", Quorum.fixed(2)))
    assert group.quorum == Quorum.fixed(2)
    submit(agent, DeleteGroup("g"))
    assert registry.group("g") is None
    assert registry.group_of(key(2)) is None


@pytest.mark.parametrize(
    "operation",
    [
        CreateGroup("g"),  # exists already
        CreateGroup(""),
        CreateGroup("h", members=(member("g", 9),)),  # member names another group
        CreateGroup("h", members=(member("h", 9), member("h", 9))),  # duplicate within request
        CreateGroup("h", members=(member("h", 1),)),  # key already in g
        CreateGroup("h", Quorum.fixed(2), (member("h", 9),)),  # quorum above voters
        AddMember(member("nope", 5)),
        AddMember(Member("g", "node-1", key(99))),  # node id taken
        AddMember(member("g", 1)),  # key taken
        RemoveMember("g", "node-7"),
        RemoveMember("nope", "node-1"),
        SetQuorum("g", Quorum.fixed(3)),
        DeleteGroup("nope"),
    ],
)
def test_invalid_changes_change_nothing(operation: object) -> None:
    registry, agent = setup()
    submit(agent, CreateGroup("g", members=(member("g", 1), member("g", 2))))
    before = registry.export()
    with pytest.raises(ConfigError):
        submit(agent, operation)
    assert registry.export() == before


def test_removal_below_a_fixed_quorum_is_refused() -> None:
    registry, agent = setup()
    submit(agent, CreateGroup("g", Quorum.fixed(2), (member("g", 1), member("g", 2))))
    with pytest.raises(ConfigError):
        submit(agent, RemoveMember("g", "node-1"))
    # A temporary member does not vote, so it can always leave.
    submit(agent, AddMember(member("g", 3, NodeRole.TEMPORARY)))
    submit(agent, RemoveMember("g", "node-3"))
    assert registry.group_of(key(3)) is None


def test_listeners_hear_every_change() -> None:
    registry, agent = setup()
    recorder = Recorder()
    registry.add_listener(recorder)
    submit(agent, CreateGroup("g", members=(member("g", 1), member("g", 2))))
    submit(agent, AddMember(member("g", 3)))
    submit(agent, SetQuorum("g", Quorum.percent(100)))
    submit(agent, RemoveMember("g", "node-3"))
    submit(agent, DeleteGroup("g"))
    assert recorder.calls == [
        ("group_added", "g:2"),
        ("member_added", "node-3"),
        ("quorum_changed", "g"),
        ("member_removed", "node-3"),
        ("group_removed", "g:2"),
    ]


# Temporary members


def test_temporary_members_expire() -> None:
    registry, agent = setup()
    submit(agent, CreateGroup("g", members=(member("g", 1),)))
    submit(agent, AddMember(member("g", 2, NodeRole.TEMPORARY, expires_at=50.0)))
    submit(agent, AddMember(member("g", 3, NodeRole.TEMPORARY, expires_at=80.0)))
    assert registry.next_expiry() == 50.0
    assert registry.group_of(key(2), now=49.9) == "g"
    assert registry.group_of(key(2), now=50.0) is None  # overdue, even before expire()
    assert registry.expire(49.0) == []
    assert [m.node_id for m in registry.expire(60.0)] == ["node-2"]
    assert registry.group_of(key(2)) is None
    # Removed by the agent first: its expiry entry is stale and skipped.
    submit(agent, RemoveMember("g", "node-3"))
    assert registry.next_expiry() is None
    assert registry.expire(100.0) == []


def test_a_readded_key_keeps_only_its_new_expiry() -> None:
    registry, agent = setup()
    submit(agent, CreateGroup("g"))
    submit(agent, AddMember(member("g", 2, NodeRole.TEMPORARY, expires_at=10.0)))
    submit(agent, RemoveMember("g", "node-2"))
    submit(agent, AddMember(member("g", 2, NodeRole.TEMPORARY, expires_at=30.0)))
    assert registry.expire(20.0) == []
    assert registry.group_of(key(2)) == "g"
    assert len(registry.expire(30.0)) == 1


# Persistence


def test_round_trip() -> None:
    registry, agent = setup()
    submit(agent, CreateGroup("a", Quorum.percent(75), (member("a", 1, NodeRole.SEED),)))
    submit(agent, AddMember(member("a", 2, NodeRole.TEMPORARY, expires_at=12.5)))
    submit(
        agent, CreateGroup("b", Quorum.fixed(1), (member("b", 3, node_class=NodeClass.PAYMENT),))
    )
    submit(agent, CreateGroup("empty"))
    data = registry.export()
    restored = GroupRegistry.restore(data)
    assert restored.export() == data
    assert restored.group_of(key(3)) == "b"
    assert restored.next_expiry() == 12.5
    # A restored registry still has exactly one agent to issue.
    restored_agent = restored.config_agent(admin_only)
    submit(restored_agent, DeleteGroup("empty"))
    with pytest.raises(ConfigError):
        restored.config_agent(admin_only)


# Replacing a whole group (the group_config packet)


def test_replace_creates_then_diffs() -> None:
    registry, agent = setup()
    recorder = Recorder()
    registry.add_listener(recorder)
    first = (member("g", 1), member("g", 2), member("g", 3))
    submit(agent, ReplaceGroup("g", Quorum.majority(), first, version=1))
    group = registry.group("g")
    assert group is not None
    assert group.version == 1
    # node 2 stays as it is, node 1 becomes a seed, node 3 leaves, node 4 joins.
    second = (member("g", 1, NodeRole.SEED), member("g", 2), member("g", 4))
    submit(agent, ReplaceGroup("g", Quorum.percent(100), second, version=2))
    assert recorder.calls == [
        ("group_added", "g:3"),
        ("member_removed", "node-3"),
        ("quorum_changed", "g"),
        ("member_changed", "node-1>node-1"),
        ("member_added", "node-4"),
    ]
    assert sorted(m.node_id for m in group) == ["node-1", "node-2", "node-4"]
    assert group.quorum == Quorum.percent(100)
    assert group.version == 2


def test_replace_lets_keys_change_and_swap_node_ids() -> None:
    registry, agent = setup()
    first = (Member("g", "a", key(1)), Member("g", "b", key(2)))
    submit(agent, ReplaceGroup("g", Quorum.majority(), first, version=1))
    swapped = (Member("g", "b", key(1)), Member("g", "a", key(2)))
    submit(agent, ReplaceGroup("g", Quorum.majority(), swapped, version=2))
    assert registry.membership(key(1)) == swapped[0]
    assert registry.membership(key(2)) == swapped[1]
    group = registry.group("g")
    assert group is not None
    assert group.member("a") == swapped[1]


def test_replace_keeps_a_temporary_expiry_only_if_still_temporary() -> None:
    registry, agent = setup()
    visitor = member("g", 1, NodeRole.TEMPORARY, expires_at=10.0)
    submit(agent, ReplaceGroup("g", Quorum.majority(), (visitor,), version=1))
    submit(agent, ReplaceGroup("g", Quorum.majority(), (member("g", 1),), version=2))
    assert registry.expire(20.0) == []  # promoted to worker: the old expiry is void
    assert registry.group_of(key(1)) == "g"


@pytest.mark.parametrize(
    "operation",
    [
        ReplaceGroup("g", Quorum.majority(), (member("g", 1),), version=1),  # not newer
        ReplaceGroup("g", Quorum.majority(), (member("g", 5),), version=0),  # older
        ReplaceGroup("g", Quorum.majority(), (member("g", 7),), version=2),  # key 7 is in h
        ReplaceGroup("g", Quorum.fixed(2), (member("g", 1),), version=2),  # quorum > voters
        ReplaceGroup("g", Quorum.majority(), (member("g", 1), member("g", 1)), version=2),
        ReplaceGroup("g", Quorum.majority(), (member("h", 1),), version=2),  # names h
    ],
)
def test_invalid_replacements_change_nothing(operation: ReplaceGroup) -> None:
    registry, agent = setup()
    submit(agent, ReplaceGroup("g", Quorum.majority(), (member("g", 1),), version=1))
    submit(agent, CreateGroup("h", members=(member("h", 7),)))
    before = registry.export()
    with pytest.raises(ConfigError):
        submit(agent, operation)
    assert registry.export() == before


def test_version_survives_a_round_trip() -> None:
    registry, agent = setup()
    submit(agent, ReplaceGroup("g", Quorum.majority(), (member("g", 1),), version=7))
    restored = GroupRegistry.restore(registry.export())
    group = restored.group("g")
    assert group is not None
    assert group.version == 7
