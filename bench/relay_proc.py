"""The latency bench's anchor path: plain MQTT republishes through the same four broker hops
as thing -> gateway -> router -> gateway -> thing, by paho clients in a process of their own
(as the gateways and the router each run in theirs).

    python relay_proc.py PORT_LOCAL_1 PORT_ROUTER PORT_LOCAL_2

bench/anchor/1 on the first local broker is republished as bench/anchor/2 on the router's
broker, that as bench/anchor/3 there, that as bench/anchor/4 on the second local broker; all
QoS 1. Prints "ready" once every relay is subscribed, exits when stdin closes.
"""

from __future__ import annotations

import sys

from gateway_rig import Client


def relay(source: Client, topic: str, target: Client, onward: str) -> None:
    def forward(arrived_on: str, payload: bytes) -> None:
        if arrived_on == topic:
            target.publish(onward, payload)

    source.on_message(forward)
    source.subscribe(topic)


def main() -> None:
    local_1, router, local_2 = (int(port) for port in sys.argv[1:4])
    first, middle, last = (Client(port, f"relay-{port}") for port in (local_1, router, local_2))
    # Each hop's relay publishes on the next broker: the router's broker is crossed twice.
    relay(first, "bench/anchor/1", middle, "bench/anchor/2")
    relay(middle, "bench/anchor/2", middle, "bench/anchor/3")
    relay(middle, "bench/anchor/3", last, "bench/anchor/4")
    print("ready", flush=True)
    sys.stdin.read()
    for client in (first, middle, last):
        client.close()


if __name__ == "__main__":
    main()
