"""Fixtures of the gateway server's tests (run with -p no:homeassistant)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .brokers import Mosquitto, make_tls_certs


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh Mosquitto on a free loopback port, stopped after the test."""
    broker = Mosquitto(workdir=tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def router_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A regional router's broker: Mosquitto with TLS (a throwaway CA) on loopback."""
    broker = Mosquitto(workdir=tmp_path, tls=make_tls_certs(tmp_path / "certs"))
    broker.start()
    yield broker
    broker.stop()
