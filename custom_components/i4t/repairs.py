"""Repair issues the user can act on.

* A gateway that has been unreachable for long (not fixable: it clears when the gateway is back).
* Things the gateway hears but has not enrolled: one fixable issue per gateway, whose fix flow
  lists them and enrolls the chosen ones through the gateway's ``enroll`` command. A new thing
  thus shows up as one item to act on, never as entities of its own before it is enrolled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
import re
from typing import Any

from homeassistant import data_entry_flow
from homeassistant.components.repairs import ConfirmRepairFlow, RepairsFlow
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.event import async_call_later
from homeassistant.helpers.selector import (
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
)
from homeassistant.util import dt as dt_util
import voluptuous as vol

from .const import DOMAIN
from .coordinator import GatewayRequestError, I4TConfigEntry, I4TCoordinator

UNREACHABLE_AFTER = timedelta(minutes=30)
ENROLL_ISSUE_PREFIX = "things_to_enroll_"
CONF_THINGS = "things"
CONF_NAME = "name"
CONF_BINDKEY = "bindkey"
CONF_KEY = "key"
# Default name prefixes by kind; a name is a value the user edits, not a translated text.
DEFAULT_NAMES = {"native": "I4T thing", "bthome": "BTHome sensor", "beacon": "I4T beacon"}
KIND_LABELS = {"native": "I4T", "bthome": "BTHome", "beacon": "I4T beacon"}
# Abort reasons of the fix flow (translations: issues.things_to_enroll.fix_flow.abort).
ABORT_NOT_LOADED = "gateway_not_loaded"
ABORT_NO_CANDIDATES = "no_candidates"
_HEX_KEY = re.compile(r"[0-9a-fA-F]{32}")
_PUBLIC_KEY = re.compile(r"[0-9a-fA-F]{64}")


def _issue_id(entry: I4TConfigEntry) -> str:
    return f"gateway_unreachable_{entry.entry_id}"


def _enroll_issue_id(entry_id: str) -> str:
    return f"{ENROLL_ISSUE_PREFIX}{entry_id}"


@callback
def async_track_gateway_reachability(hass: HomeAssistant, entry: I4TConfigEntry) -> CALLBACK_TYPE:
    """Raise a repair issue when the gateway stays offline for UNREACHABLE_AFTER; clear it
    when it is back. Returns the function that stops tracking."""
    coordinator = entry.runtime_data
    pending: CALLBACK_TYPE | None = None

    @callback
    def raise_issue(_now: object) -> None:
        nonlocal pending
        pending = None
        ir.async_create_issue(
            hass,
            DOMAIN,
            _issue_id(entry),
            is_fixable=False,
            severity=ir.IssueSeverity.ERROR,
            translation_key="gateway_unreachable",
            translation_placeholders={
                "name": entry.title,
                "minutes": str(int(UNREACHABLE_AFTER.total_seconds() // 60)),
            },
        )

    @callback
    def follow() -> None:
        nonlocal pending
        if coordinator.data.online:
            if pending is not None:
                pending()
                pending = None
            ir.async_delete_issue(hass, DOMAIN, _issue_id(entry))
        elif pending is None:
            pending = async_call_later(hass, UNREACHABLE_AFTER, raise_issue)

    @callback
    def stop() -> None:
        if pending is not None:
            pending()
        remove_listener()

    remove_listener = coordinator.async_add_listener(follow)
    follow()
    return stop


# -- things to enroll -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A thing the gateway hears but has not enrolled, in a kind this flow can enroll."""

    ident: str
    """A native thing's address, or a BLE thing's MAC."""
    kind: str
    rssi: int | None
    hint: str | None
    last_seen: float | None
    public_key: str | None

    @property
    def short(self) -> str:
        """A few characters that tell similar things apart, as HA's Bluetooth titles do."""
        if self.kind == "native":
            return self.ident.removeprefix("i4t")[:4]
        return self.ident.replace(":", "")[-4:].upper()

    @property
    def label(self) -> str:
        """Kind, MAC or short address, RSSI, advertised name, last seen (local time)."""
        ident = self.ident if self.kind != "native" else f"{self.ident[:11]}…"
        parts = [f"{KIND_LABELS[self.kind]} {ident}"]
        if self.rssi is not None:
            parts.append(f"{self.rssi} dBm")
        if self.hint:
            parts.append(f"“{self.hint}”")
        if self.last_seen is not None:
            seen = dt_util.as_local(dt_util.utc_from_timestamp(self.last_seen))
            parts.append(seen.strftime("%Y-%m-%d %H:%M:%S"))
        return " · ".join(parts)


def enrollable_candidates(candidates: list[Any]) -> list[Candidate]:
    """The candidates this flow can enroll: natives with their public key, BTHome and beacons.

    Anything else the gateway lists (or an entry it cannot read: the list is the gateway's
    JSON as received) is left out.
    """
    found: dict[str, Candidate] = {}
    for item in candidates:
        if not isinstance(item, dict):
            continue
        ident, kind, public_key = item.get("id"), item.get("kind"), item.get("public_key")
        if not isinstance(ident, str) or not ident or kind not in DEFAULT_NAMES:
            continue
        if kind == "native" and not (
            isinstance(public_key, str) and _PUBLIC_KEY.fullmatch(public_key)
        ):
            continue
        rssi, hint, last_seen = item.get("rssi"), item.get("hint"), item.get("last_seen")
        found[ident] = Candidate(
            ident=ident,
            kind=kind,
            rssi=rssi if isinstance(rssi, int) and not isinstance(rssi, bool) else None,
            hint=hint if isinstance(hint, str) else None,
            last_seen=float(last_seen)
            if isinstance(last_seen, int | float) and not isinstance(last_seen, bool)
            else None,
            public_key=public_key if kind == "native" else None,
        )
    return list(found.values())


TOKEN_WARNING = timedelta(days=14)


def _token_issue_id(entry_id: str) -> str:
    return f"router_token_expiring_{entry_id}"


@callback
def async_track_token_expiry(hass: HomeAssistant, entry: I4TConfigEntry) -> CALLBACK_TYPE:
    """Warn TOKEN_WARNING before the gateway's router token expires (an error once it has),
    so that the user asks the router's operator for a new one in time."""
    coordinator = entry.runtime_data
    issue_id = _token_issue_id(entry.entry_id)

    @callback
    def follow() -> None:
        uplink = coordinator.data.stats.get("uplink")
        expires = uplink.get("token_expires") if isinstance(uplink, dict) else None
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            ir.async_delete_issue(hass, DOMAIN, issue_id)
            return
        left = dt_util.utc_from_timestamp(expires) - dt_util.utcnow()
        if left > TOKEN_WARNING:
            ir.async_delete_issue(hass, DOMAIN, issue_id)
            return
        ir.async_create_issue(
            hass,
            DOMAIN,
            issue_id,
            is_fixable=False,
            severity=ir.IssueSeverity.ERROR
            if left.total_seconds() <= 0
            else ir.IssueSeverity.WARNING,
            translation_key="router_token_expiring",
            translation_placeholders={
                "name": entry.title,
                "days": str(max(0, left.days)),
            },
        )

    follow()
    return coordinator.async_add_listener(follow)


@callback
def async_track_things_to_enroll(hass: HomeAssistant, entry: I4TConfigEntry) -> CALLBACK_TYPE:
    """Keep one fixable issue per gateway while it has things to enroll; returns the function
    that stops tracking and deletes the issue.

    The issue is refreshed on every gateway-level update (creating an unchanged issue is a
    no-op), so it comes back with the new count after a fix flow that enrolled only some.
    """
    coordinator = entry.runtime_data
    issue_id = _enroll_issue_id(entry.entry_id)

    @callback
    def follow() -> None:
        count = len(enrollable_candidates(coordinator.data.candidates))
        if not count:
            ir.async_delete_issue(hass, DOMAIN, issue_id)
            return
        ir.async_create_issue(
            hass,
            DOMAIN,
            issue_id,
            data={"entry_id": entry.entry_id},
            is_fixable=True,
            severity=ir.IssueSeverity.WARNING,
            translation_key="things_to_enroll",
            translation_placeholders={"count": str(count), "name": entry.title},
        )

    @callback
    def stop() -> None:
        remove_listener()
        ir.async_delete_issue(hass, DOMAIN, issue_id)

    remove_listener = coordinator.async_add_listener(follow)
    follow()
    return stop


class EnrollThingsFlow(RepairsFlow):
    """Choose things the gateway hears, name them, give BLE things their keys, enroll them.

    I4T-native things enroll with the public key they announced; BTHome sensors take an
    optional bindkey and beacons their key, one step per chosen BLE thing so that a refused
    or mistyped key is corrected where it was entered.
    """

    def __init__(self, entry_id: str) -> None:
        super().__init__()
        self._entry_id = entry_id
        self._offered: dict[str, Candidate] = {}
        self._enrolled: set[str] = set()
        self._queue: list[tuple[Candidate, str]] = []
        """Chosen BLE things that still need their step, with the name each gets."""

    def _coordinator(self) -> I4TCoordinator | None:
        entry: I4TConfigEntry | None = self.hass.config_entries.async_get_entry(self._entry_id)
        if entry is None or entry.state is not ConfigEntryState.LOADED:
            return None
        return entry.runtime_data

    async def async_step_init(
        self, user_input: dict[str, Any] | None = None
    ) -> data_entry_flow.FlowResult:
        """Choose the things and how they are named; natives are enrolled at once."""
        if (coordinator := self._coordinator()) is None:
            return self.async_abort(reason=ABORT_NOT_LOADED)
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if user_input is not None:
            chosen = [
                self._offered[ident]
                for ident in user_input.get(CONF_THINGS, [])
                if ident in self._offered and ident not in self._enrolled
            ]
            prefix = str(user_input.get(CONF_NAME, "")).strip()
            if not chosen:
                errors[CONF_THINGS] = "none_chosen"
            elif not prefix:
                errors[CONF_NAME] = "name_required"
            else:
                named = [
                    (thing, prefix if len(chosen) == 1 else f"{prefix} {thing.short}")
                    for thing in chosen
                ]
                for thing, name in named:
                    if thing.kind != "native":
                        continue
                    failure = await self._enroll(
                        coordinator, thing, kind="native", public_key=thing.public_key, name=name
                    )
                    if failure is not None:
                        errors["base"], placeholders = failure
                        break
                else:
                    self._queue = [(thing, name) for thing, name in named if thing.kind != "native"]
                    return await self._next_step()
        things = sorted(
            (
                thing
                for thing in enrollable_candidates(coordinator.data.candidates)
                if thing.ident not in self._enrolled
            ),
            key=lambda thing: thing.last_seen or 0.0,
            reverse=True,  # the thing just switched on comes first
        )
        if not things:
            return self.async_abort(reason=ABORT_NO_CANDIDATES)
        self._offered = {thing.ident: thing for thing in things}
        kinds = Counter(thing.kind for thing in things)
        schema = vol.Schema(
            {
                vol.Required(CONF_THINGS): SelectSelector(
                    SelectSelectorConfig(
                        options=[
                            SelectOptionDict(value=thing.ident, label=thing.label)
                            for thing in things
                        ],
                        multiple=True,
                        mode=SelectSelectorMode.LIST,
                    )
                ),
                vol.Required(
                    CONF_NAME, default=DEFAULT_NAMES[kinds.most_common(1)[0][0]]
                ): TextSelector(),
            }
        )
        if user_input is not None:
            chosen_now = [i for i in user_input.get(CONF_THINGS, []) if i in self._offered]
            schema = self.add_suggested_values_to_schema(
                schema, {**user_input, CONF_THINGS: chosen_now}
            )
        return self.async_show_form(
            step_id="init",
            data_schema=schema,
            errors=errors,
            description_placeholders={
                "count": str(len(things)),
                "name": self._entry_title(),
                **placeholders,
            },
        )

    async def async_step_bthome(
        self, user_input: dict[str, Any] | None = None
    ) -> data_entry_flow.FlowResult:
        """A chosen BTHome sensor: its bindkey if it encrypts its adverts."""
        return await self._key_step("bthome", CONF_BINDKEY, user_input)

    async def async_step_beacon(
        self, user_input: dict[str, Any] | None = None
    ) -> data_entry_flow.FlowResult:
        """A chosen I4T beacon: its beacon key (it cannot be enrolled without)."""
        return await self._key_step("beacon", CONF_KEY, user_input)

    async def _key_step(
        self, step_id: str, field: str, user_input: dict[str, Any] | None
    ) -> data_entry_flow.FlowResult:
        if (coordinator := self._coordinator()) is None:
            return self.async_abort(reason=ABORT_NOT_LOADED)
        thing, name = self._queue[0]
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if user_input is not None:
            key = str(user_input.get(field, "")).strip()
            if key and not _HEX_KEY.fullmatch(key):
                errors[field] = "invalid_key"
            elif not key and thing.kind == "beacon":
                errors[field] = "key_required"
            else:
                body = {field: key.lower()} if key else {}
                failure = await self._enroll(
                    coordinator, thing, kind=thing.kind, mac=thing.ident, name=name, **body
                )
                if failure is None:
                    self._queue.pop(0)
                    return await self._next_step()
                errors["base"], placeholders = failure
        return self.async_show_form(
            step_id=step_id,
            data_schema=vol.Schema({vol.Optional(field): TextSelector()}),
            errors=errors,
            description_placeholders={"thing": thing.label, "thing_name": name, **placeholders},
            last_step=len(self._queue) == 1,
        )

    async def _next_step(self) -> data_entry_flow.FlowResult:
        if not self._queue:
            return self.async_create_entry(data={})
        if self._queue[0][0].kind == "beacon":
            return await self.async_step_beacon()
        return await self.async_step_bthome()

    async def _enroll(
        self, coordinator: I4TCoordinator, thing: Candidate, **body: Any
    ) -> tuple[str, dict[str, str]] | None:
        """Send one ``enroll``; None when done, else the form error and its placeholders."""
        try:
            await coordinator.async_request("enroll", **body)
        except GatewayRequestError as err:
            if err.translation_key == "gateway_refused":
                return "gateway_refused", dict(err.translation_placeholders or {})
            return "gateway_timeout", {}
        self._enrolled.add(thing.ident)
        return None

    def _entry_title(self) -> str:
        entry = self.hass.config_entries.async_get_entry(self._entry_id)
        return entry.title if entry is not None else ""


async def async_create_fix_flow(
    hass: HomeAssistant, issue_id: str, data: dict[str, str | int | float | None] | None
) -> RepairsFlow:
    """The fix flow of a fixable issue: things to enroll is the only one with its own steps."""
    entry_id = (data or {}).get("entry_id")
    if issue_id.startswith(ENROLL_ISSUE_PREFIX) and isinstance(entry_id, str):
        return EnrollThingsFlow(entry_id)
    return ConfirmRepairFlow()
