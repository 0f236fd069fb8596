"""The TCP + mutual TLS control channel: a worker reachable across machines.

The orchestrator keeps its own two certificate authorities under
``<state_dir>/ca/`` (created on first use, keys ``0600``):

- the *worker CA* signs one short-lived server certificate per worker, issued
  when the worker starts, for the name ``<worker id>.workers.mlbridge``
  (:func:`server_name`);
- the *client CA* signs the orchestrator's own client certificate.

A runtime listens on TCP and requires a client certificate from the client
CA; the orchestrator dials it trusting only the worker CA and checking the
name of *that* worker, so a worker presenting another worker's certificate
(or any other) is refused, and a worker's own certificate, from the worker
CA, is no key to another worker's port. The worker's files (:data:`TLS_FILES`)
reach it the way its socket directory does, through a per-worker mount (a
Kubernetes Secret volume), never in its environment or its labels.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtimes.wire.errors import ConfigError

from .base import ControlChannel

__all__ = ["CERT_FILE", "CLIENT_CA_FILE", "KEY_FILE", "TLS_FILES", "WORKER_PORT", "TcpMtlsChannel", "WorkerCA",
           "WorkerCredentials", "server_name", "write_worker_files"]

log = logging.getLogger("mlbridge.tls")

#: The port a runtime listens on with the tcp-mtls channel.
WORKER_PORT = 7443
#: The files a worker gets (in its mount): its certificate and key, and the CA its clients must come from.
CERT_FILE, KEY_FILE, CLIENT_CA_FILE = "worker.crt", "worker.key", "client-ca.crt"
TLS_FILES = (CERT_FILE, KEY_FILE, CLIENT_CA_FILE)
#: How long a worker's certificate is valid; workers are recycled long before (``recycle.max_age_s``).
WORKER_CERT_S = 7 * 24 * 3600
_CA_YEARS = 10
_DOMAIN = "workers.mlbridge"


def server_name(worker_id: str) -> str:
    """The name a worker's certificate carries and the orchestrator checks: ``<worker id>.workers.mlbridge``."""
    label = "".join(c if c.isalnum() or c == "-" else "-" for c in worker_id.lower()).strip("-")[:63]
    if not label:
        raise ConfigError(f"worker id {worker_id!r} makes no DNS label for its certificate")
    return f"{label}.{_DOMAIN}"


@dataclass(frozen=True)
class WorkerCredentials:
    """One worker's files (name -> PEM bytes) and the name the orchestrator checks on its certificate."""

    files: dict[str, bytes]
    server_name: str
    not_after: dt.datetime


@dataclass(frozen=True)
class _Pair:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


class WorkerCA:
    """The orchestrator's worker CA and client CA, kept in ``directory``.

    Args:
        directory: where the CAs and the orchestrator's client certificate live (created ``0700``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        self.worker_ca = self._ca("worker-ca", "mlbridge worker CA")
        self.client_ca = self._ca("client-ca", "mlbridge client CA")
        self.client = self._client_cert()
        self._credentials: grpc.ChannelCredentials | None = None

    # -- the CAs ----------------------------------------------------------------------------
    def _ca(self, name: str, common_name: str) -> _Pair:
        pair = self._load(name)
        if pair is not None:
            return pair
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=365 * _CA_YEARS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        pair = _Pair(key, cert)
        self._save(name, pair)
        log.info("created the %s in %s", common_name, self.directory)
        return pair

    def _client_cert(self) -> _Pair:
        pair = self._load("orchestrator")
        if pair is not None and pair.cert.not_valid_after_utc > _now() + dt.timedelta(days=30) \
                and pair.cert.issuer == self.client_ca.cert.subject:
            return pair
        pair = _leaf(self.client_ca, "mlbridge orchestrator", None, ExtendedKeyUsageOID.CLIENT_AUTH,
                     dt.timedelta(days=365))
        self._save("orchestrator", pair)
        return pair

    def _load(self, name: str) -> _Pair | None:
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if not cert_path.exists() or not key_path.exists():
            return None
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{cert_path} or {key_path} cannot be read ({exc}); remove both to make new ones "
                              f"(running workers then need replacing)") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not an EC private key")
        return _Pair(key, cert)

    def _save(self, name: str, pair: _Pair) -> None:
        for suffix, data, mode in (("key", pair.key_pem, 0o600), ("crt", pair.cert_pem, 0o644)):
            path = self.directory / f"{name}.{suffix}"
            tmp = path.with_suffix(f".{suffix}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)

    # -- per worker -----------------------------------------------------------------------------
    def issue(self, worker_id: str, *, valid_s: int = WORKER_CERT_S) -> WorkerCredentials:
        """A new key and server certificate for ``worker_id``, with the client CA it must trust."""
        name = server_name(worker_id)
        pair = _leaf(self.worker_ca, name, name, ExtendedKeyUsageOID.SERVER_AUTH, dt.timedelta(seconds=valid_s))
        return WorkerCredentials({CERT_FILE: pair.cert_pem, KEY_FILE: pair.key_pem,
                                  CLIENT_CA_FILE: self.client_ca.cert_pem}, name, pair.cert.not_valid_after_utc)

    def client_credentials(self) -> grpc.ChannelCredentials:
        """What the orchestrator dials workers with: trusting the worker CA alone, presenting its client cert."""
        with self._lock:
            if self._credentials is None:
                self._credentials = grpc.ssl_channel_credentials(
                    root_certificates=self.worker_ca.cert_pem, private_key=self.client.key_pem,
                    certificate_chain=self.client.cert_pem)
            return self._credentials


def _leaf(ca: _Pair, common_name: str, dns: str | None, usage: x509.ObjectIdentifier,
          valid: dt.timedelta) -> _Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + valid)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if dns is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return _Pair(key, builder.sign(ca.key, hashes.SHA256()))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_worker_files(directory: Path, credentials: WorkerCredentials, *, uid: int | None = None,
                       gid: int | None = None) -> Path:
    """Write a worker's files into ``directory/tls`` (its mount), readable by the worker's uid alone."""
    tls = Path(directory) / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    for name, data in credentials.files.items():
        path = tls / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if uid is not None and os.geteuid() == 0:
            os.chown(path, uid, gid if gid is not None else uid)
    if uid is not None and os.geteuid() == 0:
        os.chown(tls, uid, gid if gid is not None else uid)
    return tls


@dataclass(frozen=True)
class TcpMtlsChannel(ControlChannel):
    """A runtime listening on ``host:port`` with mutual TLS, holding the certificate of ``server_name``."""

    host: str
    port: int
    server_name: str
    credentials: grpc.ChannelCredentials

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def present(self) -> bool:
        """Whether the runtime listens yet (a TCP connect, closed at once): dialling earlier would start
        gRPC's reconnect backoff."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def open(self, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        # The certificate must name this worker: another worker's (same CA) fails the handshake.
        return grpc.aio.secure_channel(self.target, self.credentials, options=[
            *options, ("grpc.ssl_target_name_override", self.server_name),
            ("grpc.default_authority", self.server_name)])
