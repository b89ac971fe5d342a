"""Authentication cost: Argon2id verifications and cache hits, per second.

Run: .venv/bin/python bench/auth.py [--seconds N]
Uses a temporary SQLite home and the default (production) Argon2id
parameters; prints the figures and the conditions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography  # noqa: E402
import sqlalchemy  # noqa: E402

from mailstack.accounts import db  # noqa: E402
from mailstack.accounts.auth import Authenticator  # noqa: E402
from mailstack.accounts.directory import Directory, write_secret  # noqa: E402
from mailstack.config import parse  # noqa: E402

PW = "Correct#horse9"


def rate(auth: Authenticator, users: list[str], threads: int, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    def worker(i: int) -> int:
        n = 0
        while time.monotonic() < deadline:
            r = auth.authenticate(users[(i + n) % len(users)], PW, f"192.0.2.{i}", "bench")
            assert r.ok, r
            n += 1
        return n

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(worker, range(threads)))
    return done / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mailstack-bench-"))
    cfg = parse('[server]\ndomains = ["bench.test"]\n[database]\nurl = "sqlite:///a.db"\n[auth]\nsecret_file = "s"\n', "bench", home)
    write_secret(cfg.auth.secret_file)
    engine = db.make_engine(cfg.database.url)
    db.upgrade(engine)
    d = Directory(cfg, engine)
    users = [d.add_user("Bench", f"User{chr(97 + i)}", password=PW).login for i in range(8)]
    p = cfg.auth.argon2
    print(f"conditions: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
          f"cryptography {cryptography.__version__}, SQLAlchemy {sqlalchemy.__version__}, SQLite WAL in {home}")
    print(f"argon2id m={p.memory_kib} KiB t={p.iterations} p={p.lanes}; {args.seconds:.0f} s per figure")
    nocache = Authenticator(Directory(dataclasses.replace(cfg, auth=dataclasses.replace(cfg.auth, cache_ttl=0)), engine))
    for threads in (1, 2, 4):
        print(f"full verification, {threads} thread(s): {rate(nocache, users, threads, args.seconds):8.1f} logins/s")
    cached = Authenticator(d)
    for u in users:
        cached.authenticate(u, PW)
    for threads in (1, 4):
        print(f"cache hit,         {threads} thread(s): {rate(cached, users, threads, args.seconds):8.1f} logins/s")
    engine.dispose()


if __name__ == "__main__":
    main()
