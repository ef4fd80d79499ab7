"""Run the real gateway against a real Mosquitto, play a short scenario, and save what it
publishes as the integration's test fixtures (./scripts/record-fixtures)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
import tempfile
from typing import Any

from i4t_gateway.payloads import Data, NodeHealth, Reading
from tests.gateway.brokers import Mosquitto
from tests.gateway.gateway_harness import Harness, eventually, fast_settings, start_harness

FIXTURES = Path("tests/integration/fixtures")


def save(name: str, payload: bytes | dict[str, Any]) -> None:
    document = json.loads(payload) if isinstance(payload, bytes) else payload
    (FIXTURES / f"{name}.json").write_text(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    )


async def scenario(harness: Harness) -> None:
    topics = harness.topics
    probe = harness.probe
    save("gateway_info", probe.last(topics.discovery) or b"")
    greenhouse, cold_frame, shed, stranger = (harness.thing() for _ in range(4))
    save(
        "reply_ok",
        await harness.request(
            "enroll",
            kind="native",
            name="Greenhouse probe",
            public_key=greenhouse.identity.public_bytes.hex(),
        ),
    )
    await harness.enroll(cold_frame, "Cold frame probe")
    await harness.enroll(shed, "Potting shed probe")
    save("reply_error", await harness.request("group_update", group_id="missing"))
    created = await harness.request(
        "group_create",
        name="Greenhouse",
        members=[
            {"address": greenhouse.address.text, "role": "seed"},
            {"address": cold_frame.address.text},
            {"address": shed.address.text},
        ],
    )
    group_id = created["result"]["group_id"]
    readings = (Reading("temperature", 21.5, "°C"), Reading("humidity", 64, "%"))
    for thing in (greenhouse, cold_frame, shed):
        thing.send(harness.gateway, Data(readings, NodeHealth.HEALTHY))
    await harness.group_status(group_id, "healthy")
    save("group_healthy", probe.last(topics.group_state(group_id)) or b"")
    save("node_healthy", probe.last(topics.node_state(greenhouse.address.text)) or b"")
    cold_frame.send(harness.gateway, Data(readings, NodeHealth.BROKEN))
    await harness.group_status(group_id, "partially_broken")
    save("node_broken", probe.last(topics.node_state(cold_frame.address.text)) or b"")
    save("group_partially_broken", probe.last(topics.group_state(group_id)) or b"")
    stranger.report(harness.gateway)
    await eventually(
        lambda: (
            b"candidates" in (probe.last(topics.candidates) or b"")
            and stranger.address.text.encode() in (probe.last(topics.candidates) or b"")
        )
    )
    save("candidates", probe.last(topics.candidates) or b"")
    await harness.node_status(greenhouse, "dead", seconds=15)
    await harness.group_status(group_id, "dead", seconds=15)
    save("node_dead", probe.last(topics.node_state(greenhouse.address.text)) or b"")
    save("group_dead", probe.last(topics.group_state(group_id)) or b"")
    save("node_events", {"events": harness.events("node")})
    save("group_events", {"events": harness.events("group")})
    harness.server.core.publish_gateway_state(0.0)
    await asyncio.sleep(0.2)
    save("gateway_state", probe.last(topics.gateway_state) or b"")


async def record(workdir: Path) -> None:
    broker = Mosquitto(workdir=workdir)
    broker.start()
    try:
        settings = fast_settings(
            workdir / "data",
            broker.url,
            name="Garden shed",
            timeout_floor=3.0,
            timeout_fallback=3.0,
        )
        harness = await start_harness(settings, broker.port)
        try:
            await scenario(harness)
        finally:
            await harness.stop()
    finally:
        broker.stop()


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(record(Path(tmp)))
    print(f"recorded {len(list(FIXTURES.glob('*.json')))} fixtures into {FIXTURES}")


if __name__ == "__main__":
    main()
