"""``mailstack sieve ...`` and ``mailstack vacation ...``: an operator's hands
on accounts' Sieve scripts (users edit theirs over ManageSieve)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path

from typing import TYPE_CHECKING

from .config import Config

if TYPE_CHECKING:  # the language and the accounts load when a sieve command runs, not for every command
    from .sieve.scripts import ScriptStore

VACATION_SCRIPT = "vacation"  # the script `vacation set` makes when none is active


class SieveCliError(Exception):
    """One line for the operator (cli.py prints it, exit 1)."""


def _store(cfg: Config, login: str) -> ScriptStore:
    from .accounts.directory import Directory, DirectoryError
    from .mailboxes import scripts_for

    directory = Directory(cfg)
    try:
        info = directory.get(login)
    except DirectoryError as e:
        raise SieveCliError(str(e)) from None
    finally:
        directory.engine.dispose()
    _become_mail_owner(cfg)
    return scripts_for(cfg, info)


def _become_mail_owner(cfg: Config) -> None:
    """Run as root, the CLI becomes the daemons' user (the owner of the mail
    root) before it touches an account's files: what it writes is theirs,
    and a link they planted cannot make root write elsewhere."""
    if os.geteuid() != 0:
        return
    try:
        st = cfg.storage.mail_root.stat()
    except OSError as e:
        raise SieveCliError(f"mail root {cfg.storage.mail_root}: {e.strerror}") from None
    if st.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)


def _read(file: str) -> str:
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as e:
        raise SieveCliError(f"{file}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SieveCliError(f"{file}: not UTF-8 text") from None


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SieveCliError(f"{option} {text!r}: expected a date as YYYY-MM-DD") from None


def run_sieve_command(args: argparse.Namespace, cfg: Config) -> int:
    from .sieve.errors import SieveError
    from .sieve.scripts import ScriptError

    try:
        return _sieve(args, cfg)
    except (ScriptError, SieveError, SieveCliError) as e:
        where = f"{getattr(args, 'file', '') or getattr(args, 'name', '')}: " if isinstance(e, SieveError) else ""
        raise SieveCliError(f"{where}{e}") from None


def _sieve(args: argparse.Namespace, cfg: Config) -> int:
    from .sieve.scripts import ScriptStore

    action = args.sieve_command
    if action == "put":  # read while still the caller (root may read what the daemons' user cannot)
        if args.file == "-" and not args.name:
            raise SieveCliError("--name is needed when the script comes from standard input")
        args.text = _read(args.file)
    if action == "check":
        ScriptStore(Path("/nonexistent")).check(_read(args.file))
        print(f"{args.file}: valid")
        return 0
    store = _store(cfg, args.login)
    if action == "list":
        for name, active in store.list():
            print(f"{name}{'  (active)' if active else ''}")
        return 0
    if action == "get":
        sys.stdout.write(store.get(args.name))
        return 0
    if action == "put":
        name = args.name or Path(args.file).stem
        store.put(name, args.text)
        if args.activate:
            store.activate(name)
        print(f"stored {name}{' (active)' if args.activate else ''}")
        return 0
    if action == "activate":
        store.activate(args.name)
    elif action == "deactivate":
        store.activate(None)
    elif action == "delete":
        store.delete(args.name)
    return 0


def run_vacation_command(args: argparse.Namespace, cfg: Config) -> int:
    from .sieve.errors import SieveError
    from .sieve.scripts import ScriptError

    try:
        return _vacation(args, cfg)
    except (ScriptError, SieveError) as e:
        raise SieveCliError(str(e)) from None


def _vacation(args: argparse.Namespace, cfg: Config) -> int:
    from .sieve.vacation import BEGIN, END, rule, with_rule, without_rule

    message = _read(args.message_file).strip() if args.vacation_command == "set" else ""
    store = _store(cfg, args.login)
    active = store.active()
    current = store.get(active) if active else ""
    if args.vacation_command == "show":
        if BEGIN not in current:
            print("no vacation reply")
        else:
            print(f"in script {active}:")
            print(current[current.index(BEGIN):].split("\n" + END, 1)[0])
        return 0
    if args.vacation_command == "off":
        if BEGIN not in current:
            print("no vacation reply was set")
            return 0
        rest = without_rule(current)
        if rest == current:
            raise SieveCliError(f"the vacation markers in script {active!r} were edited: remove the rule by hand")
        if active == VACATION_SCRIPT and not rest.strip():
            store.activate(None)
            store.delete(VACATION_SCRIPT)
        else:
            store.put(active, rest)
        print("vacation reply removed")
        return 0
    start, until = _day(args.start, "--from"), _day(args.until, "--until")
    if until < start:
        raise SieveCliError("--until is before --from")
    if not 1 <= args.days <= 365:
        raise SieveCliError("--days: expected 1 to 365")
    if BEGIN in current and without_rule(current) == current:
        raise SieveCliError(f"the vacation markers in script {active!r} were edited: fix them by hand")
    if not message:
        raise SieveCliError(f"{args.message_file}: the message is empty")
    text = with_rule(current, rule(start, until, args.subject, message, args.days, args.address or []))
    name = active or VACATION_SCRIPT
    store.put(name, text)
    store.activate(name)
    print(f"vacation reply from {start} until {until} in script {name} (active)")
    return 0


def add_parsers(sub, cmd, parser_class) -> None:
    """The ``sieve`` and ``vacation`` subcommands (cli.py's ``cmd`` helper adds one)."""
    from . import cli

    s = sub.add_parser("sieve", help="accounts' Sieve filters", description="accounts' Sieve filters")
    ssub = s.add_subparsers(dest="sieve_command", metavar="ACTION", parser_class=parser_class)
    ssub.required = True
    cmd(ssub, "list", cli.cmd_sieve, "list an account's scripts (the active one marked)").add_argument("login", metavar="LOGIN")
    sp = cmd(ssub, "get", cli.cmd_sieve, "print a script")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("name", metavar="NAME")
    sp = cmd(ssub, "put", cli.cmd_sieve, "store a script (checked first); FILE - reads standard input")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--name", help="script name (default: the file name without its extension)")
    sp.add_argument("--activate", action="store_true", help="make it the active script")
    for name, text in (("activate", "make a script the active one"), ("delete", "remove a script (not the active one)")):
        sp = cmd(ssub, name, cli.cmd_sieve, text)
        sp.add_argument("login", metavar="LOGIN")
        sp.add_argument("name", metavar="NAME")
    cmd(ssub, "deactivate", cli.cmd_sieve, "no active script: mail goes to INBOX").add_argument("login", metavar="LOGIN")
    cmd(ssub, "check", cli.cmd_sieve, "check a script without storing it").add_argument("file", metavar="FILE")

    v = sub.add_parser("vacation", help="absence replies", description="absence replies (a rule in the active Sieve script)")
    vsub = v.add_subparsers(dest="vacation_command", metavar="ACTION", parser_class=parser_class)
    vsub.required = True
    sp = cmd(vsub, "set", cli.cmd_vacation, "answer mail between two dates (inclusive), once per sender per period")
    sp.add_argument("login", metavar="LOGIN")
    sp.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD")
    sp.add_argument("--until", required=True, metavar="YYYY-MM-DD")
    sp.add_argument("--subject", required=True)
    sp.add_argument("--message-file", required=True, metavar="FILE", help="the reply's text (UTF-8); - for standard input")
    sp.add_argument("--days", type=int, default=7, help="answer one sender at most once in this many days (default 7)")
    sp.add_argument("--address", action="append", metavar="ADDRESS", help="another address of the user's (repeatable)")
    cmd(vsub, "off", cli.cmd_vacation, "remove the absence reply").add_argument("login", metavar="LOGIN")
    cmd(vsub, "show", cli.cmd_vacation, "print the absence reply rule").add_argument("login", metavar="LOGIN")


__all__ = ["SieveCliError", "add_parsers", "run_sieve_command", "run_vacation_command"]
