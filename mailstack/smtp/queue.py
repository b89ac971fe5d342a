"""The durable queue: accepted mail that could not be delivered at once.

An entry is two files in SPOOL/queue: ``ID.eml``, the message exactly as it
will be sent (our Received header included), and ``ID.json``, the envelope
and per-recipient state.  The message is fsynced and linked in first, the
envelope written atomically last, then the directory fsynced: an entry
exists, whole, once ``add`` returns, and only then does the daemon answer
250.  An ``.eml`` without its ``.json`` is the trace of a crash before the
acknowledgement and is removed.

Remote recipients wait here for the outbound runner (runner.py); local
ones land here when their delivery failed after others succeeded, so the
message is neither lost nor delivered twice when the client retries, and
bounces land here too.  Whoever works on an entry holds an exclusive flock
on its ``.eml`` (which is never replaced, unlike the ``.json``): the smtpd
workers and the ``mailstack queue`` commands never act on one entry at once.
A change of state (a recipient delivered) is written and the directory
fsynced before anything else happens, so a crash never sends twice what a
remote host confirmed.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from ..files import write_all, write_atomic

WAKE = ".wake"  # touched by `mailstack queue flush|release`: the runners rescan


@dataclass
class Recipient:
    address: str
    local: bool  # deliver into the store rather than over SMTP
    status: str = "pending"  # pending | delivered | failed
    reason: str = ""  # the last reply or error, for the operator and the bounce
    remote_mta: str = ""  # host that gave that reply
    notified: bool = False  # a failure the sender was told of
    accounts_done: list[str] = field(default_factory=list)  # a local list: members that have their copy


@dataclass
class Entry:
    id: str
    sender: str  # "" for the null sender
    recipients: list[Recipient]
    created: float = field(default_factory=time.time)
    attempts: int = 0
    next_attempt: float = 0.0
    held: bool = False
    client: str = ""
    warned: bool = False  # the sender was told of the delay
    body: str = ""  # "8BITMIME" when the client declared it
    folder: str = "INBOX"  # for local recipients: "Junk" when a policy quarantined it
    note: str = ""  # why it is held (a quarantine: which filter, what it found)
    smtputf8: bool = False

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == "pending"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Entry:
        d = json.loads(text)
        d["recipients"] = [Recipient(**r) for r in d["recipients"]]
        return cls(**d)


class Busy(Exception):
    """Another process works on this entry."""


class Queue:
    def __init__(self, path: Path):
        self.path = path

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def add(self, message: Path, entry: Entry) -> None:
        """Take an fsynced ``message`` file (same file system) into the queue durably."""
        eml = self.path / f"{entry.id}.eml"
        os.link(message, eml)
        try:
            write_atomic(self.path / f"{entry.id}.json", entry.to_json(), 0o600)
            self._give_to_owner(self.path / f"{entry.id}.json")
            self._fsync_dir()
        except BaseException:
            eml.unlink(missing_ok=True)
            (self.path / f"{entry.id}.json").unlink(missing_ok=True)
            raise

    def add_bytes(self, data: bytes, entry: Entry) -> None:
        """Queue a message we made (a bounce): small, so written from memory."""
        self.add_copy(data, io.BytesIO(b""), entry)

    def add_copy(self, prefix: bytes, source: BinaryIO, entry: Entry) -> None:
        """Queue a copy of a message with header lines in front (a Sieve
        redirect), streamed: a 100 MB message is never in memory."""
        tmp = self.path / f".{entry.id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, prefix)
            while chunk := source.read(1 << 16):
                write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            self.add(tmp, entry)
        finally:
            tmp.unlink(missing_ok=True)

    def ids(self) -> list[str]:
        return sorted(p.name[:-5] for p in os.scandir(self.path) if p.name.endswith(".json") and not p.name.startswith("."))

    def load(self, entry_id: str) -> Entry | None:
        try:
            return Entry.from_json((self.path / f"{entry_id}.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def entries(self) -> list[Entry]:
        return [e for e in map(self.load, self.ids()) if e is not None]

    def save(self, entry: Entry) -> None:
        self.save_text(entry.id, entry.to_json())

    def save_text(self, entry_id: str, text: str) -> None:
        """Durably: the rename is fsynced before the caller goes on."""
        path = self.path / f"{entry_id}.json"
        write_atomic(path, text, 0o600)
        self._give_to_owner(path)
        self._fsync_dir()

    def _give_to_owner(self, path: Path) -> None:
        """`mailstack queue|quarantine` run by root: the daemons' user must still read it."""
        if os.geteuid() == 0:
            st = self.path.stat()
            if st.st_uid != 0:
                os.chown(path, st.st_uid, st.st_gid)

    def remove(self, entry_id: str) -> None:
        """The envelope goes first: an ``.eml`` alone is an orphan, cleaned at start."""
        (self.path / f"{entry_id}.json").unlink(missing_ok=True)
        (self.path / f"{entry_id}.eml").unlink(missing_ok=True)
        self._fsync_dir()

    @contextlib.contextmanager
    def locked(self, entry_id: str, wait: bool = False) -> Iterator[None]:
        """Exclusive use of one entry across processes; Busy if taken (unless ``wait``),
        FileNotFoundError if the entry is gone."""
        fd = os.open(self.path / f"{entry_id}.eml", os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise Busy(entry_id) from None
            yield
        finally:
            os.close(fd)

    def try_lock(self, entry_id: str) -> int | None:
        """``locked`` for the runner, whose attempt spans threads and the loop:
        a descriptor holding the lock (close it to release), or None if the
        entry is taken or gone."""
        try:
            fd = os.open(self.path / f"{entry_id}.eml", os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def message_path(self, entry_id: str) -> Path:
        return self.path / f"{entry_id}.eml"

    def wake(self) -> None:
        """Tell the running daemons to look at the queue again now."""
        (self.path / WAKE).touch()

    def wake_mtime(self) -> float:
        try:
            return (self.path / WAKE).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def clean_orphans(self) -> int:
        """Remove messages whose envelope was never written (crash before 250)."""
        n = 0
        for eml in self.path.glob("*.eml"):
            if not eml.with_suffix(".json").exists():
                eml.unlink(missing_ok=True)
                n += 1
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return n
