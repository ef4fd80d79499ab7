"""A plain paho client for tests: subscribes, records what arrives, waits for conditions."""

from __future__ import annotations

from collections.abc import Callable
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Probe:
    """Records every message on its subscriptions; the last retained value per topic too."""

    def __init__(self, port: int, *topics: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("probe could not subscribe")

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(self, *_: object) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((msg.topic, msg.payload, msg.retain))
            self._changed.notify_all()

    def last(self, topic: str) -> bytes | None:
        with self._changed:
            for seen_topic, payload, _ in reversed(self.messages):
                if seen_topic == topic:
                    return payload
        return None

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met in {timeout} s: {self.messages!r}")
                self._changed.wait(remaining)

    def wait_for_payload(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self.last(topic) == payload, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
