"""Identities and addresses: an Ed25519 key pair made and kept by its owner, and the address
that is the hash of its public key.

Address bytes are ``suite || digest``. The leading suite byte names how the digest was made and
therefore its length, so a longer hash can be introduced later without a flag day: a receiver
that does not know a suite rejects the address instead of misreading it (docs/PROTOCOL.md §3).

The text form is ``"i4t"`` followed by the address bytes in lowercase RFC 4648 base32 without
padding: only ``a-z`` and ``2-7``, so it is safe in MQTT topic levels, URLs, file names and
entity ids, and it is case-insensitive for people who type it.
"""

from __future__ import annotations

import base64
import builtins
from dataclasses import dataclass, field
import enum
import hashlib
import os
from pathlib import Path
import stat
from typing import ClassVar, Final, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

ADDRESS_TEXT_PREFIX: Final = "i4t"
PUBLIC_KEY_SIZE: Final = 32
SEED_SIZE: Final = 32
MAX_LOCAL_ID_SIZE: Final = 64
_KEY_FILE_MODE: Final = 0o600
_PROXY_DOMAIN: Final = b"i4t-proxy\x00"


class AddressSuite(enum.IntEnum):
    """The registry of address suites: the first byte of every address."""

    BROADCAST = 0x00
    """No digest: every neighbour on the link (announces, gossip)."""
    ED25519_SHA256_128 = 0x01
    """First 16 bytes of SHA-256 over the 32-byte Ed25519 public key."""
    PROXIED_SHA256_128 = 0x02
    """First 16 bytes of SHA-256 over "i4t-proxy" NUL, gateway public key, local id."""


_DIGEST_SIZE: Final[dict[AddressSuite, int]] = {
    AddressSuite.BROADCAST: 0,
    AddressSuite.ED25519_SHA256_128: 16,
    AddressSuite.PROXIED_SHA256_128: 16,
}


class AddressError(ValueError):
    """Raised for bytes or text that are not a valid address."""


class IdentityError(Exception):
    """Raised when a key file cannot be used (bad permissions, not an Ed25519 key)."""


def _b32_encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _b32_decode(text: str) -> bytes:
    padding = "=" * (-len(text) % 8)
    try:
        return base64.b32decode(text.upper() + padding)
    except ValueError as err:  # binascii.Error is a ValueError
        raise AddressError("not base32") from err


@dataclass(frozen=True, slots=True)
class Address:
    """An I4T address: immutable, hashable, ordered by its bytes."""

    raw: bytes
    # The text form, made on first use: state exports and topics ask for it again and again
    # (base32 of 100k addresses took most of a 100k-thing gateway's periodic save).
    _text: str = field(default="", init=False, repr=False, compare=False)
    BROADCAST: ClassVar[Address]

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or not self.raw:
            raise AddressError("empty address")
        try:
            suite = AddressSuite(self.raw[0])
        except ValueError as err:
            raise AddressError(f"unknown address suite {self.raw[0]}") from err
        if len(self.raw) != 1 + _DIGEST_SIZE[suite]:
            raise AddressError("address length does not match its suite")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        return cls(bytes(raw))

    @classmethod
    def from_text(cls, text: str) -> Self:
        lowered = text.lower()
        if not lowered.startswith(ADDRESS_TEXT_PREFIX):
            raise AddressError("address text must start with 'i4t'")
        body = lowered[len(ADDRESS_TEXT_PREFIX) :]
        if not body or not all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in body):
            raise AddressError("address text must be base32 (a-z, 2-7)")
        address = cls(_b32_decode(body))
        # Non-zero trailing bits would give two texts for one address.
        if address.text != lowered:
            raise AddressError("address text is not canonical")
        return address

    @classmethod
    def for_public_key(cls, public_key: bytes | Ed25519PublicKey) -> Self:
        key = _public_bytes(public_key)
        digest = hashlib.sha256(key).digest()[: _DIGEST_SIZE[AddressSuite.ED25519_SHA256_128]]
        return cls(bytes([AddressSuite.ED25519_SHA256_128]) + digest)

    @classmethod
    def for_proxied(cls, gateway_key: bytes | Ed25519PublicKey, local_id: bytes) -> Self:
        """The address of a thing that cannot sign, bound to the gateway that speaks for it.

        Binding the gateway's key into the digest means no other gateway can sign for the thing.
        """
        if not 1 <= len(local_id) <= MAX_LOCAL_ID_SIZE:
            raise AddressError("local id must be 1-64 bytes")
        key = _public_bytes(gateway_key)
        digest = hashlib.sha256(_PROXY_DOMAIN + key + local_id).digest()
        size = _DIGEST_SIZE[AddressSuite.PROXIED_SHA256_128]
        return cls(bytes([AddressSuite.PROXIED_SHA256_128]) + digest[:size])

    @property
    def suite(self) -> AddressSuite:
        return AddressSuite(self.raw[0])

    @property
    def text(self) -> str:
        if not self._text:
            object.__setattr__(self, "_text", ADDRESS_TEXT_PREFIX + _b32_encode(self.raw))
        return self._text

    @property
    def bytes(self) -> builtins.bytes:
        return self.raw

    @property
    def is_broadcast(self) -> bool:
        return self.suite is AddressSuite.BROADCAST

    def matches_key(self, public_key: builtins.bytes | Ed25519PublicKey) -> bool:
        """True if this is the address of ``public_key`` (suite 0x01 only)."""
        if self.suite is not AddressSuite.ED25519_SHA256_128:
            return False
        return Address.for_public_key(public_key) == self

    def short(self) -> str:
        """A short form for logs and UI labels; not unique, never parse it back."""
        return self.text[:11]

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Address({self.text!r})"


Address.BROADCAST = Address(bytes([AddressSuite.BROADCAST]))


def _public_bytes(public_key: bytes | Ed25519PublicKey) -> bytes:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key.public_bytes_raw()
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise AddressError("an Ed25519 public key is 32 bytes")
    return bytes(public_key)


class Identity:
    """A private Ed25519 key and the address it owns. Never prints its private bytes."""

    __slots__ = ("_private", "_x25519", "address", "public_bytes")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self._x25519: X25519PrivateKey | None = None
        self.public_bytes: bytes = private_key.public_key().public_bytes_raw()
        self.address: Address = Address.for_public_key(self.public_bytes)

    @classmethod
    def generate(cls) -> Self:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Self:
        """From the 32-byte RFC 8032 private key (seed); for test vectors and key import."""
        if len(seed) != SEED_SIZE:
            raise IdentityError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def x25519_private_key(self) -> X25519PrivateKey:
        """The X25519 key for end-to-end encryption, derived from the same seed.

        RFC 8032 §5.1.5: the Ed25519 secret scalar is the first half of SHA-512(seed); used as an
        X25519 scalar (RFC 7748 clamps it) it pairs with the birational image of the public key,
        so one key pair serves both signing and key agreement (see e2e.py).
        """
        if self._x25519 is None:
            seed = self._private.private_bytes_raw()
            self._x25519 = X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])
        return self._x25519

    def _private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"Identity({self.address.text})"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("identities are not picklable: the private key stays where it is")


def load_or_create_identity(path: Path) -> Identity:
    """Load the key at ``path``, or create it there (mode 0600, never partially written).

    Concurrent callers end up with the same key: creation links a finished temporary file into
    place, which fails if another process got there first, and then its key is loaded.
    """
    try:
        return load_identity(path)
    except FileNotFoundError:
        pass
    identity = Identity.generate()
    _write_key_file(path, identity._private_pem())
    return load_identity(path)


def load_identity(path: Path) -> Identity:
    """Load a PKCS#8 PEM Ed25519 key; refuse it if anyone but the owner can read it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise IdentityError(f"{path} is readable by others; chmod 600 it")
        with os.fdopen(fd, "rb", closefd=False) as stream:
            pem = stream.read(64 * 1024)
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        raise IdentityError(f"{path} is not an unencrypted PKCS#8 PEM key") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an Ed25519 key")
    return Identity(key)


def _write_key_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    # O_EXCL with mode 0600: the file is never visible with wider permissions, not even briefly.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _KEY_FILE_MODE)
    try:
        os.fchmod(fd, _KEY_FILE_MODE)  # in case a umask-less filesystem widened it
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process created the key first; the caller loads that one
    finally:
        os.unlink(temporary)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
