"""The Home Assistant Supervisor, seen from inside the add-on: the MQTT service and discovery.

In the add-on the local broker is whatever provides the Supervisor's ``mqtt`` service (the
Mosquitto add-on): ``GET /services/mqtt`` hands out its host, port and credentials. The gateway
then announces itself for HA's add-on discovery with ``POST /discovery``, so that HA offers the
I4T integration. Both calls authenticate with ``SUPERVISOR_TOKEN``, which the Supervisor puts in
the add-on's environment.

The standard library is enough (urllib in a worker thread): the gateway takes no HTTP client
dependency for two small requests at start-up. The base URL comes from ``I4T_SUPERVISOR_URL``
(default ``http://supervisor``) so tests can point it at a stand-in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
import json
import logging
import os
from typing import Any, Final
import urllib.error
import urllib.request

from .settings import BrokerAddress

_LOGGER = logging.getLogger(__name__)

SUPERVISOR_URL_ENV: Final = "I4T_SUPERVISOR_URL"
SUPERVISOR_TOKEN_ENV: Final = "SUPERVISOR_TOKEN"  # noqa: S105 - the variable name, not a token
DEFAULT_SUPERVISOR_URL: Final = "http://supervisor"
DISCOVERY_SERVICE: Final = "i4t"
"""Must be listed under ``discovery`` in addon/config.yaml; HA starts the ``i4t`` config flow."""

REQUEST_TIMEOUT_SECONDS: Final = 10.0
MAX_ANSWER_SIZE: Final = 1024 * 1024
RETRY_FIRST_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 30.0


class SupervisorError(Exception):
    """The Supervisor could not be asked, or said no; the message says which, without secrets."""


class ServiceUnavailableError(SupervisorError):
    """The Supervisor answered, but no add-on provides the service (yet)."""


@dataclass(frozen=True, slots=True)
class MqttService:
    """The Supervisor's ``mqtt`` service: the broker the add-on should use."""

    host: str
    port: int
    ssl: bool = False
    username: str | None = None
    password: str | None = None
    protocol: str = "3.1.1"
    provider: str | None = None

    def __repr__(self) -> str:
        # Never show the password, even in a traceback or a debug log.
        return (
            f"MqttService(host={self.host!r}, port={self.port}, ssl={self.ssl}, "
            f"provider={self.provider!r})"
        )

    def broker(self) -> BrokerAddress:
        """The broker address the gateway's bus connects to."""
        return BrokerAddress(
            host=self.host,
            port=self.port,
            tls=self.ssl,
            username=self.username,
            password=self.password,
        )

    @classmethod
    def from_answer(cls, data: Mapping[str, Any]) -> MqttService:
        """Parse the ``data`` of ``GET /services/mqtt``; SupervisorError if it is unusable."""
        host = data.get("host")
        port = data.get("port")
        if not isinstance(host, str) or not host:
            raise SupervisorError("the Supervisor's mqtt service has no host")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise SupervisorError("the Supervisor's mqtt service has no valid port")
        return cls(
            host=host,
            port=port,
            ssl=data.get("ssl") is True,
            username=_optional_text(data.get("username")),
            password=_optional_text(data.get("password")),
            protocol=_optional_text(data.get("protocol")) or "3.1.1",
            provider=_optional_text(data.get("addon")),
        )


def _optional_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class SupervisorClient:
    """The two Supervisor calls the gateway needs, async on the outside, urllib inside."""

    def __init__(self, token: str, base_url: str = DEFAULT_SUPERVISOR_URL) -> None:
        self._token = token
        self.base_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"SupervisorClient({self.base_url!r})"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SupervisorClient:
        """From SUPERVISOR_TOKEN and I4T_SUPERVISOR_URL; SupervisorError without a token."""
        env = os.environ if environ is None else environ
        token = env.get(SUPERVISOR_TOKEN_ENV, "")
        if not token:
            raise SupervisorError(
                f"{SUPERVISOR_TOKEN_ENV} is not set: add-on mode runs only inside the "
                "Home Assistant add-on (started by the Supervisor)"
            )
        return cls(token, env.get(SUPERVISOR_URL_ENV) or DEFAULT_SUPERVISOR_URL)

    async def mqtt_service(self) -> MqttService:
        """The broker handed out by the ``mqtt`` service; ServiceUnavailableError if none."""
        data = await self._call("GET", "/services/mqtt")
        if not data:
            raise ServiceUnavailableError("no add-on provides the mqtt service yet")
        return MqttService.from_answer(data)

    async def announce(self, config: Mapping[str, Any]) -> str:
        """POST our discovery so HA offers the integration; returns the discovery's uuid."""
        data = await self._call(
            "POST", "/discovery", {"service": DISCOVERY_SERVICE, "config": config}
        )
        uuid = data.get("uuid")
        return uuid if isinstance(uuid, str) else ""

    async def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self._request, method, path, body)

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        """One blocking request; returns the answer's ``data`` object."""
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        encoded = None
        if body is not None:
            encoded = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 - the URL is the Supervisor's, http only
            self.base_url + path, data=encoded, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - see above
                request, timeout=REQUEST_TIMEOUT_SECONDS
            ) as answer:
                return _data_of(answer.read(MAX_ANSWER_SIZE + 1), f"{method} {path}")
        except urllib.error.HTTPError as err:
            raise _http_error(err, f"{method} {path}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise SupervisorError(
                f"cannot reach the Supervisor at {self.base_url} ({reason})"
            ) from None


def _data_of(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_ANSWER_SIZE:
        raise SupervisorError(f"the Supervisor's answer to {what} is too large")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise SupervisorError(f"the Supervisor's answer to {what} is not JSON") from None
    if not isinstance(answer, dict) or answer.get("result") != "ok":
        raise SupervisorError(f"the Supervisor refused {what}: {_message(answer)}")
    data = answer.get("data", {})
    if not isinstance(data, dict):
        raise SupervisorError(f"the Supervisor's answer to {what} has no data object")
    return data


def _http_error(err: urllib.error.HTTPError, what: str) -> SupervisorError:
    try:
        message = _message(json.loads(err.read(MAX_ANSWER_SIZE)))
    except (ValueError, OSError):
        message = err.reason
    if err.code in (401, 403):
        return SupervisorError(f"the Supervisor refused our token for {what} ({err.code})")
    if err.code == 400 and "/services/" in what:
        # The Supervisor answers 400 "Service not enabled" until a broker add-on has started.
        return ServiceUnavailableError(f"{what}: {message}")
    return SupervisorError(f"the Supervisor answered {err.code} to {what}: {message}")


def _message(answer: object) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return str(answer["message"])[:200]
    return "no message"


def next_retry_delay(previous: float) -> float:
    """1 s, 2 s, 4 s... up to 30 s: quick when the broker add-on is just starting, calm after."""
    if previous <= 0:
        return RETRY_FIRST_SECONDS
    return min(previous * 2, RETRY_MAX_SECONDS)


async def retry_until_done[T](
    attempt: Callable[[], Awaitable[T]], what: str, stop: asyncio.Event
) -> T | None:
    """Run ``attempt`` until it succeeds; None if ``stop`` is set first.

    Every failure is one clear log line with the next delay; a repeat of the same failure is
    logged at debug level so that a long wait for the broker add-on does not flood the log.
    """
    delay = 0.0
    last_message = ""
    while not stop.is_set():
        try:
            return await attempt()
        except SupervisorError as err:
            delay = next_retry_delay(delay)
            message = str(err)
            level = logging.DEBUG if message == last_message else logging.WARNING
            _LOGGER.log(level, "%s: %s; retrying in %.0f s", what, message, delay)
            last_message = message
        try:
            async with asyncio.timeout(delay):
                await stop.wait()
        except TimeoutError:
            pass
    return None
