"""The public API over TLS and mutual TLS, with certificates made for the test by openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestrator import MLBridge, Unauthenticated, Unavailable
from tests.harness import ServerThread, make_config


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def make_cert(d: Path, name: str, ca: str, san: str | None = None) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_cert(d, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    make_cert(d, "client", "ca")
    make_cert(d, "rogue", "rogue-ca")
    return d


def test_tls_without_client_certificates(pki: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tls={"cert": str(pki / "server.crt"), "key": str(pki / "server.key")},
                      bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    with ServerThread(cfg) as srv:
        with MLBridge.connect(srv.target, tls_ca=str(pki / "ca.crt")) as mb:
            assert mb.call("mock", "mock:echo", {"tls": True}) == {"tls": True}
        with MLBridge.connect(srv.target, timeout=3) as plain, pytest.raises(Unavailable):
            plain.call("mock", "mock:echo", {})
        with MLBridge.connect(srv.target, tls_ca=str(pki / "rogue-ca.crt"), timeout=3) as wrong_ca, \
                pytest.raises(Unavailable):
            wrong_ca.call("mock", "mock:echo", {})


def test_mutual_tls_plus_bearer_tokens(pki: Path, tmp_path: Path) -> None:
    import hashlib

    policy = tmp_path / "policy.yaml"
    digest = hashlib.sha256(b"tok").hexdigest()
    policy.write_text(f"""version: 1
defaults:
  bridges: [mock]
  rules: [{{name: all-mock, effect: allow, bridges: [mock]}}]
tenants:
  acme: {{tokens: ["sha256:{digest}"]}}
""")
    policy.chmod(0o600)
    cfg = make_config(tmp_path, policy=str(policy),
                      tls={"cert": str(pki / "server.crt"), "key": str(pki / "server.key"),
                           "client_ca": str(pki / "ca.crt")},
                      bridges={"mock": {"runtime": "mock", "pool_size": 1}})
    ca = str(pki / "ca.crt")
    with ServerThread(cfg) as srv:
        with MLBridge.connect(srv.target, "tok", tls_ca=ca, tls_cert=str(pki / "client.crt"),
                              tls_key=str(pki / "client.key")) as mb:
            assert mb.call("mock", "mock:whoami")["tenant"] == "acme"
        # No client certificate, or one from another CA: refused in the handshake.
        for cert in (None, "rogue"):
            kw = {"tls_cert": str(pki / f"{cert}.crt"), "tls_key": str(pki / f"{cert}.key")} if cert else {}
            with MLBridge.connect(srv.target, "tok", tls_ca=ca, timeout=3, **kw) as mb, pytest.raises(Unavailable):
                mb.call("mock", "mock:echo", {})
        # A good certificate does not replace the token.
        with MLBridge.connect(srv.target, None, tls_ca=ca, tls_cert=str(pki / "client.crt"),
                              tls_key=str(pki / "client.key")) as mb, pytest.raises(Unauthenticated):
            mb.call("mock", "mock:echo", {})
