"""Set-up of the I4T integration: discovered on MQTT, or picked from the gateways on the broker."""

from __future__ import annotations

import asyncio
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigFlow, ConfigFlowResult
from homeassistant.core import callback
from homeassistant.helpers.selector import (
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
)
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
import voluptuous as vol

from . import const
from .api import GatewayInfo
from .const import CONF_GATEWAY_ID, DOMAIN


class I4TConfigFlow(ConfigFlow, domain=DOMAIN):
    """One config entry per gateway; its unique id is the gateway's address."""

    VERSION = 1

    def __init__(self) -> None:
        self._discovered: dict[str, GatewayInfo] = {}
        self._confirming: GatewayInfo | None = None

    async def async_step_mqtt(self, discovery_info: MqttServiceInfo) -> ConfigFlowResult:
        """A gateway announced itself on the broker (manifest mqtt matcher)."""
        info = GatewayInfo.from_payload(discovery_info.payload)
        if info is None:
            return self.async_abort(reason="invalid_discovery_info")
        await self.async_set_unique_id(info.gateway_id)
        self._abort_if_unique_id_configured()
        self._confirming = info
        self.context["title_placeholders"] = {"name": info.name}
        return await self.async_step_discovery_confirm()

    async def async_step_discovery_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Ask before adding a discovered gateway."""
        assert self._confirming is not None
        if user_input is not None:
            return self._create_entry(self._confirming)
        self._set_confirm_only()
        return self.async_show_form(
            step_id="discovery_confirm",
            description_placeholders={
                "name": self._confirming.name,
                "gateway_id": self._confirming.gateway_id,
            },
        )

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Pick one of the gateways announced on the broker."""
        if user_input is not None:
            info = self._discovered[user_input[CONF_GATEWAY_ID]]
            # A discovery flow for the same gateway may be waiting: the user's choice wins,
            # and creating the entry ends that flow.
            await self.async_set_unique_id(info.gateway_id, raise_on_progress=False)
            self._abort_if_unique_id_configured()
            return self._create_entry(info)
        if not await mqtt.async_wait_for_mqtt_client(self.hass):
            return self.async_abort(reason="mqtt_not_available")
        configured = self._async_current_ids(include_ignore=False)
        self._discovered = {
            gateway_id: info
            for gateway_id, info in (await self._async_scan()).items()
            if gateway_id not in configured
        }
        if not self._discovered:
            return self.async_abort(reason="no_gateways_found")
        options = [
            SelectOptionDict(value=info.gateway_id, label=f"{info.name} ({info.gateway_id[:11]})")
            for info in sorted(self._discovered.values(), key=lambda info: info.name)
        ]
        return self.async_show_form(
            step_id="user",
            data_schema=vol.Schema(
                {
                    vol.Required(CONF_GATEWAY_ID): SelectSelector(
                        SelectSelectorConfig(options=options)
                    )
                }
            ),
        )

    async def _async_scan(self) -> dict[str, GatewayInfo]:
        """Listen to the discovery topics for a moment; announcements are retained."""
        found: dict[str, GatewayInfo] = {}

        @callback
        def remember(message: mqtt.ReceiveMessage) -> None:
            info = GatewayInfo.from_payload(message.payload)
            if info is not None:
                found[info.gateway_id] = info

        unsubscribe = await mqtt.async_subscribe(
            self.hass, f"{const.DISCOVERY_PREFIX}/+", remember, qos=1
        )
        try:
            await asyncio.sleep(const.SCAN_SECONDS)
        finally:
            unsubscribe()
        return found

    def _create_entry(self, info: GatewayInfo) -> ConfigFlowResult:
        return self.async_create_entry(title=info.name, data={CONF_GATEWAY_ID: info.gateway_id})
