"""``dovecot-uidlist`` (version 3) and the folder lock shared with Dovecot.

Format: a header ``3 V<uidvalidity> N<nextuid> G<guid>`` then one line per
message ``<uid> [extension fields] :<base name>``.  New messages are
appended under the lock (as Dovecot does); the header's N may then be
behind, so the next UID is max(N, last UID + 1).  A partly written last
line (a crash in the middle of an append) is ignored.

Locking: Dovecot creates ``dovecot-uidlist.lock`` with O_EXCL and either
appends to the list or writes the new list into the lock file and renames
it over the list.  We do the same, inside an flock on ``mailstack.lock``
that serializes our own processes and is released by the kernel if one
dies; the inode of our dotlock is recorded there so that a dotlock left by
a killed mailstack process is recognised and removed at once.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_all

UIDLIST = "dovecot-uidlist"
DOTLOCK = UIDLIST + ".lock"
FLOCK = "mailstack.lock"
STALE_DOTLOCK = 120.0  # seconds: Dovecot's own stale timeout for this lock
PENDING_STALE = 5.0
LOCK_TIMEOUT = 60.0


class LockTimeout(Exception):
    pass


class UidListError(Exception):
    pass


@dataclass
class UidList:
    uidvalidity: int = 0
    next_uid: int = 1
    guid: str = ""
    header_extra: list[str] = field(default_factory=list)
    uids: dict[str, int] = field(default_factory=dict)  # base name -> uid
    extensions: dict[int, str] = field(default_factory=dict)  # uid -> extension fields, kept verbatim
    # Where we stopped reading: lets a reader pick up appended lines only.
    size: int = 0
    inode: int = 0
    mtime_ns: int = 0

    @classmethod
    def new(cls, uidvalidity: int | None = None) -> UidList:
        return cls(uidvalidity=uidvalidity or int(time.time()), guid=secrets.token_hex(16))

    def header(self) -> str:
        fields = [f"V{self.uidvalidity}", f"N{self.next_uid}"]
        if self.guid:
            fields.append(f"G{self.guid}")
        return "3 " + " ".join(fields + self.header_extra)

    def add(self, base: str) -> int:
        uid = self.next_uid
        self.uids[base] = uid
        self.next_uid = uid + 1
        return uid

    def render(self, keep: set[str] | None = None) -> bytes:
        """The whole file; ``keep`` drops lines of messages that are gone."""
        lines = [self.header()]
        for base, uid in sorted(self.uids.items(), key=lambda kv: kv[1]):
            if keep is None or base in keep:
                ext = self.extensions.get(uid)
                lines.append(f"{uid} {ext} :{base}" if ext else f"{uid} :{base}")
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def read(folder: Path, previous: UidList | None = None) -> UidList | None:
    """Read the list; with ``previous``, read only what was appended since.
    Returns None if there is no list."""
    path = folder / UIDLIST
    if previous is not None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if (st.st_ino, st.st_size, st.st_mtime_ns) == (previous.inode, previous.size, previous.mtime_ns):
            return previous  # unchanged: no need to open it
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        st = os.fstat(f.fileno())
        if previous is not None and previous.inode == st.st_ino and previous.size <= st.st_size:
            if previous.size == st.st_size and previous.mtime_ns == st.st_mtime_ns:
                return previous
            f.seek(previous.size)
            data = f.read()
            ul = previous
            start = previous.size
            _parse_lines(ul, data, header=False, start=start)
        else:
            data = f.read()
            ul = UidList()
            _parse_lines(ul, data, header=True, start=0)
        ul.inode, ul.mtime_ns = st.st_ino, st.st_mtime_ns
        return ul


def _parse_lines(ul: UidList, data: bytes, header: bool, start: int) -> None:
    end = data.rfind(b"\n") + 1  # a partial last line is not ours to read yet
    text = data[:end].decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if header:
        if not lines or not lines[0].startswith("3 "):
            raise UidListError(f"unsupported dovecot-uidlist header: {lines[0][:60] if lines else ''!r}")
        for tok in lines[0].split()[1:]:
            if tok[:1] == "V" and tok[1:].isdigit():
                ul.uidvalidity = int(tok[1:])
            elif tok[:1] == "N" and tok[1:].isdigit():
                ul.next_uid = max(ul.next_uid, int(tok[1:]))
            elif tok[:1] == "G":
                ul.guid = tok[1:]
            else:
                ul.header_extra.append(tok)
        lines = lines[1:]
    for line in lines:
        if not line:
            continue
        head, sep, base = line.partition(" :")
        if not sep:
            head, sep, base = line.partition(":")
        parts = head.split(" ", 1)
        if not sep or not parts[0].isdigit() or not base:
            continue  # damaged line: the message will get a new UID at sync
        uid = int(parts[0])
        ul.uids[base] = uid
        if len(parts) > 1 and parts[1].strip():
            ul.extensions[uid] = parts[1].strip()
        ul.next_uid = max(ul.next_uid, uid + 1)
    ul.size = start + end


class FolderLock:
    """Exclusive lock on a folder's UID list, between our processes and Dovecot."""

    def __init__(self, folder: Path, timeout: float = LOCK_TIMEOUT, fd: int | None = None,
                 mutex: threading.Lock | None = None):
        """``fd``: an open descriptor of ``mailstack.lock`` to reuse (saves an
        open per delivery); ``mutex`` must then come with it, because threads
        sharing one descriptor share its flock."""
        self.folder = folder
        self.timeout = timeout
        self._flock_fd: int | None = None
        self._holding_dotlock = False
        self.dotlock = folder / DOTLOCK
        self._given_fd = fd
        self._mutex = mutex

    def __enter__(self) -> FolderLock:
        deadline = time.monotonic() + self.timeout
        if self._mutex is not None and not self._mutex.acquire(timeout=self.timeout):
            raise LockTimeout(f"{self.folder}: lock held too long in this process")
        try:
            fd = self._given_fd if self._given_fd is not None else os.open(self.folder / FLOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except BaseException:
            if self._mutex is not None:
                self._mutex.release()
            raise
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeout(f"{self.folder}: lock held too long") from None
                    time.sleep(0.002)
            self._take_dotlock(fd, deadline)
        except BaseException:
            if self._given_fd is None:
                os.close(fd)
            if self._mutex is not None:
                self._mutex.release()
            raise
        self._flock_fd = fd
        return self

    def _take_dotlock(self, fd: int, deadline: float) -> None:
        # What the previous holder of the flock left: if it died holding the
        # dotlock, this names it.
        inherited = os.pread(fd, 24, 0).strip()
        delay = 0.001
        while True:
            # Say we are about to create it: if we die before recording its
            # inode, the next holder still knows the dotlock may be ours.
            os.pwrite(fd, b"pending".ljust(24), 0)
            try:
                lfd = os.open(self.dotlock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                os.pwrite(fd, b"-".ljust(24), 0)  # waiting: nothing of ours on disk
                if self._stale(inherited):
                    inherited = b"-"
                    try:
                        os.unlink(self.dotlock)
                    except FileNotFoundError:
                        pass
                    continue
                if time.monotonic() > deadline:
                    raise LockTimeout(f"{self.dotlock}: held by another program") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            os.pwrite(fd, f"{os.fstat(lfd).st_ino}\n".ljust(24).encode(), 0)
            os.close(lfd)
            self._holding_dotlock = True
            return

    def _stale(self, recorded: bytes) -> bool:
        try:
            st = os.stat(self.dotlock)
        except FileNotFoundError:
            return True
        if recorded.isdigit() and int(recorded) == st.st_ino:
            return True  # ours, left by a process that died holding it
        age = time.time() - st.st_mtime
        if recorded == b"pending" and age > PENDING_STALE:
            # A holder died between creating the dotlock and recording it.
            # Dovecot holds this lock for milliseconds, so an old untouched
            # one in that state is the dead holder's.
            return True
        return age > STALE_DOTLOCK

    def replace_list(self, ul: UidList, keep: set[str] | None = None) -> None:
        """Write the whole list through the dotlock and rename it in place."""
        data = ul.render(keep)
        fd = os.open(self.dotlock, os.O_WRONLY | os.O_TRUNC)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self.dotlock, self.folder / UIDLIST)
        self._holding_dotlock = False  # the rename released it
        os.pwrite(self._flock_fd, b"-".ljust(24), 0)  # type: ignore[arg-type]
        st = os.stat(self.folder / UIDLIST)
        ul.size, ul.inode, ul.mtime_ns = len(data), st.st_ino, st.st_mtime_ns

    def append(self, ul: UidList, entries: list[tuple[int, str]], fd: int | None = None) -> None:
        """Append new lines durably (fsync) to an existing list.  ``fd``: an
        open descriptor of the list to reuse, if it is still the list's file."""
        data = "".join(f"{uid} :{base}\n" for uid, base in entries).encode("utf-8", "surrogateescape")
        path = self.folder / UIDLIST
        own = fd is None or os.fstat(fd).st_ino != os.stat(path).st_ino
        if own:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        assert fd is not None
        try:
            st = os.fstat(fd)
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                data = b"\n" + data  # a torn line from a crash: start a fresh one
            write_all(fd, data)
            os.fdatasync(fd)
            st = os.fstat(fd)
        finally:
            if own:
                os.close(fd)
        if st.st_ino == ul.inode:
            ul.size, ul.mtime_ns = st.st_size, st.st_mtime_ns

    def __exit__(self, *exc) -> None:
        fd = self._flock_fd
        self._flock_fd = None
        try:
            if self._holding_dotlock:
                self._holding_dotlock = False
                os.unlink(self.dotlock)
        except FileNotFoundError:
            pass
        finally:
            if fd is not None:
                os.pwrite(fd, b"-".ljust(24), 0)
                if self._given_fd is None:
                    os.close(fd)
                else:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            if self._mutex is not None:
                self._mutex.release()

