"""``mailstack [-c CONFIG] COMMAND``: the operator's command line.

Errors are one line on stderr naming the problem: exit 2 for usage errors,
1 for failures, never a traceback (MAILSTACK_DEBUG=1 shows one).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from . import __version__
from .config import Config, ConfigError, default_path, load

# Daemon commands that exist; ``serve`` starts these (see daemon.py).
DAEMON_COMMANDS: tuple[str, ...] = ("imapd", "smtpd", "httpd", "managesieved")


class UsageError(Exception):
    """Exit 2: the command line itself is wrong."""


class Failure(Exception):
    """Exit 1: the command was understood but could not be carried out."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _password_from_stdin(confirm: bool = True) -> str:
    """First line of stdin; on a terminal, a hidden prompt (twice)."""
    if sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Again: ") != pw:
            raise Failure("the two passwords differ")
        return pw
    line = sys.stdin.readline()
    if not line:
        raise Failure("no password on standard input")
    return line.rstrip("\r\n")


def _fmt_time(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "never"


# --- commands --------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, _cfg_path: Path) -> int:
    from .home import init_home
    from .tls import describe_certificate

    cfg_path = init_home(Path(args.home), args.domain, args.hostname, args.dev, args.force)
    cfg = load(cfg_path)
    print(f"created {cfg_path}")
    print(f"certificate: {describe_certificate(cfg.tls.certificate)}")
    print(f"use it with: mailstack -c {cfg_path} COMMAND  (or export MAILSTACK_CONFIG={cfg_path})")
    return 0


def _directory(cfg: Config):
    from .accounts.directory import Directory

    d = Directory(cfg)
    d.check_schema()
    return d


def cmd_user_add(args: argparse.Namespace, cfg: Config) -> int:
    if bool(args.numen) != bool(args.birth_date):
        raise UsageError("mailstack user add: --numen and --birth-date go together")
    if not args.password_stdin and not args.numen:
        raise UsageError("mailstack user add: give --password-stdin, or --numen with --birth-date for a pending account")
    password = _password_from_stdin() if args.password_stdin else None
    info = _directory(cfg).add_user(
        args.prenom,
        args.nom,
        domain=args.domain,
        password=password,
        numen=args.numen,
        birth_date=args.birth_date,
        recovery_email=args.recovery_email,
    )
    print(info.login)
    print(info.address)
    from .mailboxes import mailbox_for

    try:
        mailbox_for(cfg, info)
    except OSError as e:
        print(f"mailstack: warning: the Maildir was not created: {e.strerror}: {e.filename}", file=sys.stderr)
    if info.state == "pending":
        print("state: pending activation (mailstack activate)", file=sys.stderr)
    return 0


def cmd_user_list(args: argparse.Namespace, cfg: Config) -> int:
    users = _directory(cfg).list_users()
    rows = [("LOGIN", "ADDRESS", "STATE", "LAST LOGIN")]
    rows += [(u.login, u.address, u.state, _fmt_time(u.last_login_at)) for u in users]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
    return 0


def cmd_user_show(args: argparse.Namespace, cfg: Config) -> int:
    u = _directory(cfg).get(args.login)
    fields = [
        ("login", u.login),
        ("address", u.address),
        ("first name", u.first_name),
        ("family name", u.last_name),
        ("state", u.state + (f" ({u.disabled_reason})" if u.state == "disabled" and u.disabled_reason else "")),
        ("created", _fmt_time(u.created_at)),
        ("activated", _fmt_time(u.activated_at)),
        ("password changed", _fmt_time(u.password_changed_at)),
        ("last login", _fmt_time(u.last_login_at)),
        ("recovery email", u.recovery_email or "-"),
        ("activation data", "yes" if u.pending_activation_data else "no"),
    ]
    if u.state == "locked":
        fields.append(("locked until", _fmt_time(u.locked_until)))
    fields.append(("quota", _quota_text(cfg, u)))
    for k, v in fields:
        print(f"{k + ':':18}{v}")
    return 0


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _quota_text(cfg: Config, u) -> str:
    from .mailboxes import limits
    from .store.quota import Quota

    qb, qm = limits(cfg, u)
    maildir = cfg.storage.mail_root / u.address.rsplit("@", 1)[1] / u.login / "Maildir"
    used = Quota(maildir, qb, qm).usage() if maildir.is_dir() else None
    b = f"{_fmt_size(used.bytes) if used else '-'} of {_fmt_size(qb) if qb else 'unlimited'}"
    m = f"{used.messages if used else '-'} of {qm if qm else 'unlimited'} messages"
    return f"{b}, {m}"


def _parse_size(text: str) -> int:
    """1048576, 500M, 2G, 1.5T (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "KMGT" and t[-1:] else t
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"mailstack user quota: {text!r} is not a size (e.g. 2G, 500M, 0 for none)") from None
    if value < 0:
        raise UsageError(f"mailstack user quota: {text!r} is negative")
    return int(value * mult)


def cmd_user_quota(args: argparse.Namespace, cfg: Config) -> int:
    d = _directory(cfg)
    info = d.get(args.login)
    if args.bytes is not None or args.messages is not None or args.default:
        qb = None if args.default else (_parse_size(args.bytes) if args.bytes is not None else info.quota_bytes)
        qm = None if args.default else (int(_parse_size(args.messages)) if args.messages is not None else info.quota_messages)
        info = d.set_quota(args.login, qb, qm)
    print(f"{info.login}: {_quota_text(cfg, info)}")
    return 0


def cmd_user_passwd(args: argparse.Namespace, cfg: Config) -> int:
    d = _directory(cfg)
    d.get(args.login)  # fail on an unknown login before asking for a password
    info = d.set_password(args.login, _password_from_stdin())
    print(f"password changed for {info.login}")
    return 0


def cmd_user_disable(args: argparse.Namespace, cfg: Config) -> int:
    info = _directory(cfg).disable(args.login)
    print(f"{info.login} disabled")
    return 0


def cmd_user_enable(args: argparse.Namespace, cfg: Config) -> int:
    info = _directory(cfg).enable(args.login)
    print(f"{info.login} enabled")
    return 0


def cmd_user_delete(args: argparse.Namespace, cfg: Config) -> int:
    info = _directory(cfg).delete(args.login)
    maildir = cfg.storage.mail_root / info.address.rsplit("@", 1)[1] / info.login
    print(f"{info.login} deleted" + (f"; its mail is kept in {maildir}" if maildir.exists() else ""))
    return 0


def cmd_user_expire(args: argparse.Namespace, cfg: Config) -> int:
    if not cfg.auth.inactivity_days:
        print("auth.inactivity_days is 0: no account is disabled for inactivity")
        return 0
    for login in _directory(cfg).disable_inactive():
        print(f"{login} disabled (no login for {cfg.auth.inactivity_days} days)")
    return 0


def cmd_activate(args: argparse.Namespace, cfg: Config) -> int:
    from .accounts.directory import ActivationRefused

    password = _password_from_stdin()
    try:
        info = _directory(cfg).activate(args.numen, args.birth_date, args.name, password, client="cli")
    except ActivationRefused as e:
        time.sleep(e.delay)
        raise
    print(info.login)
    print(info.address)
    return 0


def cmd_alias_add(args: argparse.Namespace, cfg: Config) -> int:
    targets = _directory(cfg).add_alias(args.address, args.targets)
    print(f"{args.address.lower()} -> {', '.join(targets)}")
    return 0


def cmd_alias_list(args: argparse.Namespace, cfg: Config) -> int:
    for address, targets in _directory(cfg).list_aliases():
        print(f"{address} -> {', '.join(targets)}")
    return 0


def cmd_alias_remove(args: argparse.Namespace, cfg: Config) -> int:
    _directory(cfg).remove_alias(args.address, args.targets)
    print(f"removed {args.address.lower()}" + (f" targets {', '.join(args.targets)}" if args.targets else ""))
    return 0


def cmd_db_upgrade(args: argparse.Namespace, cfg: Config) -> int:
    from .accounts import db

    engine = db.make_engine(cfg.database.url)
    before = db.current_revision(engine)
    db.upgrade(engine)
    after = db.current_revision(engine)
    print(f"schema {before or 'empty'} -> {after}" if before != after else f"schema already at {after}")
    return 0


def cmd_db_status(args: argparse.Namespace, cfg: Config) -> int:
    from .accounts import db

    engine = db.make_engine(cfg.database.url)
    current, head = db.current_revision(engine), db.head_revision()
    print(f"database: {engine.url.render_as_string(hide_password=True)}")
    print(f"schema:   {current or 'empty'} (this mailstack needs {head})")
    return 0 if current == head else 1


def cmd_imapd(args: argparse.Namespace, cfg: Config) -> int:
    from .daemon import setup_logging

    setup_logging(cfg.server.log_level, "imapd")
    _directory(cfg).engine.dispose()  # refuse to start on a missing or old schema
    from .imap.server import run

    return run(cfg)


def cmd_smtpd(args: argparse.Namespace, cfg: Config) -> int:
    from .daemon import setup_logging

    setup_logging(cfg.server.log_level, "smtpd")
    _directory(cfg).engine.dispose()  # refuse to start on a missing or old schema
    from .smtp.server import run

    return run(cfg)


def cmd_managesieved(args: argparse.Namespace, cfg: Config) -> int:
    from .daemon import setup_logging

    setup_logging(cfg.server.log_level, "managesieved")
    _directory(cfg).engine.dispose()  # refuse to start on a missing or old schema
    from .managesieve.server import run

    return run(cfg)


def cmd_httpd(args: argparse.Namespace, cfg: Config) -> int:
    from .daemon import setup_logging

    setup_logging(cfg.server.log_level, "httpd")  # no database: it serves documents built from the config
    from .autoconfig.server import run

    return run(cfg)


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    from .daemon import serve, setup_logging

    setup_logging(cfg.server.log_level, "serve")
    _directory(cfg).engine.dispose()  # refuse to start on a missing or old schema
    assert cfg.path is not None
    return serve(cfg, cfg.path)


def cmd_dkim_keygen(args: argparse.Namespace, cfg: Config) -> int:
    from .mailauth.keys import DkimKeyError, keygen, txt_chunks

    domain = args.domain.lower()
    if domain not in cfg.server.domains:
        raise Failure(f"{domain} is not one of server.domains ({', '.join(cfg.server.domains)})")
    try:
        key = keygen(cfg.dkim.keys, domain, args.selector, args.algorithm)
    except DkimKeyError as e:
        raise Failure(str(e)) from None
    print(f"created {key.path} ({key.algorithm}); publish this record, then mail is signed with it:")
    print(f"{key.dns_name}. IN TXT {txt_chunks(key.txt_record())}")
    return 0


def cmd_dns(args: argparse.Namespace, cfg: Config) -> int:
    from .dnsrecords import run_dns_command

    return run_dns_command(args, cfg)


def cmd_check(args: argparse.Namespace, cfg_path: Path) -> int:
    # Loads the configuration itself: one that does not load is a FAIL line of the report.
    from .check import run_check_command

    return run_check_command(args, cfg_path)


def cmd_sieve(args: argparse.Namespace, cfg: Config) -> int:
    from .sievecli import run_sieve_command

    return run_sieve_command(args, cfg)


def cmd_vacation(args: argparse.Namespace, cfg: Config) -> int:
    from .sievecli import run_vacation_command

    return run_vacation_command(args, cfg)


def cmd_quarantine(args: argparse.Namespace, cfg: Config) -> int:
    from .smtp.queuecli import run_quarantine_command

    return run_quarantine_command(args, cfg)


def cmd_queue(args: argparse.Namespace, cfg: Config) -> int:
    from .smtp.queuecli import run_queue_command

    return run_queue_command(args, cfg)


# --- parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mailstack", description="mailstack mail server administration")
    p.add_argument("-c", "--config", help="configuration file (default: $MAILSTACK_CONFIG, then /etc/mailstack/mailstack.toml)")
    p.add_argument("--version", action="version", version=f"mailstack {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def cmd(parent, name: str, func: Callable, help: str, needs_config: bool = True) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func, needs_config=needs_config)
        return sp

    sp = cmd(sub, "init", cmd_init, "create a working home (config, certificate, database, mail root, spool)", False)
    sp.add_argument("--home", required=True, help="directory to create")
    sp.add_argument("--domain", required=True, help="the mail domain, e.g. ac-normandie.fr")
    sp.add_argument("--hostname", help="host name for the certificate (default mail.DOMAIN, localhost with --dev)")
    sp.add_argument("--dev", action="store_true", help="listen on 127.0.0.1, standard ports + 10000")
    sp.add_argument("--force", action="store_true", help="rewrite an existing home's configuration and certificate")

    user = sub.add_parser("user", help="manage accounts", description="manage accounts")
    usub = user.add_subparsers(dest="user_command", metavar="ACTION", parser_class=_Parser)
    usub.required = True
    sp = cmd(usub, "add", cmd_user_add, "create an account; prints the login, then the address")
    sp.add_argument("prenom", metavar="PRENOM")
    sp.add_argument("nom", metavar="NOM")
    sp.add_argument("--domain", help="mail domain (default: the first of server.domains)")
    sp.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    sp.add_argument("--numen", help="NUMEN, for activation by the user")
    sp.add_argument("--birth-date", metavar="YYYY-MM-DD", help="birth date, for activation by the user")
    sp.add_argument("--recovery-email", metavar="ADDR", help="address for password recovery")
    cmd(usub, "list", cmd_user_list, "list accounts")
    for name, func, text in (
        ("show", cmd_user_show, "show one account"),
        ("disable", cmd_user_disable, "disable an account (logins refused, mail kept)"),
        ("enable", cmd_user_enable, "re-enable a disabled or locked account"),
        ("delete", cmd_user_delete, "delete an account"),
    ):
        cmd(usub, name, func, text).add_argument("login", metavar="LOGIN")
    sp = cmd(usub, "passwd", cmd_user_passwd, "set a password")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("--password-stdin", action="store_true", required=True, help="read the password from standard input")
    cmd(usub, "expire-inactive", cmd_user_expire, "disable accounts without a login for auth.inactivity_days")
    sp = cmd(usub, "quota", cmd_user_quota, "show or set an account's quota (bytes and messages; 0 = none)")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("--bytes", metavar="SIZE", help="e.g. 2G, 500M; 0 for no limit")
    sp.add_argument("--messages", metavar="N", help="number of messages; 0 for no limit")
    sp.add_argument("--default", action="store_true", help="use the [storage] defaults again")

    sp = cmd(sub, "activate", cmd_activate, "first activation of a pending account (NUMEN, birth date, family name)")
    sp.add_argument("--numen", required=True)
    sp.add_argument("--birth-date", required=True, metavar="YYYY-MM-DD")
    sp.add_argument("--name", required=True, help="family name")
    sp.add_argument("--password-stdin", action="store_true", required=True, help="read the new password from standard input")

    alias = sub.add_parser("alias", help="manage aliases and distribution lists", description="manage aliases and lists")
    asub = alias.add_subparsers(dest="alias_command", metavar="ACTION", parser_class=_Parser)
    asub.required = True
    sp = cmd(asub, "add", cmd_alias_add, "create an alias or list, or add targets to it")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("targets", metavar="TARGET", nargs="+", help="login, local address or remote address")
    cmd(asub, "list", cmd_alias_list, "list aliases and lists")
    sp = cmd(asub, "remove", cmd_alias_remove, "remove an alias or list, or only some of its targets")
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("targets", metavar="TARGET", nargs="*")

    dbp = sub.add_parser("db", help="database schema", description="database schema")
    dsub = dbp.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser)
    dsub.required = True
    cmd(dsub, "upgrade", cmd_db_upgrade, "apply schema migrations")
    cmd(dsub, "status", cmd_db_status, "show the schema version (exit 1 if not current)")

    dk = sub.add_parser("dkim", help="DKIM signing keys", description="DKIM signing keys")
    dksub = dk.add_subparsers(dest="dkim_command", metavar="ACTION", parser_class=_Parser)
    dksub.required = True
    sp = cmd(dksub, "keygen", cmd_dkim_keygen, "make a signing key for a domain and print its DNS record")
    sp.add_argument("domain", metavar="DOMAIN")
    sp.add_argument("--selector", help="DNS selector (default: rsaYYYYMM or edYYYYMM)")
    sp.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa", help="rsa (2048 bits, default) or ed25519")

    sp = cmd(sub, "dns", cmd_dns, "print the DNS records to publish for a domain, or check them (--check)")
    sp.add_argument("domain", metavar="DOMAIN")
    sp.add_argument("--check", action="store_true", help="resolve the records and say which are missing or wrong")

    q = sub.add_parser("queue", help="the outbound queue", description="the outbound queue")
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION", parser_class=_Parser)
    qsub.required = True
    cmd(qsub, "list", cmd_queue, "list queued messages")
    for name, text in (
        ("show", "show one message's envelope, attempts and headers"),
        ("delete", "remove a message from the queue (no bounce)"),
        ("hold", "keep a message in the queue without delivering it"),
        ("release", "let a held message be delivered again"),
    ):
        cmd(qsub, name, cmd_queue, text).add_argument("id", metavar="ID")
    cmd(qsub, "flush", cmd_queue, "try now: every message, or one").add_argument("id", metavar="ID", nargs="?")

    from .sievecli import add_parsers as add_sieve_parsers

    add_sieve_parsers(sub, cmd, _Parser)

    qa = sub.add_parser("quarantine", help="messages a filter held back", description="messages a filter held back")
    qasub = qa.add_subparsers(dest="quarantine_command", metavar="ACTION", parser_class=_Parser)
    qasub.required = True
    cmd(qasub, "list", cmd_quarantine, "list quarantined messages").add_argument("--domain", help="only this recipient domain")
    for name, text in (
        ("show", "show why a message is held, its envelope and headers"),
        ("release", "deliver a held message to its recipients (no more filtering)"),
        ("delete", "remove a held message"),
    ):
        cmd(qasub, name, cmd_quarantine, text).add_argument("id", metavar="ID")

    sp = cmd(sub, "check", cmd_check, "check the installation: config, certificate, permissions, database, ports (exit 1 on a problem)", False)
    sp.add_argument("--dns", action="store_true", help="also check every domain's DNS records (mailstack dns --check)")
    sp.add_argument("--quiet", "-q", action="store_true", help="print only problems and warnings, then the summary")
    sp.add_argument("--user", help="the user the daemons run as (default: mailstack when run as root and it exists, else the current user)")

    cmd(sub, "serve", cmd_serve, "run every configured daemon in the foreground")
    cmd(sub, "imapd", cmd_imapd, "run the IMAP daemon in the foreground (systemd: mailstack-imapd.service)")
    cmd(sub, "smtpd", cmd_smtpd, "run the SMTP daemon in the foreground (systemd: mailstack-smtpd.service)")
    cmd(sub, "httpd", cmd_httpd, "run the client autoconfiguration HTTPS daemon in the foreground (systemd: mailstack-httpd.service)")
    cmd(sub, "managesieved", cmd_managesieved, "run the ManageSieve daemon (Sieve filters, port 4190) in the foreground (systemd: mailstack-managesieved.service)")
    return p


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .accounts.db import SchemaError
    from .accounts.directory import DirectoryError
    from .filters import FilterError
    from .home import HomeError
    from .sievecli import SieveCliError
    from .tls import TlsError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        cfg_path = default_path(args.config)
        if args.needs_config:
            cfg = load(cfg_path)
            return args.func(args, cfg)
        return args.func(args, cfg_path)
    except UsageError as e:
        print(f"{_one_line(e)} (see --help)", file=sys.stderr)
        return 2
    except (Failure, ConfigError, DirectoryError, FilterError, HomeError, SchemaError, SieveCliError, TlsError) as e:
        print(f"mailstack: {_one_line(e)}", file=sys.stderr)
        return 1
    except SQLAlchemyError as e:
        print(f"mailstack: database error: {_one_line(e.orig or e) if hasattr(e, 'orig') else _one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"mailstack: {e.strerror or e}{':' if where else ''}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mailstack: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, the traceback on request
        if os.environ.get("MAILSTACK_DEBUG"):
            traceback.print_exc()
        print(f"mailstack: internal error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
