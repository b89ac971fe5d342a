"""``mailstack check [--dns]``: is this installation ready to run?

An operator's pre-flight and health check.  Each check is a function that
looks at the configuration, the files, the database and the listening ports
and returns :class:`Result` lines (ok, warn, FAIL); nothing is changed or
created.  The printer aligns them and ends with a count; the exit status is
1 when any line is a FAIL, 0 when there are only warnings.

A configuration that does not load is itself a FAIL line (the loader's own
one-line message: file, key, problem), not the usual one-line error: the
operator asked for a report.  The other checks need the configuration, so
they are not run then.
"""

from __future__ import annotations

import datetime
import errno
import grp
import ipaddress
import os
import pwd
import re
import socket
import ssl
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .config import Config, ConfigError, load

if TYPE_CHECKING:
    import argparse

    from cryptography import x509

OK, WARN, FAIL = "ok", "warn", "FAIL"
EXPIRY_WARN_DAYS = 14
NET_TIMEOUT = 3.0  # seconds for one connection, TLS handshake or greeting
DB_CONNECT_TIMEOUT = 5  # seconds (libpq connect_timeout)
GREETING_MAX = 512  # bytes read from whatever holds a port: it may be anything
DAEMON_USER = "mailstack"  # User= of the systemd units


@dataclass(frozen=True)
class Result:
    check: str  # config, certificate, permissions, database, ports, filters, dns
    status: str  # ok | warn | FAIL
    detail: str  # one line


# --- the daemons' user -----------------------------------------------------------------


@dataclass(frozen=True)
class DaemonUser:
    name: str
    uid: int
    gids: frozenset[int]
    why: str  # how it was chosen, shown to the operator


def daemon_user(name: str | None = None) -> DaemonUser:
    """The user the files must belong to: ``name`` if given; else ``mailstack``
    (the units' User=) when run as root and that user exists; else the current
    user (a dev home, or daemons started by hand).  KeyError: no such user."""
    if name:
        pw, why = pwd.getpwnam(name), "given with --user"
    elif os.geteuid() == 0 and _user_exists(DAEMON_USER):
        pw, why = pwd.getpwnam(DAEMON_USER), "the systemd units' user"
    else:
        pw = pwd.getpwuid(os.geteuid())
        why = "the current user" + (f"; there is no {DAEMON_USER!r} user" if os.geteuid() == 0 else "")
    gids = frozenset(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return DaemonUser(pw.pw_name, pw.pw_uid, gids, why)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _owner(st: os.stat_result) -> str:
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return str(st.st_uid)


def _group(st: os.stat_result) -> str:
    try:
        return grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        return str(st.st_gid)


def _can_read(st: os.stat_result, user: DaemonUser) -> bool:
    if user.uid == 0:
        return True
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid in user.gids:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


# --- config ------------------------------------------------------------------------------


def check_config(path: Path) -> tuple[Config | None, list[Result]]:
    """Load the file; ConfigError already names the file, the key and the problem."""
    try:
        cfg = load(path)
    except ConfigError as e:
        return None, [Result("config", FAIL, str(e))]
    st = path.stat()
    if st.st_mode & stat.S_IWOTH:
        return cfg, [Result("config", FAIL, f"{path} is world-writable (mode {_mode(st)}): anyone may reconfigure the server (chmod o-w {path})")]
    return cfg, [Result("config", OK, f"{path} loads")]


# --- certificate -----------------------------------------------------------------------


def hostname_matches(pattern: str, host: str) -> bool:
    """One SAN DNS name against a host name, RFC 6125 6.4.3 as clients apply it:
    case-insensitive; a wildcard only as the whole left-most label, standing for
    exactly one label, and never directly under a top-level domain.

    Hand-written: cryptography matches names only inside a full path validation
    (useless for a self-signed certificate) and ssl.match_hostname is gone."""
    p, h = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if "*" not in p:
        return p == h
    if not p.startswith("*.") or "*" in p[2:] or "." not in p[2:]:
        return False
    first, dot, rest = h.partition(".")
    return bool(first and dot) and rest == p[2:]


def certificate_names(cert: x509.Certificate) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san if isinstance(n, (x509.DNSName, x509.IPAddress))]


def covers(cert: x509.Certificate, host: str) -> bool:
    """Whether the subjectAltName covers ``host`` (the CN alone counts for no current client)."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return any(hostname_matches(n, host) for n in san.get_values_for_type(x509.DNSName))
    return ip in san.get_values_for_type(x509.IPAddress)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _validity(cert: x509.Certificate, now: datetime.datetime) -> Result:
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    who = _subject(cert)
    if now < before:
        return Result("certificate", FAIL, f"{who}: not valid before {before:%Y-%m-%d %H:%M} UTC (check the clock, or the certificate)")
    if now >= after:
        return Result("certificate", FAIL, f"{who}: expired on {after:%Y-%m-%d} ({(now - after).days} days ago): renew it")
    days = (after - now).days
    status = WARN if days < EXPIRY_WARN_DAYS else OK
    return Result("certificate", status, f"{who}, expires in {days} days ({after:%Y-%m-%d})" + (": renew it" if status == WARN else ""))


def _system_store() -> tuple[list[x509.Certificate], str]:
    """The trust anchors OpenSSL would use (SSL_CERT_FILE/SSL_CERT_DIR honoured), and where from.

    Each PEM block is parsed on its own: one certificate cryptography refuses
    must not hide the others."""
    from cryptography import x509
    from cryptography.utils import CryptographyDeprecationWarning

    paths = ssl.get_default_verify_paths()
    files: list[Path] = []
    if paths.cafile:
        files, where = [Path(paths.cafile)], paths.cafile
    elif paths.capath and Path(paths.capath).is_dir():
        files, where = sorted(p for p in Path(paths.capath).iterdir() if p.is_file()), paths.capath
    else:
        return [], "no system trust store"
    out = []
    with warnings.catch_warnings():  # old roots with negative serials: still anchors, not our problem
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for f in files:
            try:
                text = f.read_bytes()
            except OSError:
                continue
            for block in re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S):
                try:
                    out.append(x509.load_pem_x509_certificate(block))
                except ValueError:
                    continue
    return out, where


def _trust(chain: list[x509.Certificate]) -> Result:
    """Path validation against the system store with cryptography's verifier
    (hostname coverage is its own line: the verifier is asked for a name the
    certificate holds)."""
    from cryptography import x509
    from cryptography.x509 import verification

    anchors, where = _system_store()
    if not anchors:
        return Result("certificate", WARN, f"chain trust not verified: {where} (install ca-certificates)")
    leaf = chain[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Result("certificate", FAIL, "chain trust not verified: the certificate has no subjectAltName")
    dns_names, ips = san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)
    subject: verification.Subject
    if dns_names:  # a name a wildcard covers stands for the wildcard
        subject = x509.DNSName(dns_names[0].replace("*.", "x.", 1))
    elif ips:
        subject = x509.IPAddress(ips[0])
    else:
        return Result("certificate", FAIL, "chain trust not verified: the certificate names no host")
    verifier = verification.PolicyBuilder().store(verification.Store(anchors)).build_server_verifier(subject)
    try:
        built = verifier.verify(leaf, chain[1:])
    except verification.VerificationError as e:
        why = _one_line(str(e))
        if "candidates exhausted" in why:  # the verifier's words for "no path to a root"
            why = "no path to a trusted root (an intermediate missing from the file, or a private authority)"
        return Result("certificate", FAIL, f"does not verify against the system trust store ({where}): {why}")
    return Result("certificate", OK, f"chain verifies against the system trust store (root {_subject(built[-1])})")


def check_certificate(cfg: Config, user: DaemonUser, now: datetime.datetime | None = None) -> list[Result]:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    tls, host = cfg.tls, cfg.hostname
    now = now or datetime.datetime.now(datetime.timezone.utc)
    out: list[Result] = []

    def add(status: str, detail: str) -> None:
        out.append(Result("certificate", status, detail))

    try:
        chain = x509.load_pem_x509_certificates(tls.certificate.read_bytes())
    except OSError as e:
        return [Result("certificate", FAIL, f"cannot read {tls.certificate}: {e.strerror}")]
    except ValueError:
        return [Result("certificate", FAIL, f"{tls.certificate} holds no PEM certificate (or a damaged one)")]
    leaf = chain[0]
    out.append(_validity(leaf, now))

    # The key: readable, the certificate's, and private.
    try:
        key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
    except OSError as e:
        add(FAIL, f"cannot read the key {tls.key}: {e.strerror}")
    except TypeError:
        add(FAIL, f"the key {tls.key} is encrypted: the daemons cannot use it (store it without a passphrase, mode 0600)")
    except (ValueError, UnsupportedAlgorithm) as e:
        add(FAIL, f"{tls.key} is not a PEM private key: {_one_line(str(e))}")
    else:
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            add(FAIL, f"the key {tls.key} does not match the certificate {tls.certificate}")
        else:
            add(OK, f"the key {tls.key} matches the certificate")
    try:
        st = tls.key.stat()
    except OSError:
        pass  # already said
    else:
        # Group access is how the daemons read a root-owned key (root:mailstack 0640,
        # the production layout of the README): allowed for a group of theirs only.
        if st.st_mode & 0o007:
            add(FAIL, f"the key {tls.key} has mode {_mode(st)}: others can read it (chmod 600 {tls.key})")
        elif st.st_mode & 0o070 and st.st_gid not in user.gids:
            add(FAIL, f"the key {tls.key} has mode {_mode(st)}: group {_group(st)} can read it, and the daemons "
                      f"(user {user.name}) are not in it (chmod 600 {tls.key}, or chgrp)")
        elif not _can_read(st, user):
            add(FAIL, f"the key {tls.key} belongs to {_owner(st)}, mode {_mode(st)}: the daemons (user {user.name}) cannot read it (chown {user.name} {tls.key})")

    # The chain: server certificate first, then each issuer.
    for i, (cert, issuer) in enumerate(zip(chain, chain[1:]), start=1):
        if not _issued_by(cert, issuer):
            add(FAIL, f"chain out of order in {tls.certificate}: certificate {i} ({_subject(cert)}) is not signed by "
                      f"certificate {i + 1} ({_subject(issuer)}); put the server certificate first, then each issuer")
            break
    else:
        if len(chain) > 1:
            add(OK, f"chain of {len(chain)} certificates in order")

    if leaf.issuer == leaf.subject and _issued_by(leaf, leaf):
        add(WARN, "self-signed: clients will complain (use one from a certificate authority for production)")
    else:
        out.append(_trust(chain))

    names = certificate_names(leaf)
    if covers(leaf, host):
        add(OK, f"covers server hostname {host}")
    elif not names:
        add(FAIL, f"has no subjectAltName: clients refuse it for {host} (the CN alone is no longer accepted)")
    else:
        add(FAIL, f"does not cover server hostname {host} (it names {', '.join(names)})")
    return out


# --- permissions -------------------------------------------------------------------------


def _sqlite_file(url: str) -> Path | None:
    m = re.match(r"^sqlite(\+[a-z0-9_]+)?:///(.+)$", url)
    return Path(m.group(2)) if m and m.group(2) != ":memory:" else None


def check_permissions(cfg: Config, user: DaemonUser) -> list[Result]:
    out = [Result("permissions", OK, f"files must belong to {user.name} ({user.why})")]

    def owned_private_dir(label: str, path: Path) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            out.append(Result("permissions", FAIL, f"{label} {path} does not exist (mailstack init creates it)"))
            return
        if not stat.S_ISDIR(st.st_mode):
            out.append(Result("permissions", FAIL, f"{label} {path} is not a directory"))
        elif st.st_uid != user.uid:
            out.append(Result("permissions", FAIL, f"{label} {path} belongs to {_owner(st)}; the daemons run as {user.name} (chown -R {user.name} {path})"))
        elif st.st_mode & 0o022:
            out.append(Result("permissions", FAIL, f"{label} {path} has mode {_mode(st)}: group or others can write (chmod go-w {path})"))
        else:
            out.append(Result("permissions", OK, f"{label} {path}: {_owner(st)}, mode {_mode(st)}"))

    owned_private_dir("mail root", cfg.storage.mail_root)
    owned_private_dir("spool", cfg.storage.spool)
    if cfg.dkim.keys.exists():
        owned_private_dir("DKIM key directory", cfg.dkim.keys)
        for pem in sorted(cfg.dkim.keys.glob("*/*.pem")):
            st = pem.stat()
            if st.st_mode & stat.S_IROTH:
                out.append(Result("permissions", FAIL, f"DKIM key {pem} has mode {_mode(st)}: anyone can read it (chmod o-r {pem})"))
            elif not _can_read(st, user):
                out.append(Result("permissions", FAIL, f"DKIM key {pem} belongs to {_owner(st)}, mode {_mode(st)}: the daemons (user {user.name}) cannot read it"))
            else:
                out.append(Result("permissions", OK, f"DKIM key {pem}: {_owner(st)}, mode {_mode(st)}"))

    secret = cfg.auth.secret_file
    try:
        st = secret.stat()
    except FileNotFoundError:
        out.append(Result("permissions", FAIL, f"secret file {secret} does not exist (mailstack init creates it)"))
    else:
        if st.st_uid != user.uid:
            out.append(Result("permissions", FAIL, f"secret file {secret} belongs to {_owner(st)}; the daemons run as {user.name} (chown {user.name} {secret})"))
        elif st.st_mode & 0o077:
            out.append(Result("permissions", FAIL, f"secret file {secret} has mode {_mode(st)}; expected 0600 (chmod 600 {secret})"))
        else:
            out.append(Result("permissions", OK, f"secret file {secret}: {_owner(st)}, mode {_mode(st)}"))

    db_file = _sqlite_file(cfg.database.url)
    if db_file is not None and db_file.exists():  # a missing file is the database check's
        st = db_file.stat()
        if st.st_uid != user.uid:
            out.append(Result("permissions", FAIL, f"database {db_file} belongs to {_owner(st)}; the daemons run as {user.name} (chown {user.name} {db_file})"))
        elif st.st_mode & 0o077:
            # A warning: its directory (0750 in the README's layout) may already keep others out.
            out.append(Result("permissions", WARN, f"database {db_file} has mode {_mode(st)}: it holds password hashes (chmod 600 {db_file})"))
        else:
            out.append(Result("permissions", OK, f"database {db_file}: {_owner(st)}, mode {_mode(st)}"))
    return out


# --- database ----------------------------------------------------------------------------


def check_database(cfg: Config) -> list[Result]:
    """Reachable, and at the schema this mailstack needs (db.check_current, as the daemons do)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from .accounts import db

    url = make_url(cfg.database.url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        path = _sqlite_file(cfg.database.url)
        if path is not None and not path.exists():  # connecting would create an empty one
            return [Result("database", FAIL, f"{path} does not exist (mailstack init, or mailstack db upgrade, creates it)")]
    elif "connect_timeout" not in url.query:
        url = url.update_query_dict({"connect_timeout": str(DB_CONNECT_TIMEOUT)})
    try:
        engine = db.make_engine(url.render_as_string(hide_password=False))
    except ImportError as e:
        return [Result("database", FAIL, f"{shown}: driver not installed ({e.name or e}): pip install 'mailstack[postgresql]'")]
    try:
        db.check_current(engine)
    except db.SchemaError as e:
        return [Result("database", FAIL, f"{shown}: {e}")]
    except SQLAlchemyError as e:
        orig = getattr(e, "orig", None) or e
        return [Result("database", FAIL, f"cannot connect to {shown}: {_one_line(str(orig))}")]
    finally:
        engine.dispose()
    return [Result("database", OK, f"{shown}: schema at {db.head_revision()} (current)")]


# --- ports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    service: str  # imaps, imap, submissions, submission, mx, https, http, metrics
    protocol: str  # imap | smtp | managesieve | http | metrics: what greets, and how we ask
    address: str
    port: int
    implicit_tls: bool
    proxy: bool = False  # speaks only to trusted balancers, after a PROXY header

    def label(self) -> str:
        a = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.service} {a}:{self.port}"


def endpoints(cfg: Config) -> list[Endpoint]:
    """Every listener of the enabled daemons, and their metrics endpoints."""
    out = []
    if cfg.imap.enabled:
        for lst in cfg.imap.listeners:
            implicit = lst.tls == "implicit"
            out.append(Endpoint("imaps" if implicit else "imap", "imap", lst.address, lst.port, implicit, lst.proxy))
    if cfg.smtp.enabled:
        for s in cfg.smtp.listeners:
            implicit = s.tls == "implicit"
            service = "mx" if s.kind == "mx" else ("submissions" if implicit else "submission")
            out.append(Endpoint(service, "smtp", s.address, s.port, implicit, s.proxy))
    if cfg.managesieve.enabled:
        for m in cfg.managesieve.listeners:
            implicit = m.tls == "implicit"
            out.append(Endpoint("managesieve", "managesieve", m.address, m.port, implicit, m.proxy))
    if cfg.http.enabled:
        for h in cfg.http.listeners:
            implicit = h.tls == "implicit"
            out.append(Endpoint("https" if implicit else "http", "http", h.address, h.port, implicit))
    if cfg.metrics.enabled:
        ports = {"imap": cfg.metrics.imap_port, "smtp": cfg.metrics.smtp_port, "managesieve": cfg.metrics.managesieve_port}
        for daemon, port in ports.items():
            if port and getattr(cfg, daemon).enabled:
                out.append(Endpoint(f"{daemon} metrics", "metrics", cfg.metrics.address, port, False))
    return out


# What we send to a port that is in use before reading its answer.
_ASK = {
    "http": "GET /.well-known/autoconfig/mail/config-v1.1.xml HTTP/1.0\r\nHost: {host}\r\n\r\n",
    "metrics": "GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n",
}
_ANSWER_MAX = {"http": 65536, "metrics": 65536, "managesieve": 4096}  # whole (small) documents, or
# ManageSieve's greeting (capability lines, then OK); other greetings: GREETING_MAX
_MANAGESIEVE_END = re.compile(rb'(?:^|\n)(?:OK|NO|BYE)\b[^\n]*\n')


def classify_greeting(protocol: str, data: bytes) -> bool:
    """Whether the first bytes a port sent are a mailstack daemon's answer."""
    first = data.split(b"\n", 1)[0]
    if protocol == "imap":
        return first.startswith(b"* OK") and b"mailstack" in first
    if protocol == "smtp":
        return first.startswith(b"220") and b"mailstack" in first
    if protocol == "managesieve":  # RFC 5804: capability lines, the last one OK
        return b'"IMPLEMENTATION" "mailstack"' in data and re.search(rb'(?:^|\n)OK\b', data) is not None
    if not data.startswith(b"HTTP/"):
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    if protocol == "metrics":
        return b"mailstack_" in body
    return b"\nserver: mailstack" in head.lower() or b"<clientConfig" in body


def _printable(data: bytes, n: int = 60) -> str:
    text = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= n else text[: n - 3] + "..."


def _greeting_done(protocol: str, data: bytes) -> bool:
    if protocol == "managesieve":  # up to the OK; or one line, if it is not a capability
        return _MANAGESIEVE_END.search(data) is not None or (b"\n" in data and not data.startswith(b'"'))
    return b"\n" in data


def _read_greeting(sock: socket.socket, protocol: str, host: str) -> bytes:
    """A bounded read: the first line of a greeting, or an HTTP answer until the peer closes."""
    ask = _ASK.get(protocol)
    if ask:
        sock.sendall(ask.format(host=host).encode())
    limit = _ANSWER_MAX.get(protocol, GREETING_MAX)
    data = b""
    while len(data) < limit and (ask or not _greeting_done(protocol, data)):
        chunk = sock.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


def probe(ep: Endpoint, cfg: Config, our_cert: bytes | None, timeout: float = NET_TIMEOUT) -> Result:
    """Free to bind, or held by a mailstack daemon, or by something else."""
    family = socket.AF_INET6 if ":" in ep.address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As the daemons bind (SO_REUSEADDR, no SO_REUSEPORT: that would share a live port).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ep.address, ep.port))
            return Result("ports", OK, f"{ep.label()}: free")
        except OSError as e:
            bind_error = e
    if bind_error.errno == errno.EADDRNOTAVAIL:
        return Result("ports", FAIL, f"{ep.label()}: {ep.address} is not an address of this machine")
    if ep.proxy and bind_error.errno == errno.EADDRINUSE:  # it would drop us, or wait for a header
        return Result("ports", OK, f"{ep.label()}: in use (a PROXY protocol listener: not probed)")
    target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(ep.address, ep.address)
    try:
        conn = socket.create_connection((target, ep.port), timeout=timeout)
    except OSError as e:
        if bind_error.errno == errno.EACCES and ep.port < 1024:
            return Result("ports", WARN, f"{ep.label()}: needs CAP_NET_BIND_SERVICE (the systemd unit grants it)")
        if bind_error.errno == errno.EADDRINUSE:
            return Result("ports", FAIL, f"{ep.label()}: port held by something else (bound, but no connection accepted: {e.strerror or e})")
        return Result("ports", FAIL, f"{ep.label()}: cannot bind: {bind_error.strerror or bind_error}")
    with conn:
        conn.settimeout(timeout)
        sock: socket.socket = conn
        peer_cert = None
        try:
            if ep.implicit_tls:
                # Not verified by OpenSSL: the certificate it presents is compared
                # with tls.certificate byte for byte below, which is stricter.
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                try:
                    sock = ctx.wrap_socket(conn, server_hostname=None)
                except (ssl.SSLError, OSError) as e:
                    why = f"within {timeout:g} s" if isinstance(e, TimeoutError) else f"({_one_line(str(e))})"
                    return Result("ports", FAIL, f"{ep.label()}: port held by something else (no TLS handshake {why})")
                peer_cert = sock.getpeercert(binary_form=True)
            # httpd answers for the autoconfig name of a domain it serves.
            host = f"autoconfig.{cfg.default_domain}" if ep.protocol == "http" else cfg.hostname
            data = _read_greeting(sock, ep.protocol, host)
        except OSError as e:
            what = "no greeting" if isinstance(e, TimeoutError) else f"no greeting ({e.strerror or e})"
            return Result("ports", FAIL, f"{ep.label()}: port held by something else ({what} within {timeout:g} s)")
        if not classify_greeting(ep.protocol, data):
            said = f"it said {_printable(data)!r}" if data.strip() else "it closed without a greeting"
            return Result("ports", FAIL, f"{ep.label()}: port held by something else ({said})")
        try:
            sock.sendall({"imap": b"c LOGOUT\r\n", "smtp": b"QUIT\r\n", "managesieve": b"LOGOUT\r\n"}.get(ep.protocol, b""))
        except OSError:
            pass
        if ep.implicit_tls and our_cert is not None and peer_cert != our_cert:
            return Result("ports", WARN, f"{ep.label()}: mailstack answers, with another certificate than "
                                         f"{cfg.tls.certificate} (reload or restart it)")
        return Result("ports", OK, f"{ep.label()}: mailstack answers")


def check_ports(cfg: Config, timeout: float = NET_TIMEOUT) -> list[Result]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        our_cert: bytes | None = x509.load_pem_x509_certificate(cfg.tls.certificate.read_bytes()).public_bytes(Encoding.DER)
    except (OSError, ValueError):
        our_cert = None  # the certificate check says why
    eps = endpoints(cfg)
    if not eps:
        return [Result("ports", WARN, "no listener: imap and smtp are both disabled")]
    # At once: a silent port costs one timeout, not one per listener.
    with ThreadPoolExecutor(max_workers=min(8, len(eps))) as pool:
        return list(pool.map(lambda ep: probe(ep, cfg, our_cert, timeout), eps))


# --- filters and DNS -------------------------------------------------------------------


def check_filters(cfg: Config) -> list[Result]:
    """Each [[filters]] entry can be set up (no message is scanned)."""
    from .filters import FilterError
    from .filters.pipeline import load as load_filters

    if not cfg.filters:
        return [Result("filters", OK, "none configured")]
    try:
        loaded = load_filters(cfg)
    except FilterError as e:
        return [Result("filters", FAIL, str(e))]
    return [Result("filters", OK, f"{len(loaded)} loaded: {', '.join(f.name for f in loaded)}")]


def check_dns(cfg: Config) -> list[Result]:
    """``mailstack dns --check`` for every domain, folded in: a summary line per
    domain, then each record that is not ok."""
    from . import dnsrecords
    from .mailauth.keys import DkimKeyError
    from .resolver import install

    host = cfg.hostname.lower().rstrip(".")
    problem = dnsrecords._host_name_problem(host)  # the dns command's own test, reused
    if problem:
        return [Result("dns", FAIL, problem)]
    lookup = dnsrecords.Lookup(install(cfg.dns))  # pyspf resolves through dnspython's default resolver
    addresses = dnsrecords.host_addresses(lookup, host)
    out = []
    for domain in cfg.server.domains:
        try:
            recs = dnsrecords.records(cfg, domain, addresses)
        except (DkimKeyError, OSError, ValueError) as e:
            out.append(Result("dns", FAIL, f"{domain}: DKIM keys: {e}"))
            continue
        findings = dnsrecords.check(recs, lookup, host, domain, addresses)
        bad = any(f.status not in ("ok", "warn") for f in findings)
        out.append(Result("dns", FAIL if bad else OK, dnsrecords.summary(domain, findings)))
        for f in findings:
            if f.status == "ok":
                continue
            what = f"{f.record.name} {f.record.rtype}: "
            if f.status == "warn":
                out.append(Result("dns", WARN, what + f.detail))
            else:
                out.append(Result("dns", FAIL, what + f"{f.status}: {f.detail}"))
    return out


# --- running and printing -------------------------------------------------------------


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _guarded(name: str, func: Callable[[], list[Result]]) -> list[Result]:
    """A check that crashes is a FAIL line; the others still run."""
    try:
        return func()
    except Exception as e:  # noqa: BLE001 (a report, not a daemon: say it and go on)
        return [Result(name, FAIL, f"could not be checked: {type(e).__name__}: {_one_line(str(e))}")]


def run_checks(cfg_path: Path, dns: bool = False, user: DaemonUser | None = None) -> list[Result]:
    cfg, results = check_config(cfg_path)
    if cfg is None:
        return results
    who = user or daemon_user()
    results += _guarded("certificate", lambda: check_certificate(cfg, who))
    results += _guarded("permissions", lambda: check_permissions(cfg, who))
    results += _guarded("database", lambda: check_database(cfg))
    results += _guarded("ports", lambda: check_ports(cfg))
    results += _guarded("filters", lambda: check_filters(cfg))
    if dns:
        results += _guarded("dns", lambda: check_dns(cfg))
    return results


def summary(results: Sequence[Result]) -> str:
    problems = sum(r.status == FAIL for r in results)
    warnings = sum(r.status == WARN for r in results)
    if not problems and not warnings:
        return "all good"
    return f"{problems} problem{'' if problems == 1 else 's'}, {warnings} warning{'' if warnings == 1 else 's'}"


def render(results: Sequence[Result], quiet: bool = False) -> list[str]:
    """``ok   certificate: CN=..., expires in 74 days`` lines, aligned, then the summary."""
    shown = [r for r in results if not quiet or r.status != OK]
    width = max((len(r.check) for r in shown), default=0) + 1
    lines = [f"{r.status:<5}{r.check + ':':<{width}} {r.detail}" for r in shown]
    return lines + [summary(results)]


def exit_status(results: Sequence[Result]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


def run_check_command(args: argparse.Namespace, cfg_path: Path) -> int:
    from .cli import UsageError

    try:
        user = daemon_user(args.user) if args.user else None
    except KeyError:
        raise UsageError(f"mailstack check: --user {args.user}: no such user") from None
    results = run_checks(cfg_path, dns=args.dns, user=user)
    for line in render(results, quiet=args.quiet):
        print(line)
    return exit_status(results)


__all__ = [
    "DaemonUser", "Endpoint", "Result", "check_certificate", "check_config", "check_database", "check_dns",
    "check_filters", "check_permissions", "check_ports", "classify_greeting", "covers", "daemon_user",
    "endpoints", "hostname_matches", "render", "run_check_command", "run_checks", "summary",
]
