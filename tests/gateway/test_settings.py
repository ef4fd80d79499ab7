"""Settings: broker URLs and command-line validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from i4t_gateway.identity import Identity
from i4t_gateway.settings import BrokerAddress, SettingsError, settings_from_args


def test_broker_url_with_credentials_and_tls() -> None:
    address = BrokerAddress.from_url("mqtts://user%40home:p%3Ass@broker.lan")
    assert address == BrokerAddress("broker.lan", 8883, True, "user@home", "p:ss")
    assert address.describe() == "mqtts://broker.lan:8883"


def test_plain_broker_url_defaults_to_1883() -> None:
    assert BrokerAddress.from_url("mqtt://127.0.0.1") == BrokerAddress("127.0.0.1", 1883)


@pytest.mark.parametrize("url", ["http://host", "mqtt://", "mqtt://host:99999", "host:1883"])
def test_bad_broker_urls_are_refused(url: str) -> None:
    with pytest.raises(SettingsError):
        BrokerAddress.from_url(url)


def test_no_broker_means_embedded(tmp_path: Path) -> None:
    settings = settings_from_args(["--data-dir", str(tmp_path), "--embedded-port", "1999"])
    assert settings.uses_embedded_broker
    assert settings.local_broker() == BrokerAddress("127.0.0.1", 1999)


def test_embedded_port_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        settings_from_args(["--data-dir", str(tmp_path), "--embedded-port", "0"])


def test_lan_allow_takes_gateway_addresses(tmp_path: Path) -> None:
    friend = Identity.generate().address.text
    base = ["--data-dir", str(tmp_path), "--lan-peers", "--lan-allow", friend]
    assert settings_from_args(base).lan_allow == (friend,)
    assert settings_from_args(["--data-dir", str(tmp_path)]).lan_allow == ()
    with pytest.raises(SettingsError, match="lan-allow"):
        settings_from_args([*base, "--lan-allow", "kitchen-hub"])
