"""Real brokers for the gateway's tests: Mosquitto on a free loopback port, optionally TLS."""

from __future__ import annotations

from dataclasses import dataclass, field
import datetime
import ipaddress
import os
from pathlib import Path
import shutil
import socket
import subprocess
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from i4t_gateway.dynsec import find_dynsec_plugin, write_initial_state

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` different free ports: bound all at once, since ports taken one by one and
    released in between can repeat (two nodes of one cluster then fight over one)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(process: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def mosquitto_binary() -> str:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("mosquitto is not installed: run ./scripts/setup")


@dataclass(frozen=True)
class TlsCerts:
    """A throwaway CA, a server certificate for 127.0.0.1 / localhost and a client certificate,
    both signed by the CA."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path


def make_tls_certs(directory: Path) -> TlsCerts:
    """Write a fresh CA, server and client certificate (EC P-256, valid one day)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i4t test CA")])
    ca_cert = (
        _certificate_builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    certs = TlsCerts(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
    )
    certs.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    _write_leaf("127.0.0.1", server_names, ca_key, ca_name, now, certs.cert_file, certs.key_file)
    _write_leaf(
        "i4t test client", None, ca_key, ca_name, now, certs.client_cert_file, certs.client_key_file
    )
    return certs


def _write_leaf(
    common_name: str,
    alt_names: list[x509.GeneralName] | None,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    now: datetime.datetime,
    cert_file: Path,
    key_file: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _certificate_builder(name, ca_name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Python 3.13 verifies strictly (VERIFY_X509_STRICT): the key identifiers are required.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if alt_names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert_file.write_bytes(
        builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    )
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate_builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Mosquitto:
    """A Mosquitto process with a config written for the test; restartable on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    # Mosquitto drops messages silently past this queue length (BRIEF section 4): set on purpose.
    max_queued_messages: int = 100_000
    process: subprocess.Popen[bytes] | None = None
    # With certificates, the only listener speaks TLS (clients must trust tls.ca_file).
    tls: TlsCerts | None = None
    # With TLS: refuse clients without a certificate signed by tls.ca_file.
    require_client_cert: bool = False
    # With user names and passwords, anonymous clients are refused.
    passwords: dict[str, str] | None = None
    # With an admin's (user name, password): the dynamic-security plugin decides who may connect
    # and what they may do (a router's broker, docs/ROUTER.md "Broker ACLs"); anonymous clients
    # are refused. Its state file survives restarts, as on a real router.
    dynsec_admin: tuple[str, str] | None = None
    dynsec_state: Path | None = None

    @property
    def url(self) -> str:
        scheme = "mqtt" if self.tls is None else "mqtts"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _tls_config(self) -> str:
        if self.tls is None:
            return ""
        # Run as root (as in CI containers), Mosquitto would switch to its own user, which
        # cannot read a pytest tmp_path; stay as whoever started it.
        user = "user root\n" if os.geteuid() == 0 else ""
        return (
            f"cafile {self.tls.ca_file}\n"
            f"certfile {self.tls.cert_file}\n"
            f"keyfile {self.tls.key_file}\n"
            f"require_certificate {'true' if self.require_client_cert else 'false'}\n"
            f"{user}"
        )

    def _auth_config(self) -> str:
        if self.dynsec_admin is not None:
            return self._dynsec_config()
        if self.passwords is None:
            return "allow_anonymous true\n"
        password_file = self.workdir / f"mosquitto-{self.port}.passwd"
        password_file.unlink(missing_ok=True)
        password_file.touch(mode=0o600)
        for user, password in self.passwords.items():
            subprocess.run(
                ["mosquitto_passwd", "-b", str(password_file), user, password],
                check=True,
                capture_output=True,
            )
        return f"allow_anonymous false\npassword_file {password_file}\n"

    def _dynsec_config(self) -> str:
        assert self.dynsec_admin is not None
        if self.passwords is not None:
            raise ValueError("passwords and the dynamic-security plugin exclude each other")
        if self.dynsec_state is None:
            self.dynsec_state = self.workdir / f"dynamic-security-{self.port}.json"
        write_initial_state(self.dynsec_state, *self.dynsec_admin)
        # As root, Mosquitto would become its own user, which cannot read or save the plugin's
        # state in a pytest tmp_path (with TLS, _tls_config says so already).
        user = "user root\n" if os.geteuid() == 0 and self.tls is None else ""
        return (
            f"{user}"
            "allow_anonymous false\n"
            f"plugin {find_dynsec_plugin()}\n"
            f"plugin_opt_config_file {self.dynsec_state}\n"
        )

    def _write_config(self) -> Path:
        config = self.workdir / f"mosquitto-{self.port}.conf"
        config.write_text(
            # Global, so that the plugin and the auth settings apply to the one listener.
            "per_listener_settings false\n"
            f"listener {self.port} 127.0.0.1\n"
            f"{self._tls_config()}"
            f"{self._auth_config()}"
            "persistence false\n"
            f"max_queued_messages {self.max_queued_messages}\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        return config

    def start(self) -> None:
        """Start on self.port; if another process took that port meanwhile, move to a free one.

        free_port() cannot reserve a port, and test runs of several checkouts share loopback.
        """
        for _ in range(5):
            if self._start_once():
                return
            self.port = free_port()
        raise RuntimeError(f"mosquitto would not start; see {self.workdir}")

    def _start_once(self) -> bool:
        config = self._write_config()
        log = (self.workdir / f"mosquitto-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(config)],
            stdout=log,
            stderr=log,
            env={**os.environ},
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            return False
        # Something answered; make sure it is our process and not a neighbour on that port.
        time.sleep(0.05)
        if self.process.poll() is not None:
            self.process = None
            return False
        return True

    def stop(self) -> None:
        stop_process(self.process, timeout=5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
