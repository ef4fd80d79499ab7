"""Access control over keys and groups of keys: deny wins, groups are closed by default."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
import pytest

from i4t_gateway.acl import (
    AccessPolicy,
    AddRule,
    Effect,
    RemoveRule,
    Rule,
    Selector,
    SelectorKind,
)
from i4t_gateway.groups import (
    AddMember,
    ConfigAgent,
    ConfigError,
    ConfigRequest,
    CreateGroup,
    GroupRegistry,
    Member,
    NodeRole,
    NotAuthorizedError,
)

ADMIN = b"admin"
GATEWAY = b"gateway"


def key(n: int) -> bytes:
    return bytes([n]) * 4


class Config:
    """A registry with its agent, and groups made through it."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.registry = GroupRegistry()
        self.agent: ConfigAgent = self.registry.config_agent(lambda r: r.requester == ADMIN)
        for group_id, nodes in groups.items():
            members = tuple(Member(group_id, f"n{n}", key(n)) for n in nodes)
            self.submit(CreateGroup(group_id, members=members))

    def submit(self, operation: object) -> None:
        self.agent.submit(ConfigRequest(ADMIN, operation))  # type: ignore[arg-type]


@pytest.fixture
def config() -> Config:
    return Config({"lights": [1, 2], "locks": [3, 4]})


def test_groups_are_closed_by_default(config: Config) -> None:
    registry = config.registry
    policy = AccessPolicy(registry)
    assert policy.may_send(key(1), key(2))
    assert policy.may_send(key(3), key(4))
    assert not policy.may_send(key(1), key(3))
    assert not policy.may_send(key(3), key(1))
    # Keys in no group reach nobody, themselves included, without a rule.
    assert not policy.may_send(key(9), key(1))
    assert not policy.may_send(key(9), key(9))


def test_allow_by_group_and_by_key(config: Config) -> None:
    registry = config.registry
    policy = AccessPolicy(registry, [Rule.allow(Selector.group("lights"), Selector.key(key(3)))])
    assert policy.may_send(key(1), key(3))
    assert policy.may_send(key(2), key(3))
    assert not policy.may_send(key(1), key(4))
    assert not policy.may_send(key(3), key(1))  # rules have a direction


def test_the_gateway_may_talk_to_everyone(config: Config) -> None:
    registry = config.registry
    policy = AccessPolicy(
        registry,
        [
            Rule.allow(Selector.key(GATEWAY), Selector.any()),
            Rule.allow(Selector.any(), Selector.key(GATEWAY)),
        ],
    )
    assert all(policy.may_send(GATEWAY, key(n)) for n in (1, 3, 9))
    assert all(policy.may_send(key(n), GATEWAY) for n in (1, 3, 9))
    assert not policy.may_send(key(1), key(3))


def test_deny_wins_over_allow_and_over_membership(config: Config) -> None:
    registry = config.registry
    policy = AccessPolicy(
        registry,
        [
            Rule.allow(Selector.any(), Selector.any()),
            Rule.deny(Selector.key(key(2)), Selector.group("lights")),
        ],
    )
    assert policy.may_send(key(1), key(3))
    assert not policy.may_send(key(2), key(1))  # same group, but denied
    assert policy.may_send(key(2), key(3))
    config.submit(AddRule(Rule.deny(Selector.any(), Selector.key(key(4)))))
    assert not policy.may_send(key(3), key(4))


def test_remove_rules(config: Config) -> None:
    registry = config.registry
    allow = Rule.allow(Selector.group("lights"), Selector.group("locks"))
    deny = Rule.deny(Selector.key(key(1)), Selector.any())
    policy = AccessPolicy(registry, [allow, deny, deny])
    assert len(policy.rules()) == 2
    assert not policy.may_send(key(1), key(3))
    config.submit(RemoveRule(deny))
    assert policy.may_send(key(1), key(3))
    config.submit(RemoveRule(allow))
    assert not policy.may_send(key(1), key(3))
    with pytest.raises(ConfigError, match="no such rule"):
        config.submit(RemoveRule(allow))


def test_rules_change_only_through_the_agent(config: Config) -> None:
    registry = config.registry
    policy = AccessPolicy(registry)
    rule = Rule.allow(Selector.any(), Selector.any())
    with pytest.raises(NotAuthorizedError):
        config.agent.submit(ConfigRequest(b"stranger", AddRule(rule)))
    assert policy.rules() == []
    # A second policy cannot hijack the rule operations of the same registry.
    with pytest.raises(ConfigError, match="already has a handler"):
        AccessPolicy(registry)
    config.submit(AddRule(rule))
    config.submit(AddRule(rule))
    assert policy.rules() == [rule]


def test_temporary_members_lose_access_when_they_expire() -> None:
    registry = GroupRegistry()
    agent = registry.config_agent(lambda _r: True)
    agent.submit(ConfigRequest(ADMIN, CreateGroup("g", members=(Member("g", "n1", key(1)),))))
    visitor = Member("g", "v", key(7), NodeRole.TEMPORARY, expires_at=100.0)
    agent.submit(ConfigRequest(ADMIN, AddMember(visitor)))
    policy = AccessPolicy(registry)
    assert policy.may_send(key(7), key(1), now=99.0)
    assert not policy.may_send(key(7), key(1), now=100.0)  # even before expire() ran
    registry.expire(100.0)
    assert not policy.may_send(key(7), key(1))


def test_membership_changes_apply_at_once() -> None:
    registry = GroupRegistry()
    agent = registry.config_agent(lambda _r: True)
    agent.submit(ConfigRequest(ADMIN, CreateGroup("g", members=(Member("g", "n1", key(1)),))))
    policy = AccessPolicy(registry)
    assert not policy.may_send(key(1), key(2))
    agent.submit(ConfigRequest(ADMIN, AddMember(Member("g", "n2", key(2)))))
    assert policy.may_send(key(1), key(2))


def test_selector_validation() -> None:
    with pytest.raises(ValueError, match="key selector"):
        Selector(SelectorKind.KEY, "not bytes")
    with pytest.raises(ValueError, match="group selector"):
        Selector(SelectorKind.GROUP, b"")
    with pytest.raises(ValueError, match="any selector"):
        Selector(SelectorKind.ANY, b"x")


def test_round_trip(config: Config) -> None:
    registry = config.registry
    rules = [
        Rule.allow(Selector.group("lights"), Selector.key(key(3))),
        Rule.deny(Selector.key(key(2)), Selector.any()),
        Rule.allow(Selector.any(), Selector.group("locks")),
    ]
    policy = AccessPolicy(registry, rules)
    data = policy.export()
    restored = AccessPolicy.restore(GroupRegistry.restore(registry.export()), data)
    assert set(restored.rules()) == set(rules)
    assert restored.export() == data


# Property test: the indexed policy against a naive scan of every rule

KEYS = [key(n) for n in range(6)]
GROUP_OF = {KEYS[0]: "a", KEYS[1]: "a", KEYS[2]: "b", KEYS[3]: "b", KEYS[4]: "c"}
SELECTORS = st.one_of(
    st.sampled_from(KEYS).map(Selector.key),
    st.sampled_from(["a", "b", "c", "z"]).map(Selector.group),
    st.just(Selector.any()),
)
RULES = st.builds(Rule, st.sampled_from(list(Effect)), SELECTORS, SELECTORS)


def naive_matches(selector: Selector, k: bytes) -> bool:
    if selector.kind is SelectorKind.ANY:
        return True
    if selector.kind is SelectorKind.KEY:
        return selector.value == k
    return GROUP_OF.get(k) == selector.value


def naive_may_send(rules: list[Rule], src: bytes, dst: bytes) -> bool:
    matching = [r for r in rules if naive_matches(r.src, src) and naive_matches(r.dst, dst)]
    if any(r.effect is Effect.DENY for r in matching):
        return False
    same_group = GROUP_OF.get(src) is not None and GROUP_OF.get(src) == GROUP_OF.get(dst)
    return same_group or any(r.effect is Effect.ALLOW for r in matching)


@settings(max_examples=200)
@given(rules=st.lists(RULES, max_size=8), removed=st.lists(st.integers(0, 7), max_size=3))
def test_policy_matches_a_naive_scan(rules: list[Rule], removed: list[int]) -> None:
    groups: dict[str, list[int]] = {}
    for n, k in enumerate(KEYS):
        if k in GROUP_OF:
            groups.setdefault(GROUP_OF[k], []).append(n)
    config = Config(groups)
    policy = AccessPolicy(config.registry, rules)
    kept = list(dict.fromkeys(rules))
    for index in removed:
        if index < len(kept):
            config.submit(RemoveRule(kept.pop(index)))
    for src in KEYS:
        for dst in KEYS:
            assert policy.may_send(src, dst) == naive_may_send(kept, src, dst)
