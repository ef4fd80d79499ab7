"""What each admitted gateway uses at a router: accounting, rate limits and the cost share.

Per gateway (keyed by its address text, the ``<gateway id>`` of its topics) the router counts
packets and bytes in and out, packets dropped for being over the token's limits, and the
**connected time**: the router cannot see broker sessions (they end on Mosquitto), so a gateway
counts as connected from one packet to the next when they are at most ``session_gap`` seconds
apart. A connected gateway always has traffic that often, because it announces its addresses
every ``announce_seconds`` (the router sets the gap a little above that interval).

Limits come from the gateway's token (tokens.TokenLimits): packets per second and bytes per
second in are token buckets checked before a packet is even verified (over the limit: dropped,
counted, not acked, so the gateway's durable queue sends it again later: back-pressure, not
loss); bytes per second out hold packets back in the router's queue until the bucket refills.

The cost per thing-month (docs/ROUTER.md, accounting) is the operator's monthly cost divided by
the things the region serves; a gateway's share is its things times that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from .tokens import Admission, TokenLimits

BURST_SECONDS: Final = 1.0
"""A bucket holds this many seconds of its rate, so a gateway may burst that much."""
MIN_BYTE_BURST: Final = 16_384
"""At least one packet of the largest size (PROTOCOL §2.2) always fits a byte bucket."""


@dataclass(slots=True)
class Bucket:
    """A token bucket: ``rate`` units a second, holding at most ``capacity``."""

    rate: float
    capacity: float
    tokens: float = -1.0
    updated: float = 0.0

    def refill(self, now: float) -> None:
        if self.tokens < 0:  # first use: full
            self.tokens, self.updated = self.capacity, now
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now

    def take(self, amount: float, now: float) -> bool:
        self.refill(now)
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


@dataclass(slots=True)
class _Budget:
    limits: TokenLimits
    packets_in: Bucket
    bytes_in: Bucket
    bytes_out: Bucket

    @classmethod
    def of(cls, limits: TokenLimits) -> _Budget:
        return cls(
            limits,
            _bucket(limits.packets_per_second, 1.0),
            _bucket(limits.bytes_in_per_second, MIN_BYTE_BURST),
            _bucket(limits.bytes_out_per_second, MIN_BYTE_BURST),
        )


def _bucket(rate: int, minimum: float) -> Bucket:
    return Bucket(float(rate), max(minimum, rate * BURST_SECONDS))


@dataclass(slots=True)
class GatewayUsage:
    """The counters of one gateway; ``export()`` is JSON-ready and ``restore`` reads it back."""

    token_id: str | None = None
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    dropped_over_limit: int = 0
    held_back_out: int = 0
    connected_seconds: float = 0.0
    last_heard: float | None = None

    def heard(self, now: float, session_gap: float) -> None:
        if self.last_heard is not None and 0 <= now - self.last_heard <= session_gap:
            self.connected_seconds += now - self.last_heard
        self.last_heard = now

    def export(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["connected_seconds"] = round(self.connected_seconds, 3)
        return out

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> GatewayUsage:
        known = {name: saved[name] for name in cls.__slots__ if name in saved}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class CostModel:
    """The operator's monthly cost of the router, in ``currency``."""

    monthly_cost: float = 0.0
    currency: str = "USD"

    def per_thing_month(self, things: int) -> float | None:
        """Monthly cost / things served in the region; None while the region has none."""
        return None if things <= 0 else self.monthly_cost / things


@dataclass
class Accounting:
    """Usage and limits of every gateway a router has heard from."""

    session_gap: float
    usage: dict[str, GatewayUsage] = field(default_factory=dict)
    _budgets: dict[str, _Budget] = field(default_factory=dict)

    def of(self, gateway: str) -> GatewayUsage:
        found = self.usage.get(gateway)
        if found is None:
            found = self.usage[gateway] = GatewayUsage()
        return found

    def _budget(self, gateway: str, admission: Admission) -> _Budget:
        budget = self._budgets.get(gateway)
        if budget is None or budget.limits != admission.limits:
            budget = self._budgets[gateway] = _Budget.of(admission.limits)
        return budget

    def allow_in(self, gateway: str, admission: Admission, size: int, now: float) -> bool:
        """Count a message from ``gateway``; False (counted as dropped) if over its limits."""
        usage = self.of(gateway)
        usage.token_id = admission.token_id
        budget = self._budget(gateway, admission)
        # Both buckets are checked before either is charged, so a refusal costs nothing.
        budget.packets_in.refill(now)
        budget.bytes_in.refill(now)
        if budget.packets_in.tokens < 1 or budget.bytes_in.tokens < size:
            usage.dropped_over_limit += 1
            return False
        budget.packets_in.tokens -= 1
        budget.bytes_in.tokens -= size
        usage.packets_in += 1
        usage.bytes_in += size
        usage.heard(now, self.session_gap)
        return True

    def allow_out(self, gateway: str, admission: Admission | None, size: int, now: float) -> bool:
        """Whether ``size`` bytes may go down to ``gateway`` now (False: hold them back)."""
        usage = self.of(gateway)
        if admission is not None and not self._budget(gateway, admission).bytes_out.take(size, now):
            usage.held_back_out += 1
            return False
        usage.packets_out += 1
        usage.bytes_out += size
        return True

    def export(self) -> dict[str, Any]:
        return {gateway: usage.export() for gateway, usage in self.usage.items()}

    def restore(self, saved: dict[str, Any]) -> None:
        self.usage = {gateway: GatewayUsage.restore(dict(u)) for gateway, u in saved.items()}
