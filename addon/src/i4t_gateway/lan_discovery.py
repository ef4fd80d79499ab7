"""Finding the other gateways on the LAN with zeroconf (DNS-SD over multicast DNS).

Each gateway with LAN peering on registers one service of type :data:`SERVICE_TYPE` whose SRV
record points at its peer listener (peers.py) and whose TXT record says who it claims to be
(docs/PROTOCOL.md §16, LAN peers). Nothing in it is trusted: the TXT gateway address only says
whose signed acks to expect on the connection; what a peer serves is learned from its signed
announce over the connection itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
import ipaddress
import logging
import socket
from typing import Final

import ifaddr
from zeroconf import Error as ZeroconfError, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .identity import Address, AddressError

_LOGGER = logging.getLogger(__name__)

__all__ = ["LanDiscovery", "PeerEndpoint", "ZeroconfError"]

SERVICE_TYPE: Final = "_i4t-gw._tcp.local."
PEER_API_VERSION: Final = "1"
TXT_GATEWAY: Final = "gw"
"""TXT key: the gateway's I4T address (text form)."""
TXT_VERSION: Final = "v"
"""TXT key: the version of the peer protocol (framing and rules), PEER_API_VERSION."""
TXT_TRANSPORT: Final = "tr"
"""TXT key: how to talk to the SRV host and port; TRANSPORT_FRAMES is the only one so far."""
TRANSPORT_FRAMES: Final = "i4t-frames"
"""TCP carrying sealed I4T packets, each after a 4-byte big-endian length (peers.py)."""
RESOLVE_TIMEOUT_MS: Final = 3000


@dataclass(frozen=True, slots=True)
class PeerEndpoint:
    """Where a gateway seen on the LAN says its peer listener is."""

    gateway: Address
    host: str
    port: int


Found = Callable[[PeerEndpoint], None]
Lost = Callable[[Address], None]


def service_name(gateway: Address) -> str:
    """The DNS-SD instance name: the address is unique, a display name need not be."""
    return f"{gateway.text[:60]}.{SERVICE_TYPE}"


def advertised_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback; loopback only when it has nothing else
    (a private network namespace in the tests): another host reaching 127.0.0.1 reaches itself."""
    found = {
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_link_local
    }
    outside = sorted(ip for ip in found if not ipaddress.ip_address(ip).is_loopback)
    return outside or sorted(found)


def endpoint_from_info(info: AsyncServiceInfo, me: Address) -> PeerEndpoint | None:
    """The endpoint a resolved service describes, or None if it is ours, foreign or malformed."""
    properties = info.properties or {}
    if properties.get(TXT_TRANSPORT.encode()) != TRANSPORT_FRAMES.encode():
        return None
    if properties.get(TXT_VERSION.encode()) != PEER_API_VERSION.encode():
        return None
    raw = properties.get(TXT_GATEWAY.encode())
    try:
        gateway = Address.from_text(raw.decode("ascii")) if raw else None
    except (AddressError, UnicodeDecodeError):
        return None
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if gateway is None or gateway == me or not addresses or not info.port:
        return None
    return PeerEndpoint(gateway, addresses[0], info.port)


class LanDiscovery:
    """Registers this gateway's service and reports others as they come and go."""

    def __init__(self, me: Address, port: int, *, on_found: Found, on_lost: Lost) -> None:
        self.me = me
        self.port = port
        self._on_found = on_found
        self._on_lost = on_lost
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._by_name: dict[str, Address] = {}
        self._resolving: set[asyncio.Task[None]] = set()
        self.malformed = 0

    def _info(self) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            service_name(self.me),
            addresses=[socket.inet_aton(ip) for ip in advertised_addresses()],
            port=self.port,
            properties={
                TXT_GATEWAY: self.me.text,
                TXT_VERSION: PEER_API_VERSION,
                TXT_TRANSPORT: TRANSPORT_FRAMES,
            },
        )

    async def start(self) -> None:
        self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
        await self._zeroconf.async_register_service(self._info())
        self._browser = AsyncServiceBrowser(
            self._zeroconf.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )

    async def stop(self) -> None:
        for task in list(self._resolving):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            await self._zeroconf.async_unregister_all_services()
            await self._zeroconf.async_close()
        self._browser = self._zeroconf = None

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # Called on the event loop by the browser; resolving needs awaiting, so it is a task.
        if state_change is ServiceStateChange.Removed:
            gateway = self._by_name.pop(name, None)
            if gateway is not None:
                self._on_lost(gateway)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._resolving.add(task)  # held, or the loop may collect it half way
        task.add_done_callback(self._resolving.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        if self._zeroconf is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            return
        endpoint = endpoint_from_info(info, self.me)
        if endpoint is None:
            if name != service_name(self.me):
                self.malformed += 1
            return
        self._by_name[name] = endpoint.gateway
        self._on_found(endpoint)
