"""Add-on mode: what the Home Assistant add-on image runs (``python3 -m i4t_gateway.addon``).

The add-on's s6 run script only hands the process over; everything it would otherwise do in
bash lives here, where it is typed and tested:

1. read ``/data/options.json`` (addon_options.py);
2. ask the Supervisor for the ``mqtt`` service, retrying with a clear log line while no broker
   add-on provides it or the Supervisor is unreachable (supervisor.py);
3. run the gateway on that broker, and once it is connected, POST the add-on discovery so HA
   offers the I4T integration;
4. keep a heartbeat file fresh for the image's HEALTHCHECK (``--healthcheck``).

Exit codes: 0 after SIGTERM/SIGINT, 2 for a configuration error (bad options, no Supervisor
token), 1 for a fatal runtime error (store, identity). The run script's ``finish`` halts the
container on a non-zero code, so the Supervisor shows the add-on as stopped with this log.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
import contextlib
import logging
import os
from pathlib import Path
import signal
import sys
import time
from typing import Final

from .__main__ import configure_logging
from .addon_options import (
    AddonOptions,
    addon_data_dir,
    load_options,
    options_path,
    settings_from_addon,
)
from .embedded_broker import EmbeddedBrokerError
from .identity import IdentityError
from .server import GatewayServer, run_until_stopped
from .settings import SettingsError
from .store import StoreError
from .supervisor import SupervisorClient, SupervisorError, retry_until_done

_LOGGER = logging.getLogger("i4t_gateway.addon")

HEARTBEAT_FILE_ENV: Final = "I4T_HEARTBEAT_FILE"
DEFAULT_HEARTBEAT_FILE: Final = Path("/run/i4t-gateway/heartbeat")
HEARTBEAT_INTERVAL_SECONDS: Final = 10.0
HEARTBEAT_MAX_AGE_SECONDS: Final = 60.0
"""Six missed beats: the event loop is stuck, not merely busy."""


def heartbeat_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(HEARTBEAT_FILE_ENV) or DEFAULT_HEARTBEAT_FILE)


def check_heartbeat(path: Path, now: float | None = None) -> int:
    """The HEALTHCHECK: 0 when the gateway's loop beat recently, 1 otherwise.

    Liveness only: a gateway waiting for its broker is healthy (it keeps queueing), and a
    restart would not bring the broker back. A stuck event loop is what a restart cures.
    """
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        print(f"unhealthy: no heartbeat at {path}", file=sys.stderr)
        return 1
    if age > HEARTBEAT_MAX_AGE_SECONDS:
        print(f"unhealthy: last heartbeat {age:.0f} s ago", file=sys.stderr)
        return 1
    return 0


def _write_heartbeat(path: Path) -> None:
    # A few bytes on a tmpfs (/run): cheaper inline than a hop to a worker thread.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{time.time():.0f}\n")


async def _beat(path: Path) -> None:
    while True:
        try:
            _write_heartbeat(path)
        except OSError as err:
            _LOGGER.warning("cannot write the heartbeat file %s: %s", path, err)
        await asyncio.sleep(HEARTBEAT_INTERVAL_SECONDS)


async def _announce_discovery(
    server: GatewayServer, client: SupervisorClient, stop: asyncio.Event
) -> None:
    # After the first connection: when HA offers the integration, the gateway's retained
    # announcement is already on the broker for the config flow to find.
    await server.bus.wait_connected()
    config = {"gateway_id": server.gateway_id, "name": server.settings.name}
    uuid = await retry_until_done(
        lambda: client.announce(config), "announcing the gateway to Home Assistant", stop
    )
    if uuid is not None:
        _LOGGER.info("announced to Home Assistant's add-on discovery")


async def run_addon(
    options: AddonOptions,
    client: SupervisorClient,
    *,
    data_dir: Path,
    heartbeat_file: Path,
    stop: asyncio.Event | None = None,
) -> None:
    """Wait for the Supervisor's broker, run the gateway on it until ``stop`` (or a signal)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    heartbeat = asyncio.create_task(_beat(heartbeat_file), name="addon-heartbeat")
    try:
        service = await retry_until_done(
            client.mqtt_service, "asking the Supervisor for the MQTT broker", stop
        )
        if service is None:
            return
        _LOGGER.info(
            "using the MQTT broker %s (from the Supervisor's mqtt service)",
            service.broker().describe(),
        )
        server = GatewayServer(settings_from_addon(options, service, data_dir))
        discovery = asyncio.create_task(
            _announce_discovery(server, client, stop), name="addon-discovery"
        )
        try:
            await run_until_stopped(server, stop)
        finally:
            discovery.cancel()
            await asyncio.gather(discovery, return_exceptions=True)
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="i4t-gateway --addon",
        description="Run the I4T gateway as the Home Assistant add-on: options from "
        f"{options_path()}, the broker from the Supervisor's mqtt service.",
    )
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="exit 0 if the running gateway's heartbeat is fresh (the image's HEALTHCHECK)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Add-on mode's entry point; see the module docstring for the exit codes."""
    args = build_parser().parse_args(argv)
    if args.healthcheck:
        return check_heartbeat(heartbeat_path())
    try:
        options = load_options(options_path())
        client = SupervisorClient.from_environment()
    except (SettingsError, SupervisorError) as err:
        print(f"i4t-gateway: {err}", file=sys.stderr)
        return 2
    configure_logging(options.log_level)
    try:
        asyncio.run(
            run_addon(options, client, data_dir=addon_data_dir(), heartbeat_file=heartbeat_path())
        )
    except (EmbeddedBrokerError, StoreError, IdentityError) as err:
        _LOGGER.error("%s", err)
        return 1
    with contextlib.suppress(OSError):
        heartbeat_path().unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
