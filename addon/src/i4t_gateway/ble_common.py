"""Types shared by the BLE endpoint, the BTHome decoder and the I4T beacon.

A BLE thing is known by its MAC address in the text form HA's bluetooth stack reports on
Linux (``AA:BB:CC:DD:EE:FF``, upper case); readings leave the BLE modules as
:class:`BleReading`, whatever format they arrived in, so the server handles one shape.
"""

from __future__ import annotations

from dataclasses import dataclass
import re
from typing import Final

MAC_SIZE: Final = 6
_MAC_TEXT: Final = re.compile(r"^[0-9A-F]{2}(?::[0-9A-F]{2}){5}$")

ReadingValue = float | int | str | bool | None


class MacError(ValueError):
    """Text that is not a BLE MAC address."""


@dataclass(frozen=True, slots=True)
class BleReading:
    """One value from an advert. ``value`` None means the thing said it has no value (a failed
    probe); ``unit`` and ``device_class`` use Home Assistant's strings (e.g. "°C", "temperature").
    """

    key: str
    value: ReadingValue
    unit: str | None = None
    device_class: str | None = None


def normalise_mac(text: str) -> str:
    """``aa-bb-cc-dd-ee-ff`` or ``aa:bb:..`` to ``AA:BB:CC:DD:EE:FF``; MacError otherwise."""
    mac = text.strip().upper().replace("-", ":")
    if not _MAC_TEXT.match(mac):
        raise MacError("a BLE address looks like AA:BB:CC:DD:EE:FF")
    return mac


def mac_bytes(mac: str) -> bytes:
    """The six address bytes in the order the text shows them (most significant first)."""
    return bytes.fromhex(normalise_mac(mac).replace(":", ""))


def mac_text(raw: bytes) -> str:
    if len(raw) != MAC_SIZE:
        raise MacError("a BLE address is 6 bytes")
    return ":".join(f"{b:02X}" for b in raw)
