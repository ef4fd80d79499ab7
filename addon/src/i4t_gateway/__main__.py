"""Console entry point: ``i4t-gateway`` (also ``python -m i4t_gateway``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from .embedded_broker import EmbeddedBrokerError
from .identity import IdentityError
from .router import RouterServer, run_router_until_stopped
from .server import GatewayServer, run_until_stopped
from .settings import Settings, SettingsError, settings_from_args
from .store import StoreError
from .tokens import token_main

_LOGGER = logging.getLogger("i4t_gateway")

# The embedded broker logs every client connect at INFO: useful while developing, noise otherwise.
_QUIET_LOGGERS = ("amqtt", "transitions")


def configure_logging(level: str) -> None:
    """Log to stderr with timestamps; third-party chatter only at warning and above."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if settings.role == "router":
        await run_router_until_stopped(RouterServer(settings), stop)
    else:
        await run_until_stopped(GatewayServer(settings), stop)


def main(argv: list[str] | None = None) -> int:
    """Run the gateway until SIGINT or SIGTERM; exit 2 on a configuration error."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["token"]:
        # The router operator's token command line (docs/ROUTER.md, admission).
        return token_main(args[1:])
    if "--addon" in args:
        # Add-on mode: options from /data/options.json, the broker from the Supervisor.
        from .addon import main as addon_main  # noqa: PLC0415 - addon imports this module

        return addon_main([arg for arg in args if arg != "--addon"])
    try:
        settings = settings_from_args(argv)
    except SettingsError as err:
        print(f"i4t-gateway: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        asyncio.run(_serve(settings))
    except (EmbeddedBrokerError, StoreError, IdentityError) as err:
        _LOGGER.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
