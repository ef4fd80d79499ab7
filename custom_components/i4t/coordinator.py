"""Keeps the state of one gateway, pushed over its local MQTT API, and talks back to it.

Nothing is polled: the gateway keeps retained state topics, the coordinator subscribes to them
once. Gateway-level changes (availability, counters, nodes or groups appearing or going) reach
every listener, as with any coordinator; a change of one node or group reaches only that node's
or group's entities, so that a mesh of many nodes does not refresh every entity on each report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
import json
from typing import Any
import uuid

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed

from . import const
from .api import (
    GatewayInfo,
    GroupState,
    NodeState,
    availability_topic,
    base_topic,
    discovery_topic,
    parse_json,
)
from .const import CONF_GATEWAY_ID, DOMAIN, EVENT_I4T, LOGGER
from .group_state import GroupEntries

type I4TConfigEntry = ConfigEntry[I4TCoordinator]


@dataclass(slots=True)
class GatewayState:
    """What the integration knows of its gateway right now."""

    info: GatewayInfo
    online: bool
    stats: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    groups: dict[str, GroupState] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)


class GatewayRequestError(HomeAssistantError):
    """The gateway refused a request or did not answer; translated for the user."""


class I4TCoordinator(DataUpdateCoordinator[GatewayState]):
    """Subscribes to the gateway's topics; entities listen to it."""

    config_entry: I4TConfigEntry

    def __init__(self, hass: HomeAssistant, entry: I4TConfigEntry) -> None:
        super().__init__(hass, LOGGER, config_entry=entry, name=DOMAIN, update_interval=None)
        self.gateway_id: str = entry.data[CONF_GATEWAY_ID]
        self.base = base_topic(self.gateway_id)
        self._announced = asyncio.Event()
        self._info: GatewayInfo | None = None
        self._online: bool | None = None  # None until the first retained availability
        self._stats: dict[str, Any] = {}
        self._nodes: dict[str, NodeState] = {}
        self._groups: dict[str, GroupState] = {}
        self._candidates: list[dict[str, Any]] = []
        self._node_listeners: dict[str, list[CALLBACK_TYPE]] = {}
        self._group_listeners: dict[str, list[CALLBACK_TYPE]] = {}
        self._event_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.group_entries = GroupEntries()

    # -- set-up --------------------------------------------------------------------------

    async def _async_setup(self) -> None:
        if not await mqtt.async_wait_for_mqtt_client(self.hass):
            raise UpdateFailed(translation_domain=DOMAIN, translation_key="mqtt_not_available")
        # One batch of subscriptions, so all retained values arrive together.
        for topic, handler in (
            (discovery_topic(self.gateway_id), self._handle_announcement),
            (availability_topic(self.gateway_id), self._handle_availability),
            (f"{self.base}/state/#", self._handle_state),
            (f"{self.base}/event/+", self._handle_event),
            (f"{self.base}/reply/+", self._handle_reply),
        ):
            self.config_entry.async_on_unload(
                await mqtt.async_subscribe(self.hass, topic, handler, qos=1)
            )
        self.config_entry.async_on_unload(self._fail_pending_requests)

    async def _async_update_data(self) -> GatewayState:
        try:
            async with asyncio.timeout(const.ANNOUNCEMENT_WAIT_SECONDS):
                await self._announced.wait()
        except TimeoutError as err:
            raise UpdateFailed(
                translation_domain=DOMAIN, translation_key="gateway_not_found"
            ) from err
        return self._snapshot()

    def _snapshot(self) -> GatewayState:
        assert self._info is not None
        return GatewayState(
            info=self._info,
            online=bool(self._online),
            stats=self._stats,
            nodes=self._nodes,
            groups=self._groups,
            candidates=self._candidates,
        )

    @callback
    def _changed(self) -> None:
        """A gateway-level change: every listener hears of it."""
        if self.data is not None:
            self.async_set_updated_data(self._snapshot())

    # -- per node and per group listeners -----------------------------------------------

    @callback
    def async_add_node_listener(self, address: str, update: CALLBACK_TYPE) -> CALLBACK_TYPE:
        """Call ``update`` when node ``address`` changes; returns the unsubscribe function."""
        return _add(self._node_listeners, address, update)

    @callback
    def async_add_group_listener(self, group_id: str, update: CALLBACK_TYPE) -> CALLBACK_TYPE:
        """Call ``update`` when group ``group_id`` changes; returns the unsubscribe function."""
        return _add(self._group_listeners, group_id, update)

    @callback
    def async_add_event_listener(
        self, listener: Callable[[str, dict[str, Any]], None]
    ) -> CALLBACK_TYPE:
        """Call ``listener(kind, event)`` for each node or group status event."""
        self._event_listeners.append(listener)
        return lambda: self._event_listeners.remove(listener)

    # -- what the gateway publishes -------------------------------------------------------

    @callback
    def _handle_announcement(self, message: mqtt.ReceiveMessage) -> None:
        info = GatewayInfo.from_payload(message.payload)
        if info is None or info.gateway_id != self.gateway_id:
            LOGGER.debug("ignoring an announcement this integration cannot read")
            return
        self._info = info
        self._announced.set()
        self._changed()

    @callback
    def _handle_availability(self, message: mqtt.ReceiveMessage) -> None:
        online = message.payload == const.ONLINE
        if online == self._online:
            return
        was_known, self._online = self._online is not None, online
        if was_known:
            # Once per transition, at info level (the log-when-unavailable rule).
            state = "back online" if online else "offline"
            LOGGER.info("I4T gateway %s is %s", self.gateway_id[:11], state)
        self._changed()

    @callback
    def _handle_state(self, message: mqtt.ReceiveMessage) -> None:
        kind, _, ident = message.topic[len(self.base) + len("/state/") :].partition("/")
        if kind == "node" and ident:
            self._update_node(ident, message.payload)
        elif kind == "group" and ident:
            self._update_group(ident, message.payload)
        elif kind == "gateway":
            self._stats = parse_json(message.payload) or self._stats
            self._changed()
        elif kind == "candidates":
            document = parse_json(message.payload) or {}
            candidates = document.get("candidates")
            self._candidates = candidates if isinstance(candidates, list) else []
            self._changed()

    def _update_node(self, address: str, payload: str | bytes | bytearray) -> None:
        if not payload:
            if self._nodes.pop(address, None) is not None:
                self._changed()  # removed: platforms and stale-device handling hear of it
            return
        node = NodeState.from_payload(payload)
        if node is None or node.address != address:
            LOGGER.debug("ignoring an unreadable node state")
            return
        is_new = address not in self._nodes
        self._nodes[address] = node
        if is_new:
            self._changed()
        _notify(self._node_listeners, address)

    def _update_group(self, group_id: str, payload: str | bytes | bytearray) -> None:
        if not payload:
            if self._groups.pop(group_id, None) is not None:
                self._changed()
            return
        group = GroupState.from_payload(payload)
        if group is None or group.group_id != group_id:
            LOGGER.debug("ignoring an unreadable group state")
            return
        is_new = group_id not in self._groups
        self._groups[group_id] = group
        if is_new:
            self._changed()
        _notify(self._group_listeners, group_id)

    @callback
    def _handle_event(self, message: mqtt.ReceiveMessage) -> None:
        kind = message.topic.rsplit("/", 1)[-1]
        event = parse_json(message.payload)
        if kind not in ("node", "group") or event is None:
            return
        for listener in list(self._event_listeners):
            listener(kind, event)
        self._fire_bus_event(kind, event)

    def _fire_bus_event(self, kind: str, event: dict[str, Any]) -> None:
        ident = event.get("address") if kind == "node" else event.get("group_id")
        new = event.get("new")
        if not isinstance(ident, str) or not isinstance(new, str):
            return
        device = dr.async_get(self.hass).async_get_device(
            identifiers={(DOMAIN, self.device_key(kind, ident))}
        )
        if device is None:
            return
        self.hass.bus.async_fire(
            EVENT_I4T,
            {
                "device_id": device.id,
                "type": f"{kind}_{new}",
                "old": event.get("old"),
                "new": new,
            },
        )

    def device_key(self, kind: str, ident: str) -> str:
        """The device registry identifier of a node, group or the gateway itself."""
        if kind == "node":
            return ident
        if kind == "group":
            return f"{self.gateway_id}-group-{ident}"
        return self.gateway_id

    # -- requests -----------------------------------------------------------------------

    @callback
    def _handle_reply(self, message: mqtt.ReceiveMessage) -> None:
        reply = parse_json(message.payload)
        if reply is None:
            return
        future = self._replies.pop(str(reply.get("request_id")), None)
        if future is not None and not future.done():
            future.set_result(reply)

    async def async_request(self, command: str, /, **body: Any) -> dict[str, Any]:
        """Send a request on the local API and return its result; GatewayRequestError if not ok."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = self.hass.loop.create_future()
        self._replies[request_id] = future
        payload = {"request_id": request_id, **body}
        try:
            await mqtt.async_publish(self.hass, f"{self.base}/cmd/{command}", _json(payload), qos=1)
            async with asyncio.timeout(const.REQUEST_TIMEOUT_SECONDS):
                reply = await future
        except TimeoutError as err:
            raise GatewayRequestError(
                translation_domain=DOMAIN, translation_key="gateway_timeout"
            ) from err
        finally:
            self._replies.pop(request_id, None)
        if reply.get("ok") is True:
            result = reply.get("result")
            return result if isinstance(result, dict) else {}
        error = reply.get("error")
        if not isinstance(error, dict):
            error = {}
        raise GatewayRequestError(
            translation_domain=DOMAIN,
            translation_key="gateway_refused",
            translation_placeholders={
                "code": str(error.get("code", "unknown")),
                "message": str(error.get("message", "")),
            },
        )

    @callback
    def _fail_pending_requests(self) -> None:
        for future in self._replies.values():
            if not future.done():
                future.cancel()
        self._replies.clear()


def _add(
    listeners: dict[str, list[CALLBACK_TYPE]], key: str, update: CALLBACK_TYPE
) -> CALLBACK_TYPE:
    listeners.setdefault(key, []).append(update)

    def remove() -> None:
        listeners[key].remove(update)
        if not listeners[key]:
            del listeners[key]

    return remove


def _notify(listeners: dict[str, list[CALLBACK_TYPE]], key: str) -> None:
    for update in list(listeners.get(key, ())):
        update()


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))
