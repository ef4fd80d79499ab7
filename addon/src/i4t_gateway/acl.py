"""Access control over keys and groups of keys, checked on every packet.

``may_send(src, dst)`` answers in O(1): at most three selectors describe a key (the key itself,
its group, anything), so a decision is at most nine set lookups per rule effect, whatever the
number of rules, groups or nodes. The rules are specified in docs/HEALTH.md ("Access control").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .groups import ConfigError, ExtensionOperation, GroupId, GroupRegistry, Key


class Effect(StrEnum):
    """What a rule does to the packets it matches; DENY always beats ALLOW."""

    ALLOW = "allow"
    DENY = "deny"


class SelectorKind(StrEnum):
    """What a selector matches: one key, the members of one group, or every key."""

    KEY = "key"
    GROUP = "group"
    ANY = "any"


# Internal selector form: a plain tuple hashes fast and never collides across kinds.
type _Sel = tuple[str, bytes | str | None]
_KEY = SelectorKind.KEY.value
_GROUP = SelectorKind.GROUP.value
_ANY: _Sel = (SelectorKind.ANY.value, None)


@dataclass(frozen=True, slots=True)
class Selector:
    """One side (source or destination) of a rule."""

    kind: SelectorKind
    value: bytes | str | None = None

    def __post_init__(self) -> None:
        valid = {
            SelectorKind.KEY: isinstance(self.value, bytes) and bool(self.value),
            SelectorKind.GROUP: isinstance(self.value, str) and bool(self.value),
            SelectorKind.ANY: self.value is None,
        }
        if not valid[self.kind]:
            raise ValueError(f"invalid value for a {self.kind.value} selector")

    @classmethod
    def key(cls, key: Key) -> Selector:
        """Exactly this key."""
        return cls(SelectorKind.KEY, key)

    @classmethod
    def group(cls, group_id: GroupId) -> Selector:
        """Every current member of this group."""
        return cls(SelectorKind.GROUP, group_id)

    @classmethod
    def any(cls) -> Selector:
        """Every key."""
        return cls(SelectorKind.ANY)

    def _internal(self) -> _Sel:
        return (self.kind.value, self.value)

    def export(self) -> dict[str, Any]:
        """As a plain dict (keys in hex)."""
        value = self.value.hex() if isinstance(self.value, bytes) else self.value
        return {"kind": self.kind.value, "value": value}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Selector:
        """The inverse of export."""
        kind = SelectorKind(data["kind"])
        if kind is SelectorKind.KEY:
            return cls(kind, bytes.fromhex(data["value"]))
        if kind is SelectorKind.GROUP:
            return cls(kind, str(data["value"]))
        return cls(kind)


@dataclass(frozen=True, slots=True)
class Rule:
    """Packets from a key matching ``src`` to a key matching ``dst`` are allowed or denied."""

    effect: Effect
    src: Selector
    dst: Selector

    @classmethod
    def allow(cls, src: Selector, dst: Selector) -> Rule:
        """An allow rule."""
        return cls(Effect.ALLOW, src, dst)

    @classmethod
    def deny(cls, src: Selector, dst: Selector) -> Rule:
        """A deny rule."""
        return cls(Effect.DENY, src, dst)

    def export(self) -> dict[str, Any]:
        """As a plain dict."""
        return {"effect": self.effect.value, "src": self.src.export(), "dst": self.dst.export()}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Rule:
        """The inverse of export."""
        return cls(
            Effect(data["effect"]), Selector.restore(data["src"]), Selector.restore(data["dst"])
        )


@dataclass(frozen=True, slots=True)
class AddRule(ExtensionOperation):
    """Configuration operation: add a rule (adding it twice changes nothing)."""

    rule: Rule


@dataclass(frozen=True, slots=True)
class RemoveRule(ExtensionOperation):
    """Configuration operation: remove a rule (ConfigError if it is not there)."""

    rule: Rule


class AccessPolicy:
    """The rules, indexed by source selector, over the group memberships of a registry.

    Decision, first match wins: a DENY rule matches -> refused; source and destination are
    members of the same group -> allowed; an ALLOW rule matches -> allowed; otherwise refused.
    Rules change only through the registry's ConfigAgent (AddRule, RemoveRule); ``rules`` given
    here are the trusted starting set (e.g. restored from the store).
    """

    __slots__ = ("_allow", "_deny", "_registry", "_rules")

    def __init__(self, registry: GroupRegistry, rules: Iterable[Rule] = ()) -> None:
        self._registry = registry
        self._rules: set[Rule] = set()
        self._allow: dict[_Sel, set[_Sel]] = {}
        self._deny: dict[_Sel, set[_Sel]] = {}
        for rule in rules:
            self._add(rule)
        registry.add_extension(AddRule, self._apply)
        registry.add_extension(RemoveRule, self._apply)

    def rules(self) -> list[Rule]:
        """The rules, in no particular order (order never matters)."""
        return list(self._rules)

    def _apply(self, operation: ExtensionOperation) -> None:
        if isinstance(operation, AddRule):
            self._add(operation.rule)
        elif isinstance(operation, RemoveRule):
            if operation.rule not in self._rules:
                raise ConfigError("no such rule")
            self._remove(operation.rule)

    def _add(self, rule: Rule) -> None:
        if rule in self._rules:
            return
        self._rules.add(rule)
        index = self._deny if rule.effect is Effect.DENY else self._allow
        index.setdefault(rule.src._internal(), set()).add(rule.dst._internal())

    def _remove(self, rule: Rule) -> None:
        self._rules.remove(rule)
        index = self._deny if rule.effect is Effect.DENY else self._allow
        src = rule.src._internal()
        targets = index[src]
        targets.discard(rule.dst._internal())
        if not targets:
            del index[src]

    def may_send(self, src: Key, dst: Key, now: float | None = None) -> bool:
        """Whether a packet from ``src`` may be delivered to ``dst``.

        With ``now``, a temporary membership past its end no longer counts, even before the
        engine's next ``expire`` has removed it.
        """
        src_group = self._registry.group_of(src, now)
        dst_group = self._registry.group_of(dst, now)
        src_sels = _selectors(src, src_group)
        dst_sels = _selectors(dst, dst_group)
        if self._deny and _matches(self._deny, src_sels, dst_sels):
            return False
        if src_group is not None and src_group == dst_group:
            return True
        return bool(self._allow) and _matches(self._allow, src_sels, dst_sels)

    def export(self) -> dict[str, Any]:
        """The rules as plain dicts, in a stable order."""
        exported = [rule.export() for rule in self._rules]
        exported.sort(key=repr)
        return {"rules": exported}

    @classmethod
    def restore(cls, registry: GroupRegistry, data: dict[str, Any]) -> AccessPolicy:
        """The inverse of export."""
        return cls(registry, (Rule.restore(rule) for rule in data["rules"]))


def _selectors(key: Key, group_id: GroupId | None) -> tuple[_Sel, ...]:
    if group_id is None:
        return ((_KEY, key), _ANY)
    return ((_KEY, key), (_GROUP, group_id), _ANY)


def _matches(
    index: dict[_Sel, set[_Sel]], src_sels: tuple[_Sel, ...], dst_sels: tuple[_Sel, ...]
) -> bool:
    for src_sel in src_sels:
        targets = index.get(src_sel)
        if targets is not None and any(dst_sel in targets for dst_sel in dst_sels):
            return True
    return False
