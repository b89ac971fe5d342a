"""One Maildir folder: sync with the files, delivery, flags, copy, move, expunge.

Every change follows one rule: the Maildir files and dovecot-uidlist change
first and durably (fsync), the index second.  A crash between the two
leaves an index that the next sync repairs from the files.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, NamedTuple

from ..files import write_atomic
from . import keywords as kw
from . import mime, uidlist
from .index import Index, IndexCorrupt, Row, clock_modseq
from .maildir import (
    FLAG_LETTERS,
    LETTER_FLAGS,
    CrlfReader,
    FileName,
    letters_sorted,
    new_base,
    set_internal_date,
    write_crlf,
)

log = logging.getLogger(__name__)
STABLE_AFTER = 1.0  # seconds a directory must be unchanged before a sync may be skipped


class StoreError(Exception):
    """Base of the store's errors."""


class MessageGone(StoreError):
    """The message was expunged (by another session or program)."""


class OverQuota(StoreError):
    """Delivery or append would exceed the account's quota."""


class KeywordLimit(StoreError):
    """The folder has no room left for another keyword."""


class Message(NamedTuple):
    """A tuple: clients list 100,000 of these at a time."""

    uid: int
    flags: frozenset[str]
    size: int
    modseq: int


@dataclass(frozen=True)
class Status:
    messages: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    size: int
    deleted: int


QuotaHook = Callable[[int, int], None]  # (bytes, messages): check if positive, record


class Folder:
    def __init__(
        self, path: Path, name: str, quota_check: QuotaHook | None = None, quota_record: QuotaHook | None = None,
        shared: bool = False,
    ):
        self.path = path
        self.shared = shared  # the mail root is on a file system several machines use (no WAL)
        self.name = name
        self._quota_check = quota_check
        self._quota_record = quota_record
        self._uidlist: uidlist.UidList | None = None
        self._keywords_table: list[str | None] = []
        self._flag_cache: dict[str, frozenset[str]] = {}
        self._keywords_loaded = False
        self._fds: dict[str, int] = {}
        self._fds_pid = os.getpid()
        self._mutex = threading.Lock()
        self._index: Index | None = None

    @property
    def index(self) -> Index:
        """Opened on first use: a delivery agent (drop) never needs it."""
        if self._index is None:
            self._index = self._open_index()
        return self._index

    @index.setter
    def index(self, value: Index) -> None:
        self._index = value

    @property
    def _keywords(self) -> list[str | None]:
        return self._keywords_table

    @_keywords.setter
    def _keywords(self, table: list[str | None]) -> None:
        if table != self._keywords_table:
            self._flag_cache = {}
        self._keywords_table = table

    # -- index life cycle ----------------------------------------------------------

    def _open_index(self) -> Index:
        try:
            return Index(self.path, wal=not self.shared)
        except IndexCorrupt:
            Index.remove(self.path)
            return Index(self.path, wal=not self.shared)

    def _rebuild_index(self) -> None:
        try:
            self.index.close()
        finally:
            Index.remove(self.path)
            self.index = Index(self.path, wal=not self.shared)
        self._full_sync()

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, name: str) -> int:
        """A descriptor kept open for this folder (the lock file, new/, cur/),
        opened again in a forked child."""
        if self._fds_pid != os.getpid():
            self._fds, self._fds_pid = {}, os.getpid()
        fd = self._fds.get(name)
        if fd is None:
            if name == uidlist.FLOCK:
                fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o600)
            else:
                fd = os.open(self.path / name, os.O_RDONLY | os.O_DIRECTORY)
            self._fds[name] = fd
        return fd

    def _lock(self) -> uidlist.FolderLock:
        return uidlist.FolderLock(self.path, fd=self._fd(uidlist.FLOCK), mutex=self._mutex)

    def _fsync_dir(self, sub: str) -> None:
        os.fsync(self._fd(sub))

    def _uidlist_fd(self) -> int | None:
        """The uid list kept open for appends (it may be replaced: append() checks)."""
        if self._fds_pid != os.getpid():
            self._fds, self._fds_pid = {}, os.getpid()
        fd = self._fds.get(uidlist.UIDLIST)
        if fd is not None:
            try:
                if os.fstat(fd).st_ino == os.stat(self.path / uidlist.UIDLIST).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
            del self._fds[uidlist.UIDLIST]
        try:
            fd = os.open(self.path / uidlist.UIDLIST, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None
        self._fds[uidlist.UIDLIST] = fd
        return fd

    # -- sync ----------------------------------------------------------------------------

    def _stats(self) -> tuple[str, float]:
        parts, newest = [], 0.0
        for p in (self.path / uidlist.UIDLIST, self.path / "cur", self.path / "new"):
            try:
                st = os.stat(p)
            except FileNotFoundError:
                parts.append("-")
                continue
            parts.append(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
            newest = max(newest, st.st_mtime_ns / 1e9)
        return "|".join(parts), newest

    def sync(self, max_age: float = 0.0) -> None:
        """Bring the index in line with the files (cheap when nothing changed).

        Changes made through this store reach the index at once; a full scan
        is only needed for files changed by other programs (Dovecot, an
        MDA).  ``max_age`` lets a busy session skip scans younger than that
        many seconds: such changes then show up within ``max_age``."""
        if max_age and time.monotonic() - _LAST_FULL_SYNC.get(self.path, 0.0) < max_age and self.index.get("uidvalidity"):
            if not self._keywords_loaded:
                self._keywords = kw.read(self.path)
                self._keywords_loaded = True
            self._pick_up_new()
            return
        try:
            stats, newest = self._stats()
            if (
                self.index.get("stats") == stats
                and float(self.index.get("synced_at") or 0) - newest > STABLE_AFTER
                and self.index.get("uidvalidity")
            ):
                if not self._keywords_loaded:
                    self._keywords = kw.read(self.path)
                    self._keywords_loaded = True
                return
            self._full_sync()
        except IndexCorrupt:
            self._rebuild_index()
        except Exception as e:
            if _is_sqlite_corruption(e):
                self._rebuild_index()
            else:
                raise

    def _scan(self, subs: tuple[str, ...] = ("new", "cur")) -> dict[str, tuple[str, str, str]]:
        """base -> (subdir, file name, letters), from new/ then cur/ (cur wins)."""
        files: dict[str, tuple[str, str, str]] = {}
        for sub in subs:
            try:
                with os.scandir(self.path / sub) as it:
                    for e in it:
                        if e.name.startswith("."):
                            continue
                        fn = FileName.parse(e.name)
                        files[fn.base] = (sub, e.name, fn.letters)
            except FileNotFoundError:
                (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        return files

    def _full_sync(self) -> None:
        """Scan the files and repair the index.  Everything happens inside one
        index write transaction: our processes change the index only inside
        one, so no row can be written between the scan and the comparison
        (a row written after the scan would otherwise look expunged)."""
        _LAST_FULL_SYNC[self.path] = time.monotonic()
        self._apply_scan(complete=True)

    def _pick_up_new(self) -> None:
        """Between full scans, the cheap part: files a delivery agent (our SMTP
        daemon's drop, Dovecot's LDA) put in new/ get their UIDs.  new/ only
        holds what arrived since the last sync, so this costs one small listing."""
        try:
            names = os.listdir(self.path / "new")
        except FileNotFoundError:
            return
        bases = [FileName.parse(n).base for n in names if not n.startswith(".")]
        if bases and len(self.index.known_bases(bases)) < len(bases):
            self._apply_scan(complete=False)

    def _apply_scan(self, complete: bool) -> None:
        """Scan (all files, or new/ alone when not ``complete``) and repair the index."""
        with self.index.write():
            started = time.time()
            stats, _ = self._stats()
            files = self._scan() if complete else self._scan(("new",))
            ul = self._read_uidlist()
            modified = False
            unknown = [b for b in files if ul is None or b not in ul.uids]
            in_new = [b for b, (sub, _, _) in files.items() if sub == "new"]
            if ul is None or unknown or in_new:
                with self._lock() as lock:
                    ul = self._read_uidlist_locked(lock)
                    # Oldest first, so UIDs follow arrival order.
                    fresh = sorted((b for b in files if b not in ul.uids), key=_arrival)
                    entries = [(ul.add(b), b) for b in fresh]
                    for b in in_new:  # seen now: move to cur/ as Dovecot does
                        sub, name, letters = files[b]
                        target = f"{b}:2,{letters}"
                        try:
                            os.rename(self.path / "new" / name, self.path / "cur" / target)
                            files[b] = ("cur", target, letters)
                        except FileNotFoundError:
                            files.pop(b, None)
                    if entries:
                        lock.append(ul, entries, self._uidlist_fd())
                    modified = True
            self._uidlist = ul
            self._keywords = kw.read(self.path)
            self._keywords_loaded = True
            assert ul is not None
            idx = self.index
            present = {ul.uids[b]: b for b in files if b in ul.uids}
            if complete:
                rows = {r.uid: r for r in idx.rows()}
                expunged = {r[0] for r in idx.db.execute("SELECT uid FROM expunged")}
            else:  # new/ alone: only its rows matter, and nothing is found gone
                rows = {u: r for u in present if (r := idx.row(u)) is not None}
                expunged = {u for u in present if u not in rows and idx.is_expunged(u)}
            modseq: list[int] = []

            def ms() -> int:
                if not modseq:
                    modseq.append(idx.next_modseq())
                return modseq[0]

            gone = [uid for uid, r in rows.items() if present.get(uid) != r.base] if complete else []
            if gone:
                idx.delete(gone, ms())
                expunged.update(gone)
            inserts = []
            for uid, base in present.items():
                sub, name, letters = files[base]
                r = rows.get(uid)
                if r is None or r.base != base:
                    if uid in expunged and r is None:
                        continue  # a UID once expunged never comes back
                    size, psize = _sizes(self.path / sub / name, FileName(base, letters))
                    inserts.append((uid, base, sub, letters, size, psize, ms(), None))
                elif r.letters != letters:
                    idx.update_file(uid, sub, letters, ms())
                elif r.subdir != sub:
                    idx.update_file(uid, sub, letters, None)
            idx.insert_many(inserts)
            idx.set("uidvalidity", ul.uidvalidity)
            idx.set("uidnext", max(ul.next_uid, int(idx.get("uidnext") or 1)))
            if complete:
                # After our own moves and appends the stats are ours, not a stable
                # picture: leave them unrecorded so the next sync looks again.
                idx.set("stats", "-" if modified else stats)
                idx.set("synced_at", started)

    def _read_uidlist(self) -> uidlist.UidList | None:
        try:
            return uidlist.read(self.path, self._uidlist)
        except uidlist.UidListError:
            return None

    def _read_uidlist_locked(self, lock: uidlist.FolderLock) -> uidlist.UidList:
        """The list, created or repaired under the lock; never reuses a UID the index knows."""
        try:
            ul = uidlist.read(self.path, self._uidlist)
        except uidlist.UidListError:
            ul = None
        idx = self.index
        known_next = max(int(idx.get("uidnext") or 1), _max_uid(idx) + 1)
        if ul is None:
            validity = idx.get("uidvalidity")
            rows = idx.rows()
            if validity and rows:
                # The list is lost but the index remembers it: same UIDs, same UIDVALIDITY.
                ul = uidlist.UidList.new(int(validity))
                for r in rows:
                    ul.uids[r.base] = r.uid
            else:
                maildir = self.path if self.name == "INBOX" else self.path.parent
                ul = uidlist.UidList.new(_new_uidvalidity(maildir, validity))
                if rows or validity:
                    with idx.write():
                        idx.delete([r.uid for r in rows], idx.next_modseq())
                        idx.set("highestmodseq", max(idx.highest_modseq(), clock_modseq()))
            ul.next_uid = max(ul.next_uid, known_next)
            lock.replace_list(ul)
        ul.next_uid = max(ul.next_uid, known_next)
        return ul

    # -- reading -----------------------------------------------------------------------------

    @property
    def uidvalidity(self) -> int:
        value = self.index.get("uidvalidity")
        if value is None:
            self.sync()
            value = self.index.get("uidvalidity")
        return int(value or 0)

    @property
    def uidnext(self) -> int:
        known = int(self.index.get("uidnext") or 1)
        return max(known, self._uidlist.next_uid) if self._uidlist is not None else known

    @property
    def highest_modseq(self) -> int:
        return self.index.highest_modseq()

    def flags_of(self, letters: str) -> frozenset[str]:
        cached = self._flag_cache.get(letters)
        if cached is not None:
            return cached
        flags = set()
        for c in letters:
            if c in LETTER_FLAGS:
                flags.add(LETTER_FLAGS[c])
            elif "a" <= c <= "z":
                i = kw.index_of(c)
                if i < len(self._keywords) and self._keywords[i]:
                    flags.add(self._keywords[i])  # type: ignore[arg-type]
        result = self._flag_cache[letters] = frozenset(flags)
        return result

    def _message(self, r: Row) -> Message:
        return Message(r.uid, self.flags_of(r.letters), r.size, r.modseq)

    def messages(self) -> list[Message]:
        """Every message, by ascending UID (from the index)."""
        flags_of = self.flags_of
        rows = self.index.db.execute("SELECT uid, letters, size, modseq FROM messages ORDER BY uid")
        return [Message(uid, flags_of(letters), size, modseq) for uid, letters, size, modseq in rows]

    def message(self, uid: int) -> Message:
        r = self.index.row(uid)
        if r is None:
            raise MessageGone(f"UID {uid} is not in {self.name}")
        return self._message(r)

    def changed_since(self, modseq: int) -> list[Message]:
        rows = self.index.db.execute(
            "SELECT uid, base, subdir, letters, size, psize, modseq FROM messages WHERE modseq > ? ORDER BY uid", (modseq,)
        )
        return [self._message(Row(*r)) for r in rows]

    def expunged_since(self, modseq: int) -> tuple[list[int], bool]:
        """UIDs expunged after ``modseq``, and whether that record is complete."""
        return self.index.expunged_since(modseq), modseq >= self.index.expunge_floor()

    def status(self) -> Status:
        rows = self.index.rows()
        unseen = sum(1 for r in rows if "S" not in r.letters)
        deleted = sum(1 for r in rows if "T" in r.letters)
        return Status(
            messages=len(rows),
            unseen=unseen,
            uidnext=self.uidnext,
            uidvalidity=self.uidvalidity,
            highestmodseq=self.highest_modseq,
            size=sum(r.size for r in rows),
            deleted=deleted,
        )

    def path_of(self, uid: int) -> Path:
        r = self.index.row(uid)
        if r is None:
            raise MessageGone(f"UID {uid} is not in {self.name}")
        return self.path / r.subdir / r.filename

    def open(self, uid: int) -> BinaryIO:
        """The message's bytes with CRLF line ends, whatever the file holds.
        Survives a concurrent flag rename."""
        for _ in range(3):
            r = self.index.row(uid)
            if r is None:
                break
            try:
                f = open(self.path / r.subdir / r.filename, "rb")
            except FileNotFoundError:
                self._full_sync()
                continue
            return f if r.size == r.psize else io.BufferedReader(CrlfReader(f))  # type: ignore[return-value]
        raise MessageGone(f"UID {uid} is not in {self.name}")

    def internal_date(self, uid: int) -> float:
        row = self.index.db.execute("SELECT internal_date FROM messages WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            raise MessageGone(f"UID {uid} is not in {self.name}")
        if row[0] is not None:
            return float(row[0])
        with self.open(uid) as f:
            mtime = os.fstat(f.fileno()).st_mtime
        self.index.db.execute("UPDATE messages SET internal_date = ? WHERE uid = ?", (mtime, uid))
        return mtime

    # -- parsed data: envelope, structure, header search --------------------------------------

    def info(self, uid: int) -> mime.MessageInfo:
        """Envelope, MIME structure and common headers (parsed once, then from the index)."""
        found = self.infos([uid])
        if uid not in found:
            raise MessageGone(f"UID {uid} is not in {self.name}")
        return found[uid]

    def infos(self, uids: Iterable[int]) -> dict[int, mime.MessageInfo]:
        """Parsed data for many messages: one query, one write for those parsed now."""
        wanted = sorted(set(uids))
        out: dict[int, mime.MessageInfo] = {}
        missing: list[int] = []
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            known = dict(self.index.db.execute(f"SELECT uid, info FROM messages WHERE uid IN ({marks})", chunk))
            for uid in chunk:
                text = known.get(uid, "absent")
                if text == "absent":
                    continue
                try:
                    out[uid] = mime.from_json(text) if text else None  # type: ignore[assignment]
                except ValueError:
                    out[uid] = None  # type: ignore[assignment]
                if out[uid] is None:
                    del out[uid]
                    missing.append(uid)
        parsed = []
        for uid in missing:
            try:
                with self.open(uid) as f:
                    out[uid] = mime.parse_message(f)
            except MessageGone:
                continue
            parsed.append((uid, out[uid]))
        if parsed:
            rows = []
            for uid, info in parsed:
                h = info.headers
                search = [mime.decode_header(h.get(k, "")).casefold() for k in ("subject", "from", "to", "cc", "bcc")]
                rows.append((mime.to_json(info), *search, h.get("date"), h.get("message-id"), h.get("in-reply-to"), h.get("references"), uid))
            with self.index.write():
                self.index.db.executemany(
                    "UPDATE messages SET info = ?, subject = ?, from_ = ?, to_ = ?, cc = ?, bcc = ?,"
                    " date = ?, message_id = ?, in_reply_to = ?, refs = ? WHERE uid = ?",
                    rows,
                )
        return out

    def search_header(self, field: str, text: str, uids: Iterable[int] | None = None) -> set[int]:
        """UIDs whose header ``field`` contains ``text`` (case-insensitive, RFC 2047
        decoded).  Subject, From, To, Cc and Bcc come from the index; other
        fields are read from the message headers only."""
        candidates = [m.uid for m in self.messages()] if uids is None else sorted(set(uids))
        needle = text.casefold()
        column = _SEARCH_COLUMNS.get(field.lower())
        if column is not None:
            unparsed = {r[0] for r in self.index.db.execute("SELECT uid FROM messages WHERE info IS NULL")}
            self.infos(u for u in candidates if u in unparsed)  # what the index does not know yet
            hits: set[int] = set()
            for i in range(0, len(candidates), 500):
                chunk = candidates[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self.index.db.execute(
                    f"SELECT uid FROM messages WHERE uid IN ({marks}) AND instr({column}, ?) > 0", [*chunk, needle]
                )
                hits.update(r[0] for r in rows)
            return hits
        hits = set()
        name = field.lower().encode("ascii", "replace")
        for uid in candidates:
            try:
                header = self.read_section(uid, "HEADER")
            except MessageGone:
                continue
            for value in _header_values(header, name):
                if needle in mime.decode_header(value).casefold():
                    hits.add(uid)
                    break
        return hits

    def search_text(self, text: str, uids: Iterable[int] | None = None, body_only: bool = False) -> set[int]:
        """UIDs whose raw text (or body only) contains ``text``, case-insensitively,
        streamed from the files in chunks."""
        candidates = [m.uid for m in self.messages()] if uids is None else sorted(set(uids))
        needle = text.casefold().encode("utf-8")
        keep = max(len(needle) - 1, 0)
        hits = set()
        for uid in candidates:
            try:
                f = self.open(uid)
            except MessageGone:
                continue
            with f:
                if body_only:
                    f.read(self.info(uid).header_size)
                tail = b""
                while chunk := f.read(1 << 16):
                    window = tail + chunk.decode("utf-8", "replace").casefold().encode("utf-8")
                    if needle in window:
                        hits.add(uid)
                        break
                    tail = window[-keep:] if keep else b""
        return hits

    def read_section(self, uid: int, section: str) -> bytes:
        """One IMAP section ("HEADER", "TEXT", "1.2", "1.2.MIME"...) read from its offset."""
        start, end = mime.section_range(self.info(uid), section)
        f = self.open_range(uid, start)
        with f:
            return f.read(end - start)

    def open_range(self, uid: int, start: int) -> BinaryIO:
        """The message positioned at ``start`` (CRLF offsets): a seek for our
        CRLF files, a skip through the CRLF view for LF files."""
        f = self.open(uid)
        if isinstance(getattr(f, "raw", None), CrlfReader):
            while start > 0:
                skipped = len(f.read(min(start, 1 << 16)))
                if not skipped:
                    break
                start -= skipped
        else:
            f.seek(start)
        return f

    # -- letters ------------------------------------------------------------------------------

    def letters_for(self, flags: Iterable[str]) -> str:
        """File name letters for IMAP flags and keywords (adds keywords to the folder)."""
        letters, names = [], []
        for f in flags:
            if f in FLAG_LETTERS:
                letters.append(FLAG_LETTERS[f])
            elif f.startswith("\\"):
                continue  # \Recent and unknown system flags are not stored
            else:
                if not kw.valid_keyword(f):
                    raise KeywordLimit(f"invalid keyword {f!r}")
                names.append(f)
        if names:
            table = self._keywords if all(n in self._keywords for n in names) else None
            if table is None:
                try:
                    table = kw.ensure(self.path, names)
                except kw.KeywordError as e:
                    raise KeywordLimit(str(e)) from None
                self._keywords = table
            letters += [kw.letter(table.index(n)) for n in names]
        return letters_sorted(letters)

    # -- delivery ------------------------------------------------------------------------------

    def deliver(
        self,
        stream: BinaryIO | Iterable[bytes],
        flags: Iterable[str] = (),
        internal_date: datetime | float | None = None,
        limit: int | None = None,
        expected_size: int | None = None,
    ) -> int:
        """Store a message durably and return its UID.

        The bytes go to tmp/ (CRLF line ends, never all in memory), are
        fsynced, renamed into new/ (or cur/ with flags), the directory is
        fsynced and the UID appended to dovecot-uidlist and fsynced: only
        then does this return.
        """
        letters = self.letters_for(flags)
        tmp, stem, size = self._write_tmp(stream, internal_date, limit, expected_size)
        try:
            base = f"{stem},S={size},W={size}"
            sub = "cur" if letters else "new"
            when = internal_date.timestamp() if isinstance(internal_date, datetime) else internal_date
            item = _Pending(tmp, base, sub, f"{base}:2,{letters}" if letters else base, (letters, size, when or time.time()))
            uid = _group_commit(self.path).commit(self, item)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self._quota_record:
            self._quota_record(size, 1)
        return uid

    def drop(self, stream: BinaryIO | Iterable[bytes], limit: int | None = None, flags: Iterable[str] = ()) -> str:
        """Deliver as a mail delivery agent does (Dovecot's LDA, procmail): the
        message is durable in new/ when this returns (file fsynced, renamed,
        directory fsynced) and gets its UID from the next reader's sync.  No
        lock, no uid list, no index: the fast path for SMTP, which needs no
        UID.  Returns the file's base name.  With ``flags`` (Sieve's
        imap4flags) the file goes to cur/ with their letters, as Dovecot's
        LDA does."""
        letters = self.letters_for(flags) if flags else ""
        tmp, stem, size = self._write_tmp(stream, None, limit, None)
        return self._into_new(tmp, stem, size, letters)

    def drop_file(self, path: Path, flags: Iterable[str] = ()) -> str:
        """``drop`` for a message already in a file with CRLF line ends on the
        same file system (the SMTP spool): hard-linked into tmp/ instead of
        copied, as Dovecot's deliver does for several recipients.  Raises
        OSError (EXDEV across file systems): the caller then copies."""
        letters = self.letters_for(flags) if flags else ""
        size = os.stat(path).st_size
        if self._quota_check:
            self._quota_check(size, 1)
        stem = new_base(0, 0).split(",S=")[0]
        tmp = self.path / "tmp" / stem
        os.link(path, tmp)
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._into_new(tmp, stem, size, letters)

    def _into_new(self, tmp: Path, stem: str, size: int, letters: str = "") -> str:
        """The end of a drop: an fsynced tmp/ file renamed into new/.  Once it
        is there, a failure must not make the caller think it was not
        delivered (a retry would duplicate it): it is logged."""
        base = f"{stem},S={size},W={size}"
        sub, name = ("cur", f"{base}:2,{letters}") if letters else ("new", base)
        try:
            os.rename(tmp, self.path / sub / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            self._fsync_dir(sub)
        except OSError as e:
            log.error("%s: directory fsync after delivering %s failed: %s", self.path, base, e)
        if self._quota_record:
            try:
                self._quota_record(size, 1)
            except OSError as e:
                log.warning("%s: quota not updated for %s (%s); it is recalculated when missing", self.path, base, e)
        return base

    def _write_tmp(
        self, stream: BinaryIO | Iterable[bytes], internal_date: datetime | float | None, limit: int | None,
        expected_size: int | None,
    ) -> tuple[Path, str, int]:
        """The message in tmp/, fsynced and within the quota: (path, base stem, size)."""
        if expected_size is not None and self._quota_check:
            self._quota_check(expected_size, 1)
        stem = new_base(0, 0).split(",S=")[0]
        tmp = self.path / "tmp" / stem
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                size = write_crlf(stream, fd, limit)
                if internal_date is not None:
                    set_internal_date(tmp, internal_date)  # before the fsync, so it is durable too
                os.fsync(fd)
            finally:
                os.close(fd)
            if self._quota_check:
                self._quota_check(size, 1)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, stem, size

    def _commit_batch(self, batch: list[_Pending]) -> None:
        """Rename a batch of fsynced tmp files into place and give them UIDs:
        one directory fsync and one uidlist append for the whole batch."""
        try:
            with self._lock() as lock:
                ul = self._read_uidlist_locked(lock)
                entries, subs = [], set()
                for item in batch:
                    try:
                        os.rename(item.tmp, self.path / item.sub / item.name)
                    except OSError as e:
                        item.error = StoreError(f"cannot store into {self.name}: {e.strerror}")
                        continue
                    item.uid = ul.add(item.base)
                    entries.append((item.uid, item.base))
                    subs.add(item.sub)
                for sub in subs:
                    self._fsync_dir(sub)
                if entries:
                    lock.append(ul, entries, self._uidlist_fd())
            self._uidlist = ul
            # The batch's index rows in one transaction too (the files are
            # safe already; should this fail, the next sync repairs the index).
            done = [i for i in batch if i.error is None and i.uid is not None]
            if done:
                try:
                    self._index_insert([(i.uid, i.base, i.sub, i.meta[0], i.meta[1], i.meta[1], i.meta[2]) for i in done])
                except Exception as e:  # the messages are stored: never report them failed
                    log.warning("index of %s not updated (%s); the next sync rescans", self.path, e)
        except BaseException as e:
            for item in batch:
                if item.error is None:
                    item.uid, item.error = None, e
            if not isinstance(e, Exception):
                raise
        finally:
            for item in batch:
                item.done = True

    def _index_insert(self, entries: list[tuple[int, str, str, str, int, int, float | None]]) -> None:
        """(uid, base, subdir, letters, size, psize, internal date) entries, one new MODSEQ."""
        try:
            with self.index.write():
                m = self.index.next_modseq()
                self.index.insert_many([(u, b, sub, lt, sz, ps, m, when) for u, b, sub, lt, sz, ps, when in entries])
                top = max(e[0] for e in entries) + 1
                self.index.set("uidnext", max(top, int(self.index.get("uidnext") or 1)))
        except Exception as e:  # the files are safe; the next sync repairs the index
            if not _is_sqlite_corruption(e):
                raise
            self._rebuild_index()

    # -- flags ------------------------------------------------------------------------------------

    def store(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str = "add",
        unchanged_since: int | None = None,
    ) -> tuple[list[Message], list[int]]:
        """Change flags: mode is "add", "remove" or "replace".

        Returns the messages changed (with their new MODSEQ) and the UIDs
        refused by UNCHANGEDSINCE.  Durable: the renames are fsynced.
        """
        if mode not in ("add", "remove", "replace"):
            raise ValueError(mode)
        flags = list(flags)
        wanted = set(self.letters_for(flags))
        changed: list[Message] = []
        refused: list[int] = []
        with self.index.write():
            modseq = None
            for uid in sorted(set(uids)):
                r = self.index.row(uid)
                if r is None:
                    continue
                if unchanged_since is not None and r.modseq > unchanged_since:
                    refused.append(uid)
                    continue
                have = set(r.letters)
                # P (Maildir "passed") is not an IMAP flag: kept as found, as Dovecot does.
                new = have | wanted if mode == "add" else have - wanted if mode == "remove" else wanted | (have & {"P"})
                letters = letters_sorted(new)
                if letters == r.letters and r.subdir == "cur":
                    continue
                if not self._rename_flags(r, letters):
                    continue
                if letters == r.letters:
                    self.index.update_file(uid, "cur", letters, None)
                    continue
                if modseq is None:
                    modseq = self.index.next_modseq()
                self.index.update_file(uid, "cur", letters, modseq)
                changed.append(Message(uid, self.flags_of(letters), r.size, modseq))
            if changed:
                self._fsync_dir("cur")
        return changed, refused

    def _rename_flags(self, r: Row, letters: str) -> bool:
        target = self.path / "cur" / f"{r.base}:2,{letters}"
        try:
            os.rename(self.path / r.subdir / r.filename, target)
            return True
        except FileNotFoundError:
            pass
        found = self._find_file(r.base)  # renamed by another program meanwhile
        if found is None:
            return False
        try:
            os.rename(found, target)
            return True
        except FileNotFoundError:
            return False

    def _find_file(self, base: str) -> Path | None:
        for sub in ("cur", "new"):
            with os.scandir(self.path / sub) as it:
                for e in it:
                    if e.name == base or e.name.startswith(base + ":"):
                        return Path(e.path)
        return None

    # -- expunge, copy, move -----------------------------------------------------------------------

    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove messages flagged \\Deleted (only among ``uids`` if given)."""
        wanted = None if uids is None else set(uids)
        removed: list[int] = []
        freed = 0
        with self.index.write():
            for r in self.index.rows():
                if "T" not in r.letters or (wanted is not None and r.uid not in wanted):
                    continue
                path = self.path / r.subdir / r.filename
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    other = self._find_file(r.base)
                    if other is not None:
                        os.unlink(other)
                removed.append(r.uid)
                freed += r.psize
            if removed:
                self._fsync_dir("cur")
                self.index.delete(removed, self.index.next_modseq())
        if removed and self._quota_record:
            self._quota_record(-freed, -len(removed))
        return removed

    def copy(self, uids: Iterable[int], dest: Folder) -> list[tuple[int, int]]:
        """Copy messages (hard links where possible); returns (source UID, new UID) pairs."""
        return self._transfer(uids, dest, move=False)

    def move(self, uids: Iterable[int], dest: Folder) -> list[tuple[int, int]]:
        """Move messages atomically per message (rename); returns (source UID, new UID)."""
        return self._transfer(uids, dest, move=True)

    def _transfer(self, uids: Iterable[int], dest: Folder, move: bool) -> list[tuple[int, int]]:
        rows = [r for r in (self.index.row(u) for u in sorted(set(uids))) if r is not None]
        if not rows:
            return []
        if not move and dest._quota_check:
            dest._quota_check(sum(r.psize for r in rows), len(rows))
        if dest.path == self.path:
            dest = self  # COPY into the same folder
        staged: list[tuple[Row, Path | None, str, str]] = []  # row, source or tmp, new base, letters
        try:
            for r in rows:
                letters = dest.letters_for(self.flags_of(r.letters)) if dest is not self else r.letters
                base = new_base(r.psize, r.size)
                if move:
                    staged.append((r, None, base, letters))
                    continue
                tmp = dest.path / "tmp" / base
                src = self._locate(r)
                if src is None:
                    continue
                try:
                    os.link(src, tmp)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    shutil.copy2(src, tmp)
                    with open(tmp, "rb") as f:
                        os.fsync(f.fileno())
                staged.append((r, tmp, base, letters))
            pairs: list[tuple[int, int]] = []
            entries: list[tuple[int, str, str, str, int, float | None]] = []
            with dest._lock() as lock:
                ul = dest._read_uidlist_locked(lock)
                new_lines = []
                for r, tmp, base, letters in staged:
                    source = tmp if tmp is not None else self._locate(r)
                    if source is None:
                        continue
                    try:
                        os.rename(source, dest.path / "cur" / f"{base}:2,{letters}")
                    except FileNotFoundError:
                        continue
                    uid = ul.add(base)
                    new_lines.append((uid, base))
                    pairs.append((r.uid, uid))
                    entries.append((uid, base, "cur", letters, r.size, r.psize, None))
                if new_lines:
                    dest._fsync_dir("cur")
                    if move and dest is not self:
                        self._fsync_dir("cur")
                    lock.append(ul, new_lines, dest._uidlist_fd())
            dest._uidlist = ul
        finally:
            for _, tmp, _, _ in staged:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
        if entries:
            dest._index_insert(entries)
            if not move and dest._quota_record:
                dest._quota_record(sum(e[5] for e in entries), len(entries))
        if move and pairs:
            moved = [p[0] for p in pairs]
            with self.index.write():
                self.index.delete(moved, self.index.next_modseq())
        return pairs

    def _locate(self, r: Row) -> Path | None:
        path = self.path / r.subdir / r.filename
        return path if path.exists() else self._find_file(r.base)


class _Pending:
    __slots__ = ("tmp", "base", "sub", "name", "meta", "uid", "error", "done")

    def __init__(self, tmp: Path, base: str, sub: str, name: str, meta: tuple[str, int, float]):
        self.tmp, self.base, self.sub, self.name = tmp, base, sub, name
        self.meta = meta  # letters, size, internal date: for the index row
        self.uid: int | None = None
        self.error: BaseException | None = None
        self.done = False


class _GroupCommit:
    """Deliveries to one folder from several threads share the lock, the
    directory fsync and the uidlist fsync: the first thread in line commits
    everything queued meanwhile (group commit)."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.queue: list[_Pending] = []
        self.leader = threading.Lock()

    def commit(self, folder: Folder, item: _Pending) -> int:
        with self.cv:
            self.queue.append(item)
        while not item.done:
            if self.leader.acquire(blocking=False):
                try:
                    with self.cv:
                        batch, self.queue = self.queue, []
                    if batch:
                        folder._commit_batch(batch)
                finally:
                    self.leader.release()
                    with self.cv:
                        self.cv.notify_all()
            else:
                with self.cv:
                    if not item.done:
                        self.cv.wait(0.01)
        if item.error is not None:
            raise item.error
        assert item.uid is not None
        return item.uid


_COMMITTERS: weakref.WeakValueDictionary[Path, _GroupCommit] = weakref.WeakValueDictionary()
_COMMITTERS_LOCK = threading.Lock()


def _group_commit(path: Path) -> _GroupCommit:
    with _COMMITTERS_LOCK:
        gc = _COMMITTERS.get(path)
        if gc is None:
            gc = _COMMITTERS[path] = _GroupCommit()
        return gc


# When a folder was last scanned in full, by any Folder object of this
# process (sessions of one worker share it).
_LAST_FULL_SYNC: dict[Path, float] = {}

_SEARCH_COLUMNS = {"subject": "subject", "from": "from_", "to": "to_", "cc": "cc", "bcc": "bcc"}


def _header_values(header: bytes, name: bytes) -> list[str]:
    """Unfolded values of one header field."""
    out, current = [], None
    for line in header.split(b"\n"):
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t") and current is not None:
            current += b" " + line.strip()
            continue
        if current is not None:
            out.append(current.decode("utf-8", "replace"))
            current = None
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            current = value.strip()
    if current is not None:
        out.append(current.decode("utf-8", "replace"))
    return out


def _arrival(base: str) -> tuple[int, str]:
    head = base.split(".", 1)[0]
    return (int(head) if head.isdigit() else 0, base)


def _sizes(path: Path, fn: FileName) -> tuple[int, int]:
    """(size with CRLF, size on disk) from the name, else from the file itself."""
    psize, vsize = fn.size, fn.vsize
    if psize is not None and vsize is not None:
        return vsize, psize
    try:
        with open(path, "rb") as f:
            psize = os.fstat(f.fileno()).st_size
            vsize = psize
            prev = b""
            while chunk := f.read(1 << 16):
                vsize += chunk.count(b"\n") - (prev + chunk).count(b"\r\n")
                prev = chunk[-1:]
    except FileNotFoundError:
        return 0, 0
    return vsize, psize


def _max_uid(idx: Index) -> int:
    # Two primary-key lookups (a max over the UNION would scan both tables).
    row = idx.db.execute("SELECT (SELECT max(uid) FROM messages), (SELECT max(uid) FROM expunged)").fetchone()
    return max(int(row[0] or 0), int(row[1] or 0))


def _new_uidvalidity(maildir: Path, previous: str | None) -> int:
    """Time-based and never repeated within an account: like Dovecot, keep
    the next value in ``dovecot-uidvalidity`` (hex) at the Maildir root."""
    counter = maildir / "dovecot-uidvalidity"
    try:
        stored = int(counter.read_text().strip() or "0", 16)
    except (FileNotFoundError, ValueError):
        stored = 0
    v = max(int(time.time()), stored, int(previous) + 1 if previous else 0)
    write_atomic(counter, f"{v + 1:x}")
    return v


def _is_sqlite_corruption(e: BaseException) -> bool:
    import sqlite3

    return isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError)
