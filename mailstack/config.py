"""mailstack configuration: one TOML file, validated completely when loaded.

The schema is a tree of frozen dataclasses; the loader walks the TOML document
against it so that an unknown key, a wrong type or an impossible value is
reported with the file, the dotted key and what was expected.  Nothing is
silently ignored.  Relative paths are relative to the directory of the file.

Hand-written rather than pydantic: the schema is small, we want our own
one-line error format, and it keeps the daemons' import graph to the stdlib.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_CONFIG_PATH = Path("/etc/mailstack/mailstack.toml")
MAX_MESSAGE_SIZE = 104_857_600

# Mozilla "intermediate" TLS 1.2 cipher list (forward secret AEAD only).
MOZILLA_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
    "DHE-RSA-CHACHA20-POLY1305"
)

_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for the operator."""


# --- value checks -----------------------------------------------------------
# Each check takes the (type-checked) value and returns an error text or None.

Check = Callable[[Any], "str | None"]


def _between(lo: int, hi: int) -> Check:
    return lambda v: None if lo <= v <= hi else f"a number from {lo} to {hi}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else "one of " + ", ".join(repr(c) for c in choices)


def domain_name_problem(v: str) -> str | None:
    return None if _DOMAIN_RE.match(v) else "a domain name (lowercase letters, digits, dots, hyphens)"


def _domain_list(v: list[str]) -> str | None:
    if not v:
        return "at least one mail domain"
    for d in v:
        if domain_name_problem(d):
            return f"domain names (lowercase letters, digits, dots, hyphens), not {d!r}"
    if len(set(v)) != len(v):
        return "domain names without duplicates"
    return None


def _ip_address(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return "an IP address such as '0.0.0.0', '::' or '127.0.0.1'"
    return None


def _network_list(v: list[str]) -> str | None:
    for n in v:
        try:
            ipaddress.ip_network(n)
        except ValueError:
            return f"networks in CIDR form such as '10.0.0.0/24' or '2001:db8::/64', not {n!r}"
    return None


def _not_empty(v: str) -> str | None:
    return None if v.strip() else "a non-empty string"


def _database_url(v: str) -> str | None:
    if not re.match(r"^(sqlite|postgresql)(\+[a-z0-9_]+)?://", v):
        return "an SQLAlchemy URL starting with sqlite:/// or postgresql+psycopg://"
    return None


def opt(default: Any, check: Check | None = None, doc: str = "", required: bool = False) -> Any:
    """A config field with a default, an optional value check and a comment."""
    meta = {"check": check, "doc": doc, "required": required}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# --- the schema ----------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = opt("", doc="name clients and peers see; empty means this machine's FQDN")
    domains: list[str] = opt([], _domain_list, "mail domains served here; the first is the default", required=True)
    log_level: str = opt("info", _one_of("debug", "info", "warning", "error"))
    proxy_trusted: list[str] = opt([], _network_list, "networks of the load balancers allowed to send a PROXY header")


@dataclass(frozen=True)
class Listener:
    address: str = opt("0.0.0.0", _ip_address)
    port: int = opt(0, _between(1, 65535), required=True)
    tls: str = opt("implicit", _one_of("implicit", "starttls"))
    proxy: bool = opt(False, doc="connections come from a load balancer and start with a PROXY header")


@dataclass(frozen=True)
class SmtpListener:
    kind: str = opt("submission", _one_of("submission", "mx"))
    address: str = opt("0.0.0.0", _ip_address)
    port: int = opt(0, _between(1, 65535), required=True)
    tls: str = opt("starttls", _one_of("implicit", "starttls"))
    proxy: bool = opt(False, doc="connections come from a load balancer and start with a PROXY header")


@dataclass(frozen=True)
class ImapConfig:
    enabled: bool = opt(True)
    idle_timeout: int = opt(1800, _between(10, 86400), "seconds before an idle session is logged out")
    max_per_address: int = opt(50, _between(1, 100000), "connections from one client address")
    max_per_user: int = opt(20, _between(1, 10000), "logged-in sessions of one account")
    workers: int = opt(0, _between(0, 64), "processes accepting connections; 0 = one per CPU")
    listeners: list[Listener] = opt(
        [Listener("0.0.0.0", 993, "implicit"), Listener("0.0.0.0", 143, "starttls")]
    )


@dataclass(frozen=True)
class SmtpConfig:
    enabled: bool = opt(True)
    timeout: int = opt(300, _between(5, 3600), "seconds without a byte from the client before it is disconnected")
    max_recipients: int = opt(100, _between(1, 100000), "recipients per message")
    max_errors: int = opt(20, _between(1, 1000), "error replies in one session before it is closed")
    max_per_address: int = opt(20, _between(1, 100000), "connections from one client address")
    max_connections: int = opt(2000, _between(1, 1000000), "connections per worker")
    max_transfers: int = opt(100, _between(1, 10000), "messages in transit at once per worker (DATA/BDAT); a quarter per client address")
    workers: int = opt(0, _between(0, 64), "processes accepting connections; 0 = one per CPU")
    listeners: list[SmtpListener] = opt(
        [
            SmtpListener("submission", "0.0.0.0", 587, "starttls"),
            SmtpListener("submission", "0.0.0.0", 465, "implicit"),
            SmtpListener("mx", "0.0.0.0", 25, "starttls"),
        ]
    )


@dataclass(frozen=True)
class ManageSieveListener:
    address: str = opt("0.0.0.0", _ip_address)
    port: int = opt(0, _between(1, 65535), required=True)
    tls: str = opt("starttls", _one_of("starttls", "implicit"))
    proxy: bool = opt(False, doc="connections come from a load balancer and start with a PROXY header")


@dataclass(frozen=True)
class ManageSieveConfig:
    """``mailstack managesieved``: users edit their Sieve filters (RFC 5804)."""

    enabled: bool = opt(True)
    workers: int = opt(1, _between(0, 64), "processes accepting connections; 0 = one per CPU")
    timeout: int = opt(1800, _between(10, 86400), "seconds without a byte from the client before it is disconnected")
    max_per_address: int = opt(20, _between(1, 100000), "connections from one client address (per worker)")
    listeners: list[ManageSieveListener] = opt([ManageSieveListener("0.0.0.0", 4190, "starttls")])


@dataclass(frozen=True)
class HttpListener:
    address: str = opt("0.0.0.0", _ip_address)
    port: int = opt(0, _between(1, 65535), required=True)
    tls: str = opt("implicit", _one_of("implicit", "none"))


@dataclass(frozen=True)
class HttpConfig:
    """``mailstack httpd``: client autoconfiguration (Thunderbird, Outlook, Apple)."""

    enabled: bool = opt(False, doc="off unless asked: port 443 is often a web server's already")
    listeners: list[HttpListener] = opt([HttpListener("0.0.0.0", 443, "implicit")])


@dataclass(frozen=True)
class SieveConfig:
    """Users' Sieve scripts, run at every local delivery (after the filters)."""

    enabled: bool = opt(True, doc="run each account's active script when mail is delivered to it")
    max_scripts: int = opt(20, _between(1, 1000), "scripts one account may keep")
    max_script_size: int = opt(65536, _between(1024, 1 << 20), "bytes of one script")
    max_redirects: int = opt(5, _between(0, 100), "redirect actions one script may take per message")
    vacation_min_period: int = opt(86400, _between(60, 365 * 86400), "shortest time between two vacation replies to one sender")
    vacation_max_period: int = opt(90 * 86400, _between(60, 3650 * 86400), "longest such time (larger :days are cut to it)")
    global_dir: Path = opt(Path("/var/lib/mailstack/sieve-global"), doc="the site's scripts for 'include :global' (NAME.sieve), read-only to users")


@dataclass(frozen=True)
class SrsConfig:
    """Sender Rewriting Scheme for mail we forward to other domains."""

    enabled: bool = opt(True, doc="rewrite the envelope sender of forwarded mail (aliases to outside, Sieve redirects)")
    domain: str = opt("", lambda v: None if not v else domain_name_problem(v), "domain of the SRS addresses; empty = the first of server.domains")
    days: int = opt(21, _between(1, 365), "days a bounce to an SRS address is accepted")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus endpoints, one per daemon, served by its supervising process."""

    enabled: bool = opt(True)
    address: str = opt("127.0.0.1", _ip_address, "keep it on loopback (or a management network)")
    imap_port: int = opt(9425, _between(0, 65535), "port of mailstack imapd's /metrics; 0 = none")
    smtp_port: int = opt(9426, _between(0, 65535), "port of mailstack smtpd's /metrics; 0 = none")
    managesieve_port: int = opt(9427, _between(0, 65535), "port of mailstack managesieved's /metrics; 0 = none")


def _ip_list(v: list[str]) -> str | None:
    for a in v:
        if _ip_address(a):
            return f"IP addresses, not {a!r}"
    return None


def _seconds(lo: float, hi: float) -> Check:
    return lambda v: None if lo <= v <= hi else f"{lo:g} to {hi:g} seconds"


@dataclass(frozen=True)
class DnsConfig:
    nameservers: list[str] = opt([], _ip_list, "resolvers to ask; empty = those of /etc/resolv.conf")
    port: int = opt(53, _between(1, 65535), "port of those resolvers")
    timeout: float = opt(5.0, _seconds(0.1, 60), "seconds for one lookup, retries included")


@dataclass(frozen=True)
class QueueConfig:
    port: int = opt(25, _between(1, 65535), "port of remote MX hosts (only tests change it)")
    lifetime: int = opt(432000, _between(1, 60 * 86400), "seconds a message may wait before it bounces (5 days)")
    warn_after: int = opt(14400, _between(0, 60 * 86400), "seconds before the sender is told of a delay; 0 = never")
    retry_min: int = opt(300, _between(1, 86400), "seconds before the first retry; doubles each time")
    retry_max: int = opt(14400, _between(1, 7 * 86400), "longest wait between two attempts")
    concurrency: int = opt(50, _between(1, 10000), "deliveries at once per smtpd worker")
    per_destination: int = opt(10, _between(1, 1000), "connections at once to one destination domain per worker")
    connect_timeout: int = opt(30, _between(1, 600), "seconds to open a connection to a remote host")
    timeout: int = opt(300, _between(5, 3600), "seconds to wait for each reply of a remote host")
    tls: str = opt("may", _one_of("may", "encrypt"), "may: STARTTLS whenever offered; encrypt: never send in clear")


@dataclass(frozen=True)
class DkimConfig:
    sign: bool = opt(True, doc="sign mail sent by our users with every key of its From domain")
    keys: Path = opt(Path("/var/lib/mailstack/dkim"), doc="DOMAIN/SELECTOR.pem private keys (mailstack dkim keygen)")


@dataclass(frozen=True)
class MailAuthConfig:
    verify: bool = opt(True, doc="check SPF, DKIM and DMARC of mail received on the MX (Authentication-Results)")
    enforce_dmarc: bool = opt(True, doc="DMARC failure: p=reject refused (550), p=quarantine filed in Junk")


_FILTER_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class FilterConfig:
    name: str = opt("", lambda v: None if _FILTER_NAME.match(v) else "a filter name (built in: clamav, spamassassin; or an entry point of mailstack.filters)", required=True)
    timeout: float = opt(60.0, _seconds(0.1, 3600), "seconds the filter may take for one message")
    fail: str = opt("", lambda v: None if v in ("", "tempfail", "accept") else "'tempfail' or 'accept'",
                    "when the scanner is down or too slow: tempfail (451, the sender retries) or accept; empty = the filter's default")
    skip_authenticated: bool = opt(False, doc="do not scan mail our own users send (submission)")
    options: dict = opt({}, doc="the filter's own settings")


@dataclass(frozen=True)
class StorageConfig:
    mail_root: Path = opt(Path("/var/lib/mailstack/mail"))
    spool: Path = opt(Path("/var/spool/mailstack"))
    quota_bytes: int = opt(0, _between(0, 1 << 50), "default quota per account in bytes; 0 = none")
    quota_messages: int = opt(0, _between(0, 1 << 40), "default quota per account in messages; 0 = none")
    shared: bool = opt(False, doc="mail_root is a network file system several nodes use (README: More than one machine)")


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = opt("sqlite:////var/lib/mailstack/mailstack.db", _database_url)


@dataclass(frozen=True)
class TlsConfig:
    certificate: Path = opt(Path("/etc/mailstack/tls/cert.pem"))
    key: Path = opt(Path("/etc/mailstack/tls/key.pem"))
    min_version: str = opt("1.2", _one_of("1.2", "1.3"))
    ciphers: str = opt(MOZILLA_INTERMEDIATE_CIPHERS, _not_empty)


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = opt(10, _between(8, 128))
    max_length: int = opt(256, _between(16, 4096))
    require_letter: bool = opt(True)
    require_digit: bool = opt(True)
    require_symbol: bool = opt(True)
    forbid_personal: bool = opt(True, doc="refuse passwords containing the login, first or family name")


@dataclass(frozen=True)
class Argon2Params:
    memory_kib: int = opt(19456, _between(8192, 4_194_304))
    iterations: int = opt(2, _between(1, 32))
    # cryptography's Argon2id fails when two threads hash with lanes >= 2
    # (MemoryError, or a hang on some versions): lanes is pinned to 1.
    lanes: int = opt(1, _between(1, 1))


@dataclass(frozen=True)
class ThrottleConfig:
    window: int = opt(900, _between(60, 86400), "seconds over which failures are counted")
    free_failures: int = opt(3, _between(0, 100), "failures answered without delay")
    delay_base: float = opt(1.0, lambda v: None if 0 <= v <= 60 else "0 to 60 seconds")
    delay_max: float = opt(15.0, lambda v: None if 0 <= v <= 300 else "0 to 300 seconds")
    account_lockout: int = opt(10, _between(1, 10000), "failures that lock an account")
    ip_lockout: int = opt(50, _between(1, 100000), "failures that lock a client address")
    lockout_duration: int = opt(900, _between(1, 604800), "seconds a lock lasts")


@dataclass(frozen=True)
class AuthConfig:
    secret_file: Path = opt(Path("/var/lib/mailstack/secret.key"))
    cache_ttl: int = opt(600, _between(0, 86400), "seconds a verified password is remembered; 0 disables")
    cache_size: int = opt(10000, _between(1, 10_000_000))
    inactivity_days: int = opt(0, _between(0, 36500), "days without login before disabling; 0 = never")
    password: PasswordPolicy = opt(PasswordPolicy())
    argon2: Argon2Params = opt(Argon2Params())
    throttle: ThrottleConfig = opt(ThrottleConfig())


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int = opt(MAX_MESSAGE_SIZE, _between(1024, 1 << 40))


@dataclass(frozen=True)
class Config:
    server: ServerConfig = opt(ServerConfig())
    imap: ImapConfig = opt(ImapConfig())
    smtp: SmtpConfig = opt(SmtpConfig())
    storage: StorageConfig = opt(StorageConfig())
    database: DatabaseConfig = opt(DatabaseConfig())
    tls: TlsConfig = opt(TlsConfig())
    auth: AuthConfig = opt(AuthConfig())
    limits: LimitsConfig = opt(LimitsConfig())
    dns: DnsConfig = opt(DnsConfig())
    queue: QueueConfig = opt(QueueConfig())
    dkim: DkimConfig = opt(DkimConfig())
    mailauth: MailAuthConfig = opt(MailAuthConfig())
    http: HttpConfig = opt(HttpConfig())
    managesieve: ManageSieveConfig = opt(ManageSieveConfig())
    metrics: MetricsConfig = opt(MetricsConfig())
    sieve: SieveConfig = opt(SieveConfig())
    srs: SrsConfig = opt(SrsConfig())
    filters: list[FilterConfig] = opt([])
    path: Path | None = None

    @property
    def hostname(self) -> str:
        return self.server.hostname or socket.getfqdn()

    @property
    def default_domain(self) -> str:
        return self.server.domains[0]


# --- the loader ---------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list of " + _type_name(typing.get_args(tp)[0]).removeprefix("a ").removeprefix("an ") + "s"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        Path: "a path (string)",
        dict: "a table",
    }.get(tp, str(tp))


class _Loader:
    def __init__(self, source: str, base: Path):
        self.source = source
        self.base = base

    def fail(self, key: str, expected: str, got: Any = dataclasses.MISSING) -> typing.NoReturn:
        shown = "" if got is dataclasses.MISSING else f", got {got!r}"
        raise ConfigError(f"{self.source}: {key}: expected {expected}{shown}")

    def value(self, tp: Any, raw: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            if not isinstance(raw, dict):
                self.fail(key, "a table", raw)
            return self.table(tp, raw, key)
        if origin is list:
            if not isinstance(raw, list):
                self.fail(key, _type_name(tp), raw)
            (item,) = typing.get_args(tp)
            return [self.value(item, v, f"{key}[{i}]") for i, v in enumerate(raw)]
        if tp is bool:
            if not isinstance(raw, bool):
                self.fail(key, "true or false", raw)
            return raw
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.fail(key, "an integer", raw)
            return raw
        if tp is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                self.fail(key, "a number", raw)
            return float(raw)
        if tp is str:
            if not isinstance(raw, str):
                self.fail(key, "a string", raw)
            return raw
        if tp is dict:  # free-form options, checked by whoever takes them (a filter)
            if not isinstance(raw, dict):
                self.fail(key, "a table", raw)
            return dict(raw)
        if tp is Path:
            if not isinstance(raw, str) or not raw:
                self.fail(key, "a path (non-empty string)", raw)
            p = Path(raw).expanduser()
            return p if p.is_absolute() else self.base / p
        raise AssertionError(f"unsupported config type {tp!r}")  # a schema bug

    def table(self, cls: type, raw: dict, prefix: str) -> Any:
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}
        for k in raw:
            if k not in known:
                where = f"{prefix}.{k}" if prefix else k
                expected = "one of " + ", ".join(sorted(known))
                raise ConfigError(f"{self.source}: {where}: unknown key (expected {expected})")
        values = {}
        for name, f in known.items():
            key = f"{prefix}.{name}" if prefix else name
            if name in raw:
                val = self.value(hints[name], raw[name], key)
                check = f.metadata.get("check")
                if check is not None:
                    problem = check(val)
                    if problem:
                        self.fail(key, problem, raw[name])
                values[name] = val
            elif f.metadata.get("required"):
                raise ConfigError(f"{self.source}: {key}: missing (required)")
        return cls(**values)


def _resolve_sqlite(url: str, base: Path) -> str:
    """Make a relative SQLite path relative to the config file, not the cwd."""
    m = re.match(r"^(sqlite(\+[a-z0-9_]+)?:///)(.*)$", url)
    if m and m.group(3) and m.group(3) != ":memory:" and not m.group(3).startswith("/"):
        return m.group(1) + str(base / m.group(3))
    return url


def parse(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    base = base or Path.cwd()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    if "server" not in raw:
        raise ConfigError(f"{source}: server: missing section (expected hostname and domains)")
    cfg = _Loader(source, base).table(Config, raw, "")
    cfg = dataclasses.replace(
        cfg,
        database=dataclasses.replace(cfg.database, url=_resolve_sqlite(cfg.database.url, base)),
    )
    if cfg.queue.retry_max < cfg.queue.retry_min:
        raise ConfigError(f"{source}: queue.retry_max: expected at least retry_min ({cfg.queue.retry_min})")
    throttle = cfg.auth.throttle
    if throttle.delay_max < throttle.delay_base:
        raise ConfigError(f"{source}: auth.throttle.delay_max: expected at least delay_base ({throttle.delay_base})")
    pw = cfg.auth.password
    if pw.max_length < pw.min_length:
        raise ConfigError(f"{source}: auth.password.max_length: expected at least min_length ({pw.min_length})")
    seen: set[tuple[str, int]] = set()
    for section, listeners in (("imap", cfg.imap.listeners), ("smtp", cfg.smtp.listeners), ("http", cfg.http.listeners),
                                ("managesieve", cfg.managesieve.listeners)):
        for i, lst in enumerate(listeners):
            if (lst.address, lst.port) in seen:
                raise ConfigError(
                    f"{source}: {section}.listeners[{i}]: {lst.address} port {lst.port} is already used by another listener"
                )
            seen.add((lst.address, lst.port))
            if getattr(lst, "proxy", False) and not cfg.server.proxy_trusted:
                raise ConfigError(
                    f"{source}: server.proxy_trusted: expected the networks of the load balancers"
                    f" ({section}.listeners[{i}] has proxy = true)"
                )
    return cfg


# What a reload (SIGHUP) cannot change in a running daemon: sockets, processes,
# paths and what was built from them at start.  A whole section or one key.
RESTART_ONLY: tuple[str, ...] = (
    "server.hostname", "server.domains", "server.proxy_trusted",
    "imap.enabled", "imap.workers", "imap.listeners",
    "smtp.enabled", "smtp.workers", "smtp.listeners", "smtp.max_transfers",
    "http", "metrics", "srs", "storage", "database",
    "managesieve.enabled", "managesieve.workers", "managesieve.listeners",
    "tls.min_version", "tls.ciphers", "auth.secret_file", "auth.argon2",
    "queue.concurrency", "queue.per_destination",
)


def keep_restart_only(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the RESTART_ONLY values of ``running``, and the keys whose
    change must wait for a restart."""
    waiting = []
    for key in RESTART_ONLY:
        section, _, name = key.partition(".")
        old_sec, new_sec = getattr(running, section), getattr(new, section)
        if not name:
            if old_sec != new_sec:
                waiting.append(key)
                new = dataclasses.replace(new, **{section: old_sec})
        elif getattr(old_sec, name) != getattr(new_sec, name):
            waiting.append(key)
            new = dataclasses.replace(new, **{section: dataclasses.replace(new_sec, **{name: getattr(old_sec, name)})})
    return new, waiting


def load(path: Path | str) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read configuration: {getattr(e, 'strerror', None) or e}") from None
    cfg = parse(text, str(path), path.resolve().parent)
    return dataclasses.replace(cfg, path=path)


def default_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILSTACK_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


__all__ = [
    "Config",
    "ConfigError",
    "DEFAULT_CONFIG_PATH",
    "MAX_MESSAGE_SIZE",
    "default_path",
    "load",
    "parse",
]
