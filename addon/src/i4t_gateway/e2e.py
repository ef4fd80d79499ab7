"""End-to-end payload encryption to the destination's key (docs/PROTOCOL.md §7).

One ephemeral X25519 key per packet, agreed with the recipient's X25519 key, which is derived
from its Ed25519 identity by the RFC 7748 / RFC 8032 birational map (u = (1 + y) / (1 - y)), the
same conversion libsodium offers as crypto_sign_ed25519_pk_to_curve25519. So a thing has one key
pair and one address, and whoever knows its address's key can encrypt to it.

HKDF-SHA256 turns the shared secret into a ChaCha20-Poly1305 key and nonce. Both are fresh per
packet because the ephemeral key is, so no nonce travels. The sender is authenticated by the
packet signature, and the associated data binds the ciphertext to that packet's source,
destination, type and message id, so nobody can re-wrap it in a packet of their own.

HPKE (RFC 9180) would do the same, but cryptography 44 has no HPKE API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .cose import PacketError, Reason
from .identity import Identity

HKDF_INFO: Final = b"i4t e2e v1"
KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
X25519_SIZE: Final = 32
_P: Final = 2**255 - 19


def ed25519_public_to_x25519(ed25519_public: bytes) -> bytes:
    """Map an Ed25519 public key (Edwards y) to its X25519 public key (Montgomery u).

    Raises ValueError for encodings that are not a usable point: y >= p (non-canonical) or
    y = 1 (the neutral point, which has no u).
    """
    if len(ed25519_public) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise ValueError("not a usable Ed25519 public key")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


@dataclass(frozen=True, slots=True)
class Sealed:
    """An encrypted payload as it travels: the sender's ephemeral public key and the ciphertext
    (with its 16-byte Poly1305 tag at the end)."""

    ephemeral_public: bytes
    ciphertext: bytes


def derive_key_nonce(
    shared: bytes, ephemeral_public: bytes, recipient_public: bytes
) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE + NONCE_SIZE,
        salt=ephemeral_public + recipient_public,
        info=HKDF_INFO,
    ).derive(shared)
    return okm[:KEY_SIZE], okm[KEY_SIZE:]


def seal(
    plaintext: bytes,
    recipient_ed25519_public: bytes,
    aad: bytes,
    *,
    ephemeral: X25519PrivateKey | None = None,
) -> Sealed:
    """Encrypt ``plaintext`` to the holder of ``recipient_ed25519_public``.

    ``ephemeral`` exists for test vectors only; leave it unset everywhere else.
    """
    recipient_public = ed25519_public_to_x25519(recipient_ed25519_public)
    ephemeral_key = X25519PrivateKey.generate() if ephemeral is None else ephemeral
    ephemeral_public = ephemeral_key.public_key().public_bytes_raw()
    # cryptography raises ValueError for an all-zero shared secret (a low-order recipient key).
    shared = ephemeral_key.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    key, nonce = derive_key_nonce(shared, ephemeral_public, recipient_public)
    return Sealed(ephemeral_public, ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad))


def open_sealed(sealed: Sealed, recipient: Identity, aad: bytes) -> bytes:
    """Decrypt a payload sealed to ``recipient``; any failure is ``PacketError(DECRYPT_FAILED)``."""
    if len(sealed.ephemeral_public) != X25519_SIZE or len(sealed.ciphertext) < TAG_SIZE:
        raise PacketError(Reason.DECRYPT_FAILED, "bad sizes")
    private = recipient.x25519_private_key()
    recipient_public = private.public_key().public_bytes_raw()
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(sealed.ephemeral_public))
    except ValueError:
        raise PacketError(Reason.DECRYPT_FAILED, "low-order ephemeral key") from None
    key, nonce = derive_key_nonce(shared, sealed.ephemeral_public, recipient_public)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise PacketError(Reason.DECRYPT_FAILED) from None
