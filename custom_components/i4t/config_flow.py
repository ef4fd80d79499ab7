"""Set-up of the I4T integration.

A gateway is found through the add-on's Supervisor discovery, through MQTT discovery of its
announcement, or picked by the user from the gateways announced on the broker. The options
flow tunes it; node groups are config subentries, carried out through the gateway's group
commands.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

from homeassistant.components import mqtt
from homeassistant.components.bluetooth import BluetoothServiceInfoBleak
from homeassistant.config_entries import (
    ConfigEntry,
    ConfigEntryState,
    ConfigFlow,
    ConfigFlowResult,
    ConfigSubentryFlow,
    OptionsFlow,
    SubentryFlowResult,
)
from homeassistant.core import callback
from homeassistant.helpers.selector import (
    BooleanSelector,
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
)
from homeassistant.helpers.service_info.hassio import HassioServiceInfo
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
import voluptuous as vol

from . import const
from .api import GatewayInfo
from .const import (
    CONF_BLE_BRIDGE,
    CONF_GATEWAY_ID,
    CONF_QUORUM,
    CONF_REMOTE_SCANNERS,
    CONF_TIMEOUT_FACTOR,
    DEFAULT_QUORUM,
    DEFAULT_TIMEOUT_FACTOR,
    DOMAIN,
    QUORUM_POLICIES,
    SUBENTRY_GROUP,
)
from .coordinator import GatewayRequestError, I4TConfigEntry, I4TCoordinator

_GATEWAY_ID = re.compile(r"^[a-z0-9]{16,128}$")
CONF_GROUP_ID = "group_id"
CONF_NAME = "name"
CONF_MEMBERS = "members"
CONF_SEEDS = "seeds"


class I4TConfigFlow(ConfigFlow, domain=DOMAIN):
    """One config entry per gateway; its unique id is the gateway's address."""

    VERSION = 1

    def __init__(self) -> None:
        self._discovered: dict[str, GatewayInfo] = {}
        self._confirming: tuple[str, str] | None = None  # gateway id, name

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> OptionsFlow:
        return I4TOptionsFlow()

    @classmethod
    @callback
    def async_get_supported_subentry_types(
        cls, config_entry: ConfigEntry
    ) -> dict[str, type[ConfigSubentryFlow]]:
        return {SUBENTRY_GROUP: GroupSubentryFlow}

    # -- discovery ---------------------------------------------------------------------------

    async def async_step_mqtt(self, discovery_info: MqttServiceInfo) -> ConfigFlowResult:
        """A gateway announced itself on the broker (manifest mqtt matcher)."""
        info = GatewayInfo.from_payload(discovery_info.payload)
        if info is None:
            return self.async_abort(reason="invalid_discovery_info")
        return await self._discovered_gateway(info.gateway_id, info.name)

    async def async_step_bluetooth(
        self, discovery_info: BluetoothServiceInfoBleak
    ) -> ConfigFlowResult:
        """A BTHome or I4T beacon advert matched the manifest: things are not entries.

        They reach the gateway through the BLE bridge and show up as things to enroll, so
        the advert only leads to setting up a gateway when there is none yet.
        """
        if self._async_current_entries():
            return self.async_abort(reason="already_configured")
        return self.async_abort(reason="ble_thing_needs_gateway")

    async def async_step_hassio(self, discovery_info: HassioServiceInfo) -> ConfigFlowResult:
        """The I4T Gateway add-on announced itself through the Supervisor."""
        gateway_id = discovery_info.config.get(CONF_GATEWAY_ID)
        name = discovery_info.config.get(CONF_NAME) or discovery_info.name
        if not isinstance(gateway_id, str) or not _GATEWAY_ID.match(gateway_id):
            return self.async_abort(reason="invalid_discovery_info")
        return await self._discovered_gateway(gateway_id, str(name))

    async def _discovered_gateway(self, gateway_id: str, name: str) -> ConfigFlowResult:
        await self.async_set_unique_id(gateway_id)
        self._abort_if_unique_id_configured()
        self._confirming = (gateway_id, name)
        self.context["title_placeholders"] = {"name": name}
        return await self.async_step_discovery_confirm()

    async def async_step_discovery_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Ask before adding a discovered gateway."""
        assert self._confirming is not None
        gateway_id, name = self._confirming
        if user_input is not None:
            return self.async_create_entry(title=name, data={CONF_GATEWAY_ID: gateway_id})
        self._set_confirm_only()
        return self.async_show_form(
            step_id="discovery_confirm",
            description_placeholders={"name": name, "gateway_id": gateway_id},
        )

    # -- picking a gateway ----------------------------------------------------------------------

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Pick one of the gateways announced on the broker."""
        if user_input is not None:
            info = self._discovered[user_input[CONF_GATEWAY_ID]]
            # A discovery flow for the same gateway may be waiting: the user's choice wins,
            # and creating the entry ends that flow.
            await self.async_set_unique_id(info.gateway_id, raise_on_progress=False)
            self._abort_if_unique_id_configured()
            return self.async_create_entry(title=info.name, data={CONF_GATEWAY_ID: info.gateway_id})
        configured = self._async_current_ids(include_ignore=False)
        return await self._pick_gateway("user", exclude=configured)

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Check the gateway on the broker again and take its current name."""
        entry = self._get_reconfigure_entry()
        if user_input is not None:
            info = self._discovered[user_input[CONF_GATEWAY_ID]]
            await self.async_set_unique_id(info.gateway_id, raise_on_progress=False)
            self._abort_if_unique_id_mismatch(reason="wrong_gateway")
            return self.async_update_reload_and_abort(entry, title=info.name)
        return await self._pick_gateway("reconfigure", exclude=set())

    async def _pick_gateway(self, step_id: str, exclude: set[str | None]) -> ConfigFlowResult:
        if not await mqtt.async_wait_for_mqtt_client(self.hass):
            return self.async_abort(reason="mqtt_not_available")
        self._discovered = {
            gateway_id: info
            for gateway_id, info in (await self._async_scan()).items()
            if gateway_id not in exclude
        }
        if not self._discovered:
            return self.async_abort(reason="no_gateways_found")
        options = [
            SelectOptionDict(value=info.gateway_id, label=f"{info.name} ({info.gateway_id[:11]})")
            for info in sorted(self._discovered.values(), key=lambda info: info.name)
        ]
        selector = SelectSelector(SelectSelectorConfig(options=options))
        return self.async_show_form(
            step_id=step_id, data_schema=vol.Schema({vol.Required(CONF_GATEWAY_ID): selector})
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


class I4TOptionsFlow(OptionsFlow):
    """The gateway's timeout factor, the default quorum of new groups, the BLE bridge."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        options = self.config_entry.options
        if user_input is not None:
            entry: I4TConfigEntry = self.config_entry
            try:
                if user_input[CONF_TIMEOUT_FACTOR] != options.get(CONF_TIMEOUT_FACTOR):
                    await _loaded(entry).async_request(
                        "configure", timeout_factor=user_input[CONF_TIMEOUT_FACTOR]
                    )
            except (GatewayRequestError, _NotLoadedError):
                errors["base"] = "cannot_apply"
            else:
                return self.async_create_entry(data=user_input)
        schema = vol.Schema(
            {
                vol.Required(
                    CONF_TIMEOUT_FACTOR,
                    default=options.get(CONF_TIMEOUT_FACTOR, DEFAULT_TIMEOUT_FACTOR),
                ): NumberSelector(
                    NumberSelectorConfig(min=1, max=20, step=0.5, mode=NumberSelectorMode.BOX)
                ),
                vol.Required(
                    CONF_QUORUM, default=options.get(CONF_QUORUM, DEFAULT_QUORUM)
                ): SelectSelector(
                    SelectSelectorConfig(options=list(QUORUM_POLICIES), translation_key=CONF_QUORUM)
                ),
                vol.Required(
                    CONF_BLE_BRIDGE, default=options.get(CONF_BLE_BRIDGE, True)
                ): BooleanSelector(),
                vol.Required(
                    CONF_REMOTE_SCANNERS, default=options.get(CONF_REMOTE_SCANNERS, True)
                ): BooleanSelector(),
            }
        )
        return self.async_show_form(step_id="init", data_schema=schema, errors=errors)


class _NotLoadedError(Exception):
    """The gateway's entry is not loaded, so nothing can be sent to it."""


def _loaded(entry: I4TConfigEntry) -> I4TCoordinator:
    if entry.state is not ConfigEntryState.LOADED:
        raise _NotLoadedError
    return entry.runtime_data


class GroupSubentryFlow(ConfigSubentryFlow):
    """A node group: created, edited and deleted in the UI, carried out by the gateway."""

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> SubentryFlowResult:
        entry: I4TConfigEntry = self._get_entry()
        if entry.state is not ConfigEntryState.LOADED:
            return self.async_abort(reason="gateway_not_loaded")
        coordinator = entry.runtime_data
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if user_input is not None:
            # Our own id, marked as being created: the group's state reaches the coordinator
            # before the reply does, and must not get a second subentry meanwhile.
            group_id = secrets.token_hex(6)
            coordinator.group_entries.creating.add(group_id)
            try:
                await coordinator.async_request(
                    "group_create", group_id=group_id, **_group_body(user_input)
                )
            except GatewayRequestError as err:
                coordinator.group_entries.creating.discard(group_id)
                errors["base"] = "gateway_refused"
                placeholders = dict(err.translation_placeholders or {})
            else:
                return self.async_create_entry(
                    title=user_input[CONF_NAME],
                    data={CONF_GROUP_ID: group_id},
                    unique_id=group_id,
                )
        quorum = entry.options.get(CONF_QUORUM, DEFAULT_QUORUM)
        return self.async_show_form(
            step_id="user",
            data_schema=self.add_suggested_values_to_schema(
                _group_schema(coordinator, None), user_input or {CONF_QUORUM: quorum}
            ),
            errors=errors,
            description_placeholders=placeholders,
        )

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        entry: I4TConfigEntry = self._get_entry()
        subentry = self._get_reconfigure_subentry()
        if entry.state is not ConfigEntryState.LOADED:
            return self.async_abort(reason="gateway_not_loaded")
        coordinator = entry.runtime_data
        group_id = str(subentry.data[CONF_GROUP_ID])
        group = coordinator.data.groups.get(group_id)
        if group is None:
            return self.async_abort(reason="group_not_found")
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if user_input is not None:
            try:
                await coordinator.async_request(
                    "group_update", group_id=group_id, **_group_body(user_input)
                )
            except GatewayRequestError as err:
                errors["base"] = "gateway_refused"
                placeholders = dict(err.translation_placeholders or {})
            else:
                return self.async_update_and_abort(entry, subentry, title=user_input[CONF_NAME])
        current = user_input or {
            CONF_NAME: group.name,
            CONF_MEMBERS: list(group.members),
            CONF_SEEDS: [
                address
                for address in group.members
                if (node := coordinator.data.nodes.get(address)) is not None and node.role == "seed"
            ],
            CONF_QUORUM: _quorum_policy(group.quorum_kind, group.quorum_value),
        }
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(
                _group_schema(coordinator, group_id), current
            ),
            errors=errors,
            description_placeholders=placeholders,
        )


def _group_schema(coordinator: I4TCoordinator, group_id: str | None) -> vol.Schema:
    """Name, members (enrolled things in no other group), seeds among them, quorum policy."""
    candidates = [
        SelectOptionDict(value=node.address, label=node.name)
        for node in sorted(coordinator.data.nodes.values(), key=lambda node: node.name)
        if node.group_id in (None, group_id)
    ]
    many = SelectSelector(
        SelectSelectorConfig(options=candidates, multiple=True, mode=SelectSelectorMode.LIST)
    )
    return vol.Schema(
        {
            vol.Required(CONF_NAME): TextSelector(),
            vol.Required(CONF_MEMBERS): many,
            vol.Optional(CONF_SEEDS): many,
            vol.Required(CONF_QUORUM): SelectSelector(
                SelectSelectorConfig(options=list(QUORUM_POLICIES), translation_key=CONF_QUORUM)
            ),
        }
    )


def _group_body(user_input: dict[str, Any]) -> dict[str, Any]:
    seeds = set(user_input.get(CONF_SEEDS, []))
    return {
        "name": user_input[CONF_NAME],
        "quorum": QUORUM_POLICIES[user_input[CONF_QUORUM]],
        "members": [
            {"address": address, "role": "seed" if address in seeds else "worker"}
            for address in user_input[CONF_MEMBERS]
        ],
    }


def _quorum_policy(kind: str, value: int) -> str:
    for policy, quorum in QUORUM_POLICIES.items():
        if quorum == {"kind": kind, "value": value}:
            return policy
    return DEFAULT_QUORUM
