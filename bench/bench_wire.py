"""Wire benchmark: our encode/decode/sign/verify/seal/open rates next to the raw library rates
measured in the same run (cryptography's Ed25519, cbor2), as ratios.

    python bench/bench_wire.py            # about 1 s per measurement

Not a test: the numbers depend on the machine; the ratios say what our layer costs on top of
the libraries it is built on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
import sys
import time

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addon" / "src"))

import cbor2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from i4t_gateway import cose, wire
from i4t_gateway.identity import Address, Identity
from i4t_gateway.payloads import Data, Reading

SECONDS = 1.0


@dataclass(frozen=True)
class _NullSigner:
    """Signs with zeros: lets the encode measurement leave Ed25519 out."""

    address: Address
    public_bytes: bytes

    def sign(self, message: bytes) -> bytes:
        del message
        return bytes(64)


def rate(call: Callable[[], object], seconds: float = SECONDS) -> float:
    """Calls per second of ``call``, measured for about ``seconds``."""
    call()  # warm up
    batch, done = 1, 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            call()
        done += batch
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)
        batch = min(batch * 2, 4096)


def run() -> None:
    alice = Identity.from_seed(bytes(range(32)))
    bob = Identity.from_seed(bytes(range(32, 64)))
    private = alice._private  # the raw anchor signs with the very same key
    public = alice.public_key
    packet = wire.build(
        alice.address,
        bob.address,
        Data((Reading("temperature", 21.5, "°C"), Reading("humidity", 48))),
        seq=1,
        ts_ms=1_763_700_000_000,
    )
    raw = wire.seal_packet(packet, alice)
    envelope = cose.decode_sign1(raw)
    body = envelope.payload
    body_map = cbor2.loads(body)
    tbs = cose.sig_structure(envelope.protected, body)
    signature = private.sign(tbs)
    sealed = wire.seal_packet(packet, alice, encrypt_to=bob.public_bytes)
    null = _NullSigner(alice.address, alice.public_bytes)
    header = {wire.HOP_LIMIT_LABEL: 16}
    chacha = ChaCha20Poly1305(bytes(32))
    recipient_x = bob.x25519_private_key().public_key()

    def raw_encode() -> bytes:
        inner = cbor2.dumps(body_map)
        return cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x27", header, inner, bytes(64)]))

    def raw_decode() -> object:
        return cbor2.loads(cbor2.loads(raw).value[2])

    def raw_encrypt_sign() -> bytes:
        ephemeral = X25519PrivateKey.generate()
        ephemeral.exchange(recipient_x)
        chacha.encrypt(bytes(12), body, b"")
        return private.sign(tbs)

    def sign_raw() -> bytes:
        return private.sign(tbs)

    def verify_raw() -> None:
        public.verify(signature, tbs)

    def encode_ours() -> bytes:
        return wire.seal_packet(packet, null)  # type: ignore[arg-type]

    def verify_ours() -> None:
        cose.decode_sign1(raw).verify(public)

    def seal_encrypted() -> bytes:
        return wire.seal_packet(packet, alice, encrypt_to=bob.public_bytes)

    def open_encrypted() -> object:
        return wire.open_packet(sealed, recipient=bob)

    rows: list[tuple[str, Callable[[], object], str, Callable[[], object]]] = [
        ("encode (no signature)", encode_ours, "cbor2.dumps x2", raw_encode),
        ("decode (scan+schema)", lambda: wire.peek(raw), "cbor2.loads x2", raw_decode),
        ("sign (COSE_Sign1)", lambda: cose.sign1(body, alice, header), "Ed25519 sign", sign_raw),
        ("verify (COSE_Sign1)", verify_ours, "Ed25519 verify", verify_raw),
        ("seal packet", lambda: wire.seal_packet(packet, alice), "Ed25519 sign", sign_raw),
        ("open packet", lambda: wire.open_packet(raw), "Ed25519 verify", verify_raw),
        ("seal encrypted", seal_encrypted, "X25519+ChaCha+sign", raw_encrypt_sign),
        ("open encrypted", open_encrypted, "Ed25519 verify", verify_raw),
    ]
    print(f"packet: {len(raw)} bytes plain, {len(sealed)} bytes encrypted; {SECONDS:.1f} s each")
    print(f"{'ours':24} {'ops/s':>10}   {'raw library anchor':20} {'ops/s':>10}   ratio")
    for name, ours, anchor_name, anchor in rows:
        ours_rate, anchor_rate = rate(ours), rate(anchor)
        print(
            f"{name:24} {ours_rate:10.0f}   {anchor_name:20} {anchor_rate:10.0f}"
            f"   {ours_rate / anchor_rate:5.2f}"
        )


if __name__ == "__main__":
    run()
