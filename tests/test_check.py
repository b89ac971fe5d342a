"""``mailstack check``: a dev home passes; each breakage is a FAIL line naming it.

Everything is real: the CLI in a subprocess, certificates made with
cryptography, a PostgreSQL URL to a closed port, Alembic downgrades, plain TCP
servers and real ``mailstack smtpd``/``imapd`` holding the ports, the test DNS
server for ``--dns``, and setpriv to take CAP_NET_BIND_SERVICE away.
"""

from __future__ import annotations

import datetime
import grp
import ipaddress
import os
import pwd
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailstack.check import hostname_matches
from tests.conftest import REPO, free_port, need, run_cli

D = "ac-normandie.test"
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


# --- homes and the command ------------------------------------------------------------------


def free_ports(home: Path, keep: set[int] = frozenset()) -> None:
    """Move every port of the home's configuration (but ``keep``) to a free one:
    tests running beside us may use the dev ports."""
    cfg = home / "mailstack.toml"
    text = cfg.read_text()
    used: set[int] = set(keep)

    def fresh(m: re.Match) -> str:
        old = int(m.group(2))
        if old in keep:
            return m.group(0)
        port = free_port()
        while port in used:
            port = free_port()
        used.add(port)
        return f"{m.group(1)}{port}"

    cfg.write_text(re.sub(r"(?m)^((?:\w+_)?port = )(\d+)$", fresh, text))


def init_home(home: Path, *extra: str) -> Path:
    r = run_cli("init", "--home", str(home), "--domain", D, "--dev", *extra)
    assert r.returncode == 0, r.stderr
    free_ports(home)
    return home


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return init_home(tmp_path_factory.mktemp("check") / "home")


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "home"))


def check(home: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("check", *args, config=home / "mailstack.toml")


def lines(r: subprocess.CompletedProcess) -> list[tuple[str, str, str]]:
    """(status, check, detail) of every line but the summary."""
    out = []
    for line in r.stdout.splitlines()[:-1]:
        m = re.match(r"^(ok|warn|FAIL) +(\w+): +(.*)$", line)
        assert m, line
        out.append(m.groups())
    return out


def problems(r: subprocess.CompletedProcess) -> list[tuple[str, str, str]]:
    return [line for line in lines(r) if line[0] != "ok"]


def fails_with(r: subprocess.CompletedProcess, name: str, *texts: str) -> str:
    """Exit 1, and exactly one FAIL line: of check ``name``, holding every text."""
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr == ""
    bad = [line for line in lines(r) if line[0] == "FAIL"]
    assert len(bad) == 1, r.stdout
    status, check_name, detail = bad[0]
    assert check_name == name, r.stdout
    for text in texts:
        assert text in detail, detail
    assert r.stdout.splitlines()[-1].startswith("1 problem, "), r.stdout
    return detail


SELF_SIGNED = ("warn", "certificate", "self-signed: clients will complain (use one from a certificate authority for production)")


def test_dev_home_passes_with_the_self_signed_warning(home: Path) -> None:
    r = check(home)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    got = lines(r)
    assert problems(r) == [SELF_SIGNED]
    assert r.stdout.splitlines()[-1] == "0 problems, 1 warning"
    assert {c for _, c, _ in got} == {"config", "certificate", "permissions", "database", "ports", "filters"}
    details = {d for _, _, d in got}
    assert f"{home / 'mailstack.toml'} loads" in details
    assert any(re.fullmatch(r"CN=localhost, expires in 82[45] days \(\d{4}-\d\d-\d\d\)", d) for d in details), details
    assert "covers server hostname localhost" in details
    assert any(d.startswith("files must belong to ") for d in details)
    assert any(re.fullmatch(rf"secret file {re.escape(str(home / 'secret.key'))}: \w+, mode 0600", d) for d in details), details
    assert any(re.fullmatch(r"sqlite:///.*/mailstack\.db: schema at \w+ \(current\)", d) for d in details), details
    ports = [d for _, c, d in got if c == "ports"]
    assert len(ports) >= 5 and all(d.endswith(": free") for d in ports), ports
    for service in ("imaps", "imap", "submission", "submissions", "mx"):
        assert any(d.startswith(f"{service} 127.0.0.1:") for d in ports), ports
    # aligned: the details start in one column
    starts = {len(line) - len(line.split(": ", 1)[1].lstrip()) for line in r.stdout.splitlines()[:-1]}
    assert len(starts) == 1, r.stdout


def test_quiet_prints_only_problems_and_the_summary(home: Path) -> None:
    r = check(home, "--quiet")
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["warn certificate: self-signed: clients will complain (use one from a certificate authority for production)",
                                     "0 problems, 1 warning"]


# --- config ------------------------------------------------------------------------------------


def test_bad_config_value_is_a_fail_line_naming_file_and_key(home: Path) -> None:
    cfg = home / "mailstack.toml"
    cfg.write_text(cfg.read_text().replace('log_level = "info"', 'log_level = "loud"'))
    r = check(home)
    detail = fails_with(r, "config", str(cfg), "server.log_level", "'loud'")
    assert detail.startswith(f"{cfg}: server.log_level: expected one of")
    assert len(r.stdout.splitlines()) == 2  # nothing else can be checked without a configuration


def test_invalid_toml_is_a_fail_line(home: Path) -> None:
    cfg = home / "mailstack.toml"
    cfg.write_text(cfg.read_text() + "\n[tls\n")
    fails_with(check(home), "config", str(cfg), "not valid TOML", "line")


def test_missing_config_file(tmp_path: Path) -> None:
    r = run_cli("-c", str(tmp_path / "nope.toml"), "check")
    fails_with(r, "config", "nope.toml: configuration file not found")


def test_world_writable_config(home: Path) -> None:
    (home / "mailstack.toml").chmod(0o666)
    fails_with(check(home), "config", "world-writable", "0666")


# --- certificate --------------------------------------------------------------------------------


def make_cert(cn: str, names: list[str], *, key=None, issuer: tuple[x509.Certificate, object] | None = None,
              ca: bool = False, before: datetime.datetime = NOW - DAY, after: datetime.datetime = NOW + 90 * DAY):
    """A certificate (self-signed, or signed by ``issuer`` = (cert, key)) and its key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        sans = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
    return b.sign(signer, hashes.SHA256()), key


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def install_tls(home: Path, chain: bytes, key) -> None:
    (home / "tls" / "cert.pem").write_bytes(chain)
    (home / "tls" / "key.pem").write_bytes(key_pem(key))
    (home / "tls" / "key.pem").chmod(0o600)


def test_expired_certificate(home: Path) -> None:
    cert, key = make_cert("localhost", ["localhost"], before=NOW - 100 * DAY, after=NOW - 3 * DAY)
    install_tls(home, pem(cert), key)
    fails_with(check(home), "certificate", "CN=localhost: expired on", "days ago")


def test_certificate_not_yet_valid(home: Path) -> None:
    cert, key = make_cert("localhost", ["localhost"], before=NOW + 2 * DAY)
    install_tls(home, pem(cert), key)
    fails_with(check(home), "certificate", "not valid before")


def test_certificate_expiring_soon_is_a_warning(home: Path) -> None:
    cert, key = make_cert("localhost", ["localhost"], after=NOW + 5 * DAY)
    install_tls(home, pem(cert), key)
    r = check(home)
    assert r.returncode == 0, r.stdout
    assert ("warn", "certificate", f"CN=localhost, expires in 4 days ({cert.not_valid_after_utc:%Y-%m-%d}): renew it") in problems(r)


def test_certificate_for_another_host(home: Path) -> None:
    cert, key = make_cert("mail.example.org", ["mail.example.org", "*.example.org"])
    install_tls(home, pem(cert), key)
    fails_with(check(home), "certificate", "does not cover server hostname localhost", "mail.example.org, *.example.org")


def test_key_that_does_not_match_the_certificate(home: Path) -> None:
    cert, _ = make_cert("localhost", ["localhost"])
    install_tls(home, pem(cert), ec.generate_private_key(ec.SECP256R1()))
    fails_with(check(home), "certificate", "does not match the certificate")


def test_world_readable_key(home: Path) -> None:
    (home / "tls" / "key.pem").chmod(0o644)
    fails_with(check(home), "certificate", "has mode 0644", "chmod 600")


def test_key_readable_by_a_group_of_others(home: Path) -> None:
    key = home / "tls" / "key.pem"
    key.chmod(0o640)
    os.chown(key, -1, grp.getgrnam("nogroup").gr_gid)
    fails_with(check(home), "certificate", "has mode 0640: group nogroup can read it", f"the daemons (user {pwd.getpwuid(os.geteuid()).pw_name}) are not in it")


def test_key_readable_by_the_daemons_group(home: Path) -> None:
    """root:mailstack 0640 (the README's production layout) lets the daemons read a root-owned key."""
    key = home / "tls" / "key.pem"
    key.chmod(0o640)
    os.chown(key, -1, os.getgid())
    r = check(home)
    assert r.returncode == 0, r.stdout
    assert problems(r) == [SELF_SIGNED]


def test_key_that_is_not_a_key(home: Path) -> None:
    (home / "tls" / "key.pem").write_text("not a key\n")
    fails_with(check(home), "certificate", "is not a PEM private key")


@pytest.fixture
def ca_chain(home: Path, tmp_path: Path):
    """A private root and intermediate; the server certificate signed by the intermediate."""
    root, root_key = make_cert("Test Root CA", [], ca=True, after=NOW + 3650 * DAY)
    inter, inter_key = make_cert("Test Intermediate CA", [], ca=True, issuer=(root, root_key))
    leaf, leaf_key = make_cert("localhost", ["localhost"], issuer=(inter, inter_key))
    roots = tmp_path / "roots.pem"
    roots.write_bytes(pem(root))
    return leaf, leaf_key, inter, roots


def test_chain_not_trusted_by_the_system_store(home: Path, ca_chain) -> None:
    leaf, key, inter, _ = ca_chain
    install_tls(home, pem(leaf, inter), key)
    r = check(home)
    fails_with(r, "certificate", "does not verify against the system trust store", "no path to a trusted root")
    assert ("ok", "certificate", "chain of 2 certificates in order") in lines(r)
    assert SELF_SIGNED not in lines(r)


def test_chain_trusted_by_the_store(home: Path, ca_chain, monkeypatch) -> None:
    leaf, key, inter, roots = ca_chain
    install_tls(home, pem(leaf, inter), key)
    monkeypatch.setenv("SSL_CERT_FILE", str(roots))  # OpenSSL's own override of the system store
    r = check(home)
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1] == "all good", r.stdout
    assert ("ok", "certificate", "chain verifies against the system trust store (root CN=Test Root CA)") in lines(r)


def test_chain_out_of_order(home: Path, ca_chain, monkeypatch) -> None:
    leaf, key, inter, roots = ca_chain
    install_tls(home, pem(leaf) + pem(make_cert("Other CA", [], ca=True)[0]) + pem(inter), key)
    monkeypatch.setenv("SSL_CERT_FILE", str(roots))
    fails_with(check(home), "certificate", "chain out of order", "certificate 1 (CN=localhost) is not signed by certificate 2 (CN=Other CA)")


@pytest.mark.parametrize(
    "pattern, host, match",
    [
        ("mail.example.org", "mail.example.org", True),
        ("MAIL.Example.org", "mail.example.ORG.", True),
        ("*.example.org", "mail.example.org", True),
        ("*.example.org", "example.org", False),  # one label, not zero
        ("*.example.org", "a.mail.example.org", False),  # nor two
        ("*.org", "example.org", False),  # never directly under a TLD
        ("m*.example.org", "mail.example.org", False),  # partial-label wildcards: clients refuse them
        ("mail.*.org", "mail.example.org", False),
        ("*.*.example.org", "a.b.example.org", False),
        ("mail.example.org", "mail.example.org.evil", False),
    ],
)
def test_hostname_matching_follows_rfc_6125(pattern: str, host: str, match: bool) -> None:
    assert hostname_matches(pattern, host) is match


def test_wildcard_certificate_covers_the_hostname(tmp_path: Path) -> None:
    home = init_home(tmp_path / "home", "--hostname", f"mail.{D}")
    cert, key = make_cert(f"*.{D}", [f"*.{D}"])
    install_tls(home, pem(cert), key)
    r = check(home)
    assert r.returncode == 0, r.stdout
    assert ("ok", "certificate", f"covers server hostname mail.{D}") in lines(r)


# --- permissions -------------------------------------------------------------------------------


def test_secret_file_with_the_wrong_mode(home: Path) -> None:
    (home / "secret.key").chmod(0o644)
    fails_with(check(home), "permissions", f"secret file {home / 'secret.key'} has mode 0644; expected 0600")


def test_group_writable_mail_root(home: Path) -> None:
    (home / "mail").chmod(0o770)
    fails_with(check(home), "permissions", f"mail root {home / 'mail'} has mode 0770", "chmod go-w")


def test_missing_spool(home: Path) -> None:
    (home / "spool").rmdir()
    fails_with(check(home), "permissions", f"spool {home / 'spool'} does not exist")


def test_readable_database_file_is_a_warning(home: Path) -> None:
    (home / "mailstack.db").chmod(0o644)
    r = check(home)
    assert r.returncode == 0, r.stdout
    assert ("warn", "permissions", f"database {home / 'mailstack.db'} has mode 0644: it holds password hashes "
                                   f"(chmod 600 {home / 'mailstack.db'})") in problems(r)


def test_world_readable_dkim_key(home: Path) -> None:
    r = run_cli("dkim", "keygen", D, "--algorithm", "ed25519", "--selector", "ed1", config=home / "mailstack.toml")
    assert r.returncode == 0, r.stderr
    key = home / "dkim" / D / "ed1.pem"
    r = check(home)
    assert r.returncode == 0 and any(d.startswith(f"DKIM key {key}: ") for _, _, d in lines(r)), r.stdout
    key.chmod(0o644)
    fails_with(check(home), "permissions", f"DKIM key {key} has mode 0644: anyone can read it")


def test_files_of_another_user_than_the_daemons(home: Path) -> None:
    """--user: the daemons' user when it is not mailstack (a unit with another User=)."""
    r = check(home, "--user", "nobody")
    assert r.returncode == 1
    got = lines(r)
    assert ("ok", "permissions", "files must belong to nobody (given with --user)") in got
    bad = [d for s, c, d in problems(r) if c == "permissions"]
    for label in ("mail root", "spool", "DKIM key directory", "secret file", "database"):
        assert any(d.startswith(label) and "belongs to root; the daemons run as nobody" in d for d in bad), (label, bad)
    assert any("cannot read it" in d for s, c, d in problems(r) if c == "certificate"), r.stdout


def test_unknown_user_is_a_usage_error(home: Path) -> None:
    r = check(home, "--user", "no-such-user-here")
    assert r.returncode == 2
    assert r.stderr.strip() == "mailstack check: --user no-such-user-here: no such user (see --help)"


# --- database ------------------------------------------------------------------------------------


def set_db_url(home: Path, url: str) -> None:
    cfg = home / "mailstack.toml"
    cfg.write_text(cfg.read_text().replace('url = "sqlite:///mailstack.db"', f'url = "{url}"'))


def test_postgresql_url_to_a_closed_port(home: Path) -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        need(False, "psycopg (pip install 'psycopg[binary]')")
    port = free_port()
    set_db_url(home, f"postgresql+psycopg://mailstack:s3cret@127.0.0.1:{port}/mailstack")
    r = check(home)
    detail = fails_with(r, "database", f"cannot connect to postgresql+psycopg://mailstack:***@127.0.0.1:{port}/mailstack", "refused")
    assert "s3cret" not in r.stdout and "s3cret" not in detail


def test_old_schema(home: Path) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from mailstack.accounts import db

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    engine = db.make_engine(f"sqlite:///{home / 'mailstack.db'}")
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")
        old = db.current_revision(engine)
    finally:
        engine.dispose()
    assert old and old != db.head_revision()
    fails_with(check(home), "database", f"the database schema is at {old}, this mailstack needs {db.head_revision()}", "mailstack db upgrade")


def test_empty_database_file(home: Path) -> None:
    (home / "mailstack.db").unlink()
    sqlite3.connect(home / "mailstack.db").close()
    (home / "mailstack.db").chmod(0o600)
    fails_with(check(home), "database", "no mailstack schema")


def test_missing_database_file_is_not_created(home: Path) -> None:
    (home / "mailstack.db").unlink()
    fails_with(check(home), "database", f"{home / 'mailstack.db'} does not exist")
    assert not (home / "mailstack.db").exists()


# --- ports ---------------------------------------------------------------------------------------


def listener_port(home: Path, old_service_port: int) -> int:
    """The port that replaced a dev port (imaps 10993 ...) in a home after free_ports: read from the config."""
    import tomllib

    cfg = tomllib.loads((home / "mailstack.toml").read_text())
    order = [10993, 10143]
    if old_service_port in order:
        return cfg["imap"]["listeners"][order.index(old_service_port)]["port"]
    return cfg["smtp"]["listeners"][[10587, 10465, 10025].index(old_service_port)]["port"]


@pytest.fixture
def impostor() -> Iterator[callable]:
    """Plain TCP servers on loopback that greet like another mail server."""
    servers: list[socket.socket] = []

    def start(port: int, greeting: bytes = b"220 mx.example.net ESMTP Postfix\r\n") -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        servers.append(s)

        def serve() -> None:
            while True:
                try:
                    c, _ = s.accept()
                except OSError:
                    return
                with c:
                    try:
                        c.sendall(greeting)
                        c.recv(1024)
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()

    yield start
    for s in servers:
        s.shutdown(socket.SHUT_RDWR)  # wakes the accept() of its thread: the port is free again
        s.close()


def test_port_held_by_something_else(home: Path, impostor) -> None:
    mx = listener_port(home, 10025)
    impostor(mx)
    fails_with(check(home), "ports", f"mx 127.0.0.1:{mx}: port held by something else (it said '220 mx.example.net ESMTP Postfix')")


def test_implicit_tls_port_held_by_a_plain_server(home: Path, impostor) -> None:
    imaps = listener_port(home, 10993)
    impostor(imaps, b"* OK [CAPABILITY IMAP4rev1] mailstack ready\r\n")  # says the words, but no TLS
    fails_with(check(home), "ports", f"imaps 127.0.0.1:{imaps}: port held by something else (no TLS handshake")


def test_running_smtpd_answers(tmp_path: Path) -> None:
    from mailstack.tls import make_self_signed
    from tests.smtp_server import make_server

    srv = make_server(tmp_path)
    free_ports(srv.home, keep=set(srv.ports))
    srv.start()
    try:
        r = check(srv.home)
        assert r.returncode == 0, r.stdout
        got = [d for _, c, d in lines(r) if c == "ports"]
        for service, port in (("submission", srv.submission_port), ("submissions", srv.submissions_port), ("mx", srv.mx_port)):
            assert f"{service} 127.0.0.1:{port}: mailstack answers" in got, got
        # a renewed certificate the daemon does not serve yet
        make_self_signed("localhost", srv.home / "tls" / "cert.pem", srv.home / "tls" / "key.pem")
        r = check(srv.home)
        assert r.returncode == 0, r.stdout
        assert ("warn", "ports", f"submissions 127.0.0.1:{srv.submissions_port}: mailstack answers, with another certificate "
                                 f"than {srv.home / 'tls' / 'cert.pem'} (reload or restart it)") in problems(r), r.stdout
        assert f"submission 127.0.0.1:{srv.submission_port}: mailstack answers" in [d for _, _, d in lines(r)]
    finally:
        srv.stop()


def test_running_imapd_answers(tmp_path: Path) -> None:
    from tests.imap_server import make_server

    srv = make_server(tmp_path)
    free_ports(srv.home, keep=set(srv.ports))
    srv.start()
    try:
        r = check(srv.home)
        assert r.returncode == 0, r.stdout
        got = [d for _, c, d in lines(r) if c == "ports"]
        assert f"imaps 127.0.0.1:{srv.imaps_port}: mailstack answers" in got, got
        assert f"imap 127.0.0.1:{srv.imap_port}: mailstack answers" in got, got
    finally:
        srv.stop()


def _free_low_port() -> int:
    for port in range(900, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port under 1024")


def test_low_port_without_the_capability_is_a_warning(home: Path) -> None:
    need(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    need(int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) > 900, "privileged ports below 1024")
    cfg = home / "mailstack.toml"
    mx = listener_port(home, 10025)
    low = _free_low_port()
    cfg.write_text(cfg.read_text().replace(f"port = {mx}\n", f"port = {low}\n"))
    # Without CAP_NET_BIND_SERVICE (as a non-root operator, or root in a restricted container).
    r = subprocess.run(
        ["setpriv", "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service",
         sys.executable, "-m", "mailstack", "-c", str(cfg), "check"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("warn", "ports", f"mx 127.0.0.1:{low}: needs CAP_NET_BIND_SERVICE (the systemd unit grants it)") in problems(r), r.stdout


# --- filters ---------------------------------------------------------------------------------------


def test_filter_that_does_not_load(home: Path) -> None:
    with open(home / "mailstack.toml", "a") as f:
        f.write('\n[[filters]]\nname = "no-such-filter"\n')
    fails_with(check(home), "filters", "filters[0] (no-such-filter): unknown filter")


# --- --dns -------------------------------------------------------------------------------------------


@pytest.fixture
def dns_home(tmp_path: Path, dns_server) -> Path:
    from tests.test_dnsrecords import publish, use_dns

    home = use_dns(init_home(tmp_path / "home", "--hostname", f"mail.{D}"), dns_server)
    dns_server.add(f"mail.{D}", "A", "127.0.0.1")
    dns_server.add("1.0.0.127.in-addr.arpa", "PTR", f"mail.{D}.")
    r = run_cli("dns", D, config=home / "mailstack.toml")
    assert r.returncode == 0, r.stderr
    publish(dns_server, r.stdout)
    return home


def test_dns_with_good_records(dns_home: Path) -> None:
    r = check(dns_home, "--dns")
    assert r.returncode == 0, r.stdout
    got = lines(r)
    summary = [d for s, c, d in got if c == "dns" and s == "ok"]
    assert len(summary) == 1 and summary[0].startswith(f"{D}: 19 records, ") and summary[0].endswith(": ready"), r.stdout
    # no DKIM key in this home yet: the dns check's own warning, folded in
    assert [(s, d.split(":")[0]) for s, c, d in got if c == "dns" and s != "ok"] == [("warn", f"_domainkey.{D}. TXT")], r.stdout


def test_dns_with_a_missing_mx(dns_home: Path, dns_server) -> None:
    dns_server.remove(D, "MX")
    r = check(dns_home, "--dns")
    assert r.returncode == 1, r.stdout
    bad = [d for s, c, d in lines(r) if s == "FAIL"]
    assert any(d.startswith(f"{D}. MX: missing: no MX record; expected 10 mail.{D}.") for d in bad), r.stdout
    assert any(d.startswith(f"{D}: 19 records") and d.endswith("to fix") for d in bad), r.stdout
    assert all(c == "dns" for s, c, d in lines(r) if s == "FAIL")


def test_dns_of_a_dev_home_says_localhost_is_not_public(home: Path) -> None:
    fails_with(check(home, "--dns"), "dns", "server.hostname 'localhost' is not a public host name")


def test_running_httpd_and_metrics_answer(tmp_path: Path) -> None:
    from tests.test_autoconfig import HttpServer
    from tests.imap_server import make_server

    imap = make_server(tmp_path)
    text = imap.config.read_text()
    https, metrics_port = free_port(), free_port()
    text = text.replace("port = 10443", f"port = {https}").replace("imap_port = 19425", f"imap_port = {metrics_port}")
    imap.config.write_text(text)
    free_ports(imap.home, keep={*imap.ports, https, metrics_port})
    http = HttpServer(imap.home, https)
    imap.start()
    http.start()
    try:
        r = check(imap.home)
        assert r.returncode == 0, r.stdout
        got = [d for _, c, d in lines(r) if c == "ports"]
        assert f"https 127.0.0.1:{https}: mailstack answers" in got, got
        assert f"imap metrics 127.0.0.1:{metrics_port}: mailstack answers" in got, got
    finally:
        http.stop()
        imap.stop()
