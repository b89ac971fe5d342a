"""IMAP benchmark: mailstack imapd beside Dovecot (Debian) on the same machine.

Run as root (Dovecot drops to an unprivileged user): .venv/bin/python bench/imap.py
Both servers serve a copy of the same Maildir over implicit TLS on loopback.
Prints, with the conditions, mailstack/Dovecot ratios for:
  - a mixed client workload with 10 and 50 concurrent clients (operations/s);
  - opening a 100,000-message folder and fetching UID FLAGS RFC822.SIZE for all;
  - memory per idle connection (N clients logged in and in IDLE).
Dovecot checks passwords in clear ({PLAIN} passwd-file); mailstack uses
Argon2id with its verification cache, so logins after the first are cache hits.
"""

from __future__ import annotations

import argparse
import imaplib
import io
import multiprocessing
import os
import platform
import random
import shutil
import signal
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

from bench.common import free_port, process_tree, pss_kb, wait_port  # noqa: E402
from mailstack.config import load  # noqa: E402
from mailstack.home import init_home  # noqa: E402
from mailstack.store.mailbox import Store  # noqa: E402

DOMAIN = "bench.test"
USER = "bench.user"
PASSWORD = "Correct#horse9"
MSG = (b"From: Anne Martin <anne.martin@bench.test>\r\nTo: bench.user@bench.test\r\nSubject: Conseil de classe\r\n"
       b"Date: Tue, 24 Nov 2026 10:00:00 +0100\r\nMessage-ID: <x@bench.test>\r\n\r\n") + b"Lorem ipsum dolor sit amet.\r\n" * 170


# --- servers -----------------------------------------------------------------------------------


class Mailstack:
    name = "mailstack"

    def __init__(self, work: Path):
        self.home = work / "mailstack"
        init_home(self.home, DOMAIN, hostname="localhost", dev=True)
        self.port = free_port()
        cfg = self.home / "mailstack.toml"
        text = cfg.read_text()
        # IMAPS only, on a free port; no SMTP listeners are run by imapd anyway.
        text = text.replace("port = 10993", f"port = {self.port}").replace("port = 10143", f"port = {free_port()}")
        text = text.replace("idle_timeout = 1800", "idle_timeout = 1800\nmax_per_address = 5000\nmax_per_user = 5000")
        cfg.write_text(text)
        self.cfg = load(cfg)
        r = subprocess.run([sys.executable, "-m", "mailstack", "-c", str(cfg), "user", "add", "Bench", "User",
                            "--domain", DOMAIN, "--password-stdin"], input=PASSWORD, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        self.mail_root = self.cfg.storage.mail_root
        self.cafile = self.home / "tls" / "cert.pem"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mailstack", "-c", str(self.home / "mailstack.toml"), "imapd"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.home / "imapd.log", "ab"))
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc else []


class Dovecot:
    name = "dovecot"

    def __init__(self, work: Path, source_root: Path, cafile: Path, keyfile: Path):
        from tests.dovecot import Dovecot as Harness

        self.port = free_port()
        self.mail_root = work / "dovecot-mail"
        shutil.copytree(source_root, self.mail_root, symlinks=True)
        for p in self.mail_root.rglob("mailstack-index.sqlite*"):
            p.unlink()
        for p in self.mail_root.rglob("mailstack.lock"):
            p.unlink()
        extra = f"""
ssl = yes
ssl_cert = <{cafile}
ssl_key = <{keyfile}
ssl_min_protocol = TLSv1.2
service imap-login {{
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
  process_limit = 2000
  client_limit = 2000
}}
service imap {{
  process_limit = 2000
  client_limit = 1
}}
default_process_limit = 2000
default_client_limit = 4000
"""
        self.h = Harness(self.mail_root, work / "dovecot-conf", extra_config=extra)
        self.h.add_user(f"{USER}@{DOMAIN}", PASSWORD)
        self.cafile = cafile

    def start(self) -> None:
        self.h.start_imap(free_port())
        wait_port(self.port)

    def stop(self) -> None:
        self.h.close()

    def pids(self) -> list[int]:
        return process_tree(self.h._proc.pid) if self.h._proc else []


# --- clients ------------------------------------------------------------------------------------


def connect(port: int, cafile: str) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=cafile)
    return imaplib.IMAP4_SSL("localhost", port, ssl_context=ctx, timeout=120)


def mixed_worker(port: int, cafile: str, seconds: float, threads: int, q) -> None:
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        rng = random.Random(i)
        while time.monotonic() < stop:
            c = connect(port, cafile)
            c.login(f"{USER}@{DOMAIN}", PASSWORD)
            typ, data = c.select("INBOX")
            n = int(data[0])
            c.fetch("1:*", "(UID FLAGS)")
            c.fetch(f"{max(1, n - 19)}:{n}", "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])")
            for _ in range(2):
                c.fetch(str(rng.randint(1, n)), "(BODY.PEEK[])")
            c.store(str(rng.randint(1, n)), "+FLAGS", "(\\Seen)")
            typ, data = c.append("INBOX", None, None, MSG)
            uid = data[0].split()[2].rstrip(b"]").decode()
            c.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
            c.uid("EXPUNGE", uid)
            c.logout()
            counts[i] += 12  # login, select, 4 fetches, store, append, store, expunge, logout (+ greeting)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q.put(sum(counts))


def mixed(server, clients: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs_n = min(clients, 8)
    per = [clients // procs_n + (1 if i < clients % procs_n else 0) for i in range(procs_n)]
    procs = [ctx.Process(target=mixed_worker, args=(server.port, str(server.cafile), seconds, n, q)) for n in per]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    total = sum(q.get(timeout=seconds + 300) for _ in procs)
    for p in procs:
        p.join()
    return total / (time.monotonic() - t0)


def big_folder_fetch(server) -> tuple[float, float]:
    """(first, second) time to SELECT the 100k folder and UID FETCH 1:* (UID FLAGS RFC822.SIZE)."""
    times = []
    for _ in range(2):
        c = connect(server.port, str(server.cafile))
        c.login(f"{USER}@{DOMAIN}", PASSWORD)
        t0 = time.monotonic()
        typ, data = c.select("Big")
        typ, rows = c.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE)")
        times.append(time.monotonic() - t0)
        assert len(rows) >= int(data[0]) > 0, (len(rows), data)
        c.logout()
    return times[0], times[1]


def idle_latency(server, deliver, samples: int = 5) -> float:
    """Median seconds from a delivery's return to the EXISTS an IDLE client receives."""
    c = connect(server.port, str(server.cafile))
    c.login(f"{USER}@{DOMAIN}", PASSWORD)
    c.select("INBOX")
    tag = c._new_tag()
    c.send(tag + b" IDLE\r\n")
    c.readline()
    delays = []
    for _ in range(samples):
        deliver()
        t0 = time.monotonic()
        while not c.readline().rstrip().endswith(b"EXISTS"):
            pass
        delays.append(time.monotonic() - t0)
        time.sleep(0.3)
    c.send(b"DONE\r\n")
    c.logout()
    return sorted(delays)[len(delays) // 2]


def idle_memory(server, n: int) -> float:
    before = pss_kb(server.pids())
    socks = []
    ctx = ssl.create_default_context(cafile=str(server.cafile))
    for i in range(n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=60), server_hostname="localhost")
        s.recv(4096)
        s.sendall(f"a LOGIN {USER}@{DOMAIN} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
        socks.append(s)
    for s in socks:
        buf = b""
        while b"+ " not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"{server.name} closed an idle connection")
            buf += chunk
    time.sleep(2)
    after = pss_kb(server.pids())
    for s in socks:
        try:
            s.sendall(b"DONE\r\nd LOGOUT\r\n")
            s.close()
        except OSError:
            pass
    return (after - before) / n


def make_big(root: Path, n: int) -> None:
    mb = Store(root).mailbox(DOMAIN, USER)
    mb.create("Big")
    d = mb.path / ".Big"
    msg = MSG[:2000]
    lines = [f"3 V1700000000 N{n + 1} G0123456789abcdef0123456789abcdef"]
    for i in range(1, n + 1):
        base = f"{1700000000 + i}.M{i}P1.bench,S={len(msg)},W={len(msg)}"
        (d / "cur" / f"{base}:2,{'S' if i % 3 else 'FS'}").write_bytes(msg)
        lines.append(f"{i} :{base}")
    (d / "dovecot-uidlist").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--idle", type=int, default=500)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/imap.py runs Dovecot beside mailstack and needs root")
    work = Path(tempfile.mkdtemp(prefix="mailstack-imapbench-"))
    os.chmod(work, 0o755)
    ms = Mailstack(work)
    inbox = Store(ms.mail_root).mailbox(DOMAIN, USER).folder("INBOX")
    for _ in range(args.messages):
        inbox.deliver(io.BytesIO(MSG))
    inbox.close()
    make_big(ms.mail_root, args.big)
    dv = Dovecot(work, ms.mail_root, ms.cafile, ms.home / "tls" / "key.pem")
    print(f"conditions: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; Dovecot {subprocess.run(['dovecot', '--version'], capture_output=True, text=True).stdout.strip()}; "
          f"implicit TLS on loopback; INBOX {args.messages} messages of {len(MSG)} B; clients are imaplib in up to 8 processes")
    results: dict[str, dict[str, float]] = {}
    for server in (ms, dv):
        server.start()
        try:
            r = results[server.name] = {}
            first, second = big_folder_fetch(server)
            r["big_first"], r["big_second"] = first, second
            for n in (10, 50):
                r[f"mixed{n}"] = mixed(server, n, args.seconds)
            r["idle_kb"] = idle_memory(server, args.idle)
            if server is ms:
                box = Store(ms.mail_root).mailbox(DOMAIN, USER)
                r["push"] = idle_latency(server, lambda: box.folder("INBOX").deliver(io.BytesIO(MSG)))
            else:
                r["push"] = idle_latency(server, lambda: dv.h.deliver(f"{USER}@{DOMAIN}", MSG))
        finally:
            server.stop()
        print(f"{server.name:9}: mixed 10 clients {r['mixed10']:7.0f} ops/s, 50 clients {r['mixed50']:7.0f} ops/s; "
              f"{args.big}-message folder SELECT + UID FETCH 1:* first {first:.2f} s, again {second:.2f} s; "
              f"{r['idle_kb']:.0f} KB per idle connection ({args.idle} in IDLE); "
              f"IDLE push {r['push'] * 1000:.0f} ms after a delivery (median of 5)")
    a, b = results["mailstack"], results["dovecot"]
    print("ratios mailstack/dovecot: "
          f"throughput 10 clients {a['mixed10'] / b['mixed10']:.2f} (target >= 0.5 at 50), "
          f"50 clients {a['mixed50'] / b['mixed50']:.2f}; "
          f"big folder time first {a['big_first'] / b['big_first']:.2f}, again {a['big_second'] / b['big_second']:.2f} (target <= 2); "
          f"memory per idle connection {a['idle_kb'] / b['idle_kb']:.2f} (target <= 0.2)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
