"""The selected folder as one session sees it: sequence numbers, flags, and
what changed since the client was last told.

Sequence numbers only move when the session may announce an expunge (RFC
3501 7.4.1: never while answering FETCH, STORE or SEARCH).  Changes are
found through MODSEQ, so an idle session on a 100,000-message folder costs
one index query per wake-up, not a full listing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..store.folder import Folder, Message


@dataclass
class Update:
    expunged: list[int] = field(default_factory=list)  # UIDs removed from the view
    expunged_seqs: list[int] = field(default_factory=list)  # their sequence numbers, as announced (in order)
    exists: int | None = None  # new EXISTS count
    changed: list[Message] = field(default_factory=list)  # flag changes to announce


class View:
    def __init__(self, folder: Folder, readonly: bool):
        self.folder = folder
        self.readonly = readonly
        self.uids: list[int] = []
        self.messages: dict[int, Message] = {}
        self.modseq = 0
        self.pending_expunges: set[int] = set()
        self.recent: set[int] = set()
        self.load()

    def load(self) -> None:
        self.folder.sync(max_age=1.0)
        msgs = self.folder.messages()
        self.uids = [m.uid for m in msgs]
        self.messages = {m.uid: m for m in msgs}
        self.modseq = self.folder.highest_modseq
        self.pending_expunges.clear()

    # -- lookups --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def uids_in(self, ranges: list[tuple[int, int]], by_uid: bool) -> list[int]:
        """UIDs selected by a sequence set (numbers or UIDs), ascending."""
        if not self.uids:
            return []
        out: set[int] = set()
        for lo, hi in ranges:
            if by_uid:
                a = bisect.bisect_left(self.uids, lo)
                b = bisect.bisect_right(self.uids, hi)
                out.update(self.uids[a:b])
            else:
                out.update(self.uids[max(lo, 1) - 1 : min(hi, len(self.uids))])
        return sorted(out)

    def largest(self, by_uid: bool) -> int:
        """What "*" means: the last UID or the last sequence number."""
        if not self.uids:
            return 0 if not by_uid else max(self.folder.uidnext - 1, 0)
        return self.uids[-1] if by_uid else len(self.uids)

    # -- changes --------------------------------------------------------------------------

    def refresh(self, allow_expunge: bool) -> Update:
        """Catch up with the folder; blocking (runs off the reactor)."""
        f = self.folder
        # Our own processes write the index directly; a scan for changes made
        # by other programs is done at most once a second per session.
        f.sync(max_age=1.0)
        top = f.highest_modseq
        up = Update()
        if top == self.modseq and not (allow_expunge and self.pending_expunges):
            return up
        changed = f.changed_since(self.modseq)
        gone, _complete = f.expunged_since(self.modseq)
        gone_set = {u for u in gone if u in self.messages} | self.pending_expunges
        if not _complete:  # the index was rebuilt: compare the whole listing
            current = {m.uid for m in f.messages()}
            gone_set |= {u for u in self.uids if u not in current}
        new = []
        for m in changed:
            old = self.messages.get(m.uid)
            if old is None:
                if not self.uids or m.uid > self.uids[-1]:
                    new.append(m)
            elif old.flags != m.flags and m.uid not in gone_set:
                up.changed.append(m)
                self.messages[m.uid] = m
            else:
                self.messages[m.uid] = m
        if gone_set:
            if allow_expunge:
                for uid in sorted(gone_set, reverse=True):  # announce from the end: numbers stay valid
                    seq = self.seq_of(uid)
                    if seq is not None:
                        up.expunged.append(uid)
                        up.expunged_seqs.append(seq)
                        del self.uids[seq - 1]
                        self.messages.pop(uid, None)
                self.pending_expunges.clear()
            else:
                self.pending_expunges |= gone_set
        if new:
            new.sort(key=lambda m: m.uid)
            for m in new:
                self.uids.append(m.uid)
                self.messages[m.uid] = m
            up.exists = len(self.uids)
        self.modseq = top
        return up

    def apply_local(self, changed: list[Message]) -> None:
        """Our own STORE: the client is told in the STORE response itself."""
        for m in changed:
            if m.uid in self.messages:
                self.messages[m.uid] = m

    def remove_local(self, uids: list[int]) -> list[int]:
        """Our own EXPUNGE/MOVE: drop UIDs now; returns their sequence numbers
        in the order to announce them (each relative to the ones before)."""
        seqs = []
        for uid in sorted(uids, reverse=True):
            seq = self.seq_of(uid)
            if seq is not None:
                seqs.append(seq)
                del self.uids[seq - 1]
                self.messages.pop(uid, None)
        self.pending_expunges -= set(uids)
        return seqs
