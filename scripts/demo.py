"""`make run`: create the dev home with two demo accounts (once), print how to connect."""

from __future__ import annotations

import secrets
import sys
from datetime import date
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


def seed_sieve(cfg, directory: Directory, lines: list[str]) -> None:
    """The académie's three automatic rules, for the first demo account:
    rectorate circulars into "Institution", mail from the head of school (the
    second demo account) flagged, an absence reply over the winter holidays."""
    from mailstack.mailboxes import scripts_for
    from mailstack.sieve.vacation import rule, with_rule

    teacher, head = (line.split(" ")[0] for line in lines[:2])
    head_address = directory.get(head).address
    rules = f"""require ["fileinto", "mailbox", "imap4flags"];
# Circulars from the rectorate
if allof (address :domain :is "from" "region-academique-normandie.fr",
          header :contains "subject" "Circulaire") {{
    fileinto :create "Institution";
    stop;
}}
# Mail from the head of school
if address :is "from" "{head_address}" {{
    addflag "\\\\Flagged";
}}
"""
    absence = rule(date(2026, 12, 19), date(2027, 1, 4), "Absence pendant les vacances",
                   "Je suis en congés jusqu'au 4 janvier ; je vous répondrai à mon retour.", 7, [])
    store = scripts_for(cfg, directory.get(teacher))
    store.put("regles", with_rule(rules, absence))
    store.activate("regles")


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
        seed_sieve(cfg, directory, lines)
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
  Filters (ManageSieve): 127.0.0.1 port {cfg.managesieve.listeners[0].port} STARTTLS; autoconfiguration: https://127.0.0.1:{cfg.http.listeners[0].port}/

Sieve: the first account runs the académie's rules (circulars into "Institution", the head of
school's mail flagged, an absence reply over the winter holidays):
  .venv/bin/mailstack -c {home / 'mailstack.toml'} sieve get {accounts_file.read_text().split()[0]} regles

{status}Admin:  .venv/bin/mailstack -c {home / 'mailstack.toml'} user list
Stop with Ctrl-C.
"""
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "var/demo"))
