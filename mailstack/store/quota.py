"""Account quotas in Maildir++'s ``maildirsize`` (Dovecot's maildir quota file).

Format: a first line of limits (``<bytes>S,<messages>C``), then lines of
``<bytes> <messages>``, the first being the totals at the last
recalculation and the rest deltas appended by each change (one O_APPEND
write each, atomic for lines this short).  The file is recalculated from
the Maildir when missing, damaged, over 5120 bytes or older than 15 minutes
with deltas pending, as the Maildir++ rules say.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import write_atomic
from .maildir import FileName

MAILDIRSIZE = "maildirsize"
MAX_FILE = 5120
RECALC_AGE = 15 * 60


@dataclass(frozen=True)
class Usage:
    bytes: int
    messages: int
    bytes_limit: int  # 0 = unlimited
    messages_limit: int


class QuotaExceeded(Exception):
    def __init__(self, usage: Usage, adding: int):
        super().__init__(
            f"over quota: {usage.bytes + adding} bytes of {usage.bytes_limit}"
            if usage.bytes_limit and usage.bytes + adding > usage.bytes_limit
            else f"over quota: {usage.messages + 1} messages of {usage.messages_limit}"
        )
        self.usage = usage


class Quota:
    def __init__(self, maildir: Path, bytes_limit: int = 0, messages_limit: int = 0):
        self.maildir = maildir
        self.path = maildir / MAILDIRSIZE
        self.bytes_limit = bytes_limit
        self.messages_limit = messages_limit

    def _limits_line(self) -> str:
        return f"{self.bytes_limit}S,{self.messages_limit}C"

    def usage(self) -> Usage:
        try:
            st = os.stat(self.path)
            text = self.path.read_text("ascii", "replace")
        except FileNotFoundError:
            return self.recalculate()
        lines = text.split("\n")
        if lines[0] != self._limits_line() or st.st_size > MAX_FILE:
            return self.recalculate()
        if len(lines) > 3 and time.time() - st.st_mtime > RECALC_AGE:
            return self.recalculate()
        total_b = total_m = 0
        for line in lines[1:]:
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
                return self.recalculate()
            total_b += int(parts[0])
            total_m += int(parts[1])
        if total_b < 0 or total_m < 0:
            return self.recalculate()
        return Usage(total_b, total_m, self.bytes_limit, self.messages_limit)

    def check(self, adding_bytes: int, adding_messages: int = 1) -> None:
        """Raise QuotaExceeded if adding this would go over a limit."""
        if not (self.bytes_limit or self.messages_limit) or (adding_bytes <= 0 and adding_messages <= 0):
            return
        u = self.usage()
        if (self.bytes_limit and u.bytes + adding_bytes > self.bytes_limit) or (
            self.messages_limit and u.messages + adding_messages > self.messages_limit
        ):
            raise QuotaExceeded(u, adding_bytes)

    def record(self, delta_bytes: int, delta_messages: int) -> None:
        if not self.path.exists():
            self.recalculate()
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, f"{delta_bytes} {delta_messages}\n".encode())
        finally:
            os.close(fd)

    def recalculate(self) -> Usage:
        total_b = total_m = 0
        for folder in [self.maildir] + [p for p in self.maildir.iterdir() if p.name.startswith(".") and p.is_dir()]:
            for sub in ("cur", "new"):
                try:
                    with os.scandir(folder / sub) as it:
                        for e in it:
                            if e.name.startswith("."):
                                continue
                            size = FileName.parse(e.name).size
                            if size is None:
                                try:
                                    size = e.stat().st_size
                                except FileNotFoundError:
                                    continue
                            total_b += size
                            total_m += 1
                except FileNotFoundError:
                    continue
        (self.maildir / "tmp").mkdir(mode=0o700, exist_ok=True)
        write_atomic(self.path, f"{self._limits_line()}\n{total_b} {total_m}\n", tmp_dir=self.maildir / "tmp")
        return Usage(total_b, total_m, self.bytes_limit, self.messages_limit)
