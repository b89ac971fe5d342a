"""``mailstack queue list | show ID | flush [ID] | delete ID | hold ID | release ID``.

Every change takes the entry's lock first, so it never races a delivery in
progress (a busy entry is reported, not waited for); ``flush`` and
``release`` touch the wake file so the running daemons act within a second.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import datetime, timezone

from ..config import Config
from .queue import Busy, Entry, Queue

_ID = re.compile(r"^[0-9a-f]{20}$")


def _fail(text: str) -> Exception:
    from ..cli import Failure

    return Failure(text)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "now"


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 86400}d{s % 86400 // 3600:02d}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _print_headers(q: Queue, entry_id: str) -> None:
    """The first 8 KiB of a held message's header section, after a blank line."""
    with open(q.message_path(entry_id), "rb") as f:
        head = f.read(8192)
    end = head.find(b"\r\n\r\n")
    print()
    print(head[: end if end >= 0 else len(head)].decode("utf-8", "replace"))


def _queue(cfg: Config) -> Queue:
    path = cfg.storage.spool / "queue"
    if not path.is_dir():
        raise _fail(f"no queue at {path} (has smtpd run with this configuration?)")
    return Queue(path)


def _entry(q: Queue, entry_id: str) -> Entry:
    if not _ID.match(entry_id):
        raise _fail(f"{entry_id!r} is not a queue ID (20 hexadecimal digits, see `mailstack queue list`)")
    e = q.load(entry_id)
    if e is None:
        raise _fail(f"no message {entry_id} in the queue")
    return e


def _change(q: Queue, entry_id: str, what: str, fn) -> None:
    _entry(q, entry_id)
    try:
        with q.locked(entry_id):
            e = q.load(entry_id)
            if e is None:
                raise _fail(f"no message {entry_id} in the queue")
            fn(e)
    except FileNotFoundError:
        raise _fail(f"no message {entry_id} in the queue") from None
    except Busy:
        raise _fail(f"message {entry_id} is being delivered right now; try again in a moment") from None
    print(f"{what} {entry_id}")


def run_queue_command(args: argparse.Namespace, cfg: Config) -> int:
    q = _queue(cfg)
    action = args.queue_command
    if action == "list":
        entries = q.entries()
        now = time.time()
        if entries:
            print(f"{'ID':20}  {'SIZE':>9}  {'AGE':>6}  {'TRIES':>5}  {'NEXT':23}  SENDER -> PENDING RECIPIENTS")
        rcpts = 0
        for e in entries:
            try:
                size = q.message_path(e.id).stat().st_size
            except FileNotFoundError:
                continue
            pending = e.pending
            rcpts += len(pending)
            nxt = "held" if e.held else _when(e.next_attempt)
            print(f"{e.id:20}  {size:9d}  {_age(now - e.created):>6}  {e.attempts:5d}  {nxt:23}  <{e.sender}> -> "
                  + ", ".join(r.address for r in pending))
            last = next((r.reason for r in pending if r.reason), "")
            if last:
                print(f"{'':22}last: {last[:160]}")
        print(f"{len(entries)} message(s), {rcpts} recipient(s) waiting")
        return 0
    if action == "show":
        e = _entry(q, args.id)
        print(f"id:        {e.id}")
        print(f"sender:    <{e.sender}>")
        print(f"received:  {_when(e.created)} from {e.client or '-'}")
        print(f"attempts:  {e.attempts}, next: {'held' if e.held else _when(e.next_attempt)}")
        print(f"size:      {q.message_path(e.id).stat().st_size} bytes")
        for r in e.recipients:
            where = "local" if r.local else (r.remote_mta or "remote")
            print(f"  <{r.address}> {r.status} ({where}){': ' + r.reason if r.reason else ''}")
        _print_headers(q, e.id)
        return 0
    if action == "flush":
        ids = [args.id] if args.id else q.ids()
        n = 0
        for entry_id in ids:
            e = _entry(q, entry_id) if args.id else q.load(entry_id)
            if e is None:
                continue  # delivered since the listing
            if e.held:
                if args.id:
                    raise _fail(f"message {entry_id} is held; `mailstack queue release {entry_id}` first")
                continue
            try:
                with q.locked(entry_id):
                    e = q.load(entry_id)
                    if e is not None:
                        e.next_attempt = 0.0
                        q.save(e)
                        n += 1
            except (Busy, FileNotFoundError):
                continue  # being delivered (or just done): nothing to hurry
        q.wake()
        print(f"flushed {n} message(s)")
        return 0
    if action == "delete":
        _change(q, args.id, "deleted", lambda e: q.remove(e.id))
        return 0
    if action == "hold":
        def hold(e: Entry) -> None:
            e.held = True
            q.save(e)
        _change(q, args.id, "held", hold)
        return 0
    if action == "release":
        def release(e: Entry) -> None:
            e.held, e.next_attempt = False, 0.0
            q.save(e)
        _change(q, args.id, "released", release)
        q.wake()
        return 0
    raise _fail(f"unknown queue action {action}")


def run_quarantine_command(args: argparse.Namespace, cfg: Config) -> int:
    """``mailstack quarantine list | show ID | release ID | delete ID``."""
    from .quarantine import Quarantine

    qu = Quarantine(cfg.storage.spool)
    action = args.quarantine_command
    if action == "list":
        now = time.time()
        rows = [r for r in qu.entries() if not args.domain or r[0] == args.domain.lower()]
        if rows:
            print(f"{'ID':20}  {'DOMAIN':24}  {'SIZE':>9}  {'AGE':>6}  SENDER -> RECIPIENTS: WHY")
        for domain, e, size in rows:
            print(f"{e.id:20}  {domain:24}  {size:9d}  {_age(now - e.created):>6}  <{e.sender}> -> "
                  + ", ".join(r.address for r in e.recipients) + f": {e.note}")
        print(f"{len(rows)} message(s) in quarantine")
        return 0
    if not _ID.match(args.id):
        raise _fail(f"{args.id!r} is not a message ID (20 hexadecimal digits, see `mailstack quarantine list`)")
    found = qu.find(args.id)
    if found is None:
        raise _fail(f"no message {args.id} in quarantine")
    q, e = found
    if action == "show":
        print(f"id:        {e.id}")
        print(f"why:       {e.note}")
        print(f"sender:    <{e.sender}>")
        print(f"received:  {_when(e.created)} from {e.client or '-'}")
        print("to:        " + ", ".join(r.address for r in e.recipients))
        _print_headers(q, e.id)
        return 0
    try:
        if action == "release":
            qu.release(args.id)
            print(f"released {args.id}: delivered by the running smtpd")
        elif action == "delete":
            qu.delete(args.id)
            print(f"deleted {args.id}")
        else:
            raise _fail(f"unknown quarantine action {action}")
    except KeyError:
        raise _fail(f"no message {args.id} in quarantine") from None
    except Busy:
        raise _fail(f"message {args.id} is being handled right now; try again in a moment") from None
    return 0
