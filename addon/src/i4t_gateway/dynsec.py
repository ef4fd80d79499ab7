"""Broker ACLs for a regional router: Mosquitto's dynamic-security plugin, driven over MQTT.

A router admits a gateway by provisioning, on its own broker, a client whose user name is the
gateway's address text and whose password is the gateway's router token, with a role of its own
that allows exactly three things (docs/ROUTER.md, "Broker ACLs"):

* publish to ``i4t/r/up/<gateway>``,
* subscribe to ``i4t/r/down/<gateway>`` (that literal filter, no wildcard),
* receive what is published on ``i4t/r/down/<gateway>``.

Everything else is denied by the broker's default ACL access. Revoking deletes the client and
its role; the plugin then drops the gateway's live connection at once.

:class:`DynsecAdmin` is the router's admin connection (an :class:`bus.MqttBus`): it publishes JSON
commands to ``$CONTROL/dynamic-security/v1`` and matches the plugin's answers on
``.../response`` by their correlation data. Every operation is idempotent and changes only what
differs, because the plugin disconnects a client whenever its client entry or role changes.

:func:`write_broker_config` writes a router broker's ``mosquitto.conf`` and, on first use, the
plugin's state file with the admin client in it (``python -m i4t_gateway.dynsec`` does it from
the command line).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import builtins
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
import getpass
import glob
import hashlib
import itertools
import json
import logging
import os
from pathlib import Path
import pwd
import secrets
import sys
from typing import Any, Final, Protocol

from .bus import MqttBus, TlsFiles
from .identity import Address, AddressError
from .links import down_topic, gateway_client_id, up_topic
from .settings import BrokerAddress

_LOGGER = logging.getLogger(__name__)

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = f"{CONTROL_TOPIC}/response"
CONTROL_TOPICS: Final = "$CONTROL/dynamic-security/#"
ROUTER_TOPICS: Final = "i4t/r/#"
GATEWAY_ROLE_PREFIX: Final = "i4t-gw-"
GATEWAY_TEXT_NAME: Final = "i4t gateway"
ROUTER_ROLE: Final = "i4t-router"
ADMIN_ROLE: Final = "i4t-dynsec-admin"
DEFAULT_ADMIN_USER: Final = "i4t-admin"
DEFAULT_TIMEOUT_SECONDS: Final = 10.0
# Commands per control message when reconciling many gateways. Mosquitto 2.0 rewrites the
# plugin's whole state file after every change, in its only thread: measured here, about 15 ms
# per change with 2000 gateways provisioned. Small messages let traffic through between them.
COMMANDS_PER_MESSAGE: Final = 20
FINGERPRINT_PREFIX: Final = "i4t-token-sha256:"

# The plugin's own password format (Mosquitto 2.0): PBKDF2-HMAC-SHA512, a 12-byte salt, the
# iteration count stored beside the hash. The plugin uses 101 iterations for the clients it
# creates; the admin's password, written here, gets more (it is checked once per router start).
PLUGIN_SALT_BYTES: Final = 12
ADMIN_PBKDF2_ITERATIONS: Final = 10_000

# Per client queue limits of a router's broker. Mosquitto silently drops messages past them
# (BRIEF section 4). Nothing is lost for good when it does (every hop retransmits until its
# next hop acks), but a drop costs a retransmission delay, so the limits are generous for the
# router's own subscription catching up after a stall, and bounded in bytes so that one stuck
# client cannot take the broker's memory.
DEFAULT_MAX_QUEUED_MESSAGES: Final = 20_000
DEFAULT_MAX_QUEUED_BYTES: Final = 32 * 1024 * 1024

DYNSEC_PLUGIN_CANDIDATES: Final = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)

# The plugin's answers that mean "already as wanted" for the idempotent operations.
_NOT_FOUND: Final = frozenset({"Client not found", "Role not found"})


class DynsecError(Exception):
    """Provisioning the broker failed."""


class DynsecUnavailableError(DynsecError):
    """No admin session with the broker, or the plugin did not answer in time."""


class DynsecCommandError(DynsecError):
    """The plugin refused a command; ``command`` and ``reason`` are the plugin's words."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"dynamic-security refused {command}: {reason}")
        self.command = command
        self.reason = reason


class ConnectionLimits(Protocol):
    """What admission needs of a token's limits: how many connections it allows at once."""

    @property
    def connections(self) -> int: ...


class Provisioning(StrEnum):
    """What :meth:`DynsecAdmin.admit` had to do."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class AdmittedGateway:
    """A gateway provisioned on the broker. ``single_connection``: its client id is pinned, so
    a second connection replaces the first."""

    address: str
    enabled: bool
    single_connection: bool


type Command = dict[str, Any]
type Response = dict[str, Any]


# -- what is provisioned ---------------------------------------------------------------------


def gateway_text(gateway: Address | str) -> str:
    """The gateway's canonical address text; a str that is not one raises ValueError (it would
    become an MQTT user name and a topic level, so nothing else is accepted)."""
    if isinstance(gateway, Address):
        return gateway.text
    try:
        return Address.from_text(gateway).text
    except AddressError as err:
        raise ValueError(f"not a gateway address: {err}") from err


def gateway_role(address: str) -> str:
    return f"{GATEWAY_ROLE_PREFIX}{address}"


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def gateway_acls(address: str) -> list[dict[str, Any]]:
    """A gateway's role: its up topic to publish, its down topic to subscribe to and read."""
    down = down_topic(address)
    return [
        _acl("publishClientSend", up_topic(address)),
        # Literal: the filter must be exactly the down topic, no wildcard reaching wider.
        _acl("subscribeLiteral", down),
        _acl("publishClientReceive", down),
    ]


def router_acls() -> list[dict[str, Any]]:
    """The router's own client: everything under i4t/r/ (every gateway's up and down topics)."""
    return [
        _acl("publishClientSend", ROUTER_TOPICS),
        _acl("publishClientReceive", ROUTER_TOPICS),
        _acl("subscribePattern", ROUTER_TOPICS),
    ]


def admin_acls() -> list[dict[str, Any]]:
    """The admin client provisions and nothing else: it cannot read or inject traffic."""
    return [
        _acl("publishClientSend", CONTROL_TOPICS),
        _acl("publishClientReceive", CONTROL_TOPICS),
        _acl("subscribePattern", CONTROL_TOPICS),
    ]


DEFAULT_DENY: Final = (
    {"acltype": "publishClientSend", "allow": False},
    {"acltype": "publishClientReceive", "allow": False},
    {"acltype": "subscribe", "allow": False},
    # An unsubscribe cannot reveal or inject anything; refusing it would only confuse clients.
    {"acltype": "unsubscribe", "allow": True},
)


def password_fingerprint(username: str, password: str) -> str:
    """What the client entry's text description records of its password.

    The plugin never shows a password back, and setting one disconnects the client, so admit()
    compares this to leave an unchanged gateway connected. Tokens are long random-looking
    signed strings; a salted SHA-256 of one reveals no more than the plugin's own hash beside it.
    """
    digest = hashlib.sha256(f"i4t-dynsec\0{username}\0{password}".encode()).hexdigest()
    return f"{FINGERPRINT_PREFIX}{digest[:32]}"


# -- the admin connection --------------------------------------------------------------------


class DynsecAdmin:
    """The router's admin session with its broker's dynamic-security plugin.

    Use as ``async with DynsecAdmin(broker) as admin: await admin.admit(...)``. ``broker``
    carries the admin's user name and password; ``tls_files`` as for :class:`bus.MqttBus`.
    Operations are serialised (provisioning is rare; ordering keeps them simple to reason about)
    and each waits at most ``timeout`` seconds for the plugin's answer.
    """

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        tls_files: TlsFiles | None = None,
        client_id: str = "i4t-dynsec-admin",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._broker = broker
        self._timeout = timeout
        self._bus = MqttBus(broker, client_id, tls_files=tls_files, max_backoff=2.0)
        self._bus.subscribe(RESPONSE_TOPIC, self._on_response, qos=1)
        self._pending: dict[str, asyncio.Future[builtins.list[Response]]] = {}
        self._request_ids = itertools.count(1)
        self._session = secrets.token_hex(4)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> DynsecAdmin:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect as the admin; DynsecUnavailableError if no session comes up in time."""
        await self._bus.start()
        try:
            async with asyncio.timeout(self._timeout):
                await self._bus.wait_connected()
        except TimeoutError as err:
            await self._bus.stop()
            raise DynsecUnavailableError(
                f"no session with {self._broker.describe()} as {self._broker.username!r} "
                f"within {self._timeout:g} s: wrong admin credentials or broker unreachable"
            ) from err

    async def stop(self) -> None:
        for future in self._pending.values():
            future.cancel()
        await self._bus.stop()

    # -- what the router calls ------------------------------------------------------------

    async def admit(
        self, gateway: Address | str, password: str, limits: ConnectionLimits | None = None
    ) -> Provisioning:
        """Let ``gateway`` connect with ``password`` (its token) to its own two topics only.

        With ``limits.connections == 1`` the client id is pinned to the gateway's
        (``i4t-gw-<address>``), so the broker holds at most one connection for it. Larger
        limits cannot be counted by Mosquitto; the router enforces those itself. Calling it
        again with the same arguments changes nothing and keeps the gateway connected; a new
        password or limit updates the entry, which disconnects the gateway once.
        """
        address = gateway_text(gateway)
        if not password:
            raise ValueError("a gateway needs a non-empty password (its token)")
        async with self._lock:
            return await self._ensure_client(
                address,
                password,
                gateway_role(address),
                gateway_acls(address),
                _client_id_for(address, limits),
            )

    async def revoke(self, gateway: Address | str) -> bool:
        """Delete the gateway's client and role; the plugin drops its live connection.

        False when there was nothing to revoke.
        """
        address = gateway_text(gateway)
        async with self._lock:
            responses = await self.execute(_revoke_commands(address), tolerate=_NOT_FOUND)
        existed = any("error" not in response for response in responses)
        if existed:
            _LOGGER.info("revoked a gateway's broker access")
        return existed

    async def prepare_router(self, username: str, password: str) -> Provisioning:
        """Deny by default, and provision the router's own client (everything under i4t/r/).

        Run once at each router start, before the router connects with these credentials.
        """
        if username == self._broker.username:
            raise ValueError("the router's client must not be the admin (it would lose its role)")
        if not password:
            raise ValueError("the router's client needs a non-empty password")
        async with self._lock:
            await self.execute(
                [{"command": "setDefaultACLAccess", "acls": [dict(acl) for acl in DEFAULT_DENY]}]
            )
            return await self._ensure_client(username, password, ROUTER_ROLE, router_acls(), None)

    async def reconcile[Gateway: (Address, str)](
        self, wanted: Mapping[Gateway, tuple[str, ConnectionLimits | None]]
    ) -> Counter[str]:
        """Make the broker's gateways exactly ``wanted`` (address: (token, limits)).

        Gateways provisioned but not wanted are revoked; the wanted ones are admitted as by
        :meth:`admit`, unchanged ones left connected. Two snapshots (every client, every role)
        replace a round trip per gateway, so a router can run it every few seconds against
        its token book. Returns how many were created, updated, unchanged and revoked.
        """
        targets = {gateway_text(gateway): entry for gateway, entry in wanted.items()}
        if any(not password for password, _ in targets.values()):
            raise ValueError("a gateway needs a non-empty password (its token)")
        async with self._lock:
            clients, roles = await self._snapshot()
            commands: builtins.list[Command] = []
            outcomes: Counter[str] = Counter()
            for address in sorted(_provisioned(clients, roles) - targets.keys()):
                commands += _revoke_commands(address)
                outcomes["revoked"] += 1
            for address, (password, limits) in targets.items():
                planned, outcome = _plan(
                    address,
                    password,
                    (gateway_role(address), gateway_acls(address)),
                    _client_id_for(address, limits),
                    current_role=roles.get(gateway_role(address)),
                    current_client=clients.get(address),
                )
                commands += planned
                outcomes[outcome.value] += 1
            for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
                await self.execute(
                    commands[start : start + COMMANDS_PER_MESSAGE], tolerate=_NOT_FOUND
                )
        return outcomes

    async def _snapshot(
        self,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        every = {"verbose": True, "count": -1, "offset": 0}
        clients, roles = await self.execute(
            [{"command": "listClients", **every}, {"command": "listRoles", **every}]
        )
        return (
            {c["username"]: c for c in clients.get("data", {}).get("clients", [])},
            {r["rolename"]: r for r in roles.get("data", {}).get("roles", [])},
        )

    async def list(self) -> builtins.list[AdmittedGateway]:
        """The gateways provisioned on the broker, by address."""
        async with self._lock:
            (response,) = await self.execute(
                [{"command": "listClients", "verbose": True, "count": -1, "offset": 0}]
            )
        clients = response.get("data", {}).get("clients", [])
        admitted = [_as_gateway(client) for client in clients]
        return sorted(
            (gateway for gateway in admitted if gateway is not None), key=lambda g: g.address
        )

    # -- building blocks ---------------------------------------------------------------------

    async def execute(
        self, commands: Sequence[Command], *, tolerate: frozenset[str] = frozenset()
    ) -> builtins.list[Response]:
        """Run commands in one control message and return the plugin's answers in order.

        Raises DynsecCommandError for the first answer carrying an error not in ``tolerate``.
        """
        request = f"{self._session}-{next(self._request_ids)}"
        tagged = [
            {**command, "correlationData": f"{request}.{index}"}
            for index, command in enumerate(commands)
        ]
        future: asyncio.Future[builtins.list[Response]] = asyncio.get_running_loop().create_future()
        self._pending[request] = future
        try:
            if not self._bus.publish(
                CONTROL_TOPIC, json.dumps({"commands": tagged}).encode(), qos=1
            ):
                raise DynsecUnavailableError("no session with the broker right now")
            try:
                async with asyncio.timeout(self._timeout):
                    responses = await future
            except TimeoutError as err:
                raise DynsecUnavailableError(
                    f"the dynamic-security plugin did not answer within {self._timeout:g} s "
                    "(is it loaded, and does this user have the admin role?)"
                ) from err
        finally:
            self._pending.pop(request, None)
        if len(responses) != len(commands):
            raise DynsecError(f"{len(commands)} commands, {len(responses)} answers")
        for command, response in zip(commands, responses, strict=True):
            error = response.get("error")
            if error is not None and error not in tolerate:
                raise DynsecCommandError(str(command["command"]), str(error))
        return responses

    def _on_response(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            responses = json.loads(payload)["responses"]
            request = str(responses[0]["correlationData"]).rsplit(".", 1)[0]
        except (ValueError, KeyError, IndexError, TypeError):
            # Someone else's answer (mosquitto_ctrl sends no correlation data), or garbage.
            return
        future = self._pending.get(request)
        if future is not None and not future.done():
            future.set_result(responses)

    async def _ensure_client(
        self,
        username: str,
        password: str,
        role: str,
        acls: builtins.list[dict[str, Any]],
        client_id: str | None,
    ) -> Provisioning:
        """Make the client and its only role exactly as wanted, changing only what differs."""
        current_role, current_client = await self.execute(
            [
                {"command": "getRole", "rolename": role},
                {"command": "getClient", "username": username},
            ],
            tolerate=_NOT_FOUND,
        )
        commands, outcome = _plan(
            username,
            password,
            (role, acls),
            client_id,
            current_role=None if "error" in current_role else current_role["data"]["role"],
            current_client=None if "error" in current_client else current_client["data"]["client"],
        )
        if commands:
            await self.execute(commands)
        return outcome


def _plan(
    username: str,
    password: str,
    role: tuple[str, list[dict[str, Any]]],
    client_id: str | None,
    *,
    current_role: dict[str, Any] | None,
    current_client: dict[str, Any] | None,
) -> tuple[list[Command], Provisioning]:
    """The commands that make a client and its one role as wanted, and what they amount to."""
    rolename, acls = role
    commands = _role_commands(rolename, acls, current_role)
    fingerprint = password_fingerprint(username, password)
    if current_client is None:
        commands.append(_create_client(username, password, rolename, client_id, fingerprint))
        return commands, Provisioning.CREATED
    commands.extend(_client_changes(current_client, password, rolename, client_id, fingerprint))
    return commands, Provisioning.UPDATED if commands else Provisioning.UNCHANGED


def _role_commands(
    role: str, acls: list[dict[str, Any]], current: dict[str, Any] | None
) -> list[Command]:
    if current is None:
        return [{"command": "createRole", "rolename": role, "acls": acls}]
    if _acl_set(current.get("acls", [])) == _acl_set(acls):
        return []
    # modifyRole with an ACL list replaces the whole list.
    return [{"command": "modifyRole", "rolename": role, "acls": acls}]


def _acl_set(acls: list[dict[str, Any]]) -> set[tuple[str, str, bool]]:
    return {(acl["acltype"].lower(), acl["topic"], bool(acl.get("allow"))) for acl in acls}


def _create_client(
    username: str, password: str, role: str, client_id: str | None, fingerprint: str
) -> Command:
    command: Command = {
        "command": "createClient",
        "username": username,
        "password": password,
        "textname": GATEWAY_TEXT_NAME if role.startswith(GATEWAY_ROLE_PREFIX) else role,
        "textdescription": fingerprint,
        "roles": [{"rolename": role, "priority": 0}],
    }
    if client_id is not None:
        command["clientid"] = client_id
    return command


def _client_changes(
    client: dict[str, Any], password: str, role: str, client_id: str | None, fingerprint: str
) -> list[Command]:
    """One modifyClient for everything that differs (each change disconnects the client once),
    then enableClient if it was disabled."""
    modify: Command = {}
    if client.get("textdescription") != fingerprint:
        modify |= {"password": password, "textdescription": fingerprint}
    if client.get("clientid") != client_id:
        modify["clientid"] = client_id or ""  # empty: no pinned client id
    if [r.get("rolename") for r in client.get("roles", [])] != [role]:
        modify["roles"] = [{"rolename": role, "priority": 0}]
    if client.get("groups"):
        modify["groups"] = []
    commands: list[Command] = []
    if modify:
        commands.append({"command": "modifyClient", "username": client["username"], **modify})
    if client.get("disabled"):
        commands.append({"command": "enableClient", "username": client["username"]})
    return commands


def _client_id_for(address: str, limits: ConnectionLimits | None) -> str | None:
    """One connection allowed: pin the gateway's own client id (a second one replaces it)."""
    single = limits is not None and limits.connections == 1
    return gateway_client_id(address) if single else None


def _revoke_commands(address: str) -> list[Command]:
    return [
        {"command": "deleteClient", "username": address},
        {"command": "deleteRole", "rolename": gateway_role(address)},
    ]


def _provisioned(clients: dict[str, dict[str, Any]], roles: dict[str, dict[str, Any]]) -> set[str]:
    """Gateways on the broker: clients or roles made by admit(), also half-made or hand-edited
    ones (a gateway role with no client, a client given more roles)."""
    found = {
        name.removeprefix(GATEWAY_ROLE_PREFIX)
        for name in roles
        if name.startswith(GATEWAY_ROLE_PREFIX)
    }
    found |= {
        name
        for name, client in clients.items()
        if client.get("textname") == GATEWAY_TEXT_NAME
        or gateway_role(name) in [r.get("rolename") for r in client.get("roles", [])]
    }
    return {name for name in found if _is_address(name)}


def _is_address(text: str) -> bool:
    try:
        return Address.from_text(text).text == text
    except AddressError:
        return False


def _as_gateway(client: dict[str, Any]) -> AdmittedGateway | None:
    username = str(client.get("username", ""))
    roles = [role.get("rolename") for role in client.get("roles", [])]
    if roles != [gateway_role(username)]:
        return None  # the admin, the router, or something an operator made by hand
    return AdmittedGateway(
        address=username,
        enabled=not client.get("disabled", False),
        single_connection=client.get("clientid") == gateway_client_id(username),
    )


# -- the router's broker: its config and the plugin's first state -------------------------------


@dataclass(frozen=True, slots=True)
class Listener:
    """Where the router's broker listens; with a certificate and key it speaks TLS."""

    port: int = 8883
    host: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a TLS listener needs both a certificate and its key")

    def lines(self) -> list[str]:
        lines = [f"listener {self.port}" + (f" {self.host}" if self.host else "")]
        if self.cert_file is not None:
            lines += [f"certfile {self.cert_file}", f"keyfile {self.key_file}"]
            if self.ca_file is not None:
                lines.append(f"cafile {self.ca_file}")
        return lines


def find_dynsec_plugin() -> Path:
    """Where the distribution put mosquitto_dynamic_security.so (Debian, Alpine, /usr/local)."""
    for candidate in DYNSEC_PLUGIN_CANDIDATES:
        for found in sorted(glob.glob(candidate)):
            return Path(found)
    raise DynsecError(
        "mosquitto_dynamic_security.so not found: install Mosquitto 2 (Debian: apt install "
        "mosquitto) or pass the plugin's path"
    )


def broker_config(
    state_file: Path,
    listeners: Sequence[Listener],
    *,
    plugin: Path,
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    extra: Sequence[str] = (),
) -> str:
    """The text of a router broker's mosquitto.conf."""
    lines = [
        "# A regional router's broker (written by i4t_gateway.dynsec; docs/ROUTER.md).",
        "# One set of users and ACLs for every listener: the dynamic-security plugin's.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {plugin}",
        f"plugin_opt_config_file {state_file}",
        "# Delivery rests on the I4T hops' own acks; the broker keeps no messages on disk.",
        "persistence false",
        f"max_queued_messages {max_queued_messages}",
        f"max_queued_bytes {max_queued_bytes}",
        "# QoS 1 round trips stall 40-80 ms without it (Nagle and delayed acks).",
        "set_tcp_nodelay true",
        *extra,
    ]
    for listener in listeners:
        lines += listener.lines()
    return "\n".join(lines) + "\n"


def initial_state(admin_username: str, admin_password: str) -> dict[str, Any]:
    """The plugin's state file at first start: the admin client, its role, default deny."""
    salt = secrets.token_bytes(PLUGIN_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", admin_password.encode(), salt, ADMIN_PBKDF2_ITERATIONS)
    return {
        "defaultACLAccess": {acl["acltype"]: acl["allow"] for acl in DEFAULT_DENY},
        "clients": [
            {
                "username": admin_username,
                "textname": "i4t router admin",
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": ADMIN_PBKDF2_ITERATIONS,
                "roles": [{"rolename": ADMIN_ROLE}],
            }
        ],
        "roles": [{"rolename": ADMIN_ROLE, "acls": admin_acls()}],
        "groups": [],
    }


def write_initial_state(state_file: Path, admin_username: str, admin_password: str) -> bool:
    """Write the plugin's state file unless it exists (the plugin owns it once it runs: it
    saves every change there). True when written. Readable by its owner only."""
    if not admin_password:
        raise ValueError("the admin needs a non-empty password")
    state_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as out:
        json.dump(initial_state(admin_username, admin_password), out, indent=2)
    return True


def write_broker_config(
    directory: Path,
    admin_username: str,
    admin_password: str,
    listeners: Sequence[Listener],
    *,
    plugin: Path | None = None,
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    run_as: str | None = None,
) -> Path:
    """Write ``directory/mosquitto.conf`` (always) and ``directory/dynamic-security.json``
    (first time only); return the config's path for ``mosquitto -c``.

    Started as root, Mosquitto becomes ``run_as`` (its default: the user ``mosquitto``), which
    must read and rewrite the plugin's state: as root, both files and the directory are handed
    to that user."""
    directory.mkdir(parents=True, exist_ok=True)
    state_file = directory / "dynamic-security.json"
    write_initial_state(state_file, admin_username, admin_password)
    config = directory / "mosquitto.conf"
    config.write_text(
        broker_config(
            state_file,
            listeners,
            plugin=plugin or find_dynsec_plugin(),
            max_queued_messages=max_queued_messages,
            max_queued_bytes=max_queued_bytes,
            extra=[f"user {run_as}"] if run_as else [],
        )
    )
    _hand_over((directory, state_file, config), run_as or "mosquitto")
    return config


def _hand_over(paths: Sequence[Path], user: str) -> None:
    if os.geteuid() != 0:
        return  # whoever writes the files runs the broker
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        _LOGGER.warning("no user %s to hand the broker's files to", user)
        return
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)


# -- command line: python -m i4t_gateway.dynsec --------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m i4t_gateway.dynsec",
        description="Write a regional router broker's mosquitto.conf and, the first time, the "
        "dynamic-security plugin's state with its admin client (docs/ROUTER.md, Broker ACLs). "
        "The admin password comes from $I4T_DYNSEC_ADMIN_PASSWORD or a prompt.",
    )
    parser.add_argument("directory", type=Path, help="where both files go")
    parser.add_argument("--admin-user", default=DEFAULT_ADMIN_USER)
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--host", default=None, help="listen address (default: all)")
    parser.add_argument("--cert", type=Path, help="TLS certificate file (PEM)")
    parser.add_argument("--key", type=Path, help="TLS key file (PEM)")
    parser.add_argument("--plugin", type=Path, help="path of mosquitto_dynamic_security.so")
    parser.add_argument("--max-queued-messages", type=int, default=DEFAULT_MAX_QUEUED_MESSAGES)
    parser.add_argument(
        "--run-as", help="the user Mosquitto becomes when started as root (default: mosquitto)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        listener = Listener(args.port, args.host, args.cert, args.key)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    password = os.environ.get("I4T_DYNSEC_ADMIN_PASSWORD") or getpass.getpass(
        f"password for {args.admin_user}: "
    )
    try:
        config = write_broker_config(
            args.directory,
            args.admin_user,
            password,
            [listener],
            plugin=args.plugin,
            max_queued_messages=args.max_queued_messages,
            run_as=args.run_as,
        )
    except (DynsecError, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
    print(f"mosquitto -c {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
