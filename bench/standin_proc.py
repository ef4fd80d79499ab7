"""The router stand-in of the uplink tests in a process of its own, for the forwarding bench.

    python standin_proc.py PORT CA_FILE ROUTER_SEED_HEX

Prints how many packets it has received (unique, verified) whenever that changes, polled every
millisecond, and exits when its stdin closes. In its own process, its signature checks do not
compete with the bench's publishers for one interpreter lock.
"""

from __future__ import annotations

from pathlib import Path
import sys
import threading

import gateway_rig  # noqa: F401 - sets up the import path

from i4t_gateway.identity import Identity
from tests.gateway.router_standin import RouterStandIn


def main() -> None:
    port, ca_file, seed = int(sys.argv[1]), Path(sys.argv[2]), bytes.fromhex(sys.argv[3])
    standin = RouterStandIn(port, ca_file, Identity.from_seed(seed), batch_acks=True)
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    print("ready", flush=True)
    shown = -1
    while not closed.wait(0.001):
        count = standin.delivered_count()
        if count != shown:
            print(count, flush=True)
            shown = count
    standin.close()


if __name__ == "__main__":
    main()
