"""Run a real gateway against a real Mosquitto and save what it publishes as test fixtures."""

from __future__ import annotations

import json
from pathlib import Path
import signal
import subprocess
import sys
import tempfile

from tests.gateway.brokers import Mosquitto
from tests.gateway.mqtt_probe import Probe

FIXTURES = Path("tests/integration/fixtures")


def record(workdir: Path) -> dict[str, bytes]:
    broker = Mosquitto(workdir=workdir)
    broker.start()
    probe = Probe(broker.port, "i4t/#")
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "i4t_gateway",
            "--broker",
            broker.url,
            "--data-dir",
            str(workdir / "data"),
            "--name",
            "Garden shed",
        ],
    )
    try:
        probe.wait_for(lambda: any(t.startswith("i4t/discovery/") for t, _, _ in probe.messages))
        probe.wait_for(lambda: any(p == b"online" for _, p, _ in probe.messages))
        gateway.send_signal(signal.SIGINT)
        gateway.wait(timeout=10)
        return {topic: payload for topic, payload, _ in probe.messages}
    finally:
        gateway.kill()
        probe.close()
        broker.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        seen = record(Path(tmp))
    announcement = next(p for t, p in seen.items() if t.startswith("i4t/discovery/"))
    FIXTURES.mkdir(parents=True, exist_ok=True)
    document = json.loads(announcement)
    (FIXTURES / "gateway_info.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"recorded {len(seen)} topics into {FIXTURES}")


if __name__ == "__main__":
    main()
