"""Add-on mode: options, heartbeat, and the image's run and finish scripts run as the image would.

No Docker engine runs here, so the end-to-end tests run the add-on's s6 ``run`` script itself,
through a stand-in for bashio (the few functions our scripts call), against a stand-in
Supervisor over HTTP and a real Mosquitto that demands the credentials the Supervisor hands out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import signal
import stat
import subprocess
import sys
import time
from typing import Any

from jsonschema import Draft7Validator
import pytest
import yaml

from i4t_gateway import api
from i4t_gateway.addon import HEARTBEAT_MAX_AGE_SECONDS, check_heartbeat, run_addon
from i4t_gateway.addon_options import (
    AddonOptions,
    addon_data_dir,
    load_options,
    options_path,
    parse_options,
    settings_from_addon,
)
from i4t_gateway.settings import BrokerAddress, SettingsError, build_parser
from i4t_gateway.supervisor import MqttService, SupervisorClient

from .api_schemas import assert_valid
from .brokers import Mosquitto, free_port
from .mqtt_probe import Probe
from .supervisor_standin import TOKEN, SupervisorStandIn

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon"
SERVICE_DIR = ADDON / "rootfs" / "etc" / "services.d" / "i4t-gateway"
BUILD_SCHEMA = ROOT.parent / "shared" / "schemas" / "addon-build.schema.json"
MQTT_USER = "addons"
MQTT_PASSWORD = "pw-from-the-supervisor-9f2c"

ROUTER_ID = "i4tag4tzzcscdnrntd77jxbv4azbafq"
UPSTREAM = {
    "upstream_url": "mqtts://router.example",
    "upstream_router_id": ROUTER_ID,
    "upstream_token": "tok",
}

# -- options -------------------------------------------------------------------------------------


def test_defaults_are_the_config_yaml_defaults() -> None:
    config = yaml.safe_load((ADDON / "config.yaml").read_text())
    assert parse_options(config["options"]) == AddonOptions()


def test_every_option() -> None:
    options = parse_options(
        {
            "name": " Garden shed ",
            "log_level": "debug",
            "upstream_url": "mqtts://router.example:8883",
            "upstream_router_id": ROUTER_ID,
            "upstream_token": "tok",
            "lan_allowed_peers": [f" {ROUTER_ID} "],
            "mqtt_devices": [
                {"id": "plug", "template": "tasmota", "topic": "plug"},
                {
                    "id": "ht",
                    "template": "shelly_gen2",
                    "topic": "shellyhtg3-1",
                    "name": "H&T",
                    "sensors": "temperature:0, humidity:0",
                },
            ],
        }
    )
    assert options.name == "Garden shed"
    assert options.upstream is not None
    assert options.upstream.broker == BrokerAddress("router.example", 8883, True)
    assert options.upstream.router.text == ROUTER_ID
    assert options.upstream.token == "tok"
    assert "tok" not in repr(options.upstream)
    assert [d.local_id for d in options.mqtt_devices] == ["plug", "ht"]
    assert options.mqtt_devices[1].name == "H&T"
    assert len(options.mqtt_devices[1].states) == 2
    assert options.lan_allowed_peers == (ROUTER_ID,)
    settings = settings_from_addon(options, MqttService("core-mosquitto", 1883), Path("/data"))
    assert settings.lan_allow == (ROUTER_ID,)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"log_level": "trace"}, "log_level"),
        ({**UPSTREAM, "upstream_url": "http://router"}, "mqtt://"),
        ({**UPSTREAM, "upstream_url": "mqtts://u:p@router"}, "credentials"),
        ({**UPSTREAM, "upstream_router_id": "router-1"}, "not an I4T address"),
        ({"upstream_token": "t"}, "missing: upstream_url, upstream_router_id"),
        ({**UPSTREAM, "upstream_url": ""}, "missing: upstream_url$"),
        ({**UPSTREAM, "upstream_url": 5}, "upstream_url must be a text"),
        ({**UPSTREAM, "upstream_token": 5}, "upstream_token must be a text"),
        ({"lan_allowed_peers": "i4ta"}, "lan_allowed_peers must be a list"),
        ({"lan_allowed_peers": ["router-1"]}, "not a gateway's I4T address"),
        ({"mqtt_devices": {}}, "must be a list"),
        ({"mqtt_devices": ["plug"]}, "device 1"),
        ({"mqtt_devices": [{"id": "p", "template": "tasmota"}]}, "topic"),
        ({"mqtt_devices": [{"id": "P", "template": "tasmota", "topic": "p"}]}, "device 1"),
        ({"mqtt_devices": [{"id": "p", "template": "x", "topic": "p"}]}, "unknown template"),
        (
            {"mqtt_devices": [{"id": "p", "template": "tasmota", "topic": "p", "sensors": 3}]},
            "sensors",
        ),
        (
            {"mqtt_devices": [{"id": "p", "template": "tasmota", "topic": t} for t in "ab"]},
            "ids used twice",
        ),
    ],
)
def test_bad_options_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_options(options)


def test_options_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_options(tmp_path / "options.json")
    (tmp_path / "options.json").write_text("{")
    with pytest.raises(SettingsError, match="cannot read"):
        load_options(tmp_path / "options.json")
    (tmp_path / "options.json").write_text("[]")
    with pytest.raises(SettingsError, match="not a JSON object"):
        load_options(tmp_path / "options.json")


def test_paths_default_to_the_add_on_folders() -> None:
    assert options_path({}) == Path("/data/options.json")
    assert addon_data_dir({}) == Path("/data")
    assert options_path({"I4T_ADDON_OPTIONS": "/tmp/o.json"}) == Path("/tmp/o.json")
    assert addon_data_dir({"I4T_DATA_DIR": "/tmp/d"}) == Path("/tmp/d")


def test_settings_use_the_supervisors_broker(tmp_path: Path) -> None:
    service = MqttService("core-mosquitto", 1883, username="addons", password="pw")
    settings = settings_from_addon(AddonOptions(name="Shed"), service, tmp_path)
    assert settings.broker == BrokerAddress("core-mosquitto", 1883, False, "addons", "pw")
    assert not settings.uses_embedded_broker
    assert settings.name == "Shed"
    assert settings.data_dir == tmp_path


# -- heartbeat -----------------------------------------------------------------------------------


def test_healthcheck_wants_a_recent_heartbeat(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat"
    assert check_heartbeat(beat) == 1
    beat.write_text("1")
    assert check_heartbeat(beat) == 0
    assert check_heartbeat(beat, now=time.time() + HEARTBEAT_MAX_AGE_SECONDS + 5) == 1


# -- add-on mode in this process (the subprocess tests below cannot measure coverage) -------------


async def test_stopping_while_no_broker_add_on_runs(tmp_path: Path) -> None:
    standin = SupervisorStandIn()  # no mqtt service at all
    standin.start()
    stop = asyncio.Event()
    heartbeat = tmp_path / "run" / "heartbeat"
    try:
        task = asyncio.create_task(
            run_addon(
                AddonOptions(),
                SupervisorClient(TOKEN, standin.url),
                data_dir=tmp_path / "data",
                heartbeat_file=heartbeat,
                stop=stop,
            )
        )
        await asyncio.sleep(0.3)
        assert heartbeat.exists()  # waiting for the broker is alive, not stuck
        stop.set()
        async with asyncio.timeout(5):
            await task
        assert not (tmp_path / "data").exists()  # the gateway never started
    finally:
        standin.stop()


async def test_add_on_mode_in_process(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    standin = SupervisorStandIn(mqtt_service={"host": "127.0.0.1", "port": mosquitto.port})
    standin.start()
    stop = asyncio.Event()
    (tmp_path / "not-a-folder").write_text("")
    try:
        task = asyncio.create_task(
            run_addon(
                AddonOptions(name="In process"),
                SupervisorClient(TOKEN, standin.url),
                data_dir=tmp_path / "data",
                heartbeat_file=tmp_path / "not-a-folder" / "heartbeat",
                stop=stop,
            )
        )
        async with asyncio.timeout(10):
            while not standin.discoveries:  # noqa: ASYNC110 - the stand-in's thread adds it
                await asyncio.sleep(0.02)
        assert standin.discoveries[0]["config"]["name"] == "In process"
        stop.set()
        async with asyncio.timeout(10):
            await task
    finally:
        standin.stop()
    assert "cannot write the heartbeat file" in caplog.text


# -- the image's files ---------------------------------------------------------------------------


def test_build_yaml_is_valid_for_the_linter_schema() -> None:
    schema = json.loads(BUILD_SCHEMA.read_text())
    build = yaml.safe_load((ADDON / "build.yaml").read_text())
    assert not list(Draft7Validator(schema).iter_errors(build))
    assert set(build["build_from"]) == {"aarch64", "amd64"}


def test_dockerfile_builds_from_the_python_base_and_checks_health() -> None:
    dockerfile = (ADDON / "Dockerfile").read_text()
    assert "ARG BUILD_FROM=ghcr.io/home-assistant/" in dockerfile
    assert "FROM ${BUILD_FROM}" in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert "i4t_gateway.addon" in dockerfile


@pytest.mark.parametrize("script", ["run", "finish"])
def test_service_scripts_are_executable(script: str) -> None:
    mode = (SERVICE_DIR / script).stat().st_mode
    assert mode & stat.S_IXUSR
    assert (SERVICE_DIR / script).read_text().startswith("#!/")


@pytest.fixture
def bashio_bin(tmp_path: Path) -> Path:
    """A PATH folder with a stand-in ``bashio``: the functions our scripts use, then the script."""
    folder = tmp_path / "bin"
    folder.mkdir()
    bashio = folder / "bashio"
    bashio.write_text(
        "#!/usr/bin/env bash\n"
        'bashio::log.info() { echo "[INFO] $*" >&2; }\n'
        'bashio::log.warning() { echo "[WARN] $*" >&2; }\n'
        'script=$1; shift\nsource "$script" "$@"\n'
    )
    bashio.chmod(0o755)
    return folder


def run_finish(bashio_bin: Path, tmp_path: Path, *args: str) -> tuple[int, str | None, bool]:
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    halted = tmp_path / "halted"
    halt = bashio_bin / "halt"
    halt.write_text(f"#!/bin/sh\ntouch {halted}\n")
    halt.chmod(0o755)
    env = {**os.environ, "I4T_S6_RESULTS": str(results), "I4T_S6_HALT": str(halt)}
    done = subprocess.run(
        [str(bashio_bin / "bashio"), str(SERVICE_DIR / "finish"), *args],
        env=env,
        capture_output=True,
        check=False,
    )
    exitcode = results / "exitcode"
    written = exitcode.read_text().strip() if exitcode.exists() else None
    return done.returncode, written, halted.exists()


@pytest.mark.parametrize(
    ("args", "halts"), [(("0", "0"), False), (("256", "15"), False), (("1", "0"), True)]
)
def test_finish_halts_the_container_only_on_failure(
    bashio_bin: Path, tmp_path: Path, args: tuple[str, str], halts: bool
) -> None:
    code, written, halted = run_finish(bashio_bin, tmp_path, *args)
    assert code == 0
    assert halted is halts
    assert written == (args[0] if halts else None)


# -- end to end: the run script, the Supervisor, Mosquitto -----------------------------------------


@dataclass
class PasswordMosquitto(Mosquitto):
    """Mosquitto that admits only the user the stand-in Supervisor hands out on ``port``, and
    anyone on ``probe_port`` (for the test's probe)."""

    probe_port: int = field(default_factory=free_port)

    def _write_config(self) -> Path:
        passwords = self.workdir / "passwords"
        subprocess.run(
            ["mosquitto_passwd", "-b", "-c", str(passwords), MQTT_USER, MQTT_PASSWORD],
            check=True,
            capture_output=True,
        )
        passwords.chmod(0o600)
        config = self.workdir / f"mosquitto-{self.port}.conf"
        config.write_text(
            # As root, Mosquitto would switch to its own user, which cannot read tmp_path.
            f"{'user root' if os.geteuid() == 0 else ''}\n"
            "per_listener_settings true\n"
            "persistence false\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            f"listener {self.probe_port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "log_dest stderr\n"
            "log_type error\n"
        )
        return config


@pytest.fixture
def locked_mosquitto(tmp_path: Path) -> Iterator[PasswordMosquitto]:
    broker = PasswordMosquitto(workdir=tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def supervisor(locked_mosquitto: PasswordMosquitto) -> Iterator[SupervisorStandIn]:
    standin = SupervisorStandIn(
        mqtt_service={
            "host": "127.0.0.1",
            "port": locked_mosquitto.port,
            "ssl": False,
            "protocol": "3.1.1",
            "username": MQTT_USER,
            "password": MQTT_PASSWORD,
            "addon": "core_mosquitto",
        },
        # Mosquitto is still starting when the gateway first asks.
        unavailable_for=1,
    )
    standin.start()
    yield standin
    standin.stop()


@dataclass
class AddonRun:
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def output(self) -> str:
        self.process.wait(15)
        assert self.process.stdout is not None
        return self.process.stdout.read().decode()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)


def start_addon(
    tmp_path: Path, bashio_bin: Path, supervisor_url: str, *, token: str | None = TOKEN
) -> AddonRun:
    """The add-on's run script as s6 starts it: bashio, then exec of the gateway."""
    options = tmp_path / "options.json"
    if not options.exists():
        options.write_text(json.dumps({"name": "Shed gateway", "log_level": "info"}))
    python_bin = Path(sys.executable).parent
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("I4T_", "SUPERVISOR_"))
    }
    env.update(
        {
            "PATH": f"{bashio_bin}:{python_bin}:{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "I4T_SUPERVISOR_URL": supervisor_url,
            "I4T_ADDON_OPTIONS": str(options),
            "I4T_DATA_DIR": str(tmp_path / "data"),
            "I4T_HEARTBEAT_FILE": str(tmp_path / "run" / "heartbeat"),
        }
    )
    if token is not None:
        env["SUPERVISOR_TOKEN"] = token
    process = subprocess.Popen(
        [str(bashio_bin / "bashio"), str(SERVICE_DIR / "run")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return AddonRun(process, env)


def test_the_add_on_starts_on_the_supervisors_broker_and_announces_itself(
    tmp_path: Path,
    bashio_bin: Path,
    locked_mosquitto: PasswordMosquitto,
    supervisor: SupervisorStandIn,
) -> None:
    probe = Probe(locked_mosquitto.probe_port, "i4t/#")
    run = start_addon(tmp_path, bashio_bin, supervisor.url)
    try:
        probe.wait_for(lambda: any(t.startswith("i4t/discovery/") for t, _, _ in probe.messages))
        topic = next(t for t, _, _ in probe.messages if t.startswith("i4t/discovery/"))
        info = assert_valid("gateway_info", probe.last(topic) or b"")
        assert info["name"] == "Shed gateway"
        probe.wait_for_payload(info["availability_topic"], api.ONLINE)
        wait_for(lambda: bool(supervisor.discoveries))
        assert supervisor.discoveries == [
            {"service": "i4t", "config": {"gateway_id": info["id"], "name": "Shed gateway"}}
        ]
        # Every request carried the token; the first found no broker yet and was retried.
        assert all(authorized for _, _, authorized in supervisor.requests)
        assert [path for _, path, _ in supervisor.requests].count("/services/mqtt") == 2
        # The broker's password reached the gateway by HTTP, never by its command line.
        cmdline = Path(f"/proc/{run.process.pid}/cmdline").read_bytes()
        assert b"i4t_gateway.addon" in cmdline or b"--addon" in cmdline  # exec'd, not a child
        assert MQTT_PASSWORD.encode() not in cmdline
        # The image's HEALTHCHECK, run as Docker would, beside the running gateway.
        wait_for((tmp_path / "run" / "heartbeat").exists)
        healthcheck = subprocess.run(
            [sys.executable, "-m", "i4t_gateway.addon", "--healthcheck"],
            env=run.env,
            capture_output=True,
            check=False,
        )
        assert healthcheck.returncode == 0, healthcheck.stderr
        assert (tmp_path / "data" / "gateway.key").exists()

        assert run.stop() == 0
        probe.wait_for_payload(info["availability_topic"], api.OFFLINE)
        output = run.output()
        assert "[INFO] Starting the I4T gateway" in output
        assert "Service not enabled; retrying in" in output
        assert "announced to Home Assistant's add-on discovery" in output
        assert MQTT_PASSWORD not in output
    finally:
        run.process.kill()
        run.process.wait()
        probe.close()


def test_without_a_supervisor_token_the_add_on_stops_with_a_reason(
    tmp_path: Path, bashio_bin: Path
) -> None:
    run = start_addon(tmp_path, bashio_bin, "http://127.0.0.1:9", token=None)
    output = run.output()
    assert run.process.returncode == 2
    assert "SUPERVISOR_TOKEN is not set" in output


def test_bad_options_stop_the_add_on_with_a_reason(tmp_path: Path, bashio_bin: Path) -> None:
    (tmp_path / "options.json").write_text(json.dumps({"log_level": "loud"}))
    run = start_addon(tmp_path, bashio_bin, "http://127.0.0.1:9")
    output = run.output()
    assert run.process.returncode == 2
    assert "log_level" in output


def test_an_unreachable_supervisor_is_retried_not_a_crash(tmp_path: Path, bashio_bin: Path) -> None:
    run = start_addon(tmp_path, bashio_bin, f"http://127.0.0.1:{free_port()}")
    try:
        time.sleep(1.5)
        assert run.process.poll() is None, run.output()
        assert run.stop() == 0
        output = run.output()
        assert "cannot reach the Supervisor" in output
        assert "retrying in" in output
    finally:
        run.process.kill()
        run.process.wait()


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


ADDON_FLAG_WIRED = "--addon" in build_parser().format_help()


@pytest.mark.skipif(not ADDON_FLAG_WIRED, reason="__main__ does not dispatch --addon yet")
def test_the_console_script_dispatches_add_on_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("I4T_", "SUPERVISOR_"))}
    env["I4T_ADDON_OPTIONS"] = str(tmp_path / "missing.json")
    done = subprocess.run(
        [sys.executable, "-m", "i4t_gateway", "--addon"],
        env=env,
        capture_output=True,
        check=False,
        timeout=20,
    )
    assert done.returncode == 2
    assert b"add-on options not found" in done.stderr
