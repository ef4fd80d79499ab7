"""The committed test vectors, checked both ways: bytes decode to the fields, and the fields
encode to exactly the bytes. A change of encoding fails here until the vectors are regenerated
(scripts/gen-vectors) and the change is reviewed."""

from __future__ import annotations

from importlib.machinery import SourceFileLoader
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
import pytest

from i4t_gateway import cose, e2e, replay, wire
from i4t_gateway.cose import PacketError, Reason
from i4t_gateway.identity import Address, Identity
from i4t_gateway.names import NameRecord, sign_name_record, verify_name_record

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"


def _load_generator() -> ModuleType:
    loader = SourceFileLoader("gen_vectors", str(ROOT / "scripts" / "gen-vectors"))
    spec = importlib.util.spec_from_loader("gen_vectors", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


gen = _load_generator()


def load(name: str) -> dict[str, Any]:
    content = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert isinstance(content, dict)
    return content


KEYS = {k["name"]: k for k in load("keys.json")["keys"]}
IDENTITIES = {
    name: Identity.from_seed(bytes.fromhex(k["seed"])) for name, k in KEYS.items() if "seed" in k
}
PACKETS = load("packets.json")["packets"]
REJECTED = load("rejected.json")
NAMES = load("names.json")["names"]
REPLAY = load("replay.json")


@pytest.mark.parametrize("name", [k for k in KEYS if "seed" in KEYS[k]])
def test_key_vectors(name: str) -> None:
    vector = KEYS[name]
    identity = IDENTITIES[name]
    assert identity.public_bytes.hex() == vector["public_key"]
    assert identity.address.bytes.hex() == vector["address"]
    assert identity.address.text == vector["address_text"]
    assert Address.from_text(vector["address_text"]).bytes.hex() == vector["address"]
    assert e2e.ed25519_public_to_x25519(identity.public_bytes).hex() == vector["x25519_public"]


def test_rfc8032_key_is_the_published_one() -> None:
    assert KEYS["rfc8032-test1"]["public_key"] == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )


def test_proxied_and_broadcast_address_vectors() -> None:
    proxied = KEYS["proxied-thing"]
    address = Address.for_proxied(
        bytes.fromhex(proxied["gateway_public_key"]), bytes.fromhex(proxied["local_id"])
    )
    assert address.bytes.hex() == proxied["address"]
    assert address.text == proxied["address_text"]
    assert Address.BROADCAST.text == KEYS["broadcast"]["address_text"]


def test_every_packet_type_has_a_vector() -> None:
    assert {v["fields"]["type"] for v in PACKETS} == {t.name.lower() for t in wire.PacketType}


@pytest.mark.parametrize("vector", PACKETS, ids=[v["name"] for v in PACKETS])
def test_packet_bytes_decode_to_the_fields(vector: dict[str, Any]) -> None:
    seal = vector["seal"]
    keys = {i.address: i.public_bytes for i in IDENTITIES.values()}
    recipient = IDENTITIES[seal["encrypt_to"]] if seal["encrypt_to"] else None
    received = wire.open_packet(bytes.fromhex(vector["packet"]), keys=keys.get, recipient=recipient)
    assert gen.packet_to_json(received.packet) == vector["fields"]
    assert received.hop_limit == seal["hop_limit"]
    assert received.encrypted == bool(seal["encrypt_to"])
    envelope = cose.decode_sign1(bytes.fromhex(vector["packet"]))
    assert envelope.payload.hex() == vector["body"]
    assert envelope.signature.hex() == vector["signature"]


@pytest.mark.parametrize("vector", PACKETS, ids=[v["name"] for v in PACKETS])
def test_fields_encode_to_the_exact_bytes(vector: dict[str, Any]) -> None:
    seal = vector["seal"]
    packet = gen.packet_from_json(vector["fields"])
    encryption = vector.get("encryption")
    ephemeral = (
        X25519PrivateKey.from_private_bytes(bytes.fromhex(encryption["ephemeral_private"]))
        if encryption
        else None
    )
    raw = wire.seal_packet(
        packet,
        IDENTITIES[seal["signer"]],
        include_key=seal["include_key"],
        hop_limit=seal["hop_limit"],
        encrypt_to=IDENTITIES[seal["encrypt_to"]].public_bytes if seal["encrypt_to"] else None,
        ephemeral=ephemeral,
    )
    assert raw.hex() == vector["packet"]
    body = bytes.fromhex(vector["body"])
    sig_structure = cose.sig_structure(cose.PROTECTED_EDDSA, body)
    assert sig_structure.hex() == vector["sig_structure"]
    assert IDENTITIES[seal["signer"]].sign(sig_structure).hex() == vector["signature"]


@pytest.mark.parametrize(
    "vector", [v for v in PACKETS if "encryption" in v], ids=lambda v: v["name"]
)
def test_encryption_intermediate_values(vector: dict[str, Any]) -> None:
    steps = {k: bytes.fromhex(v) for k, v in vector["encryption"].items()}
    recipient = IDENTITIES[vector["seal"]["encrypt_to"]]
    ephemeral = X25519PrivateKey.from_private_bytes(steps["ephemeral_private"])
    assert ephemeral.public_key().public_bytes_raw() == steps["ephemeral_public"]
    recipient_x = recipient.x25519_private_key().public_key().public_bytes_raw()
    assert recipient_x == steps["recipient_x25519_public"]
    assert recipient.x25519_private_key().exchange(ephemeral.public_key()) == steps["shared_secret"]
    key, nonce = e2e.derive_key_nonce(
        steps["shared_secret"], steps["ephemeral_public"], recipient_x
    )
    assert (key, nonce) == (steps["key"], steps["nonce"])
    assert steps["hkdf_info"] == e2e.HKDF_INFO
    assert steps["hkdf_salt"] == steps["ephemeral_public"] + recipient_x
    packet = gen.packet_from_json(vector["fields"])
    assert wire.associated_data(packet) == steps["aad"]
    sealed = e2e.Sealed(steps["ephemeral_public"], steps["ciphertext"])
    assert e2e.open_sealed(sealed, recipient, steps["aad"]) == steps["plaintext"]


@pytest.mark.parametrize("vector", REJECTED["rejected"], ids=lambda v: v["name"])
def test_rejected_inputs_fail_with_their_reason(vector: dict[str, Any]) -> None:
    known = {IDENTITIES[n].address: IDENTITIES[n].public_bytes for n in REJECTED["known_keys"]}
    with pytest.raises(PacketError) as caught:
        wire.open_packet(
            bytes.fromhex(vector["packet"]),
            keys=known.get,
            recipient=IDENTITIES[REJECTED["opened_by"]],
        )
    assert caught.value.reason is Reason(vector["reason"])


def test_every_decode_reason_has_a_rejected_vector() -> None:
    stateful = {
        Reason.DUPLICATE,
        Reason.REPLAYED,
        Reason.STALE,
        Reason.FUTURE,
        Reason.BAD_NAME,
        Reason.NAME_EXPIRED,
    }
    covered = {Reason(v["reason"]) for v in REJECTED["rejected"]}
    assert set(Reason) - stateful <= covered


@pytest.mark.parametrize("vector", NAMES, ids=lambda v: f"{v['name']}-{v['seq']}")
def test_name_record_vectors(vector: dict[str, Any]) -> None:
    signer = IDENTITIES[vector["signer"]]
    raw = sign_name_record(
        signer, vector["name"], seq=vector["seq"], expires_ms=vector["expires_ms"]
    )
    assert raw.hex() == vector["record"]
    assert cose.decode_sign1(raw).payload.hex() == vector["body"]
    if vector["reason"]:
        with pytest.raises(PacketError) as caught:
            verify_name_record(raw, now_ms=vector["now_ms"])
        assert caught.value.reason is Reason(vector["reason"])
    else:
        assert verify_name_record(raw, now_ms=vector["now_ms"]) == NameRecord(
            vector["name"], signer.address, signer.public_bytes, vector["seq"], vector["expires_ms"]
        )


def test_replay_vector_steps() -> None:
    clock = {"now": 0}
    config = REPLAY["config"]
    guard = replay.ReplayGuard(
        window=config["window"],
        max_age_ms=config["max_age_ms"],
        max_future_ms=config["max_future_ms"],
        max_sources=config["max_sources"],
        clock=lambda: clock["now"],
    )
    for step in REPLAY["steps"]:
        clock["now"] = step["now_ms"]
        source = IDENTITIES[step["source"]].address
        try:
            guard.check_and_accept(source, step["seq"], step["ts_ms"])
        except PacketError as err:
            outcome: str | None = err.reason.value
        else:
            outcome = None
        assert outcome == step["reason"], step


def test_generator_reproduces_the_committed_files() -> None:
    for filename, content in gen.all_vectors().items():
        assert (VECTORS / filename).read_text(encoding="utf-8") == gen.render(content), filename
