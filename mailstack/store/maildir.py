"""Maildir files: unique names, the ``,S=`` / ``,W=`` sizes, flag letters, and
the durable write of a message from a stream.

A file name is ``BASE,S=<size>,W=<size with CRLF>:2,<letters>`` as Dovecot
writes it.  Letters are the system flags (D F P R S T, ASCII order) followed
by keyword letters a-z, whose names live in ``dovecot-keywords``.  Messages
are stored with CRLF line ends, so S = W and IMAP can send file bytes as is.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from ..files import write_all

# IMAP system flag <-> Maildir letter.  Maildir's P (passed) has no IMAP
# flag: like Dovecot we keep it in file names but do not show it, and
# $Forwarded is an ordinary keyword.
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}
CHUNK = 1 << 16

_HOST = re.sub(r"[/:,\\]", "_", socket.gethostname() or "localhost")
_COUNTER = itertools.count()
_SIZE_RE = re.compile(r",S=(\d+)")
_VSIZE_RE = re.compile(r",W=(\d+)")


class MessageTooLarge(Exception):
    """The stream exceeded the size limit; nothing was stored."""

    def __init__(self, limit: int):
        super().__init__(f"message larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class FileName:
    base: str  # unique part, including ,S= and ,W=: what dovecot-uidlist records
    letters: str  # flag and keyword letters after ":2,"

    @classmethod
    def parse(cls, name: str) -> FileName:
        base, sep, info = name.partition(":")
        if sep and info.startswith("2,"):
            return cls(base, info[2:])
        return cls(name if not sep else base, "")

    def __str__(self) -> str:
        return f"{self.base}:2,{self.letters}"

    @property
    def size(self) -> int | None:
        m = _SIZE_RE.search(self.base)
        return int(m.group(1)) if m else None

    @property
    def vsize(self) -> int | None:
        m = _VSIZE_RE.search(self.base)
        return int(m.group(1)) if m else None


def new_base(size: int, vsize: int, now: float | None = None) -> str:
    """A name no other process or host will pick (time, microseconds, pid, counter, host)."""
    now = time.time() if now is None else now
    sec, usec = int(now), int((now % 1) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_COUNTER)}.{_HOST},S={size},W={vsize}"


def letters_sorted(letters: Iterable[str]) -> str:
    return "".join(sorted(set(letters)))


def write_crlf(stream: BinaryIO | Iterable[bytes], fd: int, limit: int | None = None) -> int:
    """Copy a message to ``fd`` in chunks, turning bare LF and bare CR into
    CRLF.  Returns the number of bytes written; raises MessageTooLarge past
    ``limit``.  Memory use is one chunk whatever the message size."""
    written = 0
    pending_cr = False
    for chunk in _chunks(stream):
        if not chunk:
            continue
        if pending_cr:
            chunk = b"\r" + chunk
            pending_cr = False
        if chunk.endswith(b"\r"):
            chunk, pending_cr = chunk[:-1], True
        if b"\n" in chunk or b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        written += len(chunk)
        if limit is not None and written > limit:
            raise MessageTooLarge(limit)
        write_all(fd, chunk)
    if pending_cr:
        written += 2
        if limit is not None and written > limit:
            raise MessageTooLarge(limit)
        write_all(fd, b"\r\n")
    return written


def _chunks(stream: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    if hasattr(stream, "read"):
        while True:
            chunk = stream.read(CHUNK)  # type: ignore[union-attr]
            if not chunk:
                return
            yield chunk
    else:
        yield from stream  # type: ignore[misc]


class CrlfReader(io.RawIOBase):
    """Reads a file stored with bare LF (by Dovecot, procmail...) as CRLF,
    the form IMAP sizes and offsets refer to."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self._buf = b""
        self._prev_cr = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            chunk = self._f.read(CHUNK)
            if not chunk:
                return 0
            out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            if self._prev_cr and chunk[:1] == b"\n":
                out = out[1:]  # the CR ended the previous chunk
            self._prev_cr = chunk[-1:] == b"\r"
            self._buf = out
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def set_internal_date(path: Path, when: datetime | float | None) -> None:
    """Dovecot keeps the IMAP INTERNALDATE in the file's mtime."""
    if when is None:
        return
    ts = when.timestamp() if isinstance(when, datetime) else float(when)
    os.utime(path, (ts, ts))
