"""Keeps the state of one gateway, pushed over its local MQTT API."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed

from . import const
from .api import GatewayInfo, availability_topic, discovery_topic
from .const import CONF_GATEWAY_ID, DOMAIN, LOGGER

type I4TConfigEntry = ConfigEntry[I4TCoordinator]


@dataclass(frozen=True, slots=True)
class GatewayState:
    """What the integration knows of its gateway right now."""

    info: GatewayInfo
    online: bool


class I4TCoordinator(DataUpdateCoordinator[GatewayState]):
    """Subscribes to the gateway's topics; entities listen to it.

    Nothing is polled: the gateway pushes retained state, so update_interval is
    None and the first refresh only waits for the retained announcement.
    """

    config_entry: I4TConfigEntry

    def __init__(self, hass: HomeAssistant, entry: I4TConfigEntry) -> None:
        super().__init__(hass, LOGGER, config_entry=entry, name=DOMAIN, update_interval=None)
        self.gateway_id: str = entry.data[CONF_GATEWAY_ID]
        self._announced = asyncio.Event()
        self._info: GatewayInfo | None = None
        self._online: bool | None = None  # None until the first retained availability

    async def _async_setup(self) -> None:
        if not await mqtt.async_wait_for_mqtt_client(self.hass):
            raise UpdateFailed(translation_domain=DOMAIN, translation_key="mqtt_not_available")
        # Both subscriptions go out in one batch, so both retained values arrive together.
        for topic, handler in (
            (discovery_topic(self.gateway_id), self._handle_announcement),
            (availability_topic(self.gateway_id), self._handle_availability),
        ):
            self.config_entry.async_on_unload(
                await mqtt.async_subscribe(self.hass, topic, handler, qos=1)
            )

    async def _async_update_data(self) -> GatewayState:
        try:
            async with asyncio.timeout(const.ANNOUNCEMENT_WAIT_SECONDS):
                await self._announced.wait()
        except TimeoutError as err:
            raise UpdateFailed(
                translation_domain=DOMAIN, translation_key="gateway_not_found"
            ) from err
        assert self._info is not None
        return GatewayState(info=self._info, online=bool(self._online))

    @callback
    def _handle_announcement(self, message: mqtt.ReceiveMessage) -> None:
        info = GatewayInfo.from_payload(message.payload)
        if info is None or info.gateway_id != self.gateway_id:
            LOGGER.debug("ignoring an announcement this integration cannot read")
            return
        self._info = info
        self._announced.set()
        if self.data is not None:
            self.async_set_updated_data(replace(self.data, info=info))

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
        if self.data is not None:
            self.async_set_updated_data(replace(self.data, online=online))
