"""What an entry knows of its group subentries and the gateway's groups (group_entries.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GroupEntries:
    """What this entry last knew of group subentries and gateway groups."""

    subentries: set[str] = field(default_factory=set)  # group ids that have a subentry
    gateway_groups: set[str] = field(default_factory=set)  # group ids the gateway has
    deleting: set[str] = field(default_factory=set)  # asked the gateway to delete
    creating: set[str] = field(default_factory=set)  # a subentry flow is creating them
