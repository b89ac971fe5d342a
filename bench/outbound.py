"""Outbound queue benchmark: how fast ``mailstack smtpd`` empties its queue
into remote MX hosts, and what a big deferred queue costs.

Run: .venv/bin/python bench/outbound.py   (as root: Postfix's smtp-sink drops to nobody)
Conditions printed with the figures.  The remote side is Postfix's
``smtp-sink`` (C, no TLS, no disk) on 127.0.0.1; ten destination domains
d0.test .. d9.test each have an MX record pointing there, served by the
tests' dnspython DNS server on loopback.  The queue is filled directly
(entries fsynced as smtpd writes them), then smtpd starts and delivers:
  - 5 KB messages, one recipient each, domains round robin: messages/s;
  - 5 KB messages, ten recipients each (one per domain: ten connections
    per message): messages/s and recipient deliveries/s;
  - one 100 MB message (ten recipients, one per domain: ten streams at
    once): time until it is gone, and the daemon's peak memory growth;
  - 10,000 deferred messages (next attempt in an hour): the daemon's memory
    against an empty queue, and the time of one full scan (from its log).
Throughput counts from the first entry done to the last, so process start
is not in it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, process_tree, rss_kb, wait_port  # noqa: E402
from bench.smtp import PeakMemory  # noqa: E402
from mailstack.home import init_home  # noqa: E402
from mailstack.smtp.queue import Entry, Queue, Recipient  # noqa: E402
from mailstack.smtp.spool import new_id  # noqa: E402
from tests.dns_server import DnsServer  # noqa: E402

DOMAINS = [f"d{i}.test" for i in range(10)]


def message(size: int) -> bytes:
    head = b"From: bench@bench.test\r\nTo: someone@d0.test\r\nSubject: queue bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


class Smtpd:
    def __init__(self, work: Path, dns_port: int, sink_port: int, workers: int):
        self.home = work / "mailstack"
        init_home(self.home, "bench.test", hostname="localhost", dev=True)
        cfg = self.home / "mailstack.toml"
        text = cfg.read_text()
        for old in (10025, 10587, 10465):
            text = text.replace(f"port = {old}", f"port = {free_port()}")
        text += (
            f"\n[smtp]\nworkers = {workers}\n"
            f'\n[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\n'
            f"\n[queue]\nport = {sink_port}\n"
            "\n[mailauth]\nverify = false\n"
        )
        cfg.write_text(text)
        self.queue_dir = self.home / "spool" / "queue"
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.queue = Queue(self.queue_dir)
        self.proc: subprocess.Popen | None = None
        self.log = self.home / "smtpd.log"

    def fill(self, n: int, rcpts_per_msg: int, size: int, deferred: bool = False) -> None:
        data = message(size)
        later = time.time() + 3600 if deferred else 0.0
        for i in range(n):
            if rcpts_per_msg == 1:
                rcpts = [Recipient(f"user{i}@{DOMAINS[i % 10]}", False)]
            else:
                rcpts = [Recipient(f"user{i}@{d}", False) for d in DOMAINS[:rcpts_per_msg]]
            self.queue.add_bytes(data, Entry(new_id(), "bench@bench.test", rcpts, next_attempt=later,
                                             attempts=1 if deferred else 0))

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mailstack", "-c", str(self.home / "mailstack.toml"), "smtpd"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)

    def left(self) -> int:
        return sum(1 for p in os.scandir(self.queue_dir) if p.name.endswith(".json"))


def drain(smtpd: Smtpd, n: int, timeout: float = 600) -> float:
    """Seconds from the first entry done to the queue empty."""
    smtpd.start()
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        left = smtpd.left()
        if first is None and left < n:
            first = time.monotonic()
        if left == 0:
            return time.monotonic() - (first or time.monotonic())
        time.sleep(0.01)
    raise RuntimeError(f"queue not drained: {smtpd.left()} left; see {smtpd.log}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--deferred", type=int, default=10000)
    args = ap.parse_args()
    sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink_bin).exists():
        sys.exit("bench/outbound.py needs Postfix's smtp-sink (Debian package postfix)")
    print(f"machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}")
    print(f"conditions: smtpd workers={args.workers}, queue.concurrency=50, queue.per_destination=10, "
          "plain SMTP to Postfix smtp-sink on 127.0.0.1, 10 destination domains")
    with DnsServer() as dns:
        for d in DOMAINS:
            dns.add(d, "MX", f"10 mx.{d}.")
            dns.add(f"mx.{d}", "A", "127.0.0.1")
        sink_port = free_port()
        sink = subprocess.Popen([sink_bin, "-u", "nobody", "-m", "1000", f"127.0.0.1:{sink_port}", "1000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(sink_port)
        try:
            for rcpts in (1, 10):
                with tempfile.TemporaryDirectory(prefix="mailstack-qbench-") as work:
                    smtpd = Smtpd(Path(work), dns.port, sink_port, args.workers)
                    smtpd.fill(args.messages, rcpts, 5 * 1024)
                    try:
                        secs = drain(smtpd, args.messages)
                    finally:
                        smtpd.stop()
                    rate = (args.messages - 1) / secs
                    extra = f", {rate * rcpts:.0f} recipient deliveries/s" if rcpts > 1 else ""
                    print(f"5 KB, {rcpts} recipient(s) per message, {args.messages} messages: "
                          f"{rate:.0f} msg/s{extra} ({secs:.2f} s)")
            with tempfile.TemporaryDirectory(prefix="mailstack-qbench-") as work:
                smtpd = Smtpd(Path(work), dns.port, sink_port, 1)
                smtpd.fill(1, 10, 100 * 1024 * 1024, deferred=True)
                smtpd.start()
                time.sleep(3)
                peak = PeakMemory(lambda: process_tree(smtpd.proc.pid))
                t = time.monotonic()
                subprocess.run([sys.executable, "-m", "mailstack", "-c", str(smtpd.home / "mailstack.toml"), "queue", "flush"],
                               check=True, capture_output=True)
                while smtpd.left():
                    time.sleep(0.01)
                secs, growth = time.monotonic() - t, peak.stop()
                smtpd.stop()
                print(f"one 100 MB message to 10 domains (10 streams at once): {secs:.2f} s, "
                      f"smtpd peak memory +{growth / 1024:.1f} MB")
            with tempfile.TemporaryDirectory(prefix="mailstack-qbench-") as work:
                smtpd = Smtpd(Path(work), dns.port, sink_port, 1)
                smtpd.start()
                time.sleep(3)
                empty_kb = rss_kb(process_tree(smtpd.proc.pid))
                smtpd.stop()
                t = time.monotonic()
                smtpd.fill(args.deferred, 1, 5 * 1024, deferred=True)
                fill_s = time.monotonic() - t
                smtpd.start()
                deadline = time.monotonic() + 120
                scans: list[tuple[int, float]] = []
                while time.monotonic() < deadline and not any(n >= args.deferred for n, _ in scans):
                    scans = [(int(n), float(s)) for n, s in
                             re.findall(r"queue scan: (\d+) entries in ([\d.]+) s", smtpd.log.read_text())]
                    time.sleep(0.2)
                time.sleep(2)
                full_kb = rss_kb(process_tree(smtpd.proc.pid))
                smtpd.stop()
                secs = max(s for n, s in scans if n >= args.deferred)
                print(f"{args.deferred} deferred messages (filled in {fill_s:.1f} s): one full scan {secs:.2f} s; "
                      f"smtpd memory (1 worker + supervisor) {empty_kb / 1024:.1f} MB with an empty queue, "
                      f"{full_kb / 1024:.1f} MB with them (+{(full_kb - empty_kb) / 1024:.1f} MB)")
        finally:
            sink.terminate()
            sink.wait()


if __name__ == "__main__":
    main()
