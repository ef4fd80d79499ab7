"""Runs a gateway and Home Assistant side by side for development (./scripts/develop)."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
import json
import os
from pathlib import Path
import shutil
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any
import urllib.error
import urllib.parse
import urllib.request

if TYPE_CHECKING:
    from i4t_gateway.identity import Address

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BIN = ROOT / ".venv" / "bin"
DEV_USER = "dev"
DEV_PASSWORD = "i4t-dev"
STOP_GRACE_SECONDS = 20
COLOURS = {
    "gateway": "\033[36m",
    "router": "\033[34m",
    "region-broker": "\033[90m",
    "hass": "\033[35m",
    "simulator": "\033[32m",
    "develop": "\033[33m",
}

HA_CONFIGURATION = """\
# Written by ./scripts/develop; minimal on purpose (default_config: reaches the internet).
homeassistant:
  name: I4T development
frontend:
config:
# HA's bluetooth stack: the simulated BLE things reach it through a remote scanner over MQTT.
bluetooth:
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
    wifi_things: int
    ble_things: int
    group: bool = True
    router_port: int | None = None
    """The region's broker port; None: no regional router."""

    @property
    def ha_config(self) -> Path:
        return self.var / "ha"

    @property
    def gateway_data(self) -> Path:
        return self.var / "gateway"

    @property
    def router_data(self) -> Path:
        return self.var / "router"

    @property
    def ha_url(self) -> str:
        return f"http://127.0.0.1:{self.ha_port}"


def parse_args() -> Options:
    parser = argparse.ArgumentParser(prog="scripts/develop", description=__doc__)
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="state folder (var/)")
    parser.add_argument("--ha-port", type=int, default=8123)
    parser.add_argument("--mqtt-port", type=int, default=1883, help="embedded broker port")
    parser.add_argument(
        "--router-port", type=int, default=1884, help="the regional router's Mosquitto port"
    )
    parser.add_argument("--no-router", action="store_true", help="no regional router")
    parser.add_argument(
        "--bare",
        action="store_true",
        help="no automatic onboarding and MQTT set-up: a fresh HA to click through",
    )
    parser.add_argument("--wifi", type=int, default=3, help="simulated Wi-Fi things (3)")
    parser.add_argument("--ble", type=int, default=3, help="simulated BLE things (3)")
    parser.add_argument(
        "--no-group",
        action="store_true",
        help="enrol the simulated things but put them in no node group (to group them in the UI)",
    )
    args = parser.parse_args()
    return Options(
        args.var.resolve(),
        args.ha_port,
        args.mqtt_port,
        not args.bare,
        args.wifi,
        args.ble,
        group=not args.no_group,
        router_port=None if args.no_router else args.router_port,
    )


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


async def start(
    name: str, *argv: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, asyncio.Task[None]]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Own session: Ctrl-C reaches only this script, which stops the children in order.
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
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


# -- the simulated things: enrolled and grouped through the gateway's own API -----------------


def enrol_simulated(options: Options, manifest_file: Path) -> None:
    """Enrol every simulated thing and put them in one node group (idempotent)."""
    try:
        deadline = time.monotonic() + 60
        while not manifest_file.exists():
            if time.monotonic() > deadline:
                say("the simulator wrote no manifest; things are not enrolled")
                return
            pause(0.5)
        manifest = json.loads(manifest_file.read_text())
        client = GatewayClient(
            options.mqtt_port, manifest["gateway_id"], options.gateway_data / "gateway.key"
        )
        try:
            addresses = [client.enrol(thing) for thing in manifest["things"]]
            if options.group:
                client.group(addresses)
        finally:
            client.close()
        where = "in the node group 'Simulated things'" if options.group else "in no node group"
        say(
            f"{len(addresses)} simulated things enrolled {where}; "
            "silence one with: ./scripts/sim silent 0  (revive: ./scripts/sim healthy 0)"
        )
    except InterruptedError:
        pass
    except (OSError, KeyError, ValueError, TimeoutError) as err:
        say(f"enrolling the simulated things failed: {err}")


class GatewayClient:
    """Requests on the gateway's local API (docs/API.md), as any client would send them."""

    def __init__(self, port: int, gateway_id: str, key_file: Path) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415 - only this helper needs paho
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        self.base = f"i4t/{gateway_id}"
        self._key_file = key_file
        self._replies: dict[str, dict[str, Any]] = {}
        self._ready = threading.Event()
        self._lock = threading.Condition()
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda client, *_: client.subscribe(f"{self.base}/reply/+", 1)
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = self._on_reply
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError("cannot subscribe to the gateway's replies")
        self._count = 0

    def _on_reply(self, client: object, userdata: object, message: Any) -> None:
        reply = json.loads(message.payload)
        with self._lock:
            self._replies[str(reply.get("request_id"))] = reply
            self._lock.notify_all()

    def request(self, command: str, **body: Any) -> dict[str, Any]:
        self._count += 1
        request_id = f"develop-{os.getpid()}-{self._count}"
        payload = json.dumps({"request_id": request_id, **body})
        self._client.publish(f"{self.base}/cmd/{command}", payload, qos=1)
        with self._lock:
            if not self._lock.wait_for(lambda: request_id in self._replies, timeout=10):
                raise TimeoutError(f"the gateway did not answer {command}")
            return self._replies.pop(request_id)

    def enrol(self, thing: dict[str, Any]) -> str:
        name = f"Simulated {thing['kind']} {thing['index']}"
        if thing["kind"] == "native":
            body = {"kind": "native", "public_key": thing["public_key"]}
        elif thing["kind"] == "beacon":
            body = {"kind": "beacon", "mac": thing["mac"], "key": thing["beacon_key"]}
        else:
            body = {"kind": "bthome", "mac": thing["mac"]}
            if thing.get("bindkey"):
                body["bindkey"] = thing["bindkey"]
        reply = self.request("enroll", name=name, **body)
        if reply["ok"]:
            return str(reply["result"]["address"])
        if "enrolled already" in reply["error"]["message"]:
            return self._address_of(thing)
        raise ValueError(f"enrolling {name}: {reply['error']['message']}")

    def _address_of(self, thing: dict[str, Any]) -> str:
        if thing["kind"] == "native":
            return str(thing["address"])
        from i4t_gateway.identity import Address  # noqa: PLC0415

        gateway_key = self._gateway_key()
        return Address.for_proxied(gateway_key, f"{thing['kind']}:{thing['mac']}".encode()).text

    def _gateway_key(self) -> bytes:
        from i4t_gateway.identity import load_identity  # noqa: PLC0415

        return load_identity(self._key_file).public_bytes

    def group(self, addresses: list[str]) -> None:
        members = [
            {"address": address, "role": "seed" if index == 0 else "worker"}
            for index, address in enumerate(addresses)
        ]
        body = {"name": "Simulated things", "members": members}
        reply = self.request("group_create", group_id="simulated", **body)
        if not reply["ok"] and reply["error"]["code"] == "conflict":
            reply = self.request("group_update", group_id="simulated", **body)
        if not reply["ok"]:
            raise ValueError(f"grouping the simulated things: {reply['error']['message']}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# -- the region: a Mosquitto of its own and the gateway package in router role ------------


def write_region_broker_config(options: Options) -> Path:
    """Anonymous on loopback: the development region has no other clients."""
    assert options.router_port is not None
    options.router_data.mkdir(parents=True, exist_ok=True)
    config = options.router_data / "mosquitto.conf"
    config.write_text(
        f"listener {options.router_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    )
    return config


def uplink_arguments(options: Options) -> tuple[list[str], dict[str, str]]:
    """The gateway's arguments and environment for its uplink to the development router:
    the router's operator gives the gateway a token (as `i4t-gateway token issue` does)."""
    if options.router_port is None:
        return [], {}
    # Imported here: the development script runs in .venv, where the gateway package is.
    from i4t_gateway.identity import load_or_create_identity  # noqa: PLC0415
    from i4t_gateway.router import KEY_FILE as ROUTER_KEY_FILE  # noqa: PLC0415
    from i4t_gateway.server import KEY_FILE as GATEWAY_KEY_FILE  # noqa: PLC0415

    router = load_or_create_identity(options.router_data / ROUTER_KEY_FILE).address
    gateway = load_or_create_identity(options.gateway_data / GATEWAY_KEY_FILE).address
    token = gateway_token(options.router_data, gateway)
    arguments = ["--upstream", f"mqtt://127.0.0.1:{options.router_port}"]
    arguments += ["--upstream-router", router.text]
    return arguments, {"I4T_UPSTREAM_TOKEN": token}


TOKEN_DAYS = 30
TOKEN_RENEW_DAYS = 1


def gateway_token(router_data: Path, gateway: Address) -> str:
    """The development gateway's token: the one it holds while more than a day of it is left
    (so the router's book does not grow by a token per start), else a new one for 30 days."""
    from i4t_gateway.tokens import TokenLimits, open_token_book  # noqa: PLC0415

    book, operator = open_token_book(router_data)
    current = book.admitted().get(gateway.text)
    admission = book.admission(gateway)
    renew_after_ms = int((time.time() + TOKEN_RENEW_DAYS * 86_400) * 1000)
    if current and admission and admission.claims.expires_ms > renew_after_ms:
        return current[0]
    return book.issue(operator, gateway, TOKEN_DAYS, TokenLimits())


Started = tuple[str, asyncio.subprocess.Process, asyncio.Task[None]]


async def start_region(options: Options) -> list[Started]:
    """The region's broker, then its router; listed in the order they are stopped."""
    if options.router_port is None:
        return []
    broker, broker_log = await start(
        "region-broker", MOSQUITTO, "-c", str(write_region_broker_config(options))
    )
    router, router_log = await start(
        "router",
        str(BIN / "i4t-gateway"),
        *("--role", "router", "--name", "Development region"),
        *("--broker", f"mqtt://127.0.0.1:{options.router_port}"),
        *("--data-dir", str(options.router_data)),
    )
    say(f"regional router on its own Mosquitto at 127.0.0.1:{options.router_port}")
    return [("router", router, router_log), ("region-broker", broker, broker_log)]


async def main() -> int:
    options = parse_args()
    prepare_ha_config(options)
    options.gateway_data.mkdir(parents=True, exist_ok=True)
    region = await start_region(options)
    uplink, uplink_env = uplink_arguments(options)
    gateway, gateway_log = await start(
        "gateway",
        str(BIN / "i4t-gateway"),
        *("--data-dir", str(options.gateway_data)),
        *("--embedded-port", str(options.mqtt_port)),
        *("--name", "Development gateway"),
        # Short timeouts, so that a silenced thing is dead within a minute, not fifteen.
        *("--timeout-floor", "15", "--timeout-fallback", "60"),
        *uplink,
        env=uplink_env,
    )
    manifest = options.var / "simulator.json"
    manifest.unlink(missing_ok=True)
    simulator, simulator_log = await start(
        "simulator",
        str(BIN / "i4t-simulator"),
        *("--broker", f"mqtt://127.0.0.1:{options.mqtt_port}"),
        *("--sim-id", "dev", "--seed", "i4t-dev", "--interval", "5"),
        *("--wifi", str(options.wifi_things), "--ble", str(options.ble_things)),
        *("--manifest", str(manifest)),
        # BLE things are heard by a remote scanner that HA's bluetooth stack registers; the BLE
        # bridge then carries them to the gateway, as with a real ESP32 or Shelly scanner.
        *("--scanner", "dev"),
    )
    enrolment = asyncio.create_task(asyncio.to_thread(enrol_simulated, options, manifest))
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
    ended = [
        asyncio.create_task(p.wait())
        for p in (gateway, hass, simulator, *(p for _, p, _ in region))
    ]
    waiter = asyncio.create_task(stop_requested.wait())
    await asyncio.wait([waiter, *ended], return_when=asyncio.FIRST_COMPLETED)
    if not stop_requested.is_set():
        say("a process ended on its own; stopping the rest")
    CANCELLED.set()
    await stop("simulator", simulator)
    await stop("hass", hass)
    await stop("gateway", gateway)
    for name, process, log in region:
        await stop(name, process)
        await log
    await asyncio.gather(gateway_log, hass_log, simulator_log, return_exceptions=True)
    await enrolment
    if options.auto_setup:
        await setup
    waiter.cancel()
    return 0 if stop_requested.is_set() else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
