"""Gateway settings: command line, environment and their defaults in one place."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .identity import Address, AddressError

if TYPE_CHECKING:
    from .mqtt_devices import MqttDeviceDefinition

DEFAULT_EMBEDDED_HOST = "127.0.0.1"
DEFAULT_EMBEDDED_PORT = 1883
DEFAULT_DATA_DIR = Path("i4t-data")
LOG_LEVELS = ("debug", "info", "warning", "error")
ROLES = ("gateway", "router")
DEFAULT_ANNOUNCE_SECONDS = 300.0
DEFAULT_LAN_GRACE_SECONDS = 60.0


class SettingsError(ValueError):
    """A setting has a value the gateway cannot use; the message says which and why."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where an MQTT broker listens and how to log in to it."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """Parse mqtt://[user[:password]@]host[:port] or mqtts://..."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise SettingsError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise SettingsError(f"broker URL has no host: {url!r}")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as err:
            raise SettingsError(f"broker URL has a bad port: {url!r}") from err
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def describe(self) -> str:
        """The address without credentials, for logs."""
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway needs to start."""

    data_dir: Path
    broker: BrokerAddress | None
    embedded_host: str = DEFAULT_EMBEDDED_HOST
    embedded_port: int = DEFAULT_EMBEDDED_PORT
    name: str = "I4T Gateway"
    log_level: str = "info"
    timeout_factor: float = 3.0
    timeout_floor: float = 30.0
    timeout_fallback: float = 900.0
    health_poll_seconds: float = 300.0
    status_refresh_seconds: float = 900.0
    gossip_seconds: float = 60.0
    # The regional router (docs/ROUTER.md): broker URL, the operator's token, the router's
    # address (its acks must be signed by it) and, for a private CA, its certificate file.
    upstream_url: str | None = None
    upstream_token: str | None = None
    upstream_router: str | None = None
    upstream_ca_file: Path | None = None
    # The router's broker speaks MQTT 5 (Mosquitto) unless this says 3.1.1 (NATS's MQTT).
    upstream_mqtt5: bool = True
    # MQTT devices to adopt at start (the add-on's options); enrolled once, then persisted.
    mqtt_devices: tuple[MqttDeviceDefinition, ...] = ()
    # "gateway" (a hub) or "router" (a regional router: docs/ROUTER.md).
    role: str = "gateway"
    # How often the served addresses are announced upstream (also at once when they change);
    # an announce holds for three of these intervals.
    announce_seconds: float = DEFAULT_ANNOUNCE_SECONDS
    # LAN peers (docs/PROTOCOL.md §16): off unless asked for, since it advertises the
    # gateway by multicast DNS on every network card. The peer listener's port (0: any free
    # one, zeroconf tells the peers), and how long a peer may be unreachable before what is
    # queued for it goes to the router.
    lan_peers: bool = False
    lan_port: int = 0
    lan_grace_seconds: float = DEFAULT_LAN_GRACE_SECONDS
    lan_allow: tuple[str, ...] = ()
    """LAN peers this gateway links to and takes from (gateway addresses); empty: any."""
    # Router role: what running the router costs its operator per month, for the cost per
    # thing-month it publishes (docs/ROUTER.md, accounting).
    monthly_cost: float = 0.0
    currency: str = "USD"
    # Router role: the admin of the broker's dynamic-security plugin; with it the router
    # provisions each admitted gateway's broker access from its token book (docs/ROUTER.md).
    dynsec_admin_user: str | None = None
    dynsec_admin_password: str | None = None
    # Router role: this process is one worker of a region served by several (docs/ROUTER.md,
    # scale-out); the data folder is the region's, shared by its workers.
    worker_id: str | None = None

    @property
    def uses_embedded_broker(self) -> bool:
        """No broker given: the gateway brings its own so that one command gives a working hub."""
        return self.broker is None

    def local_broker(self) -> BrokerAddress:
        """The broker the gateway's local bus connects to."""
        if self.broker is not None:
            return self.broker
        return BrokerAddress(host=self.embedded_host, port=self.embedded_port)


def build_parser() -> argparse.ArgumentParser:
    """The command line of i4t-gateway; every option also reads an I4T_* environment variable."""
    parser = argparse.ArgumentParser(
        prog="i4t-gateway",
        description="I4T gateway: bridges things into the I4T mesh and forwards upstream.",
    )
    env = os.environ.get
    parser.add_argument(
        "--broker",
        default=env("I4T_BROKER_URL"),
        help="local MQTT broker, mqtt://[user:pass@]host[:port] or mqtts://...; "
        "without it the gateway runs its own embedded broker (env I4T_BROKER_URL)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("I4T_DATA_DIR", str(DEFAULT_DATA_DIR))),
        help="folder for the key pair and the SQLite store (env I4T_DATA_DIR)",
    )
    parser.add_argument(
        "--embedded-host",
        default=env("I4T_EMBEDDED_HOST", DEFAULT_EMBEDDED_HOST),
        help="address the embedded broker listens on (env I4T_EMBEDDED_HOST)",
    )
    parser.add_argument(
        "--embedded-port",
        type=int,
        default=int(env("I4T_EMBEDDED_PORT", str(DEFAULT_EMBEDDED_PORT))),
        help="port the embedded broker listens on (env I4T_EMBEDDED_PORT)",
    )
    parser.add_argument(
        "--addon",
        action="store_true",
        help="run as the Home Assistant add-on: options from /data/options.json, the broker "
        "from the Supervisor's mqtt service (needs SUPERVISOR_TOKEN)",
    )
    parser.add_argument("--name", default=env("I4T_NAME", "I4T Gateway"), help="display name")
    parser.add_argument(
        "--role",
        choices=ROLES,
        default=env("I4T_ROLE", "gateway"),
        help="gateway (a hub, the default) or router (a regional router serving gateways on "
        "its broker, docs/ROUTER.md) (env I4T_ROLE)",
    )
    _seconds_or_factor(
        parser,
        "--announce-seconds",
        str(int(DEFAULT_ANNOUNCE_SECONDS)),
        "how often the served addresses are announced to the upstream router",
    )
    _seconds_or_factor(
        parser,
        "--monthly-cost",
        "0",
        "router role: the operator's monthly cost of running the router, for the published "
        "cost per thing-month",
    )
    parser.add_argument(
        "--currency",
        default=env("I4T_CURRENCY", "USD"),
        help="router role: the currency of --monthly-cost (env I4T_CURRENCY)",
    )
    parser.add_argument(
        "--dynsec-admin",
        default=env("I4T_DYNSEC_ADMIN_USER"),
        help="router role: the broker's dynamic-security admin user; its password comes from "
        "env I4T_DYNSEC_ADMIN_PASSWORD (env I4T_DYNSEC_ADMIN_USER)",
    )
    parser.add_argument(
        "--worker",
        default=env("I4T_WORKER"),
        help="router role: this worker's id when several share the region (env I4T_WORKER)",
    )
    parser.add_argument(
        "--upstream-mqtt311",
        action="store_true",
        default=env("I4T_UPSTREAM_MQTT311", "") == "1",
        help="speak MQTT 3.1.1 to the router's broker (NATS), not MQTT 5",
    )
    _seconds_or_factor(
        parser,
        "--timeout-factor",
        "3",
        "a node is DEAD after this many times its largest learned reporting gap",
    )
    _seconds_or_factor(
        parser,
        "--timeout-floor",
        "30",
        "seconds: no node is declared DEAD sooner than this after it was last heard",
    )
    _seconds_or_factor(
        parser,
        "--timeout-fallback",
        "900",
        "seconds: the timeout used until a node's interval is learned",
    )
    parser.add_argument(
        "--upstream",
        default=env("I4T_UPSTREAM_URL"),
        help="the regional router's broker, mqtts://host[:port] (env I4T_UPSTREAM_URL); the "
        "token comes from env I4T_UPSTREAM_TOKEN so that it is not on the command line",
    )
    parser.add_argument(
        "--upstream-router",
        default=env("I4T_UPSTREAM_ROUTER"),
        help="the router's I4T address: its acks must be signed by it (env I4T_UPSTREAM_ROUTER)",
    )
    parser.add_argument(
        "--upstream-ca",
        type=Path,
        default=env("I4T_UPSTREAM_CA"),
        help="CA certificate file for the router's TLS, when it is not publicly signed",
    )
    _seconds_or_factor(
        parser,
        "--health-poll-seconds",
        "300",
        "how often native group members are asked for their health",
    )
    _seconds_or_factor(
        parser,
        "--status-refresh-seconds",
        "900",
        "how often native group members are asked for a status refresh",
    )
    _seconds_or_factor(
        parser,
        "--gossip-seconds",
        "60",
        "how often the seeds of each group are gossiped to its members",
    )
    parser.add_argument(
        "--lan-peers",
        action="store_true",
        default=env("I4T_LAN_PEERS", "") in ("1", "true", "yes"),
        help="find other gateways on the LAN with zeroconf and exchange traffic with them "
        "directly (env I4T_LAN_PEERS=1)",
    )
    parser.add_argument(
        "--lan-port",
        type=int,
        default=int(env("I4T_LAN_PORT", "0")),
        help="TCP port of the LAN peer listener; 0, the default, takes any free port "
        "(env I4T_LAN_PORT)",
    )
    _seconds_or_factor(
        parser,
        "--lan-grace-seconds",
        str(int(DEFAULT_LAN_GRACE_SECONDS)),
        "how long a LAN peer may be unreachable before its queued packets go to the router",
    )
    parser.add_argument(
        "--lan-allow",
        action="append",
        metavar="ADDRESS",
        default=[a for a in env("I4T_LAN_ALLOW", "").replace(",", " ").split() if a],
        help="take LAN peering only with this gateway (its I4T address); repeat for several; "
        "without it any gateway on the LAN may peer (env I4T_LAN_ALLOW, comma-separated)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=env("I4T_LOG_LEVEL", "info"),
        help="log level (env I4T_LOG_LEVEL)",
    )
    return parser


def _seconds_or_factor(
    parser: argparse.ArgumentParser, flag: str, default: str, description: str
) -> None:
    """A number option that also reads I4T_<FLAG> from the environment. The default stays a
    string so that argparse converts it too: a bad environment value is a usage error."""
    name = "I4T_" + flag.removeprefix("--").upper().replace("-", "_")
    parser.add_argument(
        flag,
        type=float,
        default=os.environ.get(name, default),
        help=f"{description} (env {name}, default {default})",
    )


def _check_lan(args: argparse.Namespace) -> None:
    if not 0 <= args.lan_port < 65536 or not args.lan_grace_seconds > 0:
        raise SettingsError("--lan-port must be 0-65535, --lan-grace-seconds positive")
    for address in args.lan_allow:
        try:
            Address.from_text(address)
        except AddressError:
            raise SettingsError(f"--lan-allow needs a gateway's I4T address: {address!r}") from None


def settings_from_args(argv: list[str] | None = None) -> Settings:
    """Parse the command line (and environment) into Settings; SettingsError on bad values."""
    args = build_parser().parse_args(argv)
    broker = BrokerAddress.from_url(args.broker) if args.broker else None
    if not 0 < args.embedded_port < 65536:
        raise SettingsError(f"embedded broker port out of range: {args.embedded_port}")
    if args.log_level not in LOG_LEVELS:
        raise SettingsError(f"log level must be one of {', '.join(LOG_LEVELS)}")
    if not args.timeout_factor >= 1:
        raise SettingsError("the timeout factor must be at least 1")
    if not 0 < args.timeout_floor <= args.timeout_fallback:
        raise SettingsError("need 0 < timeout floor <= timeout fallback")
    for interval in ("health_poll_seconds", "status_refresh_seconds", "gossip_seconds"):
        if not getattr(args, interval) > 0:
            raise SettingsError(f"--{interval.replace('_', '-')} must be positive")
    if args.role not in ROLES:
        raise SettingsError(f"role must be one of {', '.join(ROLES)}")
    if args.role == "router" and not args.broker:
        raise SettingsError("a router runs on an existing broker: give --broker")
    if not args.announce_seconds > 0 or not args.monthly_cost >= 0:
        raise SettingsError("--announce-seconds must be positive, --monthly-cost not negative")
    _check_lan(args)
    upstream_token = os.environ.get("I4T_UPSTREAM_TOKEN")
    if args.upstream and not (args.upstream_router and upstream_token):
        raise SettingsError(
            "--upstream needs --upstream-router and the token in env I4T_UPSTREAM_TOKEN"
        )
    if args.upstream:
        BrokerAddress.from_url(args.upstream)  # a clear error now rather than at connect
    dynsec_password = os.environ.get("I4T_DYNSEC_ADMIN_PASSWORD")
    if args.dynsec_admin and not (dynsec_password and broker and broker.username):
        raise SettingsError(
            "--dynsec-admin needs env I4T_DYNSEC_ADMIN_PASSWORD and the router's own user "
            "and password in --broker"
        )
    return Settings(
        upstream_url=args.upstream,
        upstream_token=upstream_token,
        upstream_router=args.upstream_router,
        upstream_ca_file=args.upstream_ca,
        upstream_mqtt5=not args.upstream_mqtt311,
        data_dir=args.data_dir,
        broker=broker,
        embedded_host=args.embedded_host,
        embedded_port=args.embedded_port,
        name=args.name,
        log_level=args.log_level,
        timeout_factor=args.timeout_factor,
        timeout_floor=args.timeout_floor,
        timeout_fallback=args.timeout_fallback,
        health_poll_seconds=args.health_poll_seconds,
        status_refresh_seconds=args.status_refresh_seconds,
        gossip_seconds=args.gossip_seconds,
        role=args.role,
        announce_seconds=args.announce_seconds,
        lan_peers=args.lan_peers,
        lan_port=args.lan_port,
        lan_grace_seconds=args.lan_grace_seconds,
        lan_allow=tuple(args.lan_allow),
        monthly_cost=args.monthly_cost,
        currency=args.currency,
        dynsec_admin_user=args.dynsec_admin,
        dynsec_admin_password=dynsec_password if args.dynsec_admin else None,
        worker_id=args.worker,
    )
