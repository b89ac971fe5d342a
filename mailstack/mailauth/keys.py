"""DKIM keys: KEYS/DOMAIN/SELECTOR.pem, made here, published through DNS.

Every key in a domain's directory signs (RFC 8463 recommends an RSA and an
Ed25519 signature side by side).  Rotation: make a key with a new selector,
publish its record, then remove the old file once the new record resolves.
Keys are PKCS#8 PEM whatever the algorithm, so openssl can read them all.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..files import write_atomic

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class DkimKeyError(Exception):
    """A DKIM key problem, phrased as one line for the operator."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: str  # "rsa" | "ed25519"
    path: Path

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def _private(self) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
        if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise DkimKeyError(f"{self.path}: not an RSA or Ed25519 key")
        return key

    def signing_key(self) -> bytes:
        """The private key as dkimpy takes it: PEM for RSA, the base64 seed for Ed25519."""
        key = self._private()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
            return base64.b64encode(raw)
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())

    def public_value(self) -> str:
        """The p= value: SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519 (RFC 8463)."""
        pub = self._private().public_key()
        if isinstance(pub, ed25519.Ed25519PublicKey):
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(raw).decode()

    def txt_record(self) -> str:
        """The TXT record text to publish at ``dns_name`` (unquoted, unsplit)."""
        return f"v=DKIM1; k={self.algorithm}; p={self.public_value()}"


def _algorithm_of(path: Path) -> str | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa"
    return None


def domain_keys(keys_dir: Path, domain: str) -> list[DkimKey]:
    """The usable keys of ``domain``, by selector; unreadable files are skipped."""
    d = keys_dir / domain.lower()
    out = []
    if d.is_dir():
        for p in sorted(d.glob("*.pem")):
            alg = _algorithm_of(p)
            if alg and _SELECTOR.match(p.stem):
                out.append(DkimKey(domain.lower(), p.stem, alg, p))
    return out


def default_selector(algorithm: str, now: datetime | None = None) -> str:
    """``rsa202611`` / ``ed202611``: says what and when, so a rotation gets a new name."""
    now = now or datetime.now(timezone.utc)
    return f"{'ed' if algorithm == 'ed25519' else 'rsa'}{now:%Y%m}"


def keygen(keys_dir: Path, domain: str, selector: str | None = None, algorithm: str = "rsa") -> DkimKey:
    if algorithm not in ALGORITHMS:
        raise DkimKeyError(f"unknown algorithm {algorithm!r} (expected rsa or ed25519)")
    selector = (selector or default_selector(algorithm)).lower()
    if not _SELECTOR.match(selector):
        raise DkimKeyError(f"invalid selector {selector!r} (letters, digits and hyphens)")
    d = keys_dir / domain.lower()
    path = d / f"{selector}.pem"
    if path.exists():
        raise DkimKeyError(f"{path} exists: choose another selector (--selector)")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519" else rsa.generate_private_key(65537, RSA_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomic(path, pem, 0o600)
    if os.geteuid() == 0:  # made by root for the daemons: give it to the owner of the keys directory
        st = keys_dir.stat()
        if st.st_uid != 0:
            for p in (d, path):
                os.chown(p, st.st_uid, st.st_gid)
    return DkimKey(domain.lower(), selector, algorithm, path)


def txt_chunks(text: str) -> str:
    """A TXT value as zone-file text: quoted strings of at most 255 bytes."""
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))
