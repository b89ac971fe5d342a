"""Filter benchmark: what antivirus and antispam scanning cost mailstack smtpd.

Run as root: .venv/bin/python bench/filters.py
The SMTP throughput of bench/smtp.py (Postfix's smtp-source, 5 KB
messages, 20 sessions, one per connection, local delivery with fsync) with
no filter, with ClamAV (a private clamd 1.4 from Debian, INSTREAM over its
Unix socket, a one-signature database: the cost of the transfer and of
clamd's parsing, not of a full signature set), with SpamAssassin (a private
spamd 4.0 from Debian, local rules only, no network tests, no Bayes) and
with both; then one 100 MB message scanned by ClamAV: time to the 250 and
the daemon's peak memory growth (clamd's own memory is not counted).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.smtp import MB, Mailstack, big, make_big, started_rate  # noqa: E402
from tests.clamd import Clamd, clamd_binary  # noqa: E402
from tests.spamd import Spamd  # noqa: E402


def configure(ms: Mailstack, filters: str) -> None:
    cfg = ms.home / "mailstack.toml"
    text = cfg.read_text()
    text = text.split("\n# bench filters\n")[0]
    cfg.write_text(text + "\n# bench filters\n" + filters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    binary = clamd_binary()
    if binary is None:
        sys.exit("bench/filters.py needs clamd (Debian clamav-daemon) and spamd (spamassassin, spamd)")
    clamd, spamd = Clamd(binary), Spamd()
    clamd.start()
    spamd.start()
    clav = f'\n[[filters]]\nname = "clamav"\noptions = {{ socket = "{clamd.socket}" }}\n'
    sa = f'\n[[filters]]\nname = "spamassassin"\noptions = {{ host = "127.0.0.1", port = {spamd.port} }}\n'
    work = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    print(f"conditions: {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
          f"smtpd workers={args.workers or os.cpu_count()}, MX port without TLS, smtp-source {args.sessions} sessions, "
          f"{args.messages} messages of 5 KB, one per connection, delivered into one Maildir")
    try:
        ms = Mailstack(work, args.workers)
        rates = {}
        for label, filters in (("no filter", ""), ("ClamAV", clav), ("SpamAssassin", sa), ("ClamAV + SpamAssassin", clav + sa)):
            configure(ms, filters)
            rates[label] = started_rate(ms, args.messages, args.sessions)
            base = rates["no filter"]
            print(f"{label:22} {rates[label]:7.0f} msg/s  ({rates[label] / base:.2f} of no filter)", flush=True)
        big_file = work / "big.eml"
        make_big(big_file, 100 * MB - 4096)
        configure(ms, clav)
        ms.start()
        try:
            secs, peak_kb = big(ms, big_file, 1)
        finally:
            ms.stop()
        print(f"one 100 MB message scanned by ClamAV: {secs:.2f} s to the 250, smtpd peak memory +{peak_kb / 1024:.1f} MB")
    finally:
        clamd.stop()
        spamd.close()


if __name__ == "__main__":
    main()
