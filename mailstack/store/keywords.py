"""``dovecot-keywords``: the folder's keyword names for the letters a-z.

Format: one ``<index> <name>`` line per keyword; index 0 is letter "a".
A Maildir file name has room for 26 keywords per folder.  Updates go
through a dotlock file renamed over the list, as Dovecot does.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

KEYWORDS = "dovecot-keywords"
MAX_KEYWORDS = 26
_ATOM = re.compile(r"^[!#$&'+\-.0-9:;<=>?@A-Z\^_`a-z|~]{1,64}$")  # IMAP atom, no \ * % ( ) { " ] or space


class KeywordError(ValueError):
    pass


def valid_keyword(name: str) -> bool:
    return bool(_ATOM.match(name)) and not name.startswith("\\")


def letter(index: int) -> str:
    return chr(ord("a") + index)


def index_of(letter_: str) -> int:
    return ord(letter_) - ord("a")


def read(folder: Path) -> list[str | None]:
    """Names by index (None for a gap)."""
    try:
        text = (folder / KEYWORDS).read_text("utf-8", "replace")
    except FileNotFoundError:
        return []
    names: list[str | None] = []
    for line in text.splitlines():
        idx, _, name = line.partition(" ")
        if not idx.isdigit() or not name or int(idx) >= MAX_KEYWORDS:
            continue
        i = int(idx)
        while len(names) <= i:
            names.append(None)
        names[i] = name.strip()
    return names


def ensure(folder: Path, wanted: list[str]) -> list[str | None]:
    """Add keywords that are missing; return the full table.

    Raises KeywordError when the folder has no letter left for one.
    """
    names = read(folder)
    missing = [k for k in wanted if k not in names]
    if not missing:
        return names
    lock = folder / (KEYWORDS + ".lock")
    deadline = time.monotonic() + 30
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > 30:
                    lock.unlink()
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise KeywordError(f"{lock}: held too long") from None
            time.sleep(0.005)
    try:
        names = read(folder)  # again, under the lock
        for k in wanted:
            if k in names:
                continue
            if None in names:
                names[names.index(None)] = k
            elif len(names) < MAX_KEYWORDS:
                names.append(k)
            else:
                raise KeywordError(f"no room for keyword {k!r}: a folder holds {MAX_KEYWORDS} keywords")
        data = "".join(f"{i} {n}\n" for i, n in enumerate(names) if n is not None).encode()
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(lock, folder / KEYWORDS)
    finally:
        if fd != -1:
            os.close(fd)
            lock.unlink(missing_ok=True)
    return names
