"""Routers and gateways for the router tests: each on its own real Mosquitto, all on loopback.

Routers run in the test's event loop (RouterServer) or as the console script in a process of
their own (``python -m i4t_gateway --role router``) where the test kills them with SIGKILL.
Every gateway and child router gets a token from its router's operator key before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import os
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys

from i4t_gateway.identity import Address, Identity, load_or_create_identity
from i4t_gateway.router import DOWN_HOP_PREFIX, KEY_FILE, RouterServer
from i4t_gateway.server import KEY_FILE as GATEWAY_KEY_FILE
from i4t_gateway.settings import BrokerAddress, Settings
from i4t_gateway.tokens import ROUTER_DATABASE_FILE, TokenLimits, open_token_book

from .brokers import Mosquitto, stop_process
from .gateway_harness import Harness, fast_settings, start_harness
from .mqtt_probe import Probe
from .nats_cluster import NatsNode


@dataclass
class Upstream:
    """Where a gateway or child router connects: its router's broker, address and a token."""

    url: str
    router: Address
    token: str

    def settings(self) -> dict[str, str]:
        return {
            "upstream_url": self.url,
            "upstream_router": self.router.text,
            "upstream_token": self.token,
        }


def issue(router_dir: Path, holder: Address, limits: TokenLimits | None = None) -> str:
    """A token from the router's operator (the command line's code path)."""
    book, operator = open_token_book(router_dir)
    return book.issue(operator, holder, 30, limits or TokenLimits())


def router_address(data_dir: Path) -> Address:
    """The router's address; its key is made now if it has none yet."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return load_or_create_identity(data_dir / KEY_FILE).address


def upstream_for(holder_key: Path, router_dir: Path, broker: Mosquitto) -> Upstream:
    """Make the holder's key (if new), and a token for it from the router at ``router_dir``."""
    holder_key.parent.mkdir(parents=True, exist_ok=True)
    holder = load_or_create_identity(holder_key).address
    return Upstream(broker.url, router_address(router_dir), issue(router_dir, holder))


def router_settings(data_dir: Path, broker: Mosquitto, upstream: Upstream | None) -> Settings:
    extra = upstream.settings() if upstream else {}
    return Settings(
        data_dir=data_dir, broker=BrokerAddress.from_url(broker.url), role="router", **extra
    )


async def start_router(
    data_dir: Path, broker: Mosquitto, upstream: Upstream | None = None
) -> RouterServer:
    router = RouterServer(router_settings(data_dir, broker, upstream), state_every=0.5)
    await router.start()
    return router


async def start_gateway(
    data_dir: Path, router_dir: Path, router_broker: Mosquitto, local: Mosquitto
) -> Harness:
    upstream = upstream_for(data_dir / GATEWAY_KEY_FILE, router_dir, router_broker)
    settings = fast_settings(
        data_dir, local.url, timeout_floor=30.0, timeout_fallback=30.0, **upstream.settings()
    )
    return await start_harness(settings, local.port)


@dataclass
class RouterProcess:
    """The console script in router role, as an operator runs it; kill() is a SIGKILL."""

    data_dir: Path
    broker: Mosquitto | NatsNode  # anything with a broker URL
    upstream: Upstream | None = None
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def address(self) -> Address:
        return router_address(self.data_dir)

    def start(self) -> None:
        command = [
            sys.executable, "-m", "i4t_gateway", "--role", "router",
            "--broker", self.broker.url, "--data-dir", str(self.data_dir),
            *self.extra_args,
        ]  # fmt: skip
        env = dict(os.environ)
        if self.upstream is not None:
            command += ["--upstream", self.upstream.url]
            command += ["--upstream-router", self.upstream.router.text]
            env["I4T_UPSTREAM_TOKEN"] = self.upstream.token
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / self.log_name).open("ab")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)

    @property
    def log_name(self) -> str:
        return "router.log" if not self.extra_args else f"router{'-'.join(self.extra_args)}.log"

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.process)

    def queued_for(self, gateway: Address) -> int:
        """Packets its database holds for a gateway (read beside the running process)."""
        conn = sqlite3.connect(self.data_dir / ROUTER_DATABASE_FILE)
        try:
            row = conn.execute(
                "SELECT count(*) FROM hop_queue WHERE hop = ?", (DOWN_HOP_PREFIX + gateway.text,)
            ).fetchone()
        finally:
            conn.close()
        return int(row[0])


def own_probe(broker: Mosquitto) -> Probe:
    """A thing's own MQTT connection, so that it outlives a restart of its gateway."""
    return Probe(broker.port, "i4t/thing/#")


def identity_of(data_dir: Path) -> Identity:
    return load_or_create_identity(data_dir / GATEWAY_KEY_FILE)
