"""The gateway process on a real Mosquitto and on its embedded broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
import os
from pathlib import Path
import signal
import subprocess
import sys

import pytest

from i4t_gateway import api
from i4t_gateway.server import GatewayServer
from i4t_gateway.settings import BrokerAddress, Settings

from .api_schemas import assert_valid
from .brokers import Mosquitto, free_port, wait_for_port
from .mqtt_probe import Probe


@pytest.fixture
def probe_factory() -> Iterator[list[Probe]]:
    probes: list[Probe] = []
    yield probes
    for probe in probes:
        probe.close()


def gateway_process(*args: str) -> subprocess.Popen[bytes]:
    """The console script exactly as the add-on image runs it (python -m, same entry point)."""
    return subprocess.Popen(
        [sys.executable, "-m", "i4t_gateway", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def discovery_topic(probe: Probe) -> str:
    topics = [t for t, _, _ in probe.messages if t.startswith(api.DISCOVERY_PREFIX + "/")]
    assert topics, "no gateway announcement seen"
    return topics[-1]


async def test_announces_itself_and_goes_offline_on_stop(
    mosquitto: Mosquitto, tmp_path: Path, probe_factory: list[Probe]
) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker=BrokerAddress.from_url(mosquitto.url))
    server = GatewayServer(settings)
    probe = Probe(mosquitto.port, "i4t/#")
    probe_factory.append(probe)
    await server.start()
    topics = server.topics
    await _wait(lambda: probe.last(topics.availability) == api.ONLINE)

    info = assert_valid("gateway_info", probe.last(topics.discovery) or b"")
    assert info["id"] == server.gateway_id
    assert info["availability_topic"] == topics.availability
    assert info["base_topic"] == f"i4t/{server.gateway_id}"
    assert info["role"] == "gateway"

    await server.stop()
    await _wait(lambda: probe.last(topics.availability) == api.OFFLINE)


async def test_reannounces_after_broker_restart(
    mosquitto: Mosquitto, tmp_path: Path, probe_factory: list[Probe]
) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker=BrokerAddress.from_url(mosquitto.url))
    server = GatewayServer(settings)
    await server.start()
    async with asyncio.timeout(10):
        await server.bus.wait_connected()

    # No persistence: the restarted broker has forgotten every retained message.
    mosquitto.restart()
    probe = Probe(mosquitto.port, "i4t/#")
    probe_factory.append(probe)
    try:
        await _wait(lambda: probe.last(server.topics.availability) == api.ONLINE, seconds=15)
        assert_valid("gateway_info", probe.last(server.topics.discovery) or b"")
    finally:
        await server.stop()


async def test_keeps_its_identity_across_restarts(mosquitto: Mosquitto, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker=BrokerAddress.from_url(mosquitto.url))
    first = GatewayServer(settings)
    first.store.close()
    second = GatewayServer(settings)
    second.store.close()
    assert first.gateway_id == second.gateway_id
    assert (tmp_path / "data" / "gateway.key").stat().st_mode & 0o777 == 0o600


def test_process_exits_cleanly_on_sigint(
    mosquitto: Mosquitto, tmp_path: Path, probe_factory: list[Probe]
) -> None:
    probe = Probe(mosquitto.port, "i4t/#")
    probe_factory.append(probe)
    proc = gateway_process("--broker", mosquitto.url, "--data-dir", str(tmp_path))
    try:
        probe.wait_for(lambda: any(p == api.ONLINE for _, p, _ in probe.messages))
        availability = discovery_topic(probe).replace("discovery/", "") + "/availability"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        probe.wait_for_payload(availability, api.OFFLINE)
    finally:
        proc.kill()
        proc.wait()


def test_last_will_marks_a_killed_gateway_offline(
    mosquitto: Mosquitto, tmp_path: Path, probe_factory: list[Probe]
) -> None:
    probe = Probe(mosquitto.port, "i4t/#")
    probe_factory.append(probe)
    proc = gateway_process("--broker", mosquitto.url, "--data-dir", str(tmp_path))
    try:
        probe.wait_for(lambda: any(p == api.ONLINE for _, p, _ in probe.messages))
        availability = discovery_topic(probe).replace("discovery/", "") + "/availability"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        probe.wait_for_payload(availability, api.OFFLINE)
    finally:
        proc.kill()
        proc.wait()


def test_runs_on_its_embedded_broker_without_a_broker_url(
    tmp_path: Path, probe_factory: list[Probe]
) -> None:
    port = free_port()
    proc = gateway_process("--embedded-port", str(port), "--data-dir", str(tmp_path))
    try:
        wait_for_port(port)
        probe = Probe(port, "i4t/#")
        probe_factory.append(probe)
        probe.wait_for(lambda: any(p == api.ONLINE for _, p, _ in probe.messages))
        assert_valid("gateway_info", probe.last(discovery_topic(probe)) or b"")
        assert (tmp_path / "gateway.db").exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_embedded_port_taken_is_a_clear_error(tmp_path: Path, mosquitto: Mosquitto) -> None:
    proc = gateway_process("--embedded-port", str(mosquitto.port), "--data-dir", str(tmp_path))
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert b"cannot listen on 127.0.0.1:" in output


def test_bad_broker_url_exits_with_usage_error(tmp_path: Path) -> None:
    proc = gateway_process("--broker", "http://example", "--data-dir", str(tmp_path))
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert b"mqtt://" in output


async def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - the probe's thread changes it
            await asyncio.sleep(0.02)
