"""An MQTT client driven by the asyncio event loop, with reconnect and a last will.

The same class serves the local broker (MQTT 3.1.1) and the uplink to a regional router
(MQTT 5 over TLS with a CA file and optionally a client certificate, links.py).
paho-mqtt does the protocol; its socket is serviced from the event loop
(add_reader / add_writer) so that callbacks run on the loop thread and no lock
is needed anywhere in the gateway. The blocking TCP/TLS connect runs in the
default executor, and paho's socket callbacks hop back to the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
import logging
from pathlib import Path
import random
import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from .settings import BrokerAddress

_LOGGER = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]
ConnectedHook = Callable[[], Coroutine[Any, Any, None]]
DisconnectedHook = Callable[[], None]

KEEPALIVE_SECONDS = 30
MISC_INTERVAL_SECONDS = 1.0
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
STOP_FLUSH_SECONDS = 2.0
_MATCH_CACHE_TOPICS = 4096


@dataclass(frozen=True, slots=True)
class LastWill:
    """What the broker publishes for us when we vanish without a goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What a TLS connection trusts and shows: a CA file (None: the system's CAs) and an
    optional client certificate with its key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the broker's certificate and host name."""
        context = ssl.create_default_context(
            cafile=None if self.ca_file is None else str(self.ca_file)
        )
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def next_backoff(previous: float, maximum: float = BACKOFF_MAX_SECONDS) -> float:
    """Exponential backoff with jitter, so that many gateways do not reconnect in lockstep."""
    base = BACKOFF_FIRST_SECONDS if previous <= 0 else min(previous * 2, maximum)
    return base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret


class MqttBus:
    """One broker connection: publish, subscribe, reconnect forever until stopped.

    ``mqtt5`` speaks MQTT 5 instead of 3.1.1. With ``broker.tls``, ``tls_files`` says which CA
    to trust and which client certificate to show (default: the system's CAs, none).
    ``tcp_nodelay`` (default on) trades some streaming rate for QoS 1 round trips without the
    Nagle stall. ``max_backoff`` caps the reconnect delay; ``max_inflight`` is paho's limit of
    unacknowledged QoS 1 publishes on the wire (further ones wait inside paho).
    """

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        will: LastWill | None = None,
        on_connected: ConnectedHook | None = None,
        on_disconnected: DisconnectedHook | None = None,
        mqtt5: bool = False,
        tls_files: TlsFiles | None = None,
        tcp_nodelay: bool = True,
        max_backoff: float = BACKOFF_MAX_SECONDS,
        max_inflight: int | None = None,
    ) -> None:
        self._broker = broker
        self._will = will
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._mqtt5 = mqtt5
        self._tls_files = tls_files
        self._tcp_nodelay = tcp_nodelay
        self._max_backoff = max_backoff
        self._max_inflight = max_inflight
        self._subscriptions: dict[str, tuple[int, MessageHandler]] = {}
        # Which filters match a topic, remembered: paho's topic_matches_sub builds a matcher
        # tree per call, 7 % of a forwarding gateway's CPU with four subscriptions.
        self._matches: dict[str, list[tuple[str, MessageHandler]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._disconnected: asyncio.Event = asyncio.Event()
        self._client = self._make_client(client_id)

    @property
    def connected(self) -> bool:
        """Whether the broker session is up right now."""
        return self._connected.is_set()

    def _make_client(self, client_id: str) -> mqtt.Client:
        if self._mqtt5:
            # MQTT 5 has no clean_session; paho starts clean and asks to resume on reconnects.
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv5,
            )
        else:
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=True,
            )
        if self._broker.username is not None:
            client.username_pw_set(self._broker.username, self._broker.password)
        if self._broker.tls:
            files = self._tls_files
            client.tls_set_context(
                ssl.create_default_context() if files is None else files.context()
            )
        if self._max_inflight is not None:
            client.max_inflight_messages_set(self._max_inflight)
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload, self._will.qos, self._will.retain)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_socket_open = self._handle_socket_open
        client.on_socket_close = self._handle_socket_close
        client.on_socket_register_write = self._handle_register_write
        client.on_socket_unregister_write = self._handle_unregister_write
        return client

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._keep_connected(), name="mqtt-supervisor")
        self._misc_task = asyncio.create_task(self._service_misc(), name="mqtt-misc")

    async def wait_connected(self) -> None:
        """Wait until the session is up (wrap in asyncio.timeout to bound it)."""
        await self._connected.wait()

    async def stop(self, goodbye: tuple[str, bytes] | None = None) -> None:
        """Publish an optional retained goodbye, then disconnect cleanly (no last will)."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self.connected:
            if goodbye is not None:
                info = self._client.publish(goodbye[0], goodbye[1], qos=1, retain=True)
                try:
                    async with asyncio.timeout(STOP_FLUSH_SECONDS):
                        await self._wait_published(info)
                except TimeoutError:
                    _LOGGER.warning("broker did not acknowledge the goodbye in time")
            self._disconnected.clear()
            self._client.disconnect()
            try:
                await asyncio.wait_for(self._disconnected.wait(), STOP_FLUSH_SECONDS)
            except TimeoutError:
                _LOGGER.warning("broker did not close the session in time")
        if self._misc_task is not None:
            self._misc_task.cancel()
        for task in (self._supervisor, self._misc_task):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self._release_socket()

    async def _wait_published(self, info: mqtt.MQTTMessageInfo) -> None:
        # paho gives no awaitable for one message; this runs once, at shutdown.
        while not info.is_published() and self.connected:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    async def _keep_connected(self) -> None:
        delay = 0.0
        while not self._stopping:
            if not self.connected:
                try:
                    await self._connect_once()
                except (OSError, ssl.SSLError) as err:
                    delay = next_backoff(delay, self._max_backoff)
                    _LOGGER.warning(
                        "cannot reach MQTT broker %s (%s); retrying in %.1f s",
                        self._broker.describe(),
                        err,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                delay = 0.0
            self._disconnected.clear()
            await self._disconnected.wait()
            if not self._stopping:
                delay = next_backoff(delay, self._max_backoff)
                await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        self._disconnected.clear()
        if self._client.socket() is None:
            await loop.run_in_executor(
                None, self._client.connect, self._broker.host, self._broker.port, KEEPALIVE_SECONDS
            )
        else:
            await loop.run_in_executor(None, self._client.reconnect)

    async def _service_misc(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL_SECONDS)
            if self._client.socket() is not None:
                self._client.loop_misc()

    def _release_socket(self) -> None:
        sock = self._client.socket()
        if sock is not None and self._loop is not None:
            self._forget_socket(sock)

    # -- publish / subscribe ----------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> bool:
        """Queue a message for the broker; False when there is no session (nothing is queued)."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Deliver matching messages to handler(topic, payload, retained), across reconnects."""
        self._subscriptions[topic_filter] = (qos, handler)
        self._matches.clear()
        if self.connected:
            self._client.subscribe(topic_filter, qos)

    # -- paho callbacks (all on the loop thread, except socket open during connect) --

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if reason.is_failure:
            _LOGGER.error("MQTT broker %s refused the session: %s", self._broker.describe(), reason)
            return
        _LOGGER.info("connected to MQTT broker %s", self._broker.describe())
        self._connected.set()
        for topic_filter, (qos, _) in self._subscriptions.items():
            client.subscribe(topic_filter, qos)
        if self._on_connected is not None:
            hook = self._on_connected
            asyncio.get_running_loop().create_task(hook(), name="mqtt-on-connected")

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        was_connected = self.connected
        self._connected.clear()
        self._disconnected.set()
        if was_connected and not self._stopping:
            _LOGGER.warning("lost MQTT broker %s: %s", self._broker.describe(), reason)
        if was_connected and self._on_disconnected is not None:
            self._on_disconnected()

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # A snapshot: a handler may subscribe to more (enrolling a device does).
        for topic_filter, handler in self._handlers_for(msg.topic):
            try:
                handler(msg.topic, msg.payload, msg.retain)
            except Exception:
                # One bad handler must not take the connection down with it.
                _LOGGER.exception("handler for %s failed", topic_filter)

    def _handlers_for(self, topic: str) -> list[tuple[str, MessageHandler]]:
        matches = self._matches.get(topic)
        if matches is None:
            if len(self._matches) >= _MATCH_CACHE_TOPICS:  # topics come from the broker: bound
                self._matches.clear()
            matches = self._matches[topic] = [
                (topic_filter, handler)
                for topic_filter, (_, handler) in self._subscriptions.items()
                if mqtt.topic_matches_sub(topic_filter, topic)
            ]
        return matches

    def _in_loop(self, func: Callable[..., Any], *args: Any) -> None:
        """Run func on the loop thread: directly when already there, else by a thread-safe hop."""
        assert self._loop is not None
        if self._loop.is_closed():  # paho closing its socket at garbage collection, after stop
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            func(*args)
        else:
            self._loop.call_soon_threadsafe(func, *args)

    def _handle_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Nagle + delayed ACK stall QoS 1 round trips by 40-80 ms (BRIEF section 4).
        if self._tcp_nodelay and hasattr(sock, "setsockopt"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in_loop(self._watch_reads, sock)

    def _watch_reads(self, sock: Any) -> None:
        assert self._loop is not None
        if self._is_current(sock):  # else closed again before the hop reached the loop
            self._loop.add_reader(sock, self._client.loop_read)

    def _handle_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Called just before paho closes the socket, so the fd is still valid here.
        self._in_loop(self._forget_socket, sock)

    def _forget_socket(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _handle_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._watch_writes, sock)

    def _watch_writes(self, sock: Any) -> None:
        assert self._loop is not None
        if self._is_current(sock):
            self._loop.add_writer(sock, self._client.loop_write)

    def _is_current(self, sock: Any) -> bool:
        return self._client.socket() is sock

    def _handle_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._stop_watching_writes, sock)

    def _stop_watching_writes(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.remove_writer(sock)
