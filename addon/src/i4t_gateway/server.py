"""The gateway process: identity, store, local broker and bus, wired together and run."""

from __future__ import annotations

import asyncio
import logging
import time

from . import __version__, api
from .bus import LastWill, MqttBus
from .embedded_broker import EmbeddedBroker
from .identity import load_or_create_identity
from .settings import Settings
from .store import open_store, set_meta

_LOGGER = logging.getLogger(__name__)

KEY_FILE = "gateway.key"
DATABASE_FILE = "gateway.db"
ROLE = "gateway"


class GatewayServer:
    """One gateway: start() brings it up, stop() takes it down and says goodbye on the bus."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_or_create_identity(settings.data_dir / KEY_FILE)
        self.gateway_id = self.identity.address.text
        self.topics = api.GatewayTopics(self.gateway_id)
        self.store = open_store(settings.data_dir / DATABASE_FILE)
        self.started_at = time.time()
        self._embedded: EmbeddedBroker | None = None
        if settings.uses_embedded_broker:
            self._embedded = EmbeddedBroker(settings.embedded_host, settings.embedded_port)
        self.bus = MqttBus(
            settings.local_broker(),
            client_id=f"i4t-{self.gateway_id}",
            will=LastWill(self.topics.availability, api.OFFLINE),
            on_connected=self._announce,
        )

    async def start(self) -> None:
        """Start the embedded broker (if any) and the bus; does not wait for the broker."""
        set_meta(self.store, "gateway_id", self.gateway_id)
        if self._embedded is not None:
            await self._embedded.start()
        await self.bus.start()
        _LOGGER.info("gateway %s started (version %s)", self.identity.address.short(), __version__)

    async def _announce(self) -> None:
        # Runs on every (re)connect: retained state must be present after a broker restart too.
        info = api.gateway_info(
            gateway_id=self.gateway_id,
            name=self.settings.name,
            version=__version__,
            role=ROLE,
            started_at=self.started_at,
        )
        self.bus.publish(self.topics.discovery, api.encode(info), qos=1, retain=True)
        self.bus.publish(self.topics.availability, api.ONLINE, qos=1, retain=True)

    async def stop(self) -> None:
        """Mark the gateway offline, disconnect, stop the embedded broker, close the store."""
        await self.bus.stop(goodbye=(self.topics.availability, api.OFFLINE))
        if self._embedded is not None:
            await self._embedded.stop()
        self.store.close()
        _LOGGER.info("gateway stopped")


async def run_until_stopped(server: GatewayServer, stop: asyncio.Event) -> None:
    """Start the server, wait for the stop event, stop the server."""
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
