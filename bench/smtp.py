"""SMTP benchmark: mailstack smtpd beside Postfix (Debian) on the same machine.

Run as root (Postfix's master runs as root): .venv/bin/python bench/smtp.py
Both servers accept mail for one local user on a loopback port without TLS
and deliver it into a Maildir durably: Postfix fsyncs its queue file, then
virtual(8) writes the Maildir file; mailstack writes the Maildir file with
fsync, renames it, fsyncs the directory and the uid list before its 250.
Prints, with the conditions, mailstack/Postfix ratios for:
  - 5 KB messages from Postfix's smtp-source, 20 concurrent sessions, one
    message per connection: messages per second until all are on disk;
  - one 100 MB message: time to the 250, and the daemon's peak memory growth
    (all its processes); ten 100 MB messages at once: peak memory growth;
and, for mailstack alone, memory per idle TLS session on 465.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, process_tree, rss_kb, wait_port  # noqa: E402
from mailstack.home import init_home  # noqa: E402
from tests.postfix import Postfix, smtp_source, wait_delivered  # noqa: E402

DOMAIN = "bench.test"
USER = "bench.user"
PASSWORD = "Correct#horse9"
MB = 1024 * 1024


class Mailstack:
    name = "mailstack"

    def __init__(self, work: Path, workers: int):
        self.home = work / "mailstack"
        init_home(self.home, DOMAIN, hostname="localhost", dev=True)
        self.port, self.sub_port, self.smtps_port = free_port(), free_port(), free_port()
        cfg = self.home / "mailstack.toml"
        text = cfg.read_text()
        for old, new in ((10025, self.port), (10587, self.sub_port), (10465, self.smtps_port)):
            text = text.replace(f"port = {old}", f"port = {new}")
        text += f"\n[smtp]\nworkers = {workers}\nmax_per_address = 100000\nmax_connections = 100000\n"
        text += "\n[mailauth]\nverify = false\n"  # Postfix checks no SPF/DKIM/DMARC either
        cfg.write_text(text)
        r = subprocess.run([sys.executable, "-m", "mailstack", "-c", str(cfg), "user", "add", "Bench", "User",
                            "--password-stdin"], input=PASSWORD, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        self.maildir = self.home / "mail" / DOMAIN / USER / "Maildir"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mailstack", "-c", str(self.home / "mailstack.toml"), "smtpd"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.home / "smtpd.log", "ab"))
        for p in (self.port, self.sub_port, self.smtps_port):
            wait_port(p)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def count(self) -> int:
        return sum(len(os.listdir(self.maildir / d)) for d in ("new", "cur") if (self.maildir / d).is_dir())

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc else []


class PostfixServer:
    name = "postfix"

    def __init__(self, work: Path):
        self.port = free_port()
        self.p = Postfix(work / "postfix", self.port, domain=DOMAIN, users=[USER])
        with open(self.p.conf_dir / "main.cf", "a") as f:
            f.write("message_size_limit = 110000000\nvirtual_mailbox_limit = 110000000\n")  # the defaults are 10 and 50 MB

    def start(self) -> None:
        self.p.start()

    def stop(self) -> None:
        self.p.close()

    def count(self) -> int:
        return self.p.count_delivered(USER)

    def pids(self) -> list[int]:
        return process_tree(self.p._proc.pid) if self.p._proc else []


# --- measurements ------------------------------------------------------------------------------


def throughput(server, messages: int, sessions: int, size: int, reuse: bool = False) -> float:
    before = server.count()
    t0 = time.monotonic()
    smtp_source(server.port, sessions=sessions, messages=messages, size=size,
                sender="sender@example.org", recipient=f"{USER}@{DOMAIN}", reuse_connections=reuse)
    wait_delivered(lambda: server.count() - before, messages, timeout=600)
    return messages / (time.monotonic() - t0)


def started_rate(server, messages: int, sessions: int) -> float:
    """Start the server, warm it up (100 messages), measure ``throughput`` of 5 KB messages, stop it."""
    server.start()
    try:
        throughput(server, 100, sessions, 5000)
        return throughput(server, messages, sessions, 5000)
    finally:
        server.stop()


class PeakMemory:
    """Samples the RSS of a process tree every 20 ms; ``growth`` in kB over the start."""

    def __init__(self, pids_fn):
        self.pids_fn = pids_fn
        self.base = rss_kb(pids_fn())
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pids_fn()))
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak - self.base


def reply(f) -> int:
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return int(line[:3])


def send_file(port: int, path: Path) -> None:
    """One message, already dot-stuffed and terminated, sent with sendfile()."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s, s.makefile("rb") as f:
        assert reply(f) == 220
        for cmd, want in ((b"EHLO bench.example.org", 250), (b"MAIL FROM:<sender@example.org>", 250),
                          (f"RCPT TO:<{USER}@{DOMAIN}>".encode(), 250), (b"DATA", 354)):
            s.sendall(cmd + b"\r\n")
            code = reply(f)
            assert code == want, (cmd, code)
        with open(path, "rb") as m:
            s.sendfile(m)
        code = reply(f)
        assert code == 250, code
        s.sendall(b"QUIT\r\n")


def send_file_tls(server: "Mailstack", path: Path, ready: threading.Barrier) -> None:
    """The same over 465 (implicit TLS) with AUTH PLAIN, as a mail client submits.
    Waits at ``ready`` after the 354, so the memory measured is the transfer's,
    not the Argon2id verification's (19 MiB per password hashed)."""
    ctx = ssl.create_default_context(cafile=str(server.home / "tls" / "cert.pem"))
    raw = socket.create_connection(("127.0.0.1", server.smtps_port), timeout=600)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s, s.makefile("rb") as f:
        assert reply(f) == 220
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        for cmd, want in ((b"EHLO bench.example.org", 250), (f"AUTH PLAIN {token}".encode(), 235),
                          (f"MAIL FROM:<{USER}@{DOMAIN}>".encode(), 250), (f"RCPT TO:<{USER}@{DOMAIN}>".encode(), 250),
                          (b"DATA", 354)):
            s.sendall(cmd + b"\r\n")
            code = reply(f)
            assert code == want, (cmd, code)
        ready.wait()
        with open(path, "rb") as m:
            while chunk := m.read(256 * 1024):
                s.sendall(chunk)
        assert reply(f) == 250
        s.sendall(b"QUIT\r\n")


def make_big(path: Path, size: int) -> None:
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    with open(path, "wb") as f:
        f.write(b"From: sender@example.org\r\nSubject: 100 MB\r\n\r\n")
        block = line * 10000
        written = 0
        while written + len(block) <= size:
            f.write(block)
            written += len(block)
        f.write(line * ((size - written) // len(line)))
        f.write(b".\r\n")


def big(server, path: Path, parallel: int, tls: bool = False) -> tuple[float, int]:
    """Seconds until every 250, and peak memory growth (kB) of the daemon."""
    before = server.count()
    if tls:  # sessions log in first; the measure starts when all are ready to send
        ready = threading.Barrier(parallel + 1)
        threads = [threading.Thread(target=send_file_tls, args=(server, path, ready)) for _ in range(parallel)]
        for t in threads:
            t.start()
        ready.wait()
    mem = PeakMemory(server.pids)
    t0 = time.monotonic()
    if not tls:
        threads = [threading.Thread(target=send_file, args=(server.port, path)) for _ in range(parallel)]
        for t in threads:
            t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    wait_delivered(lambda: server.count() - before, parallel, timeout=600)
    return elapsed, mem.stop()


def idle_tls_sessions(server: Mailstack, n: int) -> float:
    """kB per idle TLS session on 465 (greeting read, then silence)."""
    ctx = ssl.create_default_context(cafile=str(server.home / "tls" / "cert.pem"))
    time.sleep(0.5)
    base = rss_kb(server.pids())
    socks = []
    for _ in range(n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.smtps_port)), server_hostname="localhost")
        s.recv(1000)
        socks.append(s)
    time.sleep(1)
    per = (rss_kb(server.pids()) - base) / n
    for s in socks:
        s.close()
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=3000, help="5 KB messages per throughput run")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0, help="mailstack smtp.workers (0 = one per CPU)")
    ap.add_argument("--idle", type=int, default=1000, help="idle TLS sessions for the memory figure")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/smtp.py must run as root (Postfix's master runs as root)")
    work = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    ms, pf = Mailstack(work, args.workers), PostfixServer(work)
    postfix_version = subprocess.run(["postconf", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    print(f"conditions: {platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
          f"Postfix {postfix_version}, mailstack workers={args.workers or os.cpu_count()}, loopback, no TLS on the "
          f"measured port, one user's Maildir on {work}")
    big_file = work / "big.eml"
    make_big(big_file, 100 * MB - 4096)  # within the 104,857,600-byte limit with its headers
    results: dict[str, dict[str, float]] = {}
    try:
        for server in (ms, pf):
            server.start()
            r = results[server.name] = {}
            throughput(server, 200, args.sessions, 5000)  # warm up
            r["msg/s"] = max(throughput(server, args.messages, args.sessions, 5000) for _ in range(2))
            r["msg/s reuse"] = max(throughput(server, args.messages, args.sessions, 5000, reuse=True) for _ in range(2))
            print(f"{server.name}: {r['msg/s']:.0f} msg/s, {r['msg/s reuse']:.0f} msg/s reusing connections", flush=True)
            r["100MB s"], r["100MB peak MB"] = (lambda t, m: (t, m / 1024))(*big(server, big_file, 1))
            r["10x100MB s"], r["10x100MB peak MB"] = (lambda t, m: (t, m / 1024))(*big(server, big_file, 10))
            if server is ms:
                r["TLS 100MB s"], r["TLS 100MB peak MB"] = (lambda t, m: (t, m / 1024))(*big(server, big_file, 1, tls=True))
                r["TLS 10x100MB s"], r["TLS 10x100MB peak MB"] = (lambda t, m: (t, m / 1024))(*big(server, big_file, 10, tls=True))
                r["idle TLS kB/session"] = idle_tls_sessions(ms, args.idle)
            server.stop()
            print(server.name, {k: round(v, 1) for k, v in r.items()}, flush=True)
    finally:
        ms.stop()
        pf.stop()
    m, p = results["mailstack"], results["postfix"]
    print(f"\n5 KB, {args.sessions} sessions, {args.messages} messages, one per connection:")
    print(f"  mailstack {m['msg/s']:.0f} msg/s, Postfix {p['msg/s']:.0f} msg/s: ratio {m['msg/s'] / p['msg/s']:.2f}")
    print("the same, each session sending its messages over one connection (smtp-source -d):")
    print(f"  mailstack {m['msg/s reuse']:.0f} msg/s, Postfix {p['msg/s reuse']:.0f} msg/s: "
          f"ratio {m['msg/s reuse'] / p['msg/s reuse']:.2f}")
    print("one 100 MB message (plain SMTP, sendfile client):")
    print(f"  time       mailstack {m['100MB s']:.2f} s, Postfix {p['100MB s']:.2f} s: ratio {m['100MB s'] / p['100MB s']:.2f}")
    print(f"  peak +RSS  mailstack {m['100MB peak MB']:.1f} MB, Postfix {p['100MB peak MB']:.1f} MB")
    print("ten 100 MB messages at once:")
    print(f"  time       mailstack {m['10x100MB s']:.2f} s, Postfix {p['10x100MB s']:.2f} s: ratio {m['10x100MB s'] / p['10x100MB s']:.2f}")
    print(f"  peak +RSS  mailstack {m['10x100MB peak MB']:.1f} MB (bound: 50 MB), Postfix {p['10x100MB peak MB']:.1f} MB")
    print("mailstack alone, submissions 465 (TLS, AUTH PLAIN):")
    print(f"  one 100 MB message {m['TLS 100MB s']:.2f} s, peak +RSS {m['TLS 100MB peak MB']:.1f} MB; "
          f"ten at once {m['TLS 10x100MB s']:.2f} s, peak +RSS {m['TLS 10x100MB peak MB']:.1f} MB (bound: 50 MB)")
    print(f"  idle TLS sessions: {m['idle TLS kB/session']:.1f} kB per session ({args.idle} sessions)")


if __name__ == "__main__":
    main()
