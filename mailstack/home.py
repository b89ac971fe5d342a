"""``mailstack init``: a complete, working home in one directory.

The home holds mailstack.toml, the TLS certificate and key, the secret key,
the SQLite database, the mail root and the spool.  Paths in the written
configuration are relative to it, so a home can be moved as a whole.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from . import config as config_mod
from .accounts import db
from .accounts.directory import write_secret
from .files import write_atomic
from .tls import make_self_signed

CONFIG_NAME = "mailstack.toml"
DEV_PORT_OFFSET = 10000


class HomeError(Exception):
    pass


@dataclass(frozen=True)
class Ports:
    imaps: int = 993
    imap: int = 143
    submission: int = 587
    submissions: int = 465
    mx: int = 25
    https: int = 443  # client autoconfiguration (mailstack httpd)
    managesieve: int = 4190  # Sieve filters (mailstack managesieved)
    imap_metrics: int = 9425  # Prometheus endpoints, always on loopback
    smtp_metrics: int = 9426
    managesieve_metrics: int = 9427

    def shifted(self, offset: int) -> Ports:
        return Ports(*(getattr(self, f.name) + offset for f in fields(self)))


def render_config(domain: str, hostname: str, address: str, ports: Ports) -> str:
    return f"""\
# mailstack configuration written by 'mailstack init'.
# Every key, its meaning and its default: config/mailstack.toml in the sources.
# Relative paths are relative to this file's directory.

[server]
hostname = "{hostname}"
domains = ["{domain}"]
log_level = "info"

[imap]
idle_timeout = 1800

[[imap.listeners]]
address = "{address}"
port = {ports.imaps}
tls = "implicit"

[[imap.listeners]]
address = "{address}"
port = {ports.imap}
tls = "starttls"

[[smtp.listeners]]
kind = "submission"
address = "{address}"
port = {ports.submission}
tls = "starttls"

[[smtp.listeners]]
kind = "submission"
address = "{address}"
port = {ports.submissions}
tls = "implicit"

[[smtp.listeners]]
kind = "mx"
address = "{address}"
port = {ports.mx}
tls = "starttls"

[http]
enabled = true

[[http.listeners]]
address = "{address}"
port = {ports.https}
tls = "implicit"

[[managesieve.listeners]]
address = "{address}"
port = {ports.managesieve}
tls = "starttls"

[metrics]
address = "127.0.0.1"
imap_port = {ports.imap_metrics}
smtp_port = {ports.smtp_metrics}
managesieve_port = {ports.managesieve_metrics}

[storage]
mail_root = "mail"
spool = "spool"

[database]
url = "sqlite:///mailstack.db"

[tls]
certificate = "tls/cert.pem"
key = "tls/key.pem"
min_version = "1.2"

[auth]
secret_file = "secret.key"

[limits]
max_message_size = 104857600

[dkim]
keys = "dkim"
"""


def init_home(home: Path, domain: str, hostname: str | None = None, dev: bool = False, force: bool = False) -> Path:
    """Create a home; return the config path.

    Refuses an existing home unless ``force``: then the configuration and
    certificate are rewritten, the secret key is kept, the database is upgraded in
    place (accounts and mail are kept).  A failure removes what this call
    created.
    """
    domain = domain.strip().lower()
    problem = config_mod.domain_name_problem(domain)
    if problem:
        raise HomeError(f"--domain {domain!r}: expected {problem}")
    hostname = (hostname or ("localhost" if dev else f"mail.{domain}")).strip().lower()
    if config_mod.domain_name_problem(hostname) and not _is_ip(hostname):
        raise HomeError(f"--hostname {hostname!r}: expected a host name")
    cfg_path = home / CONFIG_NAME
    if cfg_path.exists() and not force:
        raise HomeError(f"{home} already holds a mailstack home (use --force to rewrite its configuration)")
    if home.exists() and not home.is_dir():
        raise HomeError(f"{home} exists and is not a directory")

    created: list[Path] = []

    def mkdir(p: Path, mode: int = 0o750) -> None:
        if not p.exists():
            p.mkdir(mode=mode, parents=True)
            created.append(p)

    try:
        mkdir(home)
        ports = Ports().shifted(DEV_PORT_OFFSET) if dev else Ports()
        address = "127.0.0.1" if dev else "0.0.0.0"
        text = render_config(domain, hostname, address, ports)
        cfg = config_mod.parse(text, str(cfg_path), home.resolve())  # what we write must load
        mkdir(home / "tls", 0o750)
        if not cfg_path.exists():
            created.append(cfg_path)
        make_self_signed(hostname, cfg.tls.certificate, cfg.tls.key)
        created += [cfg.tls.certificate, cfg.tls.key]
        if not cfg.auth.secret_file.exists():
            write_secret(cfg.auth.secret_file)
            created.append(cfg.auth.secret_file)
        mkdir(cfg.storage.mail_root, 0o700)
        mkdir(cfg.storage.spool, 0o700)
        mkdir(cfg.dkim.keys, 0o700)
        db_file = home / "mailstack.db"
        if not db_file.exists():
            created.append(db_file)
        engine = db.make_engine(cfg.database.url)
        try:
            db.upgrade(engine)
        finally:
            engine.dispose()
        if db_file.exists():
            db_file.chmod(0o600)  # password hashes and personal data
        write_atomic(cfg_path, text)
    except BaseException:
        for p in reversed(created):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                for q in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
                    q.unlink(missing_ok=True)
        raise
    return cfg_path


def _is_ip(s: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True
