"""The UI test: a fresh Home Assistant, the gateway and the simulator, and tests/ui/flow.mjs.

Run by ./scripts/test-ui inside a private network namespace that has only loopback. Starts
``scripts.develop --bare --no-group`` in a temporary folder (HA not onboarded, the simulated
things enrolled on the gateway but in no group), waits until HA answers and the things are
enrolled, runs the browser flow, stops everything and shrinks the screenshots for docs/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from PIL import Image

from scripts.develop import ROOT, wait_for_http

UI = Path(__file__).resolve().parent
HA_PORT = 8123  # the namespace is private: the usual ports are free
MQTT_PORT = 1883
START_TIMEOUT = 120  # s until HA answers and the simulated things are enrolled
FLOW_TIMEOUT = 240  # s for the whole browser flow
STOP_TIMEOUT = 75  # s for scripts.develop to stop its three children, one after the other


def say(message: str) -> None:
    print(f"[test-ui] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/test-ui", description=__doc__)
    parser.add_argument(
        "--shots", type=Path, default=ROOT / "docs" / "screenshots", help="screenshot folder"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    # /proc/self/net follows this process's network namespace (/sys/class/net may not).
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    interfaces = sorted(line.split(":", 1)[0].strip() for line in lines)
    if interfaces != ["lo"]:
        # HA's zeroconf and the gateway's LAN discovery send multicast: never on a real network.
        say(f"refusing to run with network interfaces {interfaces}: use ./scripts/test-ui")
        return 2
    say("network: loopback only (private namespace)")
    work = Path(tempfile.mkdtemp(prefix="i4t-ui-"))
    shots = work / "shots"
    shots.mkdir()
    develop_log = work / "develop.log"
    say(f"working in {work}")
    started = time.monotonic()
    with develop_log.open("wb") as log:
        develop = subprocess.Popen(
            [
                sys.executable,
                *("-m", "scripts.develop", "--bare", "--no-group"),
                *("--var", str(work / "var")),
                *("--ha-port", str(HA_PORT), "--mqtt-port", str(MQTT_PORT)),
                *("--wifi", "2", "--ble", "2"),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ok = False
    try:
        ok = wait_until_ready(develop, develop_log, time.monotonic() + START_TIMEOUT)
        if ok:
            say(f"HA, the gateway and the things are up ({time.monotonic() - started:.0f} s)")
            ok = run_flow(work, shots)
    finally:
        stop(develop)
    if ok:
        args.shots.mkdir(parents=True, exist_ok=True)
        for shot in sorted(shots.glob("*.png")):
            target = args.shots / shot.name
            shrink(shot, target)
            say(f"{target.relative_to(ROOT)}: {target.stat().st_size // 1024} KiB")
    else:
        say("the last lines of scripts/develop's output:")
        for line in develop_log.read_text(errors="replace").splitlines()[-40:]:
            print(f"    {line}")
    say(f"{'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"kept {work}")
    return 0 if ok else 1


def wait_until_ready(develop: subprocess.Popen[bytes], log: Path, deadline: float) -> bool:
    """HA answers on HTTP and scripts.develop has enrolled the simulated things."""
    try:
        wait_for_http(f"http://127.0.0.1:{HA_PORT}", deadline)
    except TimeoutError as err:
        say(str(err))
        return False
    while time.monotonic() < deadline:
        if develop.poll() is not None:
            say(f"scripts/develop ended early (exit {develop.returncode})")
            return False
        text = log.read_text(errors="replace")
        if "simulated things enrolled" in text:
            return True
        if "enrolling the simulated things failed" in text:
            say("scripts/develop could not enrol the simulated things")
            return False
        time.sleep(0.5)
    say("the simulated things were not enrolled in time")
    return False


def run_flow(work: Path, shots: Path) -> bool:
    env = {
        **os.environ,
        "HA_URL": f"http://127.0.0.1:{HA_PORT}",
        "SHOTS": str(shots),
        "WORK": str(work),
        "MQTT_PORT": str(MQTT_PORT),
        "BRAND_ICON": str(ROOT / "custom_components" / "i4t" / "brand" / "icon.png"),
    }
    try:
        flow = ["node", str(UI / "flow.mjs")]
        result = subprocess.run(flow, check=False, env=env, timeout=FLOW_TIMEOUT)
    except subprocess.TimeoutExpired:
        say(f"the browser flow did not finish within {FLOW_TIMEOUT} s")
        return False
    return result.returncode == 0


def stop(develop: subprocess.Popen[bytes]) -> None:
    """Ctrl-C for scripts.develop, which stops the simulator, HA and the gateway in order."""
    if develop.poll() is None:
        develop.send_signal(signal.SIGINT)
        try:
            develop.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            say("scripts/develop did not stop in time; killing it and its children")
            for pid in (*children(develop.pid), develop.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            develop.wait()


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (scripts.develop starts each in its own session)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def shrink(source: Path, target: Path) -> None:
    """A 256-colour palette PNG: HA's flat UI keeps its look at a fraction of the size."""
    with Image.open(source) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        palette.save(target, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
