"""Quarantine: messages a filter held back, per recipient domain, for an operator.

SPOOL/quarantine/DOMAIN holds entries in the queue's format (``ID.eml`` and
``ID.json``, held, with the filter's finding as a note), so writing one is
as durable as queueing and releasing one is a link into the queue: the
runner then delivers it like any queued message, without filters (the
operator has decided).
"""

from __future__ import annotations

import os
from pathlib import Path

from .delivery import Transaction
from .queue import Busy, Entry, Queue, Recipient


class Quarantine:
    def __init__(self, spool: Path):
        self.root = spool / "quarantine"
        self.queue = Queue(spool / "queue")

    def domains(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in os.scandir(self.root) if d.is_dir())

    def _area(self, domain: str) -> Queue:
        path = self.root / domain
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Queue(path)

    def add(self, tx: Transaction, note: str) -> str:
        """Blocking: the message, fsynced, under its first recipient's domain."""
        rcpts = [Recipient(a.address, True) for a in tx.accounts.values()] + [Recipient(r, False) for r in tx.remote]
        domain = rcpts[0].address.rpartition("@")[2].lower() if rcpts else "unknown"
        tx.spool.finish(sync=True)
        self._area(domain).add(tx.spool.path, Entry(tx.id, tx.sender, rcpts, client=tx.client, held=True, note=note))
        return f"250 2.0.0 Ok: queued as {tx.id}"

    def find(self, entry_id: str) -> tuple[Queue, Entry] | None:
        for d in self.domains():
            q = Queue(self.root / d)
            e = q.load(entry_id)
            if e is not None:
                return q, e
        return None

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
        found = self.find(entry_id)
        if found is None:
            raise KeyError(entry_id)
        q, _ = found
        with q.locked(entry_id):
            e = q.load(entry_id)
            if e is None:
                raise KeyError(entry_id)
            e.held, e.next_attempt = False, 0.0
            self.queue.add(q.message_path(entry_id), e)
            q.remove(entry_id)
        self.queue.wake()

    def delete(self, entry_id: str) -> None:
        found = self.find(entry_id)
        if found is None:
            raise KeyError(entry_id)
        q, _ = found
        with q.locked(entry_id):
            q.remove(entry_id)


__all__ = ["Busy", "Quarantine"]
