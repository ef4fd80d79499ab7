"""The router keeps its broker's gateway access equal to its token book (docs/ROUTER.md).

With the broker's dynamic-security admin configured, :class:`BrokerProvisioning` runs
``dynsec.DynsecAdmin.reconcile`` at the router's start and again whenever the set of admitted
gateways changes (a token issued, revoked or expired: the router looks every
``TOKEN_RELOAD_SECONDS``), plus a full sweep every ``FULL_SWEEP_SECONDS`` so that a broker that
lost its state, or an entry changed by hand, is repaired without a router restart. Failures
(broker away, plugin refusing) are logged and counted, never fatal: the next sweep tries again,
and the router keeps refusing packets of gateways without a valid token in any case.
"""

from __future__ import annotations

import asyncio
from collections import Counter
import logging
import time
from typing import Final

from .dynsec import DynsecAdmin, DynsecError
from .settings import BrokerAddress, Settings
from .tokens import TokenBook, TokenLimits

_LOGGER = logging.getLogger(__name__)

FULL_SWEEP_SECONDS: Final = 60.0
ADMIN_CLIENT_PREFIX: Final = "i4t-router-admin-"

Wanted = dict[str, tuple[str, TokenLimits]]


def admin_address(settings: Settings) -> BrokerAddress | None:
    """The admin's login on the router's broker, when the router provisions gateways."""
    broker = settings.broker
    if broker is None or not settings.dynsec_admin_user or not settings.dynsec_admin_password:
        return None
    return BrokerAddress(
        broker.host,
        broker.port,
        tls=broker.tls,
        username=settings.dynsec_admin_user,
        password=settings.dynsec_admin_password,
    )


class BrokerProvisioning:
    """Reconciles the broker's gateway clients with ``tokens.admitted()``."""

    def __init__(self, admin: DynsecAdmin, tokens: TokenBook) -> None:
        self.admin = admin
        self.tokens = tokens
        self.counters: Counter[str] = Counter()
        self._applied: Wanted | None = None
        self._last_sweep = float("-inf")
        self._lock = asyncio.Lock()

    async def start(self, router_login: BrokerAddress) -> None:
        """The admin session, the router's own client and a first reconcile.

        Before the router's own bus connects: with a default deny, its client must exist first.
        Raises dynsec.DynsecError when the broker does not answer as an admin would.
        """
        await self.admin.start()
        if router_login.username and router_login.password:
            await self.admin.prepare_router(router_login.username, router_login.password)
        await self.sync(force=True)

    async def stop(self) -> None:
        await self.admin.stop()

    async def sync(self, *, force: bool = False) -> bool:
        """Reconcile if the admitted gateways changed (or ``force``, or a sweep is due).

        True when a reconcile ran and succeeded.
        """
        wanted = self.tokens.admitted()
        now = time.monotonic()
        due = force or now - self._last_sweep >= FULL_SWEEP_SECONDS
        if wanted == self._applied and not due:
            return False
        async with self._lock:
            try:
                outcomes = await self.admin.reconcile(wanted)
            except (DynsecError, ValueError) as err:
                self.counters["failed"] += 1
                _LOGGER.warning("provisioning the broker's gateways failed: %s", err)
                return False
        self._applied = wanted
        self._last_sweep = now
        self.counters.update(outcomes)
        if outcomes["created"] or outcomes["updated"] or outcomes["revoked"]:
            _LOGGER.info("broker gateways provisioned: %s", dict(outcomes))
        return True
