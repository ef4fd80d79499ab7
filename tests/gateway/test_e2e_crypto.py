"""End-to-end encryption: key conversion, sealing, and its failure modes."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings, strategies as st
import pytest

from i4t_gateway.cose import PacketError, Reason
from i4t_gateway.e2e import Sealed, ed25519_public_to_x25519, open_sealed, seal
from i4t_gateway.identity import Identity

BOB = Identity.from_seed(bytes(range(32, 64)))
EVE = Identity.from_seed(bytes(range(64, 96)))
EPHEMERAL = X25519PrivateKey.from_private_bytes(bytes(range(96, 128)))

# RFC 7748 §6.1: Alice's X25519 key pair, and RFC 8032 §7.1 TEST 1 key pair.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def test_conversion_matches_the_secret_scalar_of_rfc8032_test_1() -> None:
    identity = Identity.from_seed(RFC8032_SEED)
    assert identity.public_bytes == RFC8032_PUBLIC
    scalar = hashlib.sha512(RFC8032_SEED).digest()[:32]
    expected = X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes_raw()
    assert ed25519_public_to_x25519(RFC8032_PUBLIC) == expected
    assert identity.x25519_private_key().public_key().public_bytes_raw() == expected


@pytest.mark.parametrize(
    "bad",
    [
        bytes(31),
        (1).to_bytes(32, "little"),  # the neutral point has no Montgomery u
        (2**255 - 19).to_bytes(32, "little"),  # y = p is not canonical
        b"\xff" * 32,
    ],
)
def test_unusable_public_keys_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError, match="Ed25519 public key"):
        ed25519_public_to_x25519(bad)


def test_seal_and_open() -> None:
    sealed = seal(b"hello", BOB.public_bytes, b"aad", ephemeral=EPHEMERAL)
    assert len(sealed.ciphertext) == len(b"hello") + 16
    assert sealed.ephemeral_public == EPHEMERAL.public_key().public_bytes_raw()
    assert open_sealed(sealed, BOB, b"aad") == b"hello"
    # Same inputs, same ephemeral key: deterministic (that is what the vectors rely on).
    assert seal(b"hello", BOB.public_bytes, b"aad", ephemeral=EPHEMERAL) == sealed
    # Without injection every seal uses a fresh ephemeral key.
    assert seal(b"hello", BOB.public_bytes, b"aad") != seal(b"hello", BOB.public_bytes, b"aad")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: (
            Sealed(s.ephemeral_public, s.ciphertext[:-1] + bytes([s.ciphertext[-1] ^ 1])),
            b"aad",
            BOB,
        ),
        lambda s: (
            Sealed(bytes([s.ephemeral_public[0] ^ 1]) + s.ephemeral_public[1:], s.ciphertext),
            b"aad",
            BOB,
        ),
        lambda s: (s, b"aae", BOB),
        lambda s: (s, b"aad", EVE),
        lambda s: (Sealed(bytes(32), s.ciphertext), b"aad", BOB),
        lambda s: (Sealed(bytes(31), s.ciphertext), b"aad", BOB),
        lambda s: (Sealed(s.ephemeral_public, b"short"), b"aad", BOB),
    ],
    ids=["ciphertext", "ephemeral", "aad", "recipient", "low-order", "short-key", "short-text"],
)
def test_every_failure_is_decrypt_failed(mutate) -> None:  # type: ignore[no-untyped-def]
    sealed = seal(b"payload", BOB.public_bytes, b"aad", ephemeral=EPHEMERAL)
    tampered, aad, recipient = mutate(sealed)
    with pytest.raises(PacketError) as caught:
        open_sealed(tampered, recipient, aad)
    assert caught.value.reason is Reason.DECRYPT_FAILED


@settings(max_examples=50)
@given(st.binary(max_size=512), st.binary(max_size=64))
def test_any_plaintext_round_trips(plaintext: bytes, aad: bytes) -> None:
    assert open_sealed(seal(plaintext, BOB.public_bytes, aad), BOB, aad) == plaintext
