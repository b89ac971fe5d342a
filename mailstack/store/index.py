"""The per-folder index cache: an SQLite file beside the Maildir files.

The files stay the truth; the index remembers what is slow to recompute
(UID <-> file, flags, sizes, MODSEQ, parsed headers and MIME structure) and
is rebuilt when missing or corrupt.  MODSEQ lives only here: after a
rebuild, MODSEQs restart above a clock-based floor (microseconds since the
epoch), so they never go backwards for a client that cached an older value.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger("mailstack.store")
INDEX = "mailstack-index.sqlite"
SCHEMA_VERSION = "2"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL UNIQUE,
    subdir TEXT NOT NULL,
    letters TEXT NOT NULL,
    size INTEGER NOT NULL,   -- with CRLF line ends: what IMAP clients see (W=)
    psize INTEGER NOT NULL,  -- bytes in the file (S=), for the quota
    internal_date REAL,
    modseq INTEGER NOT NULL,
    info TEXT,
    subject TEXT, from_ TEXT, to_ TEXT, cc TEXT, bcc TEXT, date TEXT,
    message_id TEXT, in_reply_to TEXT, refs TEXT
);
CREATE INDEX IF NOT EXISTS messages_modseq ON messages(modseq);
CREATE TABLE IF NOT EXISTS expunged (uid INTEGER PRIMARY KEY, modseq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged(modseq);
"""


class IndexCorrupt(Exception):
    pass


@dataclass(frozen=True)
class Row:
    uid: int
    base: str
    subdir: str
    letters: str
    size: int
    psize: int
    modseq: int

    @property
    def filename(self) -> str:
        return f"{self.base}:2,{self.letters}" if self.subdir == "cur" or self.letters else self.base


def clock_modseq() -> int:
    return time.time_ns() // 1000


def _journal(db: sqlite3.Connection, mode: str, patience: float = 30.0) -> None:
    """Switch to WAL (or back to a rollback journal).  While another process
    creates the same new index, SQLite may answer this switch "locked" at
    once, without waiting for its busy timeout: wait here instead."""
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            db.execute(f"PRAGMA journal_mode={mode}")
            return
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


class Index:
    def __init__(self, folder: Path, wal: bool = True):
        """``wal=False`` for a mail root shared by several machines: WAL needs
        shared memory, which a network file system does not give; the
        rollback journal only needs the POSIX locks NFSv4 provides."""
        self.path = folder / INDEX
        self.wal = wal
        self._db: sqlite3.Connection | None = None
        self._depth = 0
        try:
            self.db.executescript(_SCHEMA)
            version = self.get("version")
            if version is None:
                with self.write():
                    if self.get("version") is not None:  # another process was first
                        return
                    self.set("version", SCHEMA_VERSION)
                    # A new index may replace a lost one: start MODSEQs and the
                    # expunge record above anything a client can have cached.
                    floor = clock_modseq()
                    self.set("highestmodseq", floor)
                    self.set("expunge_floor", floor)
            elif version != SCHEMA_VERSION:
                raise IndexCorrupt(f"{self.path}: schema {version}, expected {SCHEMA_VERSION}")
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise  # busy, not broken: never a reason to throw the index away
            raise IndexCorrupt(f"{self.path}: {e}") from None
        except sqlite3.DatabaseError as e:
            raise IndexCorrupt(f"{self.path}: {e}") from None

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, opened again after release()."""
        if self._db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            if self.wal:
                _journal(db, "WAL")
            else:
                try:  # leaving WAL needs the index to itself; until then, it stays as it is
                    _journal(db, "DELETE", patience=2.0)
                except sqlite3.OperationalError as e:
                    log.warning("%s: still in WAL mode (%s); it changes when no process has it open", self.path, e)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-512")  # KiB: thousands of sessions each hold one
            self._db = db
        return self._db

    def release(self) -> None:
        """Close the connection while a session waits (IDLE): its memory goes back."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self) -> None:
        self.release()

    @staticmethod
    def remove(folder: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            (folder / (INDEX + suffix)).unlink(missing_ok=True)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; writers from every process queue here.
        Re-entrant: an inner write joins the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.db
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            raise
        else:
            self._depth = 0
            self.db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    # -- meta --------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key: str, value: str | int | float) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def highest_modseq(self) -> int:
        value = self.get("highestmodseq")
        return int(value) if value else 0

    def next_modseq(self) -> int:
        """Call inside a write transaction."""
        m = max(self.highest_modseq() + 1, 1)
        self.set("highestmodseq", m)
        return m

    # -- messages ----------------------------------------------------------------

    def rows(self) -> list[Row]:
        return [Row(*r) for r in self.db.execute("SELECT uid, base, subdir, letters, size, psize, modseq FROM messages ORDER BY uid")]

    def row(self, uid: int) -> Row | None:
        r = self.db.execute("SELECT uid, base, subdir, letters, size, psize, modseq FROM messages WHERE uid = ?", (uid,)).fetchone()
        return Row(*r) if r else None

    def known_bases(self, bases: list[str]) -> set[str]:
        """Which of these file base names the index has."""
        out: set[str] = set()
        for i in range(0, len(bases), 500):
            chunk = bases[i : i + 500]
            q = f"SELECT base FROM messages WHERE base IN ({','.join('?' * len(chunk))})"
            out.update(r[0] for r in self.db.execute(q, chunk))
        return out

    def is_expunged(self, uid: int) -> bool:
        return self.db.execute("SELECT 1 FROM expunged WHERE uid = ?", (uid,)).fetchone() is not None

    def insert_many(self, rows: list[tuple[int, str, str, str, int, int, int, float | None]]) -> None:
        """(uid, base, subdir, letters, size, psize, modseq, internal date) rows."""
        self.db.executemany(
            "INSERT OR REPLACE INTO messages (uid, base, subdir, letters, size, psize, modseq, internal_date)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def update_file(self, uid: int, subdir: str, letters: str, modseq: int | None) -> None:
        if modseq is None:
            self.db.execute("UPDATE messages SET subdir = ?, letters = ? WHERE uid = ?", (subdir, letters, uid))
        else:
            self.db.execute(
                "UPDATE messages SET subdir = ?, letters = ?, modseq = ? WHERE uid = ?", (subdir, letters, modseq, uid)
            )

    def delete(self, uids: list[int], modseq: int) -> None:
        self.db.executemany("DELETE FROM messages WHERE uid = ?", [(u,) for u in uids])
        self.db.executemany("INSERT OR REPLACE INTO expunged (uid, modseq) VALUES (?, ?)", [(u, modseq) for u in uids])

    def expunged_since(self, modseq: int) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT uid FROM expunged WHERE modseq > ? ORDER BY uid", (modseq,))]

    def expunge_floor(self) -> int:
        """MODSEQ from which the expunge record is complete."""
        value = self.get("expunge_floor")
        return int(value) if value else 0
