"""Runs a gateway and Home Assistant side by side for development (./scripts/develop)."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
import json
import os
from pathlib import Path
import signal
import sys
import threading
import time
from typing import Any
import urllib.error
import urllib.parse
import urllib.request

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
DEV_USER = "dev"
DEV_PASSWORD = "i4t-dev"
STOP_GRACE_SECONDS = 20
COLOURS = {"gateway": "\033[36m", "hass": "\033[35m", "develop": "\033[33m"}

HA_CONFIGURATION = """\
# Written by ./scripts/develop; minimal on purpose (default_config: reaches the internet).
homeassistant:
  name: I4T development
frontend:
config:
http:
  server_host: 127.0.0.1
  server_port: {port}
logger:
  default: info
  logs:
    custom_components.i4t: debug
"""


# Set on Ctrl-C so that the set-up thread stops waiting and the process can exit.
CANCELLED = threading.Event()


def pause(seconds: float) -> None:
    if CANCELLED.wait(seconds):
        raise InterruptedError("stopping")


def say(message: str) -> None:
    print(f"{COLOURS['develop']}[develop]\033[0m {message}", flush=True)


@dataclass
class Options:
    var: Path
    ha_port: int
    mqtt_port: int
    auto_setup: bool

    @property
    def ha_config(self) -> Path:
        return self.var / "ha"

    @property
    def gateway_data(self) -> Path:
        return self.var / "gateway"

    @property
    def ha_url(self) -> str:
        return f"http://127.0.0.1:{self.ha_port}"


def parse_args() -> Options:
    parser = argparse.ArgumentParser(prog="scripts/develop", description=__doc__)
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="state folder (var/)")
    parser.add_argument("--ha-port", type=int, default=8123)
    parser.add_argument("--mqtt-port", type=int, default=1883, help="embedded broker port")
    parser.add_argument(
        "--bare",
        action="store_true",
        help="no automatic onboarding and MQTT set-up: a fresh HA to click through",
    )
    args = parser.parse_args()
    return Options(args.var.resolve(), args.ha_port, args.mqtt_port, not args.bare)


def prepare_ha_config(options: Options) -> None:
    config = options.ha_config
    config.mkdir(parents=True, exist_ok=True)
    (config / "configuration.yaml").write_text(HA_CONFIGURATION.format(port=options.ha_port))
    custom = config / "custom_components"
    custom.mkdir(exist_ok=True)
    link = custom / "i4t"
    if not link.is_symlink():
        link.symlink_to(ROOT / "custom_components" / "i4t", target_is_directory=True)


async def pump(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{COLOURS[name]}[{name}]\033[0m "
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def start(name: str, *argv: str) -> tuple[asyncio.subprocess.Process, asyncio.Task[None]]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Own session: Ctrl-C reaches only this script, which stops the children in order.
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    return process, asyncio.create_task(pump(name, process.stdout))


async def stop(name: str, process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        async with asyncio.timeout(STOP_GRACE_SECONDS):
            await process.wait()
    except TimeoutError:
        say(f"{name} did not stop within {STOP_GRACE_SECONDS} s; killing it")
        process.kill()
        await process.wait()
    say(f"{name} stopped (exit {process.returncode})")


# -- Home Assistant's REST API: onboarding and config flows -----------------------------


def http(
    url: str, body: dict[str, Any] | None = None, token: str | None = None, form: bool = False
) -> Any:
    headers = {}
    data = None
    if body is not None:
        if form:
            data = urllib.parse.urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def wait_for_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            http(f"{url}/api/")
        except urllib.error.HTTPError:
            return  # any HTTP answer (401 here) means the server is up
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pause(0.5)
    raise TimeoutError(f"Home Assistant did not answer on {url}")


def onboard(url: str) -> str:
    """Create the dev owner on a fresh HA and finish onboarding; return an access token."""
    client_id = f"{url}/"
    try:
        steps = {step["step"]: step["done"] for step in http(f"{url}/api/onboarding")}
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise
        steps = {}  # onboarding finished earlier: HA no longer serves its API
        return str(login(url, client_id)["access_token"])
    if not steps.get("user"):
        code = http(
            f"{url}/api/onboarding/users",
            {
                "client_id": client_id,
                "name": "Developer",
                "username": DEV_USER,
                "password": DEV_PASSWORD,
                "language": "en",
            },
        )["auth_code"]
        tokens = http(
            f"{url}/auth/token",
            {"grant_type": "authorization_code", "code": code, "client_id": client_id},
            form=True,
        )
    else:
        tokens = login(url, client_id)
    token: str = tokens["access_token"]
    for step, body in (
        ("core_config", {}),
        ("analytics", {}),
        ("integration", {"client_id": client_id, "redirect_uri": client_id}),
    ):
        if not steps.get(step):
            http(f"{url}/api/onboarding/{step}", body, token)
    return token


def login(url: str, client_id: str) -> dict[str, Any]:
    flow = http(
        f"{url}/auth/login_flow",
        {"client_id": client_id, "handler": ["homeassistant", None], "redirect_uri": client_id},
    )
    result = http(
        f"{url}/auth/login_flow/{flow['flow_id']}",
        {"client_id": client_id, "username": DEV_USER, "password": DEV_PASSWORD},
    )
    tokens: dict[str, Any] = http(
        f"{url}/auth/token",
        {"grant_type": "authorization_code", "code": result["result"], "client_id": client_id},
        form=True,
    )
    return tokens


def ensure_mqtt(url: str, token: str, mqtt_port: int) -> None:
    entries = http(f"{url}/api/config/config_entries/entry", token=token)
    if any(entry["domain"] == "mqtt" for entry in entries):
        return
    flow = http(f"{url}/api/config/config_entries/flow", {"handler": "mqtt"}, token)
    result = http(
        f"{url}/api/config/config_entries/flow/{flow['flow_id']}",
        {"broker": "127.0.0.1", "port": mqtt_port},
        token,
    )
    if result.get("type") != "create_entry":
        raise RuntimeError(f"MQTT set-up did not finish: {result}")
    say(f"MQTT integration set up on the embedded broker (127.0.0.1:{mqtt_port})")


def ensure_gateway_entry(url: str, token: str) -> None:
    """Add the gateway through the integration's user flow, as a click in the UI would."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entries = http(f"{url}/api/config/config_entries/entry", token=token)
        if any(entry["domain"] == "i4t" for entry in entries):
            say("the I4T integration is set up")
            return
        flow = http(f"{url}/api/config/config_entries/flow", {"handler": "i4t"}, token)
        if flow.get("type") == "form":
            options = flow["data_schema"][0]["selector"]["select"]["options"]
            result = http(
                f"{url}/api/config/config_entries/flow/{flow['flow_id']}",
                {"gateway_id": options[0]["value"]},
                token,
            )
            say(f"I4T gateway added: {result.get('title')} ({result.get('type')})")
            return
        say(f"no gateway to add yet ({flow.get('reason')}); retrying")
        pause(2)
    say("no I4T gateway showed up; is the gateway running?")


def auto_setup(options: Options) -> None:
    try:
        configure_home_assistant(options)
    except InterruptedError:
        pass
    except (OSError, RuntimeError, KeyError) as err:
        say(f"automatic set-up failed: {err}; finish it in the UI")


def configure_home_assistant(options: Options) -> None:
    wait_for_http(options.ha_url, time.monotonic() + 180)
    token = onboard(options.ha_url)
    ensure_mqtt(options.ha_url, token, options.mqtt_port)
    ensure_gateway_entry(options.ha_url, token)


async def main() -> int:
    options = parse_args()
    prepare_ha_config(options)
    options.gateway_data.mkdir(parents=True, exist_ok=True)
    gateway, gateway_log = await start(
        "gateway",
        str(BIN / "i4t-gateway"),
        "--data-dir",
        str(options.gateway_data),
        "--embedded-port",
        str(options.mqtt_port),
        "--name",
        "Development gateway",
    )
    hass, hass_log = await start(
        "hass",
        str(BIN / "hass"),
        "--config",
        str(options.ha_config),
        "--skip-pip",
    )
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    if options.auto_setup:
        setup = asyncio.create_task(asyncio.to_thread(auto_setup, options))
    say(
        f"Home Assistant: {options.ha_url} (user {DEV_USER!r}, password {DEV_PASSWORD!r}); "
        "Ctrl-C stops everything"
    )
    ended = [asyncio.create_task(p.wait()) for p in (gateway, hass)]
    waiter = asyncio.create_task(stop_requested.wait())
    await asyncio.wait([waiter, *ended], return_when=asyncio.FIRST_COMPLETED)
    if not stop_requested.is_set():
        say("a process ended on its own; stopping the rest")
    CANCELLED.set()
    await stop("hass", hass)
    await stop("gateway", gateway)
    await asyncio.gather(gateway_log, hass_log, return_exceptions=True)
    if options.auto_setup:
        await setup
    waiter.cancel()
    return 0 if stop_requested.is_set() else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
