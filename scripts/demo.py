"""`make run`: create the dev home with two demo accounts (once), print how to connect."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from mailstack.accounts.directory import Directory
from mailstack.accounts.passwords import PolicyError, check_policy
from mailstack.cli import DAEMON_COMMANDS
from mailstack.config import load
from mailstack.files import write_atomic
from mailstack.home import init_home

DOMAIN = "ac-normandie.test"
PEOPLE = [("Camille", "Dupont-Lefèvre"), ("Éloïse", "D'Hérouville")]


def demo_password(cfg, first: str, last: str) -> str:
    while True:
        pw = f"{secrets.token_urlsafe(9)}-{secrets.randbelow(90) + 10}!"
        try:
            check_policy(cfg.auth.password, pw, "", first, last)
            return pw
        except PolicyError:
            continue


def main(home: Path) -> None:
    accounts_file = home / "demo-accounts.txt"
    if not (home / "mailstack.toml").exists():
        init_home(home, DOMAIN, dev=True)
        cfg = load(home / "mailstack.toml")
        directory = Directory(cfg)
        lines = []
        for first, last in PEOPLE:
            pw = demo_password(cfg, first, last)
            info = directory.add_user(first, last, password=pw)
            lines.append(f"{info.login} {info.address} {pw}")
        directory.engine.dispose()
        write_atomic(accounts_file, "\n".join(lines) + "\n", 0o600)
    cfg = load(home / "mailstack.toml")
    ports = {(x.tls, x.port) for x in cfg.imap.listeners} | {(x.kind + x.tls, x.port) for x in cfg.smtp.listeners}
    port = dict(ports)
    print(f"\nmailstack demo home: {home}  (config {home / 'mailstack.toml'})\n")
    print("Demo accounts (user name, address, password):")
    for line in accounts_file.read_text().splitlines():
        login, address, pw = line.split(" ", 2)
        print(f"  {login:24} {address:40} {pw}")
    missing = [d for d in ("imapd", "smtpd") if d not in DAEMON_COMMANDS]
    status = (
        f"Note: this version has no {' or '.join(missing)} yet (see README, Status): those ports stay closed.\n"
        if missing
        else ""
    )
    print(
        f"""
Mail client settings (self-signed certificate for 'localhost': accept it once):
  IMAP  127.0.0.1 port {port.get('implicit')} SSL/TLS     (or {port.get('starttls')} STARTTLS)
  SMTP  127.0.0.1 port {port.get('submissionstarttls')} STARTTLS    (or {port.get('submissionimplicit')} SSL/TLS)
  User name: the login above; password: the one above.

{status}Admin:  .venv/bin/mailstack -c {home / 'mailstack.toml'} user list
Stop with Ctrl-C.
"""
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "var/demo"))
