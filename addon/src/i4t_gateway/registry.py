"""A router's region: which gateway serves which address, and the names registered there.

:class:`RegionTable` is built from signed ANNOUNCE packets (docs/ROUTER.md, routing). The trust
rule: an announce counts only when it comes from the gateway itself, over its own uplink topic;
it may always claim the announcer's own address; any other address it claims belongs to the
first gateway that claimed it, until that claim expires (or the holder stops announcing it), and
never an address the router protects (itself, or another admitted gateway). Native things'
addresses are key hashes and proxied ones hide their local id, so the router cannot check a
claim cryptographically; first come until expiry keeps a second gateway from taking over
an address that is in use, and a thing that moves is reachable at its new gateway once its old
claim lapses. Claims are bounded per gateway and in all; everything is persisted, so a restarted
router routes at once.

:class:`NameRegistry` keeps the verified name records (names.py) registered in the region, first
come per name (a higher ``seq`` from the same key replaces, expiry honoured), and a bounded
cache of answers learned from the parent router.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from .cose import PacketError
from .identity import Address
from .names import NameRecord, verify_name_record
from .queue import GroupCommit
from .replay import Clock, wall_clock_ms

DEFAULT_MAX_ADDRESSES: Final = 1_000_000
DEFAULT_MAX_PER_GATEWAY: Final = 100_000
DEFAULT_MAX_ANNOUNCE_MS: Final = 6 * 3600 * 1000
"""An announce holds at most this long, whatever expiry it claims."""
DEFAULT_MAX_NAMES: Final = 100_000
DEFAULT_NAME_CACHE: Final = 10_000
DEFAULT_CACHE_MS: Final = 3600 * 1000
"""A cached answer is kept at most this long (or until its record expires, if sooner)."""

_ROUTE_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS router_route ("
    " address BLOB PRIMARY KEY, gateway TEXT NOT NULL, expires_ms INTEGER NOT NULL"
    ") STRICT, WITHOUT ROWID"
)
_NAME_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS router_name ("
    " name TEXT PRIMARY KEY, record BLOB NOT NULL, expires_ms INTEGER NOT NULL"
    ") STRICT, WITHOUT ROWID"
)
_PUT_ROUTE: Final = (
    "INSERT OR REPLACE INTO router_route (address, gateway, expires_ms) VALUES (?, ?, ?)"
)
_DELETE_ROUTE: Final = "DELETE FROM router_route WHERE address = ?"
_PUT_NAME: Final = "INSERT OR REPLACE INTO router_name (name, record, expires_ms) VALUES (?, ?, ?)"
_DELETE_NAME: Final = "DELETE FROM router_name WHERE name = ?"


@dataclass(slots=True)
class _Route:
    gateway: str
    expires_ms: int


@dataclass(frozen=True, slots=True)
class AnnounceResult:
    accepted: int
    refused: Counter[str]


class RegionTable:
    """Address -> the gateway (its address text, the ``<gateway id>`` of its topics) that
    serves it, with expiry; bounded, persisted through the router's group commit."""

    def __init__(
        self,
        commits: GroupCommit,
        *,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        max_per_gateway: int = DEFAULT_MAX_PER_GATEWAY,
        max_announce_ms: int = DEFAULT_MAX_ANNOUNCE_MS,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self._commits = commits
        self.max_addresses = max_addresses
        self.max_per_gateway = max_per_gateway
        self.max_announce_ms = max_announce_ms
        self._clock = clock
        self._routes: dict[Address, _Route] = {}
        self._per_gateway: Counter[str] = Counter()
        self.version = 0
        """Bumped whenever the set of addresses changes (the router announces upward then)."""
        commits.connection.execute(_ROUTE_SCHEMA)
        self._load()

    def _load(self) -> None:
        now = self._clock()
        rows = self._commits.connection.execute(
            "SELECT address, gateway, expires_ms FROM router_route WHERE expires_ms > ?", (now,)
        )
        for raw, gateway, expires in rows:
            self._routes[Address.from_bytes(bytes(raw))] = _Route(str(gateway), int(expires))
            self._per_gateway[str(gateway)] += 1

    def __len__(self) -> int:
        return len(self._routes)

    def gateway_for(self, address: Address) -> str | None:
        """The gateway serving ``address`` now, or None."""
        route = self._routes.get(address)
        if route is None:
            return None
        if route.expires_ms <= self._clock():
            self._drop(address, route)
            return None
        return route.gateway

    def announce(
        self,
        gateway: Address,
        addresses: Iterable[Address],
        expires_ms: int,
        *,
        protected: Callable[[Address], bool],
    ) -> AnnounceResult:
        """Apply an announce the gateway signed and sent over its own topic (see the module's
        trust rule). ``protected`` says which addresses no one else may claim."""
        now = self._clock()
        expires = min(expires_ms, now + self.max_announce_ms)
        refused: Counter[str] = Counter()
        if expires <= now:
            refused["expired"] += 1
            return AnnounceResult(0, refused)
        holder = gateway.text
        accepted = 0
        for address in addresses:
            reason = self._claim(holder, gateway, address, expires, protected)
            if reason is None:
                accepted += 1
            else:
                refused[reason] += 1
        return AnnounceResult(accepted, refused)

    def _claim(
        self,
        holder: str,
        gateway: Address,
        address: Address,
        expires: int,
        protected: Callable[[Address], bool],
    ) -> str | None:
        """None if ``holder`` now holds ``address`` until ``expires``, else why not."""
        if address.is_broadcast:
            return "broadcast"
        if address != gateway and protected(address):
            return "protected"
        current = self._routes.get(address)
        if current is not None and current.gateway != holder:
            if current.expires_ms > self._clock():
                return "claimed"
            self._drop(address, current)
            current = None
        if current is None:
            return self._add(holder, address, expires)
        if expires > current.expires_ms:
            current.expires_ms = expires
            self._commits.write(_PUT_ROUTE, (address.bytes, holder, expires))
        return None

    def _add(self, holder: str, address: Address, expires: int) -> str | None:
        if self._per_gateway[holder] >= self.max_per_gateway:
            return "gateway_full"
        if len(self._routes) >= self.max_addresses:
            return "table_full"
        self._routes[address] = _Route(holder, expires)
        self._per_gateway[holder] += 1
        self.version += 1
        self._commits.write(_PUT_ROUTE, (address.bytes, holder, expires))
        return None

    def expire(self) -> int:
        """Forget every lapsed claim; returns how many."""
        now = self._clock()
        lapsed = [(a, r) for a, r in self._routes.items() if r.expires_ms <= now]
        for address, route in lapsed:
            self._drop(address, route)
        return len(lapsed)

    def _drop(self, address: Address, route: _Route) -> None:
        del self._routes[address]
        self._per_gateway[route.gateway] -= 1
        if self._per_gateway[route.gateway] <= 0:
            del self._per_gateway[route.gateway]
        self._commits.write(_DELETE_ROUTE, (address.bytes,))
        self.version += 1

    def addresses(self) -> list[Address]:
        """Every address of the region (unexpired), for the summary announced upward."""
        now = self._clock()
        return [a for a, r in self._routes.items() if r.expires_ms > now]

    def count(self, gateway: str) -> int:
        """How many addresses ``gateway`` holds (its own included)."""
        return self._per_gateway.get(gateway, 0)

    def gateways(self) -> list[str]:
        return sorted(self._per_gateway)


class NameRefusedError(Exception):
    """A name record the registry did not take; ``reason`` is the counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Held:
    record: NameRecord
    raw: bytes


class NameRegistry:
    """Verified name records registered in this region, plus cached answers from above."""

    def __init__(
        self,
        commits: GroupCommit,
        *,
        max_names: int = DEFAULT_MAX_NAMES,
        cache_size: int = DEFAULT_NAME_CACHE,
        cache_ms: int = DEFAULT_CACHE_MS,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self._commits = commits
        self.max_names = max_names
        self.cache_size = cache_size
        self.cache_ms = cache_ms
        self._clock = clock
        self._names: dict[str, _Held] = {}
        self._cache: OrderedDict[str, tuple[_Held, int]] = OrderedDict()
        commits.connection.execute(_NAME_SCHEMA)
        self._load()

    def _load(self) -> None:
        rows = self._commits.connection.execute("SELECT name, record FROM router_name")
        for name, raw in rows:
            try:
                record = verify_name_record(bytes(raw), now_ms=self._clock)
            except PacketError:
                self._commits.write(_DELETE_NAME, (str(name),))  # expired while we were down
                continue
            self._names[record.name] = _Held(record, bytes(raw))

    def __len__(self) -> int:
        return len(self._names)

    def register(self, raw: bytes) -> tuple[NameRecord, bool]:
        """Verify and store a record; returns it and whether it is new or replaced one.

        Raises :class:`NameRefusedError` (``bad_record``, ``name_taken``, ``stale_seq``,
        ``registry_full``).
        """
        try:
            record = verify_name_record(raw, now_ms=self._clock)
        except PacketError as err:
            raise NameRefusedError(f"record_{err.reason}") from None
        held = self._current(record.name)
        if held is not None:
            if held.raw == raw:
                return record, False  # registered again: nothing changes
            if held.record.public_key != record.public_key:
                raise NameRefusedError("name_taken")
            if not record.supersedes(held.record):
                raise NameRefusedError("stale_seq")
        elif len(self._names) >= self.max_names:
            raise NameRefusedError("registry_full")
        self._names[record.name] = _Held(record, raw)
        self._cache.pop(record.name, None)
        self._commits.write(_PUT_NAME, (record.name, raw, record.expires_ms))
        return record, True

    def _current(self, name: str) -> _Held | None:
        held = self._names.get(name)
        if held is not None and held.record.expires_ms <= self._clock():
            del self._names[name]
            self._commits.write(_DELETE_NAME, (name,))
            return None
        return held

    def lookup(self, name: str) -> bytes | None:
        """The record holding ``name``: registered here, or a cached answer; None if neither."""
        held = self._current(name)
        if held is not None:
            return held.raw
        cached = self._cache.get(name)
        if cached is None:
            return None
        if cached[1] <= self._clock():
            del self._cache[name]
            return None
        self._cache.move_to_end(name)
        return cached[0].raw

    def cache(self, raw: bytes) -> NameRecord | None:
        """Keep an answer from the parent router until it (or the cache time) expires; None
        if the record does not verify."""
        try:
            record = verify_name_record(raw, now_ms=self._clock)
        except PacketError:
            return None
        until = min(record.expires_ms, self._clock() + self.cache_ms)
        self._cache[record.name] = (_Held(record, raw), until)
        self._cache.move_to_end(record.name)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return record

    def records(self) -> list[bytes]:
        """Every record registered here (not the cache), to register them upward again."""
        return [held.raw for name in list(self._names) if (held := self._current(name))]
