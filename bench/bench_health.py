"""Health benchmark: engine cost per event and memory per node at 1k / 10k / 100k nodes.

    python bench/bench_health.py          # about 30-40 s on the 2-core reference machine

Each cost is printed next to an anchor measured in the same run on the same number of nodes:
the least any deadline tracker must do per event, a dict update plus a heapq push. The ratio is
what the engine's bookkeeping (learned intervals, group counters, mutes, events) costs on top.
Not a test: absolute numbers depend on the machine, the ratios much less.
"""

from __future__ import annotations

from collections.abc import Callable
import gc
import heapq
from pathlib import Path
import sys
import time
import tracemalloc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addon" / "src"))

from i4t_gateway.acl import AccessPolicy
from i4t_gateway.groups import (
    ConfigRequest,
    CreateGroup,
    GroupRegistry,
    Member,
)
from i4t_gateway.health import HealthEngine, NodeStatus
from i4t_gateway.timeouts import HISTORY_SIZE

SIZES = (1_000, 10_000, 100_000)
GROUP_SIZE = 10
INTERVAL = 10.0  # seconds between a node's reports
EVENTS = 200_000  # reports timed per size (bounded, whatever the size)
ADMIN = b"admin"


def node_key(n: int) -> bytes:
    """A 32-byte key, the size of an Ed25519 public key or a full address hash."""
    return n.to_bytes(32, "big")


def build(nodes: int) -> tuple[GroupRegistry, HealthEngine, float]:
    """Groups of GROUP_SIZE made through the config agent, every node with a full history."""
    registry = GroupRegistry()
    agent = registry.config_agent(lambda request: request.requester == ADMIN)
    for first in range(0, nodes, GROUP_SIZE):
        group_id = f"group-{first // GROUP_SIZE}"
        members = tuple(
            Member(group_id, f"node-{n}", node_key(n))
            for n in range(first, min(first + GROUP_SIZE, nodes))
        )
        agent.submit(ConfigRequest(ADMIN, CreateGroup(group_id, members=members)))
    engine = HealthEngine(registry)
    keys = [member.key for group in registry.groups() for member in group]
    now = 0.0
    for _ in range(HISTORY_SIZE + 1):
        for key in keys:
            engine.report(key, NodeStatus.HEALTHY, now)
        now += INTERVAL
    return registry, engine, now


def bytes_per_node(nodes: int) -> float:
    """Memory held by the registry and engine, per node, with every history full."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    registry, engine, _ = build(nodes)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del registry, engine
    return (after - before) / nodes


def per_call(calls: int, loop: Callable[[], None]) -> float:
    """Nanoseconds per call of a loop that makes ``calls`` calls (best of three)."""
    best = float("inf")
    for _ in range(3):
        gc.collect()  # start each run without a pending full collection of the build's garbage
        start = time.perf_counter_ns()
        loop()
        best = min(best, time.perf_counter_ns() - start)
    return best / calls


def anchor_ns(nodes: int) -> float:
    """A dict update plus a heapq push per event, over ``nodes`` keys."""
    keys = [node_key(n) for n in range(nodes)]
    timeline = [keys[i % nodes] for i in range(EVENTS)]

    def loop() -> None:
        last_heard: dict[bytes, float] = {}
        heap: list[tuple[float, bytes]] = []
        now = 0.0
        for key in timeline:
            now += 0.001
            last_heard[key] = now
            heapq.heappush(heap, (now + 30.0, key))

    return per_call(EVENTS, loop)


def report_ns(engine: HealthEngine, start: float, flip: bool) -> float:
    """The engine's cost per report; ``flip`` alternates HEALTHY and BROKEN (events galore)."""
    keys = engine.nodes()
    timeline = [keys[i % len(keys)] for i in range(EVENTS)]
    statuses = [NodeStatus.HEALTHY, NodeStatus.BROKEN] if flip else [NodeStatus.HEALTHY]
    clock = [start]

    def loop() -> None:
        now = clock[0]
        report = engine.report
        for i, key in enumerate(timeline):
            now += 0.001
            report(key, statuses[(i // len(keys) + 1) % len(statuses)], now)
        clock[0] = now + 1.0

    return per_call(EVENTS, loop)


def expire_ns(nodes: int) -> tuple[float, float]:
    """Cost per expired node (all die at once) and of one idle expire() call."""
    _, engine, now = build(nodes)
    gc.collect()
    idle_start = time.perf_counter_ns()
    for i in range(10_000):
        engine.expire(now + i * 0.0001)
    idle = (time.perf_counter_ns() - idle_start) / 10_000
    start = time.perf_counter_ns()
    events = engine.expire(now + 10_000.0)
    elapsed = time.perf_counter_ns() - start
    assert sum(1 for e in events if getattr(e, "key", None) is not None) == nodes
    return elapsed / nodes, idle


def may_send_ns(registry: GroupRegistry) -> tuple[float, float]:
    """ACL cost per check next to its anchor: two dict lookups and a comparison."""
    policy = AccessPolicy(registry)
    keys = [member.key for group in registry.groups() for member in group]
    pairs = [(keys[i % len(keys)], keys[(i * 7 + 3) % len(keys)]) for i in range(EVENTS)]
    group_of = {key: registry.group_of(key) for key in keys}

    def checked() -> None:
        may_send = policy.may_send
        for src, dst in pairs:
            may_send(src, dst)

    def anchor() -> None:
        for src, dst in pairs:
            _ = group_of.get(src) == group_of.get(dst)

    return per_call(EVENTS, checked), per_call(EVENTS, anchor)


def run() -> None:
    """Measure every size and print one table."""
    started = time.perf_counter()
    header = (
        f"{'nodes':>8} {'anchor ns':>10} {'report ns':>10} {'x':>5} {'flip ns':>8} {'x':>5}"
        f" {'expire ns':>10} {'x':>5} {'idle us':>8} {'acl ns':>7} {'x':>5} {'B/node':>7}"
    )
    print("health engine: cost per event vs anchor (dict update + heapq push), same run")
    print(header)
    worst_ns = worst_bytes = 0.0
    for nodes in SIZES:
        registry, engine, now = build(nodes)
        anchor = anchor_ns(nodes)
        steady = report_ns(engine, now, flip=False)
        flip = report_ns(engine, now + 1e6, flip=True)
        acl, acl_anchor = may_send_ns(registry)
        del registry, engine
        expired, idle = expire_ns(nodes)
        memory = bytes_per_node(nodes)
        print(
            f"{nodes:>8} {anchor:>10.0f} {steady:>10.0f} {steady / anchor:>5.1f} {flip:>8.0f}"
            f" {flip / anchor:>5.1f} {expired:>10.0f} {expired / anchor:>5.1f}"
            f" {idle / 1000:>8.2f} {acl:>7.0f} {acl / acl_anchor:>5.1f} {memory:>7.0f}"
        )
        worst_ns = max(worst_ns, steady, flip, expired)
        worst_bytes = max(worst_bytes, memory)
    print(
        "report: steady HEALTHY reports; flip: every report changes the node's status (node and"
        " group events);\nexpire: per node when all die in one expire(); idle: one expire() with"
        " nothing due;\nacl: may_send vs two dict lookups; B/node: registry + engine, 16-gap"
        f" history full, groups of {GROUP_SIZE}.\ntotal {time.perf_counter() - started:.1f} s"
    )
    sizes = "/".join(f"{n // 1000}k" for n in SIZES)
    for part, measured, met, target in (
        ("per event", f"{worst_ns / 1000:.1f} us", worst_ns < 50_000, "< 50 us"),
        ("memory per node", f"{worst_bytes:.0f} B", worst_bytes < 1024, "< 1 KB"),
    ):
        verdict = "met" if met else "NOT met"
        what = f"health engine {part}, worst of {sizes} nodes"
        print(f"goal | {what} | {measured} | {target} | {verdict}")


if __name__ == "__main__":
    run()
