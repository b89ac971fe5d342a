"""Sieve and observability benchmark: what a user's filters, the metrics and
the per-event logs cost mailstack smtpd.

Run: .venv/bin/python bench/sieve.py
The SMTP throughput of bench/smtp.py (Postfix's smtp-source, 5 KB messages,
20 sessions, one per connection, local delivery with fsync into one
Maildir) for:
  - no script, metrics on (the default), logs at info;
  - metrics off; logs at warning (no per-session lines);
  - the académie's rules (two header/address rules, fileinto :create, a flag,
    a vacation rule with currentdate tests: one reply, then "already
    answered");
  - a body :contains test (the body is read) and a :regex header test.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port  # noqa: E402
from bench.smtp import DOMAIN, USER, Mailstack, started_rate  # noqa: E402
from mailstack import config as config_mod  # noqa: E402
from mailstack.accounts.directory import Directory  # noqa: E402
from mailstack.mailboxes import scripts_for  # noqa: E402

RULES = f"""require ["fileinto", "mailbox", "imap4flags", "vacation", "date", "relational"];
if allof (currentdate :value "ge" "date" "2000-01-01", currentdate :value "le" "date" "2999-12-31") {{
    vacation :days 7 :subject "Absent" "Je suis absent.";
}}
if allof (address :domain :is "from" "region-academique-normandie.fr", header :contains "subject" "Circulaire") {{
    fileinto :create "Institution";
    stop;
}}
if address :is "from" "principal@{DOMAIN}" {{ addflag "\\\\Flagged"; }}
"""
BODY = 'require "body";\nif body :contains "unsubscribe-me-please" { discard; stop; }\n'
REGEX = 'require ["regex", "imap4flags"];\nif header :regex "subject" "^(RE|TR|FW): +[0-9]{3,}" { addflag "$Reply"; }\n'


def set_script(ms: Mailstack, text: str | None) -> None:
    cfg = config_mod.load(ms.home / "mailstack.toml")
    d = Directory(cfg)
    store = scripts_for(cfg, d.get(USER))
    d.engine.dispose()
    if text is None:
        store.activate(None)
        return
    store.put("bench", text)
    store.activate("bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sieve-"))
    print(f"conditions: {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
          f"smtpd workers={args.workers or os.cpu_count()}, MX port without TLS, smtp-source {args.sessions} sessions, "
          f"{args.messages} messages of 5 KB, one per connection, delivered into one Maildir")
    ms = Mailstack(work, args.workers)
    base = (ms.home / "mailstack.toml").read_text()
    base = re.sub(r"(?m)^smtp_port = \d+$", f"smtp_port = {free_port()}", base)
    metrics_off = base.replace("[metrics]\n", "[metrics]\nenabled = false\n", 1)
    quiet = base.replace('log_level = "info"', 'log_level = "warning"', 1)
    assert metrics_off != base and quiet != base
    cases = [
        ("no script (metrics on, logs at info)", base, None),
        ("metrics off", metrics_off, None),
        ("logs at warning", quiet, None),
        ("académie rules", base, RULES),
        ("body :contains", base, BODY),
        (":regex header", base, REGEX),
    ]
    rates: dict[str, float] = {}
    for label, text, script in cases:
        (ms.home / "mailstack.toml").write_text(text)
        set_script(ms, script)
        rates[label] = started_rate(ms, args.messages, args.sessions)
        first = next(iter(rates.values()))
        print(f"{label:38} {rates[label]:7.0f} msg/s  ({rates[label] / first:.2f} of the first)", flush=True)


if __name__ == "__main__":
    main()
