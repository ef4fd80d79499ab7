"""Requests on the local API (``<base>/cmd/<command>``) parsed into typed commands.

The gateway package has no JSON-schema validator at run time, so requests are checked here by
hand, field by field, and every problem becomes an ApiError with a stable code that the reply
carries (docs/API.md lists them). The schemas in ``schemas/`` describe the same rules for
clients and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import json
import re
from typing import Any, Final

from .groups import NodeClass, NodeRole, Quorum, QuorumKind
from .identity import Address, AddressError
from .names import MAX_NAME_LENGTH, is_valid_name
from .things import ThingKind

MAX_REQUEST_BYTES: Final = 64 * 1024
MAX_MEMBERS: Final = 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_GROUP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ApiError(Exception):
    """A request the gateway refuses; ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Enroll:
    kind: ThingKind
    name: str
    public_key: bytes | None = None
    mac: str | None = None
    secret: str | None = None
    local_id: str | None = None
    device: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Remove:
    address: Address


@dataclass(frozen=True, slots=True)
class MemberSpec:
    address: Address
    node_id: str | None
    role: NodeRole
    node_class: NodeClass
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class GroupCreate:
    name: str
    group_id: str | None
    quorum: Quorum
    members: tuple[MemberSpec, ...]


@dataclass(frozen=True, slots=True)
class GroupUpdate:
    group_id: str
    name: str | None
    quorum: Quorum | None
    members: tuple[MemberSpec, ...] | None


@dataclass(frozen=True, slots=True)
class GroupDelete:
    group_id: str


@dataclass(frozen=True, slots=True)
class Mute:
    target: str  # "node" or "group"
    ident: str
    muted: bool


@dataclass(frozen=True, slots=True)
class Send:
    destination: Address | str  # an address, or a name the regional routers resolve
    command: str
    args: dict[str, float | int | str | bool | None]


@dataclass(frozen=True, slots=True)
class Configure:
    timeout_factor: float | None


type Command = Enroll | Remove | GroupCreate | GroupUpdate | GroupDelete | Mute | Send | Configure


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    command: Command


def parse_request(name: str, payload: bytes) -> Request:
    """Parse one request; ApiError for anything malformed (the request id may be unknown)."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise ApiError("too_large", f"requests are limited to {MAX_REQUEST_BYTES} bytes")
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        # RecursionError: nesting deep enough to exhaust the parser ("[" * 60000 fits in
        # the size limit); without this it escaped to the bus handler, uncounted.
        raise ApiError("malformed", "the request is not JSON") from err
    if not isinstance(body, dict):
        raise ApiError("malformed", "the request is not a JSON object")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise ApiError("malformed", "request_id: 1-64 of A-Z, a-z, 0-9, '_', '-'")
    parser = _PARSERS.get(name)
    if parser is None:
        raise RequestError(request_id, "unknown_command", f"no command named {name!r}")
    try:
        return Request(request_id, parser(body))
    except ApiError as err:
        raise RequestError(request_id, err.code, err.message) from err


class RequestError(ApiError):
    """An ApiError for a request whose id is known, so a reply can be sent."""

    def __init__(self, request_id: str, code: str, message: str) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def reply_ok(request_id: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"request_id": request_id, "ok": True, "result": result or {}}


def reply_error(request_id: str, error: ApiError) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "ok": False,
        "error": {"code": error.code, "message": error.message},
    }


# -- field readers ---------------------------------------------------------------------------


def _text(body: dict[str, Any], key: str, *, maximum: int = 100, required: bool = True) -> Any:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= maximum:
        raise ApiError("invalid", f"{key}: a text of 1 to {maximum} characters")
    return value.strip()


def _address(body: dict[str, Any], key: str) -> Address:
    value = _text(body, key, maximum=128)
    try:
        return Address.from_text(value)
    except AddressError as err:
        raise ApiError("invalid", f"{key}: not an I4T address ({err})") from err


def _hex(body: dict[str, Any], key: str, size: int, *, required: bool = True) -> bytes | None:
    value = body.get(key)
    if value is None and not required:
        return None
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise ApiError("invalid", f"{key}: {size} bytes in hex ({2 * size} digits)")
    return raw


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if not isinstance(value, bool):
        raise ApiError("invalid", f"{key}: true or false")
    return value


def _group_id(body: dict[str, Any], *, required: bool = True) -> Any:
    value = body.get("group_id")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _GROUP_ID.match(value):
        raise ApiError("invalid", "group_id: 1-64 of a-z, 0-9, '_', '-', starting alphanumeric")
    return value


def _choice[E: (ThingKind, NodeRole, NodeClass, QuorumKind)](
    body: dict[str, Any], key: str, kind: type[E], default: E | None = None
) -> E:
    value = body.get(key)
    if value is None and default is not None:
        return default
    try:
        return kind(str(value))
    except ValueError as err:
        allowed = ", ".join(member.value for member in kind)
        raise ApiError("invalid", f"{key}: one of {allowed}") from err


# -- commands ----------------------------------------------------------------------------------


def _enroll(body: dict[str, Any]) -> Enroll:
    kind = _choice(body, "kind", ThingKind)
    name = _text(body, "name")
    if kind is ThingKind.NATIVE:
        return Enroll(kind, name, public_key=_hex(body, "public_key", 32))
    if kind in (ThingKind.BTHOME, ThingKind.BEACON):
        key_field = "bindkey" if kind is ThingKind.BTHOME else "key"
        secret = _hex(body, key_field, 16, required=kind is ThingKind.BEACON)
        mac = _text(body, "mac", maximum=17)
        return Enroll(kind, name, mac=mac, secret=None if secret is None else secret.hex())
    device = body.get("device")
    if not isinstance(device, dict):
        raise ApiError("invalid", "device: the MQTT device definition (an object)")
    return Enroll(kind, name, local_id=_text(body, "id", maximum=64), device=device)


def _remove(body: dict[str, Any]) -> Remove:
    return Remove(_address(body, "address"))


def _quorum(body: dict[str, Any]) -> Quorum | None:
    value = body.get("quorum")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError("invalid", "quorum: an object with kind and value")
    kind = _choice(value, "kind", QuorumKind)
    number = value.get("value", 0)
    if not isinstance(number, int) or isinstance(number, bool):
        raise ApiError("invalid", "quorum.value: a whole number")
    try:
        return Quorum(kind, number)
    except ValueError as err:
        raise ApiError("invalid", f"quorum: {err}") from err


def _members(body: dict[str, Any], *, required: bool) -> tuple[MemberSpec, ...] | None:
    value = body.get("members")
    if value is None and not required:
        return None
    if not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise ApiError("invalid", f"members: a list of up to {MAX_MEMBERS} members")
    return tuple(_member(item) for item in value)


def _member(item: object) -> MemberSpec:
    if not isinstance(item, dict):
        raise ApiError("invalid", "members: each member is an object")
    role = _choice(item, "role", NodeRole, NodeRole.WORKER)
    expires_at = item.get("expires_at")
    if role is NodeRole.TEMPORARY:
        if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
            raise ApiError("invalid", "expires_at: temporary members need an expiry (Unix time)")
    elif expires_at is not None:
        raise ApiError("invalid", "expires_at: only temporary members expire")
    return MemberSpec(
        address=_address(item, "address"),
        node_id=_text(item, "node_id", maximum=64, required=False),
        role=role,
        node_class=_choice(item, "class", NodeClass, NodeClass.SENSOR),
        expires_at=None if expires_at is None else float(expires_at),
    )


def _group_create(body: dict[str, Any]) -> GroupCreate:
    members = _members(body, required=False) or ()
    return GroupCreate(
        _text(body, "name"), _group_id(body, required=False), _quorum(body) or Quorum(), members
    )


def _group_update(body: dict[str, Any]) -> GroupUpdate:
    return GroupUpdate(
        _group_id(body),
        _text(body, "name", required=False),
        _quorum(body),
        _members(body, required=False),
    )


def _group_delete(body: dict[str, Any]) -> GroupDelete:
    return GroupDelete(_group_id(body))


def _mute(body: dict[str, Any]) -> Mute:
    target = body.get("target")
    if target not in ("node", "group"):
        raise ApiError("invalid", "target: node or group")
    ident = _text(body, "id", maximum=128)
    return Mute(target, ident, _bool(body, "muted"))


def _send(body: dict[str, Any]) -> Send:
    args = body.get("args", {})
    if not isinstance(args, dict) or len(args) > 64:
        raise ApiError("invalid", "args: an object of up to 64 entries")
    for key, value in args.items():
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise ApiError("invalid", f"args.{key}: a text, number, boolean or null")
    return Send(_destination(body), _text(body, "command", maximum=64), dict(args))


_ADDRESS_SHAPED = re.compile(r"^i4t[a-z2-7]+$")


def _destination(body: dict[str, Any]) -> Address | str:
    text = _text(body, "destination", maximum=MAX_NAME_LENGTH)
    try:
        return Address.from_text(text)
    except AddressError as err:
        # Text shaped like an address is a mistyped address, not a name to look up.
        if is_valid_name(text) and not _ADDRESS_SHAPED.match(text):
            return str(text)
        raise ApiError("invalid", f"destination: not an I4T address or name ({err})") from None


def _configure(body: dict[str, Any]) -> Configure:
    factor = body.get("timeout_factor")
    if factor is not None and (
        not isinstance(factor, int | float) or isinstance(factor, bool) or not 1 <= factor <= 100
    ):
        raise ApiError("invalid", "timeout_factor: a number from 1 to 100")
    return Configure(None if factor is None else float(factor))


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], Command]]] = {
    "enroll": _enroll,
    "remove": _remove,
    "group_create": _group_create,
    "group_update": _group_update,
    "group_delete": _group_delete,
    "mute": _mute,
    "send": _send,
    "configure": _configure,
}
COMMAND_NAMES: Final = tuple(_PARSERS)
