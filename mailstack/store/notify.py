"""Change notification across processes: a delivery by the SMTP daemon, a
flag change by another IMAP session or by Dovecot, reaches an IDLE session
within a second.

On Linux this is inotify on the folder's ``new/``, ``cur/`` and control
files; elsewhere (or when inotify is exhausted) a stat poll every 0.25 s.
inotify is reached through ctypes: the stdlib has no binding, and
Twisted's is tied to its reactor while the store must serve asyncio and
threads too.  ``fileno()`` lets an event loop watch the descriptor itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import time
from pathlib import Path

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_DIR_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
_CONTROL_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO
_CONTROL_FILES = (b"dovecot-uidlist", b"dovecot-keywords")
_EVENT = struct.Struct("iIII")
POLL_INTERVAL = 0.25

_libc = None


def _inotify():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name, use_errno=True) if name else None
        _libc = lib if lib is not None and hasattr(lib, "inotify_init1") else False
    return _libc or None


class FolderWatcher:
    """Tells when a folder may have changed."""

    def __init__(self, folder: Path, use_inotify: bool = True):
        self.folder = folder
        self._fd: int | None = None
        self._signature = self._stat()
        lib = _inotify() if use_inotify else None
        if lib is not None:
            fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd >= 0:
                ok = True
                self._control_wd = lib.inotify_add_watch(fd, bytes(folder), _CONTROL_MASK)
                for sub in ("new", "cur"):
                    ok = ok and lib.inotify_add_watch(fd, bytes(folder / sub), _DIR_MASK) >= 0
                if ok and self._control_wd >= 0:
                    self._fd = fd
                else:
                    os.close(fd)

    @property
    def uses_inotify(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int | None:
        return self._fd

    def _stat(self) -> tuple:
        sig = []
        for p in (self.folder / "new", self.folder / "cur", self.folder / "dovecot-uidlist", self.folder / "dovecot-keywords"):
            try:
                st = os.stat(p)
                sig.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                sig.append(None)
        return tuple(sig)

    def drain(self) -> bool:
        """Consume what happened since the last call; True if the folder changed."""
        if self._fd is None:
            sig = self._stat()
            changed, self._signature = sig != self._signature, sig
            return changed
        changed = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return changed
            if not data:
                return changed
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if wd != self._control_wd or name in _CONTROL_FILES:
                    changed = True

    def wait(self, timeout: float) -> bool:
        """Block until the folder changes or ``timeout`` passes (for threads and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.drain():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._fd is None:
                time.sleep(min(POLL_INTERVAL, left))
            else:
                select.select([self._fd], [], [], left)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderWatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
