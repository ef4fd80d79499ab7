"""The add-on's options (``/data/options.json``) and the Supervisor's broker, as gateway Settings.

The Supervisor writes the options the user set in the add-on's Configuration tab to
``/data/options.json`` (validated against the ``schema`` in addon/config.yaml, but read here as
untrusted all the same). The local broker is not an option: it is the Supervisor's ``mqtt``
service. Credentials therefore never pass through a command line or a shell script.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
from typing import Any, Final

from .identity import Address, AddressError
from .mqtt_devices import (
    DefinitionError,
    DeviceTemplateOptions,
    MqttDeviceDefinition,
    definition_from_template,
)
from .settings import LOG_LEVELS, BrokerAddress, Settings, SettingsError
from .supervisor import MqttService

OPTIONS_FILE_ENV: Final = "I4T_ADDON_OPTIONS"
DATA_DIR_ENV: Final = "I4T_DATA_DIR"
ADDON_DATA_DIR: Final = Path("/data")
"""The add-on's persistent folder: kept across updates, included in backups."""
DEFAULT_OPTIONS_FILE: Final = ADDON_DATA_DIR / "options.json"
MAX_NAME_LENGTH: Final = 100
UPSTREAM_OPTIONS: Final = ("upstream_url", "upstream_router_id", "upstream_token")


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """The regional router the gateway forwards to (the fields of links.RouterLink).

    ``router`` is the router's I4T address: its acks are accepted only when it signed them.
    ``token`` is the signed access token its operator issued; it travels as the MQTT password.
    """

    broker: BrokerAddress
    router: Address
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AddonOptions:
    """The add-on's options, checked."""

    name: str = "I4T Gateway"
    log_level: str = "info"
    upstream: UpstreamOptions | None = None
    mqtt_devices: tuple[MqttDeviceDefinition, ...] = ()
    lan_peers: bool = True
    lan_allowed_peers: tuple[str, ...] = ()


def options_path(environ: Mapping[str, str] | None = None) -> Path:
    """/data/options.json, or I4T_ADDON_OPTIONS (for tests and development)."""
    env = os.environ if environ is None else environ
    return Path(env.get(OPTIONS_FILE_ENV) or DEFAULT_OPTIONS_FILE)


def addon_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """/data, or I4T_DATA_DIR (for tests and development)."""
    env = os.environ if environ is None else environ
    return Path(env.get(DATA_DIR_ENV) or ADDON_DATA_DIR)


def load_options(path: Path) -> AddonOptions:
    """Read and check the options file; SettingsError says what is wrong."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"add-on options not found at {path}") from None
    except (OSError, ValueError) as err:
        raise SettingsError(f"cannot read the add-on options at {path}: {err}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"the add-on options at {path} are not a JSON object")
    return parse_options(raw)


def parse_options(raw: Mapping[str, Any]) -> AddonOptions:
    """Check the options' values; unknown keys are ignored (an older add-on's leftovers)."""
    name = raw.get("name", "I4T Gateway")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise SettingsError(f"option name must be 1-{MAX_NAME_LENGTH} characters")
    log_level = raw.get("log_level", "info")
    if log_level not in LOG_LEVELS:
        raise SettingsError(f"option log_level must be one of {', '.join(LOG_LEVELS)}")
    lan_peers = raw.get("lan_peers", True)
    if not isinstance(lan_peers, bool):
        raise SettingsError("option lan_peers must be true or false")
    return AddonOptions(
        name=name.strip(),
        lan_peers=lan_peers,
        lan_allowed_peers=_allowed_peers(raw.get("lan_allowed_peers", [])),
        log_level=str(log_level),
        upstream=_upstream(raw),
        mqtt_devices=_mqtt_devices(raw.get("mqtt_devices", [])),
    )


def _allowed_peers(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise SettingsError("option lan_allowed_peers must be a list of gateway addresses")
    for address in raw:
        try:
            Address.from_text(str(address).strip())
        except AddressError:
            raise SettingsError(
                f"option lan_allowed_peers: {address!r} is not a gateway's I4T address"
            ) from None
    return tuple(str(address).strip() for address in raw)


def _upstream(raw: Mapping[str, Any]) -> UpstreamOptions | None:
    given: dict[str, str] = {}
    for key in UPSTREAM_OPTIONS:
        value = raw.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            raise SettingsError(f"option {key} must be a text")
        given[key] = value
    if not given:
        return None
    missing = [key for key in UPSTREAM_OPTIONS if key not in given]
    if missing:
        raise SettingsError(
            f"a regional router needs all of {', '.join(UPSTREAM_OPTIONS)}; "
            f"missing: {', '.join(missing)}"
        )
    broker = BrokerAddress.from_url(given["upstream_url"])
    if broker.username is not None or broker.password is not None:
        # A password in a URL option would show in clear text in the UI: use the token field.
        raise SettingsError("option upstream_url must not carry credentials: use upstream_token")
    try:
        router = Address.from_text(given["upstream_router_id"])
    except AddressError as err:
        raise SettingsError(f"option upstream_router_id is not an I4T address: {err}") from None
    return UpstreamOptions(broker=broker, router=router, token=given["upstream_token"])


def _mqtt_devices(raw: object) -> tuple[MqttDeviceDefinition, ...]:
    if not isinstance(raw, list):
        raise SettingsError("option mqtt_devices must be a list")
    definitions: list[MqttDeviceDefinition] = []
    for number, item in enumerate(raw, start=1):
        try:
            definitions.append(definition_from_template(_template_options(item)))
        except DefinitionError as err:
            raise SettingsError(f"option mqtt_devices, device {number}: {err}") from None
    ids = [definition.local_id for definition in definitions]
    duplicates = sorted({local_id for local_id in ids if ids.count(local_id) > 1})
    if duplicates:
        raise SettingsError(f"option mqtt_devices: ids used twice: {', '.join(duplicates)}")
    return tuple(definitions)


def _template_options(item: object) -> DeviceTemplateOptions:
    if not isinstance(item, dict):
        raise DefinitionError("must be an object with id, template and topic")
    values = {key: item.get(key) for key in ("id", "template", "topic", "name", "sensors")}
    for key in ("id", "template", "topic"):
        if not isinstance(values[key], str) or not values[key]:
            raise DefinitionError(f"{key} must be a non-empty text")
    for key in ("name", "sensors"):
        if values[key] is not None and not isinstance(values[key], str):
            raise DefinitionError(f"{key} must be a text")
    sensors = str(values["sensors"] or "")
    return DeviceTemplateOptions(
        local_id=str(values["id"]),
        template=str(values["template"]),
        topic=str(values["topic"]),
        name=str(values["name"]) if values["name"] else None,
        # A comma-separated text: the add-on schema cannot nest a list inside a list item.
        sensors=tuple(part.strip() for part in sensors.split(",") if part.strip()),
    )


def settings_from_addon(
    options: AddonOptions, mqtt: MqttService, data_dir: Path = ADDON_DATA_DIR
) -> Settings:
    """The gateway's Settings in the add-on: the Supervisor's broker, the user's options."""
    return Settings(
        data_dir=data_dir,
        broker=mqtt.broker(),
        name=options.name,
        log_level=options.log_level,
        mqtt_devices=tuple(options.mqtt_devices),
        lan_peers=options.lan_peers,
        lan_allow=options.lan_allowed_peers,
        **_upstream_settings(options),
    )


def _upstream_settings(options: AddonOptions) -> dict[str, Any]:
    upstream = options.upstream
    if upstream is None:
        return {}
    broker = upstream.broker
    scheme = "mqtts" if broker.tls else "mqtt"
    return {
        "upstream_url": f"{scheme}://{broker.host}:{broker.port}",
        "upstream_token": upstream.token,
        "upstream_router": upstream.router.text,
    }
