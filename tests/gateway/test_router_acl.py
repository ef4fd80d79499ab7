"""The router provisions its broker's gateway access from its token book (provisioning.py):
a real router on a real Mosquitto with the dynamic-security plugin, a gateway's real uplink.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from i4t_gateway.identity import Identity
from i4t_gateway.router import RouterServer
from i4t_gateway.settings import BrokerAddress, Settings, SettingsError, settings_from_args
from i4t_gateway.tokens import open_token_book, read_token

from .bare_gateway import BareGateway
from .brokers import Mosquitto
from .gateway_harness import eventually
from .router_harness import issue, router_address

ADMIN = ("i4t-admin", "admin-secret")
ROUTER_LOGIN = ("i4t-router", "router-secret")


def provisioning_settings(data_dir: Path, broker: Mosquitto) -> Settings:
    user, password = ROUTER_LOGIN
    return Settings(
        data_dir=data_dir,
        broker=BrokerAddress.from_url(f"mqtt://{user}:{password}@127.0.0.1:{broker.port}"),
        role="router",
        dynsec_admin_user=ADMIN[0],
        dynsec_admin_password=ADMIN[1],
    )


async def test_the_router_admits_a_new_token_on_the_broker_and_a_revoke_cuts_the_gateway_off(
    tmp_path: Path,
) -> None:
    dynsec_broker = Mosquitto(workdir=tmp_path, dynsec_admin=ADMIN)
    dynsec_broker.start()
    router_dir = tmp_path / "router"
    router = RouterServer(provisioning_settings(router_dir, dynsec_broker), state_every=0.5)
    await router.start()  # no gateway admitted yet: the broker knows only the router
    identity = Identity.generate()
    token = issue(router_dir, identity.address)  # by the command line's code path
    gateway = BareGateway(
        tmp_path / "gw", dynsec_broker.port, token, router_address(router_dir), identity=identity
    )
    try:
        # The router's session works under the default deny: the router provisioned itself.
        await eventually(lambda: router.bus.connected)
        provisioning = router.provisioning
        assert provisioning is not None
        # Issued while the router runs: on the broker within a token reload or two. (The
        # gateway starts after that: a session refused before is not what this tests.)
        await eventually(lambda: provisioning.counters["created"] == 1)
        await gateway.start()
        await eventually(lambda: gateway.forwarder.stats().link_up, seconds=10)
        await eventually(lambda: gateway.queued() == 0)  # the announce was taken and acked
        assert router.region.gateway_for(gateway.thing.address) == gateway.address.text

        book, _ = open_token_book(router_dir)
        token_id = read_token(gateway.token, book.operator_key).id_text
        assert book.revoke(token_id)
        await eventually(lambda: not gateway.forwarder.stats().link_up, seconds=10)
        await eventually(lambda: provisioning.counters["revoked"] == 1)
        await gateway.send(router_address(router_dir), 3)
        for _ in range(20):  # reconnect attempts for 2 s: all refused by the broker
            await asyncio.sleep(0.1)
            assert not gateway.forwarder.stats().link_up
        assert gateway.queued() == 3
    finally:
        await gateway.stop()
        await router.stop()
        dynsec_broker.stop()


def test_provisioning_and_worker_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = ["--role", "router", "--data-dir", str(tmp_path), "--dynsec-admin", "i4t-admin"]
    monkeypatch.delenv("I4T_DYNSEC_ADMIN_PASSWORD", raising=False)
    with pytest.raises(SettingsError):  # no admin password
        settings_from_args([*base, "--broker", "mqtt://router:pw@127.0.0.1:1883"])
    monkeypatch.setenv("I4T_DYNSEC_ADMIN_PASSWORD", "secret")
    with pytest.raises(SettingsError):  # the router's own login is missing
        settings_from_args([*base, "--broker", "mqtt://127.0.0.1:1883"])
    settings = settings_from_args(
        [*base, "--broker", "mqtt://router:pw@127.0.0.1:1883", "--worker", "w1"]
    )
    assert (settings.dynsec_admin_user, settings.dynsec_admin_password) == ("i4t-admin", "secret")
    assert settings.worker_id == "w1"
    assert settings.upstream_mqtt5
    assert not settings_from_args(["--upstream-mqtt311"]).upstream_mqtt5
