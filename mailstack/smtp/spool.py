"""Messages being received: written as the bytes arrive, never whole in memory.

A message starts in a bounded memory buffer and moves to a file in
SPOOL/incoming once it passes ``MEMORY_LIMIT`` (or when the queue must keep
it): most mail is small, and creating, writing and removing a file for each
one cost the daemon more than the rest of the transaction.  The spool starts
with our Received header, so local delivery and the queue take it as it is.
It is not fsynced: the store fsyncs its own copy, and the queue fsyncs
before it takes the file over.  Whatever is left in incoming/ after a crash
was never acknowledged; the daemon clears it at start.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import BinaryIO, Callable

from ..files import write_all

MEMORY_LIMIT = 256 * 1024  # per message in transit; past it, the bytes go to a file
HEAD_LIMIT = 1024 * 1024  # header block looked at by rewrite_head

_serial = itertools.count()


def new_id() -> str:
    """Message and queue ID: sortable by time, unique across processes, file-name safe."""
    return f"{int(time.time() * 1000):011x}{os.getpid() & 0xFFFFF:05x}{next(_serial) & 0xFFFF:04x}"


class SpoolFile:
    """One message in transit.  ``write`` stops storing past ``limit`` but
    keeps counting, so the session can read to the end and refuse cleanly."""

    def __init__(self, directory: Path, msg_id: str, header: bytes, limit: int):
        self.path = directory / msg_id
        self.limit = limit
        self.size = 0  # message bytes, without our header
        self._buf: bytearray | None = bytearray(header)
        self._fd: int | None = None
        self.crlf_only = False  # set by DATA, which refuses bare CR and LF
        self.error: OSError | None = None  # a write failed (disk full...): nothing more is stored

    @property
    def on_disk(self) -> bool:
        return self._buf is None and self.path.exists()

    @property
    def too_large(self) -> bool:
        return self.size > self.limit

    def write(self, data: bytes) -> None:
        """Never raises: the session must read on to the end of the message
        whatever happens here, or the rest would be taken as commands."""
        if not data:
            return
        self.size += len(data)
        if self.too_large or self.error is not None:
            return
        try:
            if self._buf is None:
                assert self._fd is not None
                write_all(self._fd, data)
                return
            self._buf += data
            if len(self._buf) > MEMORY_LIMIT:
                self._spill()
        except OSError as e:
            self.error = e

    def _spill(self) -> None:
        assert self._buf is not None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        write_all(self._fd, self._buf)
        self._buf = None

    def finish(self, sync: bool = False) -> None:
        """No more writes.  ``sync``: the message must outlive a crash as a file
        at ``path`` (for the queue), so write it out and fsync it."""
        if sync and self._buf is not None:
            self._spill()
        if self._fd is not None:
            try:
                if sync:
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None
        elif sync:  # closed earlier without a sync
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def rewrite_head(self, add: bytes, transform: Callable[[bytes], bytes] | None = None) -> None:
        """After ``finish``: put header lines ``add`` on top and pass the header
        block through ``transform`` (to strip forged headers).  A spilled
        message is rewritten by copying, only when something changes: a
        cost big messages pay once.  HeaderTooLarge past HEAD_LIMIT."""
        if self._buf is not None:
            cut = header_end(self._buf, len(self._buf) <= HEAD_LIMIT)
            head = bytes(self._buf[:cut])
            new = add + (transform(head) if transform is not None else head)
            if new != head:
                self._buf[:cut] = new
            return
        tmp = self.path.with_name(self.path.name + ".new")
        with open(self.path, "rb") as f:
            first = f.read(HEAD_LIMIT + 2)
            cut = header_end(first, len(first) <= HEAD_LIMIT)
            head = first[:cut]
            new = add + (transform(head) if transform is not None else head)
            if new == head:
                return
            try:
                with open(tmp, "wb") as out:
                    out.write(new)
                    f.seek(cut)
                    shutil.copyfileobj(f, out, 1 << 20)
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def length(self) -> int:
        """Bytes as delivery will see them (our headers included)."""
        return len(self._buf) if self._buf is not None else os.stat(self.path).st_size

    def open(self) -> BinaryIO:
        if self._buf is not None:
            return io.BytesIO(self._buf)
        return open(self.path, "rb")

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._buf is None:
            self.path.unlink(missing_ok=True)
        self._buf = None


class HeaderTooLarge(ValueError):
    """No empty line within HEAD_LIMIT bytes: no legitimate message has that much header."""


def header_end(data: bytes | bytearray, complete: bool) -> int:
    """Where the header block of ``data`` ends (after the last field's line
    end, before the empty line), with CRLF or bare LF line ends, as mail
    readers see it; the whole of ``data`` when it is ``complete`` and has no
    empty line (a message of headers only)."""
    ends = [i + 2 for i in (data.find(b"\r\n\r\n", 0, HEAD_LIMIT + 4),) if i >= 0]
    ends += [i + 1 for i in (data.find(b"\n\n", 0, HEAD_LIMIT + 2),) if i >= 0]
    if ends:
        end = min(ends)
        if end <= HEAD_LIMIT + 2:
            return end
    if complete:
        return len(data)
    raise HeaderTooLarge(f"no end of the header section within {HEAD_LIMIT} bytes")


def clear_incoming(directory: Path) -> int:
    """Remove transfers a previous run left half-done (never acknowledged)."""
    n = 0
    for p in directory.iterdir():
        p.unlink(missing_ok=True)
        n += 1
    return n


_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")


def clean(text: str, limit: int = 100) -> str:
    """A client-supplied word made safe for a header comment."""
    return _UNSAFE.sub("?", text[:limit]) or "unknown"


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    msg_id: str,
    recipient: str | None,
    tls: str | None,
    login: str | None,
    now: float | None = None,
) -> bytes:
    """RFC 5321 4.4 trace line.  ``protocol`` is the RFC 3848 name (ESMTPSA...)."""
    lines = [f"Received: from {clean(helo)} ([{clean(client_ip, 64)}])"]
    if tls:
        lines.append(f"\t({tls})")
    if login:
        lines.append(f"\t(authenticated sender: {clean(login)})")
    lines.append(f"\tby {hostname} (mailstack) with {protocol} id {msg_id}")
    if recipient and _ADDRESS.fullmatch(recipient):
        lines.append(f"\tfor <{recipient}>")
    lines[-1] += ";"
    lines.append("\t" + format_datetime(datetime.fromtimestamp(now or time.time(), timezone.utc)))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


_ADDRESS = re.compile(r"[^\s<>()\\\"]{1,254}@[A-Za-z0-9.\-]{1,253}")
