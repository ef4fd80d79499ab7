"""A forwarding gateway in its own process, for the kill -9 test of the uplink.

    python forwarder_proc.py DATABASE PORT CA_FILE ROUTER_ADDRESS COUNT

Queues COUNT new packets from a thing (printing each message id once it is durable, then
"queued"), and forwards whatever the database holds to the router over TLS until SIGTERM (a
clean stop that commits the last acks) or SIGKILL. Runs at most a minute.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
import signal
import sys

from i4t_gateway.bus import TlsFiles
from i4t_gateway.endpoint import Inbound, Receiver, Sender
from i4t_gateway.identity import Address, Identity
from i4t_gateway.links import Forwarder, RateLimit, RouterLink
from i4t_gateway.payloads import Data, Reading
from i4t_gateway.queue import GroupCommit, PacketQueue, PersistentDedup, RetryPolicy
from i4t_gateway.store import open_store

GATEWAY_SEED = bytes([8]) * 32
THING_SEED = bytes([9]) * 32
REMOTE = Address.for_public_key(Identity.from_seed(bytes([10]) * 32).public_bytes)
MAX_SECONDS = 60


async def nothing(inbound: Inbound) -> None:
    del inbound


async def run(database: Path, port: int, ca_file: Path, router: Address, count: int) -> None:
    commits = GroupCommit(open_store(database))
    gateway = Identity.from_seed(GATEWAY_SEED)
    forwarder = Forwarder(
        sender=Sender(gateway),
        receiver=Receiver(gateway, dedup=PersistentDedup(commits)),
        link=RouterLink("127.0.0.1", "token", router, port=port, tls_files=TlsFiles(ca_file)),
        queue=PacketQueue(commits),
        deliver=nothing,
        serves=lambda address: False,
        retry=RetryPolicy(first=0.2, maximum=1.0),
        rate_limit=RateLimit(rate=1e6, burst=1e6),
        max_backoff=0.5,
    )
    thing = Sender(Identity.from_seed(THING_SEED))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await forwarder.start()
    for i in range(count):
        packet = thing.packet(REMOTE, Data((Reading("n", i),)))
        await forwarder.submit(packet, thing.seal(packet))
        print(packet.message_id.hex(), flush=True)
    print("queued", flush=True)
    try:
        async with asyncio.timeout(MAX_SECONDS):
            await stop.wait()
    except TimeoutError:
        pass
    await forwarder.stop()
    commits.flush()
    commits.connection.close()


if __name__ == "__main__":
    asyncio.run(
        run(
            Path(sys.argv[1]),
            int(sys.argv[2]),
            Path(sys.argv[3]),
            Address.from_text(sys.argv[4]),
            int(sys.argv[5]),
        )
    )
