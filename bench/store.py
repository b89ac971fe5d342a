"""Store benchmarks: big-folder open, delivery rate beside the disk's limit,
and memory while a 100 MB message is delivered and read back.

Run: .venv/bin/python bench/store.py [--messages 100000] [--deliveries 2000] [--dir DIR]
Prints figures and conditions.  Targets (issue 3): open+list 100,000
messages <= 0.5 s warm, <= 3 s cold; >= 1,000 deliveries/s of 5 KB; peak
memory +20 MB at most for 100 MB.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.store.index import INDEX  # noqa: E402
from mailstack.store.mailbox import Store  # noqa: E402

BODY = (b"From: Anne Martin <anne.martin@ac-normandie.fr>\r\nTo: paul.durand@ac-normandie.fr\r\n"
        b"Subject: Conseil de classe\r\nMessage-ID: <x@ac-normandie.fr>\r\n\r\n") + b"Lorem ipsum dolor sit amet.\r\n" * 170


def make_big_folder(root: Path, n: int) -> Path:
    """n messages written as another program (or a Dovecot migration) would: files + uidlist."""
    mb = Store(root).mailbox("ac-normandie.fr", "big.folder")
    inbox = mb.path
    msg = BODY[:2000]
    lines = [f"3 V1700000000 N{n + 1} G0123456789abcdef0123456789abcdef"]
    for i in range(1, n + 1):
        base = f"{1700000000 + i}.M{i}P1.bench,S={len(msg)},W={len(msg)}"
        flags = "S" if i % 3 else "FS"
        with open(inbox / "cur" / f"{base}:2,{flags}", "wb") as f:
            f.write(msg)
        lines.append(f"{i} :{base}")
    (inbox / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    return inbox


def open_and_list(root: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    f = Store(root).mailbox("ac-normandie.fr", "big.folder").folder("INBOX")
    rows = [(m.uid, m.flags, m.size) for m in f.messages()]
    dt = time.perf_counter() - t0
    f.close()
    return dt, len(rows)


def disk_rate(d: Path, n: int) -> float:
    (d / "t").mkdir()
    (d / "n").mkdir()
    t0 = time.perf_counter()
    for i in range(n):
        p = d / "t" / str(i)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, BODY)
        os.fsync(fd)
        os.close(fd)
        os.rename(p, d / "n" / str(i))
    return n / (time.perf_counter() - t0)


def delivery_rate(root: Path, n: int, threads: int = 1, distinct: bool = False, method: str = "deliver") -> float:
    """n deliveries of 5 KB from one process, by ``threads`` threads, into one
    folder or one account per thread; ``method``: deliver (with its UID, as
    IMAP APPEND does) or drop (as SMTP does: the UID comes at the next sync)."""
    store = Store(root)
    folders = [store.mailbox("ac-normandie.fr", f"rate{i if distinct else 0}.t{threads}{method}").folder("INBOX")
               for i in range(threads)]

    def work(f) -> None:
        put = getattr(f, method)
        for _ in range(n // threads):
            put(io.BytesIO(BODY))

    t0 = time.perf_counter()
    pool = [threading.Thread(target=work, args=(f,)) for f in folders]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return (n // threads) * threads / (time.perf_counter() - t0)


def vm(field: str) -> int:
    """kB from /proc/self/status (VmHWM is this process's peak, reset at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def big_message_child(root: str) -> None:
    """Runs in a fresh process: peak RSS before/after a 100 MB deliver + read."""
    f = Store(Path(root)).mailbox("ac-normandie.fr", "big.message").folder("INBOX")
    base = vm("VmHWM")

    def gen():
        yield b"Subject: big\r\n\r\n"
        line = b"A" * 998 + b"\r\n"
        chunk = line * 64
        for _ in range(100 * 1024 * 1024 // len(chunk)):
            yield chunk

    uid = f.deliver(gen())
    total = 0
    with f.open(uid) as fh:
        while True:
            b = fh.read(1 << 16)
            if not b:
                break
            total += len(b)
    peak = vm("VmHWM")
    print(f"{total} {base} {peak}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--deliveries", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        big_message_child(args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="mailstack-bench-", dir=args.dir))
    try:
        fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
        print(f"conditions: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
              f"{platform.system()} {platform.release()}, {fs} at {work}")
        t0 = time.perf_counter()
        inbox = make_big_folder(work / "big", args.messages)
        print(f"setup: {args.messages} messages of 2000 bytes written in {time.perf_counter() - t0:.1f} s")
        for p in inbox.glob(INDEX + "*"):
            p.unlink()
        subprocess.run(["sync"])
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            cache = "page cache dropped"
        except OSError:
            cache = "page cache NOT dropped (not root)"
        cold, n = open_and_list(work / "big")
        print(f"open + list UID FLAGS SIZE, {n} messages, cold (no index, {cache}): {cold:.3f} s   (target <= 3 s)")
        warm = min(open_and_list(work / "big")[0] for _ in range(3))
        print(f"open + list UID FLAGS SIZE, {n} messages, warm:            {warm:.3f} s   (target <= 0.5 s)")
        f = Store(work / "big").mailbox("ac-normandie.fr", "big.folder").folder("INBOX")
        t0 = time.perf_counter()
        hits = f.search_header("subject", "conseil")
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        f.search_header("from", "martin")
        second = time.perf_counter() - t0
        f.close()
        print(f"header SEARCH over {n} messages: first {first:.2f} s (parses and indexes every message), "
              f"then {second:.3f} s from the index ({len(hits)} hits)")
        raw = disk_rate(work, args.deliveries)
        print(f"disk raw write+fsync+rename of {len(BODY)} B, one thread: {raw:8.0f} /s   (the physical limit)")
        for method, threads, distinct in (("deliver", 1, False), ("deliver", 8, False), ("deliver", 8, True),
                                          ("drop", 1, False), ("drop", 8, False)):
            rate = delivery_rate(work / "rate", args.deliveries, threads, distinct, method)
            where = "8 accounts" if distinct else "one folder"
            print(f"store {method} of {len(BODY)} B, one process, {threads} thread(s), {where}: {rate:8.0f} /s   "
                  f"({rate / raw:.2f} of raw; target >= 1000)")
        out = subprocess.run([sys.executable, __file__, "--child", str(work / "bigmsg")], capture_output=True, text=True, check=True)
        total, base, peak = map(int, out.stdout.split())
        print(f"100 MB message ({total} bytes) delivered and read back: peak RSS {base / 1024:.1f} -> {peak / 1024:.1f} MB "
              f"(+{(peak - base) / 1024:.1f} MB, target <= +20 MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
