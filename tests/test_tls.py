"""Self-signed certificates and the server TLS context, over real sockets."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from mailstack.config import TlsConfig
from mailstack.tls import TlsError, make_self_signed, server_context


@pytest.fixture
def material(tmp_path: Path) -> TlsConfig:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    make_self_signed("mail.ac-normandie.test", cert, key)
    return TlsConfig(certificate=cert, key=key)


def test_certificate_names_the_host_and_key_is_private(material: TlsConfig) -> None:
    cert = x509.load_pem_x509_certificate(material.certificate.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.ac-normandie.test"]
    assert material.key.stat().st_mode & 0o777 == 0o600


def test_key_mode_is_fixed_when_overwriting(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    key.write_text("old")
    key.chmod(0o644)
    make_self_signed("localhost", cert, key)
    assert key.stat().st_mode & 0o777 == 0o600


def _serve_once(ctx: ssl.SSLContext) -> tuple[int, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello " + tls.version().encode())
        except (ssl.SSLError, OSError):
            pass
        finally:
            srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def _client(port: int, cafile: Path, version: ssl.TLSVersion | None = None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if version is not None:
        # Let the client offer old versions, so a refusal comes from the server.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="mail.ac-normandie.test") as tls:
            return tls.recv(100)


def test_handshake_verifies_against_the_certificate(material: TlsConfig) -> None:
    port, t = _serve_once(server_context(material))
    assert _client(port, material.certificate).startswith(b"hello TLSv1.")
    t.join(5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_refused(material: TlsConfig) -> None:
    from dataclasses import replace

    # The client can speak TLS 1.1 to a server that allows it ...
    lax = server_context(material)
    lax.minimum_version = ssl.TLSVersion.TLSv1_1
    lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    port, t = _serve_once(lax)
    try:
        assert _client(port, material.certificate, ssl.TLSVersion.TLSv1_1) == b"hello TLSv1.1"
    except ssl.SSLError:
        pytest.fail("this OpenSSL cannot speak TLS 1.1 at all: the test below would prove nothing")
    t.join(5)
    # ... and ours refuses it.
    assert server_context(replace(material)).minimum_version == ssl.TLSVersion.TLSv1_2
    port, t = _serve_once(server_context(material))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _client(port, material.certificate, ssl.TLSVersion.TLSv1_1)
    t.join(5)


def test_tls_1_2_accepted_with_forward_secrecy(material: TlsConfig) -> None:
    port, t = _serve_once(server_context(material))
    assert _client(port, material.certificate, ssl.TLSVersion.TLSv1_2) == b"hello TLSv1.2"
    t.join(5)
    names = {c["name"] for c in server_context(material).get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all(n.startswith(("ECDHE-", "DHE-")) for n in names)


def test_min_version_1_3(material: TlsConfig) -> None:
    from dataclasses import replace

    port, t = _serve_once(server_context(replace(material, min_version="1.3")))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _client(port, material.certificate, ssl.TLSVersion.TLSv1_2)
    t.join(5)


def test_missing_files_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="cannot read TLS file"):
        server_context(TlsConfig(certificate=tmp_path / "no.pem", key=tmp_path / "no.key"))
