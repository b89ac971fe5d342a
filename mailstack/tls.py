"""TLS material: self-signed certificates, and server contexts for both stacks.

aiosmtpd uses the stdlib ``ssl`` module; Twisted uses pyOpenSSL.  Both are
configured here from the same ``[tls]`` section: TLS 1.2 minimum and the
Mozilla intermediate cipher list (forward-secret AEAD only).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import TlsConfig
from .files import write_atomic

log = logging.getLogger("mailstack.tls")


class TlsError(Exception):
    pass


def make_self_signed(hostname: str, cert_path: Path, key_path: Path, days: int = 825) -> None:
    """A self-signed RSA 2048 certificate for ``hostname`` (SAN), key mode 0600.

    RSA rather than ECDSA: some Outlook and older phone clients still fail
    on ECDSA-only servers.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    try:
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(hostname))]
    except ValueError:
        sans = [x509.DNSName(hostname)]
    if hostname == "localhost":  # the dev home: clients may type the address
        sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(key_path, key_pem, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """A stdlib server context (aiosmtpd, autoconfig)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    try:
        ctx.set_ciphers(cfg.ciphers)
    except ssl.SSLError:
        raise TlsError(f"tls.ciphers: OpenSSL accepts none of {cfg.ciphers!r}") from None
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cfg.certificate, cfg.key)
    except FileNotFoundError as e:
        raise TlsError(f"cannot read TLS file {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"cannot load certificate {cfg.certificate} with key {cfg.key}: {e}") from None
    return ctx


def reload_chain(context: ssl.SSLContext, cfg: TlsConfig) -> None:
    """SIGHUP in the asyncio daemons: new connections get the certificate on
    disk now, open ones keep theirs; one that does not load leaves the old."""
    try:
        context.load_cert_chain(cfg.certificate, cfg.key)
    except (OSError, ValueError, ssl.SSLError) as e:
        log.error("reload: cannot load certificate %s: %s; keeping the old one", cfg.certificate, e)
        return
    log.info("reload: certificate %s loaded", cfg.certificate)


def describe_certificate(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = ", ".join(str(n.value) for n in names)
    except x509.ExtensionNotFound:
        sans = "-"
    fp = cert.fingerprint(hashes.SHA256()).hex(":")
    return f"subject {cert.subject.rfc4514_string()}, names {sans}, until {cert.not_valid_after_utc:%Y-%m-%d}, SHA-256 {fp}"


class OpenSSLServerContext:
    """pyOpenSSL context for Twisted (IMAP): same policy as ``server_context``.

    Twisted's own CertificateOptions still allows RSA key exchange without
    forward secrecy; we build the context ourselves.  ``getContext`` is the
    (old, still supported) interface Twisted's TLS endpoints and startTLS take.
    """

    def __init__(self, cfg: TlsConfig):
        from OpenSSL import SSL

        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION if cfg.min_version == "1.3" else SSL.TLS1_2_VERSION)
        try:
            ctx.set_cipher_list(cfg.ciphers.encode())
        except SSL.Error:
            raise TlsError(f"tls.ciphers: OpenSSL accepts none of {cfg.ciphers!r}") from None
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
        try:
            ctx.use_certificate_chain_file(str(cfg.certificate))
            ctx.use_privatekey_file(str(cfg.key))
            ctx.check_privatekey()
        except SSL.Error as e:
            raise TlsError(f"cannot load certificate {cfg.certificate} with key {cfg.key}: {e}") from None
        except OSError as e:
            raise TlsError(f"cannot read TLS file: {e}") from None
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        ctx.set_session_id(b"mailstack")
        self._ctx = ctx

    def getContext(self):  # noqa: N802 (Twisted's name)
        return self._ctx
