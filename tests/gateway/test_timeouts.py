"""Learned timeouts and the deadline queue, with a controllable clock (plain floats)."""

from __future__ import annotations

import math

from hypothesis import given, settings, strategies as st
import pytest

from i4t_gateway.groups import GroupRegistry
from i4t_gateway.health import HealthEngine, NodeStatus, NodeStatusChanged
from i4t_gateway.timeouts import (
    HISTORY_SIZE,
    DeadlineQueue,
    IntervalLearner,
    TimeoutPolicy,
    export_policy,
    restore_policy,
)


class Item:
    """A minimal Scheduled item."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = name.encode()
        self.deadline = math.inf
        self.queued = math.inf

    def __repr__(self) -> str:
        return f"Item({self.name}, {self.deadline})"


# TimeoutPolicy


def test_policy_defaults_are_the_documented_numbers() -> None:
    policy = TimeoutPolicy()
    assert (policy.factor, policy.floor, policy.ceiling, policy.fallback) == (
        3.0,
        30.0,
        86_400.0,
        900.0,
    )
    assert policy.learn_after == HISTORY_SIZE == 16
    assert policy.fixed is None


def test_policy_uses_fallback_until_learned() -> None:
    policy = TimeoutPolicy()
    assert policy.timeout_for(None, 0) == 900.0
    # While learning the fallback is a minimum: a 10 s node is not judged on 3 gaps.
    assert policy.timeout_for(10.0, 3) == 900.0
    # ...but a slow node's provisional timeout can exceed it.
    assert policy.timeout_for(600.0, 3) == 1800.0


def test_policy_learned_timeout_is_clamped() -> None:
    policy = TimeoutPolicy()
    assert policy.timeout_for(60.0, 16) == 180.0
    assert policy.timeout_for(2.0, 16) == 30.0  # floor
    assert policy.timeout_for(50_000.0, 16) == 86_400.0  # ceiling
    assert policy.timeout_for(50_000.0, 2) == 86_400.0  # ceiling applies while learning too


def test_policy_fixed_overrides_learning() -> None:
    assert TimeoutPolicy(fixed=42.0).timeout_for(1000.0, 16) == 42.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"floor": 0},
        {"floor": 10, "ceiling": 5},
        {"factor": 0.5},
        {"learn_after": 0},
        {"learn_after": 17},
        {"fallback": 0},
        {"fixed": -1.0},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"floor|factor|learn_after|positive"):
        TimeoutPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_round_trip() -> None:
    policy = TimeoutPolicy(factor=2.0, floor=5.0, ceiling=600.0, fallback=60.0, learn_after=4)
    assert restore_policy(export_policy(policy)) == policy
    fixed = TimeoutPolicy(fixed=12.5)
    assert restore_policy(export_policy(fixed)) == fixed


# IntervalLearner


def test_learner_first_report_records_no_gap() -> None:
    learner = IntervalLearner()
    learner.heard(100.0)
    assert learner.last_heard == 100.0
    assert learner.largest_gap() is None
    assert learner.gaps() == []


def test_learner_keeps_the_last_sixteen_gaps() -> None:
    learner = IntervalLearner()
    now = 0.0
    learner.heard(now)
    gaps = [float(g) for g in range(1, 21)]
    for gap in gaps:
        now += gap
        learner.heard(now)
    assert learner.gaps_seen == HISTORY_SIZE
    assert learner.gaps() == gaps[-HISTORY_SIZE:]
    assert learner.largest_gap() == 20.0


def test_learner_forgets_an_old_large_gap() -> None:
    learner = IntervalLearner()
    now = 0.0
    learner.heard(now)
    for gap in [500.0] + [10.0] * HISTORY_SIZE:
        now += gap
        learner.heard(now)
    assert learner.largest_gap() == 10.0


def test_learner_caps_a_gap_and_ignores_reordered_reports() -> None:
    learner = IntervalLearner()
    learner.heard(0.0)
    learner.heard(10_000.0, gap_cap=90.0)
    assert learner.gaps() == [90.0]
    learner.heard(9_000.0)  # earlier than the last report
    assert learner.gaps() == [90.0]
    assert learner.last_heard == 10_000.0
    learner.heard(10_000.0)  # same instant: no zero gap
    assert learner.gaps() == [90.0]


def test_learner_round_trip_and_validation() -> None:
    learner = IntervalLearner.restore([1.0, 2.0, 3.0])
    assert learner.export() == [1.0, 2.0, 3.0]
    assert learner.last_heard is None
    many = [float(i) for i in range(1, 40)]
    assert IntervalLearner.restore(many).export() == many[-HISTORY_SIZE:]
    with pytest.raises(ValueError, match="invalid gap"):
        IntervalLearner.restore([1.0, -2.0])
    with pytest.raises(ValueError, match="invalid gap"):
        IntervalLearner.restore([math.nan])


@given(
    gaps=st.lists(st.integers(min_value=1, max_value=200_000), min_size=0, max_size=40),
    learn_after=st.integers(min_value=1, max_value=16),
)
def test_learned_timeout_matches_the_formula(gaps: list[int], learn_after: int) -> None:
    policy = TimeoutPolicy(learn_after=learn_after)
    learner = IntervalLearner()
    now = 0.0
    learner.heard(now)
    for gap in gaps:
        now += gap
        learner.heard(now)
    window = gaps[-16:]
    if not window:
        expected = 900.0
    elif len(window) < learn_after:
        expected = min(max(3.0 * max(window), 900.0), 86_400.0)
    else:
        expected = min(max(3.0 * max(window), 30.0), 86_400.0)
    assert policy.timeout_for(learner.largest_gap(), learner.gaps_seen) == expected


# DeadlineQueue


def test_queue_pops_due_items_in_order() -> None:
    queue: DeadlineQueue[Item] = DeadlineQueue()
    items = [Item(str(i)) for i in range(5)]
    for item, deadline in zip(items, [50.0, 10.0, 30.0, 20.0, 40.0], strict=True):
        item.deadline = deadline
        queue.schedule(item)
    assert queue.next_deadline() == 10.0
    assert [i.name for i in queue.pop_expired(30.0)] == ["1", "3", "2"]
    assert len(queue) == 2
    assert queue.next_deadline() == 40.0


def test_queue_postpones_lazily() -> None:
    queue: DeadlineQueue[Item] = DeadlineQueue()
    item = Item("a")
    item.deadline = 10.0
    queue.schedule(item)
    for later in (20.0, 30.0, 40.0):
        item.deadline = later
        queue.schedule(item)
    # Moving a deadline later pushes nothing.
    assert queue.heap_size == 1
    assert queue.pop_expired(35.0) == []
    assert queue.next_deadline() == 40.0
    assert queue.pop_expired(40.0) == [item]
    assert queue.next_deadline() is None


def test_queue_moves_earlier_and_cancels() -> None:
    queue: DeadlineQueue[Item] = DeadlineQueue()
    a, b = Item("a"), Item("b")
    a.deadline, b.deadline = 100.0, 50.0
    queue.schedule(a)
    queue.schedule(b)
    a.deadline = 10.0
    queue.schedule(a)
    assert queue.next_deadline() == 10.0
    queue.cancel(a)
    assert queue.next_deadline() == 50.0
    assert queue.pop_expired(1000.0) == [b]
    assert len(queue) == 0


def test_queue_compacts_stale_entries() -> None:
    queue: DeadlineQueue[Item] = DeadlineQueue()
    item = Item("a")
    for deadline in range(10_000, 0, -1):
        item.deadline = float(deadline)
        queue.schedule(item)
    assert queue.heap_size <= len(queue) + len(queue) // 2 + 65
    assert queue.pop_expired(1.0) == [item]


@settings(max_examples=150)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["set", "cancel", "pop", "peek"]),
            st.integers(min_value=0, max_value=7),
            st.integers(min_value=0, max_value=100),
        ),
        max_size=80,
    )
)
def test_queue_matches_a_plain_dict(ops: list[tuple[str, int, int]]) -> None:
    """Model: a dict of deadlines; due items are found by scanning it."""
    queue: DeadlineQueue[Item] = DeadlineQueue()
    items = [Item(str(i)) for i in range(8)]
    model: dict[int, float] = {}
    now = 0.0
    for op, index, value in ops:
        item = items[index]
        if op == "set":
            item.deadline = now + value
            queue.schedule(item)
            model[index] = now + value
        elif op == "cancel":
            queue.cancel(item)
            model.pop(index, None)
        elif op == "pop":
            now += value
            due = sorted((d, i) for i, d in model.items() if d <= now)
            popped = queue.pop_expired(now)
            assert sorted(items.index(p) for p in popped) == sorted(i for _, i in due)
            assert [p.deadline for p in popped] == sorted(p.deadline for p in popped)
            for _, i in due:
                del model[i]
        else:
            expected = min(model.values()) if model else None
            assert queue.next_deadline() == expected
        assert len(queue) == len(model)


# The engine's DEAD decisions against a model of the documented formula (docs/HEALTH.md §3)


def documented_timeout(gaps: list[float]) -> float:
    window = gaps[-16:]
    if not window:
        return 900.0
    provisional = 3.0 * max(window)
    if len(window) < 16:
        return min(max(provisional, 900.0), 86_400.0)
    return min(max(provisional, 30.0), 86_400.0)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(min_value=1, max_value=40_000), st.booleans()),
        min_size=1,
        max_size=50,
    )
)
def test_engine_declares_dead_by_the_documented_timeout(steps: list[tuple[int, bool]]) -> None:
    registry = GroupRegistry()
    engine = HealthEngine(registry)
    node = b"node"
    now = 0.0
    engine.report(node, NodeStatus.HEALTHY, now)
    gaps: list[float] = []
    for gap, check_first in steps:
        timeout = documented_timeout(gaps)
        assert engine.node_view(node).timeout == timeout
        assert engine.next_deadline() == now + timeout
        report_at = now + gap
        declared = False
        if check_first:
            events = engine.expire(report_at)
            declared = now + timeout <= report_at
            assert events == (
                [NodeStatusChanged(node, NodeStatus.HEALTHY, NodeStatus.DEAD)] if declared else []
            )
        engine.report(node, NodeStatus.HEALTHY, report_at)
        # An outage the engine noticed is recorded as the timeout that was in force.
        gaps.append(min(gap, timeout) if declared else float(gap))
        now = report_at
    assert engine.node_view(node).gaps_seen == min(len(gaps), 16)


def test_engine_heap_stays_bounded_while_timeouts_shrink() -> None:
    """Learning shortens timeouts (900 s to 30 s): stale entries must not pile up."""
    engine = HealthEngine(GroupRegistry())
    keys = [n.to_bytes(4, "big") for n in range(500)]
    now = 0.0
    for _ in range(40):
        for node in keys:
            engine.report(node, NodeStatus.HEALTHY, now)
        now += 10.0
    queue = engine._deadlines
    assert len(queue) == len(keys)
    assert queue.heap_size <= len(keys) + len(keys) // 2 + 64
    assert engine.next_deadline() == now - 10.0 + 30.0
