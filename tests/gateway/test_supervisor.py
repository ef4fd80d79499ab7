"""The Supervisor client against a stand-in Supervisor over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
import logging

import pytest

from i4t_gateway.settings import BrokerAddress
from i4t_gateway.supervisor import (
    MqttService,
    ServiceUnavailableError,
    SupervisorClient,
    SupervisorError,
    next_retry_delay,
    retry_until_done,
)

from .brokers import free_port
from .supervisor_standin import TOKEN, SupervisorStandIn

SERVICE = {
    "host": "core-mosquitto",
    "port": 1883,
    "ssl": False,
    "protocol": "3.1.1",
    "username": "addons",
    "password": "s3cret-from-the-supervisor",
    "addon": "core_mosquitto",
}


@pytest.fixture
def supervisor() -> Iterator[SupervisorStandIn]:
    standin = SupervisorStandIn(mqtt_service=dict(SERVICE))
    standin.start()
    yield standin
    standin.stop()


async def test_hands_out_the_mqtt_service(supervisor: SupervisorStandIn) -> None:
    service = await SupervisorClient(TOKEN, supervisor.url).mqtt_service()
    assert service.broker() == BrokerAddress(
        "core-mosquitto", 1883, False, "addons", "s3cret-from-the-supervisor"
    )
    assert service.provider == "core_mosquitto"
    assert "s3cret" not in repr(service)
    assert supervisor.requests == [("GET", "/services/mqtt", True)]


async def test_announces_for_discovery(supervisor: SupervisorStandIn) -> None:
    uuid = await SupervisorClient(TOKEN, supervisor.url + "/").announce(
        {"gateway_id": "i4tabc", "name": "Shed"}
    )
    assert uuid
    assert supervisor.discoveries == [
        {"service": "i4t", "config": {"gateway_id": "i4tabc", "name": "Shed"}}
    ]


async def test_a_wrong_token_is_a_clear_error(supervisor: SupervisorStandIn) -> None:
    with pytest.raises(SupervisorError, match="refused our token") as caught:
        await SupervisorClient("wrong", supervisor.url).mqtt_service()
    assert "wrong" not in str(caught.value)


async def test_no_broker_add_on_yet(supervisor: SupervisorStandIn) -> None:
    supervisor.mqtt_service = None
    with pytest.raises(ServiceUnavailableError, match="Service not enabled"):
        await SupervisorClient(TOKEN, supervisor.url).mqtt_service()


async def test_unknown_path_and_unreachable_supervisor() -> None:
    standin = SupervisorStandIn()
    standin.start()
    try:
        client = SupervisorClient(TOKEN, standin.url)
        with pytest.raises(SupervisorError, match="404"):
            await client._call("GET", "/nothing")
    finally:
        standin.stop()
    with pytest.raises(SupervisorError, match="cannot reach the Supervisor"):
        await SupervisorClient(TOKEN, f"http://127.0.0.1:{free_port()}").mqtt_service()


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"host": "", "port": 1883},
        {"host": "h", "port": "1883"},
        {"host": "h", "port": 0},
        {"host": "h", "port": True},
    ],
)
def test_unusable_service_data(data: dict[str, object]) -> None:
    with pytest.raises(SupervisorError):
        MqttService.from_answer(data)


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (200, b"<html>", SupervisorError, "not JSON"),
        (200, b'{"result": "error", "message": "nope"}', SupervisorError, "refused .*: nope"),
        (200, b'{"result": "ok", "data": []}', SupervisorError, "no data object"),
        (200, b'{"result": "ok", "data": {}}', ServiceUnavailableError, "no add-on provides"),
        (200, b'{"result": "ok"}', ServiceUnavailableError, "no add-on provides"),
        (200, b" " * (1024 * 1024 + 1), SupervisorError, "too large"),
        (500, b"Internal error", SupervisorError, "answered 500 .*: Internal"),
        (403, b"{}", SupervisorError, "refused our token"),
    ],
)
async def test_odd_answers_are_clear_errors(
    supervisor: SupervisorStandIn,
    status: int,
    body: bytes,
    error: type[Exception],
    message: str,
) -> None:
    supervisor.canned["/services/mqtt"] = (status, body)
    with pytest.raises(error, match=message):
        await SupervisorClient(TOKEN, supervisor.url).mqtt_service()


def test_service_defaults() -> None:
    service = MqttService.from_answer({"host": "h", "port": 8883, "ssl": True})
    assert service.broker() == BrokerAddress("h", 8883, True)
    assert service.protocol == "3.1.1"


def test_the_token_comes_from_the_environment() -> None:
    with pytest.raises(SupervisorError, match="SUPERVISOR_TOKEN is not set"):
        SupervisorClient.from_environment({})
    client = SupervisorClient.from_environment({"SUPERVISOR_TOKEN": "tok-123"})
    assert client.base_url == "http://supervisor"
    assert "tok-123" not in repr(client)
    other = SupervisorClient.from_environment(
        {"SUPERVISOR_TOKEN": "t", "I4T_SUPERVISOR_URL": "http://127.0.0.1:9"}
    )
    assert other.base_url == "http://127.0.0.1:9"


def test_retry_delays_grow_to_a_cap() -> None:
    delays = [next_retry_delay(0)]
    for _ in range(8):
        delays.append(next_retry_delay(delays[-1]))
    assert delays[:4] == [1, 2, 4, 8]
    assert delays[-1] == 30


async def test_retries_until_the_broker_add_on_is_up(
    supervisor: SupervisorStandIn, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("i4t_gateway.supervisor.RETRY_FIRST_SECONDS", 0.01)
    supervisor.unavailable_for = 3
    client = SupervisorClient(TOKEN, supervisor.url)
    with caplog.at_level(logging.DEBUG, "i4t_gateway.supervisor"):
        service = await retry_until_done(client.mqtt_service, "asking", asyncio.Event())
    assert service is not None
    assert service.host == "core-mosquitto"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # The same failure three times is one warning, then debug lines: no flood while waiting.
    assert len(warnings) == 1
    assert "Service not enabled; retrying in" in warnings[0].getMessage()


async def test_retrying_stops_when_asked() -> None:
    stop = asyncio.Event()
    client = SupervisorClient(TOKEN, f"http://127.0.0.1:{free_port()}")
    task = asyncio.create_task(retry_until_done(client.mqtt_service, "asking", stop))
    await asyncio.sleep(0.2)
    stop.set()
    async with asyncio.timeout(5):
        assert await task is None
