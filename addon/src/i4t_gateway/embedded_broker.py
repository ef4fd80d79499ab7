"""The embedded MQTT broker a gateway runs when it is given none.

amqtt is ample for one home (BRIEF: ~13k msgs/s QoS 0) but it can lose QoS 1
messages it has already acknowledged. Durability therefore never rests on this
broker: hops acknowledge each other with I4T ack packets (see queue.py).
"""

from __future__ import annotations

import logging
from typing import Any

from amqtt.broker import Broker

_LOGGER = logging.getLogger(__name__)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not start (typically: the port is taken)."""


class EmbeddedBroker:
    """An amqtt broker on one TCP listener, anonymous access, no $SYS chatter."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    async def start(self) -> None:
        """Listen; EmbeddedBrokerError with the reason when it cannot."""
        broker = Broker(self._config())
        try:
            await broker.start()
        except Exception as err:
            raise EmbeddedBrokerError(
                f"embedded MQTT broker cannot listen on {self.host}:{self.port}: {err}; "
                "free the port, choose another with --embedded-port, or give --broker"
            ) from err
        self._broker = broker
        _LOGGER.info("embedded MQTT broker listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and drop the sessions; safe to call when not started."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
            _LOGGER.info("embedded MQTT broker stopped")
