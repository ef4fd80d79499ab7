"""Identities, key files and addresses."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
import pickle
import stat
import threading

from hypothesis import given, strategies as st
import pytest

from i4t_gateway.e2e import ed25519_public_to_x25519
from i4t_gateway.identity import (
    Address,
    AddressError,
    AddressSuite,
    Identity,
    IdentityError,
    load_identity,
    load_or_create_identity,
)

SEED = bytes(range(32))


def test_address_is_the_truncated_sha256_of_the_public_key() -> None:
    identity = Identity.from_seed(SEED)
    assert identity.address.bytes == b"\x01" + hashlib.sha256(identity.public_bytes).digest()[:16]
    assert identity.address.suite is AddressSuite.ED25519_SHA256_128
    assert identity.address.matches_key(identity.public_bytes)
    assert identity.address.matches_key(identity.public_key)
    assert not identity.address.matches_key(Identity.generate().public_bytes)


def test_address_text_is_safe_for_topics_and_round_trips() -> None:
    address = Identity.from_seed(SEED).address
    text = address.text
    assert text.startswith("i4t")
    assert text == text.lower()
    assert not set(text) & set("/+#= .")
    assert Address.from_text(text) == address
    assert Address.from_text(text.upper()) == address
    assert str(address) == text
    assert text in repr(address)


@given(st.binary(min_size=16, max_size=16), st.sampled_from([1, 2]))
def test_address_bytes_and_text_round_trip(digest: bytes, suite: int) -> None:
    address = Address.from_bytes(bytes([suite]) + digest)
    assert Address.from_text(address.text) == address
    assert Address.from_bytes(address.bytes) == address
    assert hash(address) == hash(Address(address.bytes))


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x01" + bytes(15), b"\x01" + bytes(17), b"\x00\x00", b"\x03" + bytes(16), b"\xff"],
)
def test_invalid_address_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(AddressError):
        Address.from_bytes(raw)


@pytest.mark.parametrize(
    "text",
    ["", "i4t", "abc", "i4t!!", "i4t/aa", "i4tab", "i4t0aaaa", "x4taa", "i4taeaaaaa"],
)
def test_invalid_address_text_is_refused(text: str) -> None:
    with pytest.raises(AddressError):
        Address.from_text(text)


def test_non_canonical_trailing_bits_are_refused() -> None:
    text = Identity.from_seed(SEED).address.text
    # The last base32 character of a 17-byte address carries 4 padding bits; set one.
    last = "abcdefghijklmnopqrstuvwxyz234567"
    tweaked = text[:-1] + last[last.index(text[-1]) ^ 1]
    with pytest.raises(AddressError):
        Address.from_text(tweaked)


def test_broadcast_address() -> None:
    assert Address.BROADCAST.is_broadcast
    assert Address.from_text(Address.BROADCAST.text) == Address.BROADCAST
    assert not Address.BROADCAST.matches_key(Identity.from_seed(SEED).public_bytes)


def test_proxied_address_is_bound_to_gateway_and_local_id() -> None:
    gateway = Identity.from_seed(SEED)
    other = Identity.generate()
    thing = Address.for_proxied(gateway.public_bytes, b"aa:bb:cc:dd:ee:ff")
    assert thing.suite is AddressSuite.PROXIED_SHA256_128
    assert thing == Address.for_proxied(gateway.public_key, b"aa:bb:cc:dd:ee:ff")
    assert thing != Address.for_proxied(other.public_bytes, b"aa:bb:cc:dd:ee:ff")
    assert thing != Address.for_proxied(gateway.public_bytes, b"aa:bb:cc:dd:ee:fe")
    assert not thing.matches_key(gateway.public_bytes)
    with pytest.raises(AddressError):
        Address.for_proxied(gateway.public_bytes, b"")
    with pytest.raises(AddressError):
        Address.for_proxied(gateway.public_bytes, bytes(65))


def test_identity_never_shows_its_private_key() -> None:
    identity = Identity.from_seed(SEED)
    assert repr(identity) == f"Identity({identity.address.text})"
    assert SEED.hex() not in repr(identity)
    with pytest.raises(TypeError):
        pickle.dumps(identity)
    assert not hasattr(identity, "__dict__")


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(IdentityError):
        Identity.from_seed(bytes(31))


def test_key_file_is_created_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "gateway.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the key file
    try:
        created = load_or_create_identity(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_identity(path).address == created.address
    assert load_identity(path).public_bytes == created.public_bytes
    assert [p.name for p in path.parent.iterdir()] == ["gateway.key"]
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    load_or_create_identity(path)
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        load_identity(path)


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(IdentityError):
        load_identity(path)


def test_concurrent_creation_yields_one_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    results: list[Address] = []

    def create() -> None:
        results.append(load_or_create_identity(path).address)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["gateway.key"]


def test_x25519_key_matches_the_mapped_public_key() -> None:
    for _ in range(20):
        identity = Identity.generate()
        derived = identity.x25519_private_key().public_key().public_bytes_raw()
        assert derived == ed25519_public_to_x25519(identity.public_bytes)
