"""Quarantine: messages a filter held back, per recipient domain, for an operator.

SPOOL/quarantine/DOMAIN holds entries in the queue's format (``ID.eml`` and
``ID.json``, held, with the filter's finding as a note), so writing one is
as durable as queueing and releasing one is a link into the queue: the
runner then delivers it like any queued message, without filters (the
operator has decided).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .delivery import Transaction
from .queue import Busy, Entry, Queue, Recipient


REMOTE = "_remote"  # the area of mail for other domains only (submission)


class Quarantine:
    def __init__(self, spool: Path):
        self.root = spool / "quarantine"
        self.queue = Queue(spool / "queue")

    def domains(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in os.scandir(self.root) if d.is_dir())

    def clean_orphans(self) -> int:
        return sum(Queue(self.root / d).clean_orphans() for d in self.domains())

    def _area(self, domain: str) -> Queue:
        """The directory of one of our domains (REMOTE for mail to others only),
        made durably: a name from the network never becomes a path."""
        path = self.root / domain
        if not path.is_dir():
            for d in (self.root, path):
                if not d.is_dir():
                    d.mkdir(mode=0o700, exist_ok=True)
                    fd = os.open(d.parent, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        return Queue(path)

    def add(self, tx: Transaction, note: str, domains: list[str]) -> str:
        """Blocking: the message, fsynced, under its first local recipient's domain."""
        local = [Recipient(a.address, True) for a in tx.accounts.values()]
        rcpts = local + [Recipient(r, False) for r in tx.remote]
        domain = local[0].address.rpartition("@")[2].lower() if local else REMOTE
        if domain not in domains:
            domain = REMOTE
        tx.spool.finish(sync=True)
        self._area(domain).add(tx.spool.path, tx.queue_entry(rcpts, held=True, note=note))
        return f"250 2.0.0 Ok: queued as {tx.id}"

    def find(self, entry_id: str) -> tuple[Queue, Entry] | None:
        for d in self.domains():
            q = Queue(self.root / d)
            e = q.load(entry_id)
            if e is not None:
                return q, e
        return None

    def _holding(self, entry_id: str) -> Queue:
        """The area that holds ``entry_id``; KeyError when none does."""
        found = self.find(entry_id)
        if found is None:
            raise KeyError(entry_id)
        return found[0]

    def entries(self) -> list[tuple[str, Entry, int]]:
        """(domain, entry, size) for every quarantined message."""
        out = []
        for d in self.domains():
            q = Queue(self.root / d)
            for e in q.entries():
                try:
                    out.append((d, e, q.message_path(e.id).stat().st_size))
                except FileNotFoundError:
                    continue
        return out

    def release(self, entry_id: str) -> None:
        """Into the queue, to be delivered as it is; Busy or KeyError."""
        q = self._holding(entry_id)
        with q.locked(entry_id):
            e = q.load(entry_id)
            if e is None:
                raise KeyError(entry_id)
            if self.queue.load(entry_id) is None:  # else a release a crash cut short: finish it
                # It starts its life in the queue now: lifetime and delay notices count from here.
                e.held, e.next_attempt, e.created, e.attempts, e.warned = False, 0.0, time.time(), 0, False
                self.queue.message_path(entry_id).unlink(missing_ok=True)
                self.queue.add(q.message_path(entry_id), e)
            q.remove(entry_id)
        self.queue.wake()

    def delete(self, entry_id: str) -> None:
        q = self._holding(entry_id)
        with q.locked(entry_id):
            q.remove(entry_id)


__all__ = ["Busy", "Quarantine"]
