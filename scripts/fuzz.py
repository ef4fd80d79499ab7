#!/usr/bin/env python3
"""Fuzz the packet and name-record decoders: only PacketError may ever escape.

    ./scripts/fuzz                         # 60 s, atheris (libFuzzer) if installed, else built-in
    ./scripts/fuzz --seconds 600
    ./scripts/fuzz --engine builtin --seed 7

It runs in the project's virtualenv (./scripts/fuzz sets it up). It is not part of the test run.

Each input starts with a mode byte that picks what the rest is fed to, so that fuzzing also
reaches the code behind the signature check (random bytes almost never carry a valid signature):

    0  raw bytes -> wire.open_packet (with a key resolver and a recipient)
    1  bytes used as a packet body, signed by a test key -> wire.open_packet
    2  bytes used as the plaintext of an encrypted packet to the recipient -> wire.open_packet
    3  raw bytes -> names.verify_name_record

Seeds come from tests/fuzz-corpus/ (kept small, committed) and tests/vectors/packets.json.
A crash (any other exception) is saved to --crash-dir as crash-<sha1> and makes the command exit 1.
"""

# The package is imported late on purpose: under atheris it must be imported inside
# atheris.instrument_imports() to get coverage feedback.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fuzz-corpus"
VECTORS = ROOT / "tests" / "vectors" / "packets.json"
DEFAULT_CRASH_DIR = ROOT / "var" / "fuzz-crashes"
MAX_INPUT = 4096
NOW_MS = 1_763_700_000_000
INTERESTING = [0x00, 0x01, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x20, 0x3A, 0x40, 0x5F, 0x60]
INTERESTING += [0x7F, 0x80, 0x9F, 0xA0, 0xBF, 0xC0, 0xD2, 0xD8, 0xF4, 0xF6, 0xF7, 0xF9, 0xFF]

sys.path.insert(0, str(ROOT / "addon" / "src"))


def _import_targets() -> None:
    global cose, wire, names, identity  # noqa: PLW0603 - set once, possibly under instrumentation
    from i4t_gateway import cose, identity, names, wire


def make_target() -> object:
    """The function every input goes through; raises only what is a bug."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    alice = identity.Identity.from_seed(bytes(range(32)))
    bob = identity.Identity.from_seed(bytes(range(32, 64)))
    keys = {alice.address: alice.public_bytes}.get
    ephemeral = X25519PrivateKey.from_private_bytes(bytes(range(96, 128)))
    header = wire.build(alice.address, bob.address, wire.Ack((bytes(16),)), seq=1, ts_ms=NOW_MS)

    def encrypted_packet(plaintext: bytes) -> bytes:
        aad = wire.associated_data(header)
        sealed = wire.seal(plaintext, bob.public_bytes, aad, ephemeral=ephemeral)
        body = {
            1: 1, 2: int(header.type), 3: alice.address.bytes, 4: bob.address.bytes,
            5: header.message_id, 6: 1, 7: NOW_MS, 8: 16, 9: 2,
            12: {1: sealed.ephemeral_public, 2: sealed.ciphertext},
        }  # fmt: skip
        return cose.sign1(cose.encode(body), alice, {wire.HOP_LIMIT_LABEL: 16})

    def target(data: bytes) -> None:
        if not data:
            return
        mode, rest = data[0] % 4, data[1:]
        try:
            if mode == 0:
                received = wire.open_packet(rest, keys=keys, recipient=bob)
                assert wire.peek(rest).message_id == received.packet.message_id
            elif mode == 1:
                raw = cose.sign1(rest, alice, {wire.HOP_LIMIT_LABEL: 1})
                received = wire.open_packet(raw, keys=keys, recipient=bob)
                if not received.encrypted:
                    # Fields map to bytes one to one: sealing what was read gives the input.
                    again = [
                        wire.seal_packet(received.packet, alice, include_key=k, hop_limit=1)
                        for k in (True, False)
                    ]
                    assert raw in again, "an accepted body does not re-encode to itself"
            elif mode == 2:
                wire.open_packet(encrypted_packet(rest), keys=keys, recipient=bob)
            else:
                names.verify_name_record(rest, now_ms=NOW_MS)
        except cose.PacketError as err:
            if not isinstance(err.reason, cose.Reason):
                raise TypeError("PacketError without a Reason") from err

    return target


def seeds() -> list[bytes]:
    out = [path.read_bytes() for path in sorted(CORPUS.glob("*")) if path.is_file()]
    if VECTORS.exists():
        import cbor2

        from i4t_gateway import cose as plain_cose

        for vector in json.loads(VECTORS.read_text(encoding="utf-8"))["packets"]:
            raw = bytes.fromhex(vector["packet"])
            out.append(b"\x00" + raw)
            out.append(b"\x01" + plain_cose.decode_sign1(raw).payload)
            if "encryption" in vector:
                out.append(b"\x02" + bytes.fromhex(vector["encryption"]["plaintext"]))
            body = cbor2.loads(plain_cose.decode_sign1(raw).payload)
            if vector["fields"]["type"] == "name_record":
                out.append(b"\x03" + body[12][1])
    return out or [b"\x00"]


# --- built-in mutational engine ---------------------------------------------------------------


def mutate(data: bytes, pool: list[bytes], rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        position = rng.randrange(len(buf)) if buf else 0
        choice = rng.randrange(9)
        if choice == 0 and buf:
            buf[position] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:
            buf[position] = rng.choice(INTERESTING)
        elif choice == 2:
            buf[position:position] = bytes([rng.randrange(256)])
        elif choice == 3 and len(buf) > 1:
            del buf[position : position + rng.randint(1, 8)]
        elif choice == 4 and buf:
            chunk = buf[position : position + rng.randint(1, 16)]
            buf[position:position] = chunk * rng.randint(1, 8)
        elif choice == 5:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[position:] = other[cut:]
        elif choice == 6 and len(buf) > 1:
            # Keep the mode byte meaningful but move inputs between targets now and then.
            buf[0] = rng.randrange(4)
        elif choice == 7 and buf:
            width = rng.choice([1, 2, 4, 8])
            value = rng.choice([0, 1, 23, 24, 255, 256, 65535, 2**32 - 1, 2**64 - 1])
            buf[position : position + width] = (value % 2 ** (8 * width)).to_bytes(width, "big")
        elif buf:
            buf[position] = rng.randrange(256)
    return bytes(buf[:MAX_INPUT])


def crash_key(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    return f"{type(err).__name__} at {where}"


def save_crash(data: bytes, crash_dir: Path) -> Path:
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


def run_builtin(seconds: float, seed: int, crash_dir: Path) -> int:
    _import_targets()
    target = make_target()
    assert callable(target)
    pool = seeds()
    rng = random.Random(seed)
    crashes: dict[str, Path] = {}
    executions = 0
    deadline = time.monotonic() + seconds
    for data in pool:  # every seed once, unmutated
        executions += _run_one(target, data, crashes, crash_dir)
    while time.monotonic() < deadline:
        for _ in range(256):
            executions += _run_one(target, mutate(rng.choice(pool), pool, rng), crashes, crash_dir)
    return _summary("builtin", executions, seconds, crashes)


def _run_one(target: object, data: bytes, crashes: dict[str, Path], crash_dir: Path) -> int:
    assert callable(target)
    try:
        target(data)
    except Exception as err:  # everything but PacketError is a finding
        key = crash_key(err)
        if key not in crashes:
            crashes[key] = save_crash(data, crash_dir)
            print(f"CRASH {key} -> {crashes[key]}", file=sys.stderr)
    return 1


def _summary(engine: str, executions: int, seconds: float, crashes: dict[str, Path]) -> int:
    print(f"engine: {engine}")
    print(f"executions: {executions} ({executions / max(seconds, 1e-9):.0f}/s)")
    print(f"unique crashes: {len(crashes)}")
    for key, path in crashes.items():
        print(f"  {key}: {path}")
    return 1 if crashes else 0


# --- atheris (libFuzzer) engine ---------------------------------------------------------------


def run_atheris_worker(libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["i4t_gateway"]):
        _import_targets()
    target = make_target()
    atheris.Setup([sys.argv[0], *libfuzzer_args], target)
    atheris.Fuzz()


def run_atheris(seconds: float, crash_dir: Path) -> int:
    crash_dir.mkdir(parents=True, exist_ok=True)
    before = set(crash_dir.glob("crash-*"))
    with tempfile.TemporaryDirectory(prefix="i4t-fuzz-") as scratch:
        work = Path(scratch) / "new"
        initial = Path(scratch) / "seeds"
        work.mkdir()
        initial.mkdir()
        _import_targets()
        for index, data in enumerate(seeds()):
            (initial / f"seed-{index:04d}").write_bytes(data)
        # New units go to the scratch directory, never into the committed corpus.
        args = [
            f"-max_total_time={int(seconds)}",
            f"-max_len={MAX_INPUT}",
            "-print_final_stats=1",
            "-timeout=10",
            f"-artifact_prefix={crash_dir}{os.sep}",
            str(work),
            str(initial),
        ]
        command = [sys.executable, __file__, "--atheris-worker", "--", *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    executions = _stat(result.stderr, "number_of_executed_units")
    new = sorted(set(crash_dir.glob("crash-*")) - before)
    crashes = {f"libFuzzer finding {path.name}": path for path in new}
    if result.returncode != 0 and not crashes:
        crashes["worker failed without an artifact"] = crash_dir
    if crashes:
        print(result.stderr[-4000:], file=sys.stderr)
    return _summary("atheris", executions, seconds, crashes)


def _stat(output: str, name: str) -> int:
    match = re.search(rf"stat::{name}:\s+(\d+)", output)
    return int(match.group(1)) if match else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--atheris-worker"]:
        run_atheris_worker(argv[2:] if argv[1:2] == ["--"] else argv[1:])
        return 0
    parser = argparse.ArgumentParser(description="Fuzz the I4T packet decoder.")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--engine", choices=["auto", "atheris", "builtin"], default="auto")
    parser.add_argument("--seed", type=int, default=None, help="random seed (builtin engine)")
    parser.add_argument("--crash-dir", type=Path, default=DEFAULT_CRASH_DIR)
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
        except ImportError:
            engine = "builtin"
        else:
            engine = "atheris"
    if engine == "atheris":
        return run_atheris(args.seconds, args.crash_dir)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed: {seed}")
    return run_builtin(args.seconds, seed, args.crash_dir)


if __name__ == "__main__":
    sys.exit(main())
