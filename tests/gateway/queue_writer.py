"""A queue writer for the kill -9 test: enqueues packets forever, reporting each durable one.

    python queue_writer.py DATABASE HOP

Prints one line per packet, ``<message id hex>``, only after its group commit returned, so
every printed id must survive a SIGKILL. The parent kills it mid-stream.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
import sys

from i4t_gateway.queue import GroupCommit, PacketQueue
from i4t_gateway.store import open_store

MAX_PACKETS = 200_000  # bounded even if nobody kills it


async def write_forever(database: Path, hop: str) -> None:
    commits = GroupCommit(open_store(database), interval=0.002, max_rows=64)
    queue = PacketQueue(commits)
    out = sys.stdout
    for _ in range(MAX_PACKETS // 32):
        batch = [os.urandom(16) for _ in range(32)]
        durable = [queue.put(hop, mid, mid * 8) for mid in batch]
        await asyncio.gather(*durable)
        out.write("".join(mid.hex() + "\n" for mid in batch))
        out.flush()


if __name__ == "__main__":
    asyncio.run(write_forever(Path(sys.argv[1]), sys.argv[2]))
