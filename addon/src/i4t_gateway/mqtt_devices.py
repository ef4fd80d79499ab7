"""Adopted MQTT devices: Tasmota, ESPHome over MQTT, Shelly and the like, set up by configuration.

A device that already speaks MQTT on the local broker is adopted with a *definition*: which
topics carry its state, where each value sits in the payload, which topic is its last will, and
what counts as a fault. A :class:`DeviceAdapter` subscribes to those topics and turns every
message into a :class:`DeviceEvent` for the health engine: readings with a reported status
(healthy or broken), or an explicit ``offline`` when the device's last will says so. DEAD from
silence is not decided here: that is the health engine's job, from the events' timing.

Such a device cannot sign, so the gateway speaks for it with a proxy identity
(:func:`proxied_address`, :func:`proxy_for`).

Payloads are untrusted: anything malformed is dropped and counted in ``DeviceAdapter.dropped``,
and nothing raises out of the message handler. Values are found with a small path syntax
(``ENERGY.Power``, ``$.temperature``, ``list[0].value``), never by evaluating code.

How the server feeds the health engine from the events (the node key is
``proxied_address(gateway key, local_id).bytes``):

- STATE, not retained: the device was heard now, saying ``status`` (HEALTHY or BROKEN) and
  ``readings``. Retained STATE messages are the broker's memory, possibly hours old: show their
  readings, but do not count them as the device being heard.
- ONLINE: heard now (when not retained); ``status`` is the last status its state reported, so
  a device that was BROKEN stays BROKEN until a clean state says otherwise.
- OFFLINE: the device's last will or its own goodbye: declare it DEAD now rather than waiting
  for its timeout. A retained OFFLINE at start-up means it was already gone.

The JSON form of a definition is specified by ``schemas/mqtt_device.schema.json``;
:func:`definition_from_json` checks the same rules without a schema library (the gateway has no
such dependency) and :meth:`MqttDeviceDefinition.to_json` writes that form back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
import json
import logging
import math
import re
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .health import NodeStatus
from .identity import Address, Identity
from .wire import Proxy

_LOGGER = logging.getLogger(__name__)

MAX_PAYLOAD_SIZE: Final = 64 * 1024
"""Larger payloads are dropped unread: no sensor status is that big, and parsing costs memory."""

LOCAL_ID_PREFIX: Final = b"mqtt:"
"""Namespaces the proxied local id, so an MQTT device never shares an address with a BLE thing
that the same gateway proxies under the same text (e.g. both called ``kitchen``)."""

LOCAL_ID_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,58}$")
VALUE_KEY_PATTERN: Final = re.compile(r"^[a-z0-9_]{1,64}$")
_PATH_KEY = r"[A-Za-z0-9_:-]+"
_PATH_SEGMENT: Final = re.compile(rf"\.({_PATH_KEY})|\[(\d+)\]")
MAX_PATH_DEPTH: Final = 8
RESERVED_TOPIC_ROOT: Final = "i4t"

type Scalar = str | int | float | bool
type MessageHandler = Callable[[str, bytes, bool], None]
"""handler(topic, payload, retained), as bus.MqttBus delivers (not imported from bus, so that
settings can refer to definitions without an import cycle)."""
type Subscribe = Callable[[str, MessageHandler], None]


class DefinitionError(ValueError):
    """A device definition breaks a rule; the message says where and why."""


class PayloadFormat(StrEnum):
    """How a state topic's payload is read."""

    JSON = "json"
    RAW = "raw"


class ValueType(StrEnum):
    """What a value is converted to before it becomes a reading."""

    NUMBER = "number"
    BOOL = "bool"
    TEXT = "text"


class DeviceEventKind(StrEnum):
    """What a device event says."""

    STATE = "state"
    """A state message: readings and the device's reported status (healthy or broken)."""
    ONLINE = "online"
    """The availability topic says online: a sign of life, with no readings; ``status`` is the
    last status the device's state reported."""
    OFFLINE = "offline"
    """The availability topic says offline (usually the device's MQTT last will)."""


# -- value paths ---------------------------------------------------------------------------------


class _Missing:
    """The path leads nowhere in this payload (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class ValuePath:
    """A path into a JSON document: object keys and list indexes, nothing else.

    ``ENERGY.Power``, ``$.temperature``, ``$.sensors[0].tC``; ``$`` alone (or the empty
    path) is the whole document.
    """

    segments: tuple[str | int, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> ValuePath:
        rest = text[1:] if text.startswith("$") else text
        if not text.startswith("$") and not rest.startswith("["):
            rest = "." + rest  # a bare first key, as in ENERGY.Power
        segments: list[str | int] = []
        position = 0
        while position < len(rest):
            match = _PATH_SEGMENT.match(rest, position)
            if match is None:
                raise DefinitionError(f"not a value path: {text!r}")
            key, index = match.groups()
            segments.append(key if key is not None else int(index))
            position = match.end()
        if len(segments) > MAX_PATH_DEPTH:
            raise DefinitionError(f"value path deeper than {MAX_PATH_DEPTH}: {text!r}")
        return cls(tuple(segments), text)

    def extract(self, document: object) -> object:
        """The value at this path, or MISSING."""
        current = document
        for segment in self.segments:
            if isinstance(segment, int):
                if not isinstance(current, list) or segment >= len(current):
                    return MISSING
                current = current[segment]
            else:
                if not isinstance(current, dict) or segment not in current:
                    return MISSING
                current = current[segment]
        return current


# -- definitions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """One value of a state topic and how it becomes a reading.

    ``path`` is None for a raw payload (the whole payload is the value). ``scale`` multiplies
    numbers (e.g. 0.001 for Wh to kWh). A number outside ``[minimum, maximum]`` (after scaling)
    makes the device BROKEN: the value is still reported, flagged, as the brief requires.
    """

    key: str
    path: ValuePath | None = None
    type: ValueType = ValueType.NUMBER
    unit: str | None = None
    device_class: str | None = None
    scale: float | None = None
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, slots=True)
class FaultRule:
    """A value in a state payload that means the device reports a fault.

    With ``equals``, a fault is any of those values at ``path``; without, any truthy value
    there (a non-empty error list, ``true``, a non-zero code). ``path`` None is the raw payload.
    """

    reason: str
    path: ValuePath | None = None
    equals: tuple[Scalar, ...] = ()


@dataclass(frozen=True, slots=True)
class StateTopic:
    """A topic that carries some of the device's state."""

    topic: str
    values: tuple[ValueSpec, ...]
    format: PayloadFormat = PayloadFormat.JSON
    faults: tuple[FaultRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Availability:
    """The device's availability topic (usually its MQTT last will) and its two payloads."""

    topic: str
    online: str = "online"
    offline: str = "offline"


@dataclass(frozen=True, slots=True)
class MqttDeviceDefinition:
    """Everything the gateway needs to adopt one MQTT device."""

    local_id: str
    name: str
    states: tuple[StateTopic, ...]
    availability: Availability | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        _check_definition(self)

    def topics(self) -> list[str]:
        """Every topic the adapter subscribes to."""
        topics = [state.topic for state in self.states]
        if self.availability is not None:
            topics.append(self.availability.topic)
        return topics

    def to_json(self) -> dict[str, Any]:
        """The JSON form (schemas/mqtt_device.schema.json), without fields at their default."""
        document: dict[str, Any] = {
            "id": self.local_id,
            "name": self.name,
            "states": [_state_to_json(state) for state in self.states],
        }
        if self.model is not None:
            document["model"] = self.model
        if self.availability is not None:
            document["availability"] = {
                "topic": self.availability.topic,
                "online": self.availability.online,
                "offline": self.availability.offline,
            }
        return document


def _check_definition(definition: MqttDeviceDefinition) -> None:
    if not LOCAL_ID_PATTERN.match(definition.local_id):
        raise DefinitionError(
            f"device id {definition.local_id!r} must be 1-59 characters of a-z, 0-9, _ . - "
            "starting with a letter or digit"
        )
    if not definition.name.strip():
        raise DefinitionError(f"device {definition.local_id}: the name is empty")
    if not definition.states:
        raise DefinitionError(f"device {definition.local_id}: no state topic")
    seen_keys: set[str] = set()
    for state in definition.states:
        _check_state(definition.local_id, state, seen_keys)
    if definition.availability is not None:
        availability = definition.availability
        _check_topic(definition.local_id, availability.topic)
        if availability.online == availability.offline:
            raise DefinitionError(
                f"device {definition.local_id}: online and offline payloads are the same"
            )
    topics = definition.topics()
    if len(set(topics)) != len(topics):
        raise DefinitionError(f"device {definition.local_id}: a topic is listed twice")


def _check_state(local_id: str, state: StateTopic, seen_keys: set[str]) -> None:
    _check_topic(local_id, state.topic)
    if not state.values and not state.faults:
        raise DefinitionError(f"device {local_id}: {state.topic} has neither values nor faults")
    for value in state.values:
        if not VALUE_KEY_PATTERN.match(value.key):
            raise DefinitionError(f"device {local_id}: value key {value.key!r} is not a-z0-9_")
        if value.key in seen_keys:
            raise DefinitionError(f"device {local_id}: value key {value.key!r} is used twice")
        seen_keys.add(value.key)
        if state.format is PayloadFormat.RAW and value.path is not None:
            raise DefinitionError(f"device {local_id}: raw topic {state.topic} has a value path")
        if state.format is PayloadFormat.JSON and value.path is None:
            raise DefinitionError(f"device {local_id}: value {value.key!r} needs a path")
        if value.scale is not None and not math.isfinite(value.scale):
            raise DefinitionError(f"device {local_id}: value {value.key!r} has a bad scale")
        if (
            value.minimum is not None
            and value.maximum is not None
            and value.minimum > value.maximum
        ):
            raise DefinitionError(f"device {local_id}: value {value.key!r} has min > max")
    if state.format is PayloadFormat.RAW and len(state.values) > 1:
        raise DefinitionError(f"device {local_id}: raw topic {state.topic} has several values")


def _check_topic(local_id: str, topic: str) -> None:
    # Exact topics only: a wildcard would let one definition (one local id) adopt many devices.
    if not topic or "+" in topic or "#" in topic or "\x00" in topic or len(topic) > 512:
        raise DefinitionError(f"device {local_id}: {topic!r} is not a concrete MQTT topic")
    # The gateway's own namespace: a "device" there could read or impersonate I4T traffic.
    if topic == RESERVED_TOPIC_ROOT or topic.startswith(RESERVED_TOPIC_ROOT + "/"):
        raise DefinitionError(
            f"device {local_id}: topics under {RESERVED_TOPIC_ROOT}/ are the gateway's"
        )


def _state_to_json(state: StateTopic) -> dict[str, Any]:
    document: dict[str, Any] = {
        "topic": state.topic,
        "values": [_value_to_json(value) for value in state.values],
    }
    if state.format is not PayloadFormat.JSON:
        document["format"] = state.format.value
    if state.faults:
        document["faults"] = [_fault_to_json(fault) for fault in state.faults]
    return document


def _value_to_json(value: ValueSpec) -> dict[str, Any]:
    document: dict[str, Any] = {"key": value.key}
    if value.path is not None:
        document["path"] = value.path.text
    if value.type is not ValueType.NUMBER:
        document["type"] = value.type.value
    optional = {
        "unit": value.unit,
        "device_class": value.device_class,
        "scale": value.scale,
        "min": value.minimum,
        "max": value.maximum,
    }
    document.update({name: item for name, item in optional.items() if item is not None})
    return document


def _fault_to_json(fault: FaultRule) -> dict[str, Any]:
    document: dict[str, Any] = {"reason": fault.reason}
    if fault.path is not None:
        document["path"] = fault.path.text
    if fault.equals:
        document["equals"] = list(fault.equals)
    return document


# -- the JSON form, read without a schema library ------------------------------------------------


def definition_from_json(document: object) -> MqttDeviceDefinition:
    """Build a definition from its JSON form; DefinitionError says what is wrong."""
    where = "device"
    obj = _object(document, where, required={"id", "name", "states"}, allowed=_DEVICE_FIELDS)
    local_id = _string(obj["id"], f"{where}.id")
    where = f"device {local_id}"
    states = _list(obj["states"], f"{where}.states")
    availability = None
    if "availability" in obj:
        availability = _availability_from_json(obj["availability"], f"{where}.availability")
    return MqttDeviceDefinition(
        local_id=local_id,
        name=_string(obj["name"], f"{where}.name"),
        model=_string(obj["model"], f"{where}.model") if "model" in obj else None,
        states=tuple(
            _state_from_json(state, f"{where}.states[{n}]") for n, state in enumerate(states)
        ),
        availability=availability,
    )


def definition_for_enrolment(
    local_id: str, name: str, device: Mapping[str, Any]
) -> MqttDeviceDefinition:
    """The definition of an ``enroll`` command of kind mqtt (docs/API.md): ``id`` and ``name``
    come from the command; the ``device`` object may repeat them, but must then agree."""
    if not isinstance(device, Mapping):
        raise DefinitionError("device must be an object")
    for field_name, value in (("id", local_id), ("name", name)):
        if field_name in device and device[field_name] != value:
            raise DefinitionError(f"device.{field_name} differs from the command's {field_name}")
    return definition_from_json({**device, "id": local_id, "name": name})


def definitions_from_json(document: object) -> list[MqttDeviceDefinition]:
    """A list of definitions; ids must be unique."""
    definitions = [
        definition_from_json(item) for item in _list(document, "devices", allow_empty=True)
    ]
    ids = [definition.local_id for definition in definitions]
    duplicates = sorted({local_id for local_id in ids if ids.count(local_id) > 1})
    if duplicates:
        raise DefinitionError(f"device ids used more than once: {', '.join(duplicates)}")
    return definitions


_DEVICE_FIELDS: Final = frozenset({"id", "name", "model", "states", "availability"})
_STATE_FIELDS: Final = frozenset({"topic", "format", "values", "faults"})
_VALUE_FIELDS: Final = frozenset(
    {"key", "path", "type", "unit", "device_class", "scale", "min", "max"}
)
_FAULT_FIELDS: Final = frozenset({"reason", "path", "equals"})
_AVAILABILITY_FIELDS: Final = frozenset({"topic", "online", "offline"})


def _state_from_json(document: object, where: str) -> StateTopic:
    obj = _object(document, where, required={"topic", "values"}, allowed=_STATE_FIELDS)
    payload_format = _enum(PayloadFormat, obj.get("format", "json"), f"{where}.format")
    values = _list(obj["values"], f"{where}.values", allow_empty=True)
    faults = _list(obj.get("faults", []), f"{where}.faults", allow_empty=True)
    return StateTopic(
        topic=_string(obj["topic"], f"{where}.topic"),
        format=payload_format,
        values=tuple(_value_from_json(v, f"{where}.values[{n}]") for n, v in enumerate(values)),
        faults=tuple(_fault_from_json(f, f"{where}.faults[{n}]") for n, f in enumerate(faults)),
    )


def _value_from_json(document: object, where: str) -> ValueSpec:
    obj = _object(document, where, required={"key"}, allowed=_VALUE_FIELDS)
    return ValueSpec(
        key=_string(obj["key"], f"{where}.key"),
        path=_path(obj, where),
        type=_enum(ValueType, obj.get("type", "number"), f"{where}.type"),
        unit=_optional_string(obj, "unit", where),
        device_class=_optional_string(obj, "device_class", where),
        scale=_optional_number(obj, "scale", where),
        minimum=_optional_number(obj, "min", where),
        maximum=_optional_number(obj, "max", where),
    )


def _fault_from_json(document: object, where: str) -> FaultRule:
    obj = _object(document, where, required={"reason"}, allowed=_FAULT_FIELDS)
    equals = _list(obj.get("equals", []), f"{where}.equals", allow_empty=True)
    for n, item in enumerate(equals):
        if not isinstance(item, str | int | float | bool):
            raise DefinitionError(f"{where}.equals[{n}] must be a string, number or boolean")
    return FaultRule(
        reason=_string(obj["reason"], f"{where}.reason"),
        path=_path(obj, where),
        equals=tuple(equals),
    )


def _availability_from_json(document: object, where: str) -> Availability:
    obj = _object(document, where, required={"topic"}, allowed=_AVAILABILITY_FIELDS)
    return Availability(
        topic=_string(obj["topic"], f"{where}.topic"),
        online=_string(obj.get("online", "online"), f"{where}.online"),
        offline=_string(obj.get("offline", "offline"), f"{where}.offline"),
    )


def _object(
    document: object, where: str, *, required: set[str], allowed: frozenset[str]
) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise DefinitionError(f"{where} must be an object")
    missing = sorted(required - document.keys())
    if missing:
        raise DefinitionError(f"{where} lacks {', '.join(missing)}")
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise DefinitionError(f"{where} has unknown fields: {', '.join(map(str, unknown))}")
    return document


def _list(document: object, where: str, *, allow_empty: bool = False) -> list[Any]:
    if not isinstance(document, list):
        raise DefinitionError(f"{where} must be a list")
    if not document and not allow_empty:
        raise DefinitionError(f"{where} is empty")
    return document


def _string(document: object, where: str) -> str:
    if not isinstance(document, str) or not document:
        raise DefinitionError(f"{where} must be a non-empty string")
    return document


def _optional_string(obj: Mapping[str, Any], name: str, where: str) -> str | None:
    return _string(obj[name], f"{where}.{name}") if name in obj else None


def _optional_number(obj: Mapping[str, Any], name: str, where: str) -> float | None:
    if name not in obj:
        return None
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DefinitionError(f"{where}.{name} must be a number")
    return float(value)


def _path(obj: Mapping[str, Any], where: str) -> ValuePath | None:
    if "path" not in obj:
        return None
    return ValuePath.parse(_string(obj["path"], f"{where}.path"))


def _enum[E: StrEnum](kind: type[E], value: object, where: str) -> E:
    if isinstance(value, str) and value in kind.__members__.values():
        return kind(value)
    choices = ", ".join(member.value for member in kind)
    raise DefinitionError(f"{where} must be one of {choices}")


# -- proxy identity ------------------------------------------------------------------------------


def local_id_bytes(local_id: str) -> bytes:
    """The bytes the proxied address is derived from (namespaced, see LOCAL_ID_PREFIX)."""
    if not LOCAL_ID_PATTERN.match(local_id):
        raise DefinitionError(f"not a device id: {local_id!r}")
    return LOCAL_ID_PREFIX + local_id.encode()


def proxied_address(gateway_key: bytes | Ed25519PublicKey, local_id: str) -> Address:
    """The I4T address of an adopted device, bound to the gateway that speaks for it."""
    return Address.for_proxied(gateway_key, local_id_bytes(local_id))


def proxy_for(gateway: Identity, local_id: str) -> Proxy:
    """The packet's proxy field when ``gateway`` signs for the device ``local_id``."""
    return Proxy(gateway=gateway.address, local_id=local_id_bytes(local_id))


# -- the adapter ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """One value a device reported."""

    key: str
    value: Scalar
    unit: str | None = None
    device_class: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """What one message from a device means for the gateway.

    ``status`` is set for STATE and ONLINE events, None for OFFLINE (the health engine decides
    DEAD, see the module docstring). ``faults`` lists every fault currently reported
    over all the device's state topics (so BROKEN clears only when each topic is clean again).
    ``retained`` events were stored by the broker: at subscribe time they may be hours old, so
    the health engine should not count them as the device being heard now.
    """

    local_id: str
    kind: DeviceEventKind
    topic: str
    retained: bool
    readings: tuple[Reading, ...] = ()
    status: NodeStatus | None = None
    faults: tuple[str, ...] = ()


class _Malformed(Exception):  # noqa: N818 - internal signal, never leaves this module
    """A payload the definition cannot read; the argument is the counter's name."""


class DeviceAdapter:
    """Turns one adopted device's MQTT messages into DeviceEvents.

    ``attach(subscribe)`` subscribes through the server's bus; ``handle`` is the message handler
    (called on the bus's loop thread, so no locking). It never raises: a malformed message is
    dropped and counted in ``dropped`` by reason.
    """

    def __init__(
        self, definition: MqttDeviceDefinition, on_event: Callable[[DeviceEvent], None]
    ) -> None:
        self.definition = definition
        self._on_event = on_event
        self._states = {state.topic: state for state in definition.states}
        self._faults_by_topic: dict[str, tuple[str, ...]] = {}
        self.dropped: Counter[str] = Counter()
        self.last_readings: dict[str, Reading] = {}

    @property
    def status(self) -> NodeStatus:
        """HEALTHY unless some state topic's latest message reported a fault."""
        return NodeStatus.BROKEN if self.faults else NodeStatus.HEALTHY

    @property
    def faults(self) -> tuple[str, ...]:
        return tuple(reason for reasons in self._faults_by_topic.values() for reason in reasons)

    def attach(self, subscribe: Subscribe) -> None:
        """Subscribe to every topic of the device."""
        for topic in self.definition.topics():
            subscribe(topic, self.handle)

    def handle(self, topic: str, payload: bytes, retained: bool) -> None:
        """The bus handler: one message in, at most one event out."""
        try:
            event = self._event_for(topic, payload, retained)
        except _Malformed as err:
            self.dropped[str(err)] += 1
            _LOGGER.debug("dropped a message of device %s: %s", self.definition.local_id, err)
            return
        self._on_event(event)

    def _event_for(self, topic: str, payload: bytes, retained: bool) -> DeviceEvent:
        if len(payload) > MAX_PAYLOAD_SIZE:
            raise _Malformed("too_large")
        availability = self.definition.availability
        if availability is not None and topic == availability.topic:
            return self._availability_event(availability, topic, payload, retained)
        state = self._states.get(topic)
        if state is None:
            raise _Malformed("unknown_topic")
        return self._state_event(state, payload, retained)

    def _availability_event(
        self, availability: Availability, topic: str, payload: bytes, retained: bool
    ) -> DeviceEvent:
        text = _decode_text(payload)
        if text == availability.online:
            kind = DeviceEventKind.ONLINE
        elif text == availability.offline:
            kind = DeviceEventKind.OFFLINE
        else:
            raise _Malformed("unknown_availability")
        if kind is DeviceEventKind.OFFLINE:
            return DeviceEvent(self.definition.local_id, kind, topic, retained)
        return DeviceEvent(
            self.definition.local_id,
            kind,
            topic,
            retained,
            status=self.status,
            faults=self.faults,
        )

    def _state_event(self, state: StateTopic, payload: bytes, retained: bool) -> DeviceEvent:
        document = _decode_document(state.format, payload)
        readings: list[Reading] = []
        faults = [fault.reason for fault in state.faults if _fault_holds(fault, document)]
        for spec in state.values:
            found = spec.path.extract(document) if spec.path is not None else document
            if found is MISSING or found is None:
                continue  # e.g. Tasmota omits a sensor it could not read this time
            value, fault = _convert(spec, found)
            if fault is not None:
                faults.append(fault)
            if value is not None:
                reading = Reading(spec.key, value, spec.unit, spec.device_class)
                readings.append(reading)
                self.last_readings[spec.key] = reading
        if state.values and not readings and not faults:
            # Alive but reporting none of its values: Tasmota, for one, simply omits a sensor
            # it cannot read any more. The device is heard, its probe is not: BROKEN.
            faults.append(f"{state.topic}: none of its values")
        self._faults_by_topic[state.topic] = tuple(faults)
        return DeviceEvent(
            self.definition.local_id,
            DeviceEventKind.STATE,
            state.topic,
            retained,
            readings=tuple(readings),
            status=self.status,
            faults=self.faults,
        )


def _decode_text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _Malformed("not_utf8") from None


def _decode_document(payload_format: PayloadFormat, payload: bytes) -> object:
    """The raw text, or the parsed JSON object or list."""
    text = _decode_text(payload)
    if payload_format is PayloadFormat.RAW:
        return text
    try:
        # Python's json accepts NaN and Infinity; they are not JSON and no device sends them.
        document = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise _Malformed("not_json") from None
    if not isinstance(document, dict | list):
        raise _Malformed("not_object")
    return document


def _refuse_constant(name: str) -> object:
    raise ValueError(name)


def _fault_holds(fault: FaultRule, document: object) -> bool:
    found = fault.path.extract(document) if fault.path is not None else document
    if found is MISSING or found is None:
        return False
    if fault.equals:
        return any(_same_scalar(found, expected) for expected in fault.equals)
    return bool(found)


def _same_scalar(found: object, expected: Scalar) -> bool:
    # True == 1 in Python; a fault code 1 must not match a JSON true, nor the other way round.
    if isinstance(found, bool) or isinstance(expected, bool):
        return isinstance(found, bool) and isinstance(expected, bool) and found is expected
    return found == expected


def _convert(spec: ValueSpec, found: object) -> tuple[Scalar | None, str | None]:
    """The reading's value and a fault reason, either may be None."""
    if spec.type is ValueType.TEXT:
        if isinstance(found, dict | list):
            raise _Malformed("bad_value")
        return (found if isinstance(found, str) else json.dumps(found)), None
    if spec.type is ValueType.BOOL:
        return _to_bool(found), None
    number = _to_number(found)
    if math.isnan(number):
        # ESPHome publishes "nan" when its sensor has no valid reading: the device's own fault.
        return None, f"{spec.key}: no valid reading"
    if spec.scale is not None:
        number *= spec.scale
    if (spec.minimum is not None and number < spec.minimum) or (
        spec.maximum is not None and number > spec.maximum
    ):
        return number, f"{spec.key}: out of range"
    return number, None


def _to_number(found: object) -> float:
    if isinstance(found, bool):
        raise _Malformed("bad_value")
    if isinstance(found, int | float):
        return float(found)
    if isinstance(found, str):
        try:
            number = float(found)
        except ValueError:
            raise _Malformed("bad_value") from None
        if math.isinf(number):
            raise _Malformed("bad_value")
        return number
    raise _Malformed("bad_value")


_TRUE_WORDS: Final = frozenset({"on", "true", "1", "yes", "online", "open"})
_FALSE_WORDS: Final = frozenset({"off", "false", "0", "no", "offline", "closed"})


def _to_bool(found: object) -> bool:
    if isinstance(found, bool):
        return found
    if isinstance(found, int) and found in (0, 1):
        return bool(found)
    if isinstance(found, str):
        word = found.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _Malformed("bad_value")


class DeviceFleet:
    """Every adopted device of one gateway: adopt, release, re-adopt, with one owner per topic.

    The bus cannot unsubscribe, and a broker may still deliver a few messages after a device
    is removed; so each topic is subscribed once with a handler that looks up the topic's
    current owner, and a released device's messages are simply not routed any more (counted as
    ``released``). Events of every device go to one ``on_event``.
    """

    def __init__(self, subscribe: Subscribe, on_event: Callable[[DeviceEvent], None]) -> None:
        self._subscribe = subscribe
        self._on_event = on_event
        self._adapters: dict[str, DeviceAdapter] = {}
        self._owners: dict[str, DeviceAdapter] = {}
        self._subscribed: set[str] = set()
        self.unrouted: Counter[str] = Counter()

    def __contains__(self, local_id: object) -> bool:
        return local_id in self._adapters

    def __len__(self) -> int:
        return len(self._adapters)

    def get(self, local_id: str) -> DeviceAdapter | None:
        return self._adapters.get(local_id)

    def adopt(self, definition: MqttDeviceDefinition) -> DeviceAdapter:
        """Start reading a device; a device of the same id is replaced (a new definition)."""
        self.release(definition.local_id)
        taken = [topic for topic in definition.topics() if topic in self._owners]
        if taken:
            owner = self._owners[taken[0]].definition.local_id
            raise DefinitionError(
                f"device {definition.local_id}: {taken[0]} already belongs to device {owner}"
            )
        adapter = DeviceAdapter(definition, self._on_event)
        self._adapters[definition.local_id] = adapter
        for topic in definition.topics():
            self._owners[topic] = adapter
            if topic not in self._subscribed:
                self._subscribed.add(topic)
                self._subscribe(topic, self._route)
        return adapter

    def release(self, local_id: str) -> bool:
        """Stop reading a device (its topics stay subscribed but unrouted); False if unknown."""
        adapter = self._adapters.pop(local_id, None)
        if adapter is None:
            return False
        for topic in adapter.definition.topics():
            if self._owners.get(topic) is adapter:
                del self._owners[topic]
        return True

    def dropped(self) -> Counter[str]:
        """Dropped messages of all current devices by reason, plus unrouted ones."""
        total: Counter[str] = Counter(self.unrouted)
        for adapter in self._adapters.values():
            total.update(adapter.dropped)
        return total

    def _route(self, topic: str, payload: bytes, retained: bool) -> None:
        adapter = self._owners.get(topic)
        if adapter is None:
            self.unrouted["released"] += 1
            return
        adapter.handle(topic, payload, retained)


# -- templates -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quantity:
    """Metadata of a well-known quantity, shared by the templates."""

    unit: str | None
    device_class: str | None
    minimum: float | None = None
    maximum: float | None = None
    type: ValueType = ValueType.NUMBER


_TASMOTA_FIELDS: Final[Mapping[str, Quantity]] = {
    "Temperature": Quantity("°C", "temperature", -60.0, 150.0),
    "Humidity": Quantity("%", "humidity", 0.0, 100.0),
    "DewPoint": Quantity("°C", "temperature"),
    "Pressure": Quantity("hPa", "pressure", 300.0, 1200.0),
    "Illuminance": Quantity("lx", "illuminance", 0.0),
    "CarbonDioxide": Quantity("ppm", "carbon_dioxide", 0.0),
    "Power": Quantity("W", "power", 0.0),
    "ApparentPower": Quantity("VA", "apparent_power", 0.0),
    "ReactivePower": Quantity("var", "reactive_power"),
    "Factor": Quantity(None, "power_factor", 0.0, 1.0),
    "Voltage": Quantity("V", "voltage", 0.0),
    "Current": Quantity("A", "current", 0.0),
    "Total": Quantity("kWh", "energy", 0.0),
    "Today": Quantity("kWh", "energy", 0.0),
}
TASMOTA_ENERGY_FIELDS: Final = ("Power", "Voltage", "Current", "Total")
TASMOTA_CLIMATE_FIELDS: Final = ("Temperature", "Humidity")


def tasmota_sensor(
    local_id: str,
    *,
    topic: str,
    sensor: str = "ENERGY",
    fields: Sequence[str] | None = None,
    name: str | None = None,
    prefix: str = "tele",
) -> MqttDeviceDefinition:
    """A Tasmota device: ``tele/<topic>/SENSOR`` JSON and ``tele/<topic>/LWT`` Online/Offline.

    ``sensor`` is the key Tasmota nests the readings under (``ENERGY``, ``AM2301``,
    ``DS18B20``, ``BME280``...); ``fields`` are the names inside it (by default the energy
    fields for ENERGY, temperature and humidity otherwise).
    """
    if fields is None:
        fields = TASMOTA_ENERGY_FIELDS if sensor == "ENERGY" else TASMOTA_CLIMATE_FIELDS
    values = tuple(
        _value(
            key=_snake_case(f"{sensor}_{field_name}" if sensor != "ENERGY" else field_name),
            path=f"{sensor}.{field_name}",
            quantity=_TASMOTA_FIELDS.get(field_name, Quantity(None, None)),
        )
        for field_name in fields
    )
    return MqttDeviceDefinition(
        local_id=local_id,
        name=name or topic,
        model="Tasmota",
        states=(StateTopic(f"{prefix}/{topic}/SENSOR", values),),
        availability=Availability(f"{prefix}/{topic}/LWT", online="Online", offline="Offline"),
    )


@dataclass(frozen=True, slots=True)
class EsphomeSensor:
    """One ESPHome sensor entity: its object id (from its name) and metadata."""

    object_id: str
    unit: str | None = None
    device_class: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    component: str = "sensor"


def esphome_sensor(
    local_id: str,
    *,
    prefix: str,
    sensors: Iterable[EsphomeSensor],
    name: str | None = None,
) -> MqttDeviceDefinition:
    """An ESPHome node over MQTT: ``<prefix>/sensor/<object id>/state`` (plain text numbers,
    ``nan`` when the sensor has no reading) and ``<prefix>/status`` online/offline.

    ``binary_sensor`` components publish ``ON``/``OFF`` and become bool values.
    """
    states = tuple(
        StateTopic(
            topic=f"{prefix}/{sensor.component}/{sensor.object_id}/state",
            format=PayloadFormat.RAW,
            values=(
                ValueSpec(
                    key=_snake_case(sensor.object_id),
                    type=ValueType.BOOL
                    if sensor.component == "binary_sensor"
                    else ValueType.NUMBER,
                    unit=sensor.unit,
                    device_class=sensor.device_class,
                    minimum=sensor.minimum,
                    maximum=sensor.maximum,
                ),
            ),
        )
        for sensor in sensors
    )
    return MqttDeviceDefinition(
        local_id=local_id,
        name=name or prefix,
        model="ESPHome",
        states=states,
        availability=Availability(f"{prefix}/status"),
    )


_SHELLY_COMPONENTS: Final[Mapping[str, Mapping[str, Quantity]]] = {
    "switch": {
        "output": Quantity(None, "power", type=ValueType.BOOL),
        "apower": Quantity("W", "power"),
        "voltage": Quantity("V", "voltage", 0.0),
        "current": Quantity("A", "current", 0.0),
        "aenergy.total": Quantity("Wh", "energy", 0.0),
        "temperature.tC": Quantity("°C", "temperature", -40.0, 110.0),
    },
    "pm1": {
        "apower": Quantity("W", "power"),
        "voltage": Quantity("V", "voltage", 0.0),
        "current": Quantity("A", "current", 0.0),
        "aenergy.total": Quantity("Wh", "energy", 0.0),
    },
    "temperature": {"tC": Quantity("°C", "temperature", -40.0, 125.0)},
    "humidity": {"rh": Quantity("%", "humidity", 0.0, 100.0)},
}


def shelly_gen2(
    local_id: str,
    *,
    device_id: str,
    components: Sequence[str] = ("switch:0",),
    name: str | None = None,
) -> MqttDeviceDefinition:
    """A Shelly Gen2/Gen3 device: ``<id>/status/<component>`` JSON and ``<id>/online`` true/false.

    ``device_id`` is the MQTT topic prefix set on the device (by default like
    ``shellyplus1pm-a8032ab12345``); the device must have "Generic status update over MQTT"
    enabled. Each component (``switch:0``, ``pm1:0``, ``temperature:0``, ``humidity:0``)
    reports a non-empty ``errors`` list (``overtemp``, ``overpower``...) as a fault.
    """
    states = []
    for component in components:
        kind, _, index = component.partition(":")
        fields = _SHELLY_COMPONENTS.get(kind)
        if fields is None or not index.isdigit():
            known = ", ".join(f"{kind}:N" for kind in _SHELLY_COMPONENTS)
            raise DefinitionError(f"Shelly component {component!r} is not one of {known}")
        values = tuple(
            _value(key=_snake_case(f"{kind}_{index}_{path}"), path=path, quantity=quantity)
            for path, quantity in fields.items()
        )
        faults = (FaultRule(reason=f"{component}: errors", path=ValuePath.parse("errors")),)
        states.append(StateTopic(f"{device_id}/status/{component}", values, faults=faults))
    return MqttDeviceDefinition(
        local_id=local_id,
        name=name or device_id,
        model="Shelly Gen2",
        states=tuple(states),
        availability=Availability(f"{device_id}/online", online="true", offline="false"),
    )


def _value(*, key: str, path: str, quantity: Quantity) -> ValueSpec:
    return ValueSpec(
        key=key,
        path=ValuePath.parse(path),
        type=quantity.type,
        unit=quantity.unit,
        device_class=quantity.device_class,
        minimum=quantity.minimum,
        maximum=quantity.maximum,
    )


def _snake_case(text: str) -> str:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")[:64] or "value"


@dataclass(frozen=True, slots=True)
class DeviceTemplateOptions:
    """The few parameters the add-on's options give per adopted device (see addon_options.py)."""

    local_id: str
    template: str
    topic: str
    name: str | None = None
    sensors: tuple[str, ...] = field(default_factory=tuple)


TEMPLATES: Final = ("tasmota", "esphome", "shelly_gen2")


def definition_from_template(options: DeviceTemplateOptions) -> MqttDeviceDefinition:
    """Build a definition from a template name and its parameters.

    ``topic`` is the Tasmota topic, the ESPHome topic prefix or the Shelly device id;
    ``sensors`` are Tasmota ``Sensor.Field`` names (``AM2301.Temperature``) or fields of
    ENERGY, ESPHome sensor object ids, or Shelly components.
    """
    if options.template == "tasmota":
        return _tasmota_from_options(options)
    if options.template == "esphome":
        sensors = options.sensors or ("temperature",)
        return esphome_sensor(
            options.local_id,
            prefix=options.topic,
            sensors=[EsphomeSensor(object_id) for object_id in sensors],
            name=options.name,
        )
    if options.template == "shelly_gen2":
        return shelly_gen2(
            options.local_id,
            device_id=options.topic,
            components=options.sensors or ("switch:0",),
            name=options.name,
        )
    raise DefinitionError(f"unknown template {options.template!r}: use {', '.join(TEMPLATES)}")


def _tasmota_from_options(options: DeviceTemplateOptions) -> MqttDeviceDefinition:
    sensor_names = {item.partition(".")[0] for item in options.sensors if "." in item}
    if len(sensor_names) > 1:
        raise DefinitionError(f"device {options.local_id}: one Tasmota sensor per device")
    sensor = sensor_names.pop() if sensor_names else "ENERGY"
    fields = [item.rpartition(".")[2] for item in options.sensors] or None
    return tasmota_sensor(
        options.local_id, topic=options.topic, sensor=sensor, fields=fields, name=options.name
    )
