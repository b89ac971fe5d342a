"""The Maildir store: format, operations, recovery, safety, notification."""

from __future__ import annotations

import io
import multiprocessing
import os
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailstack.store import names
from mailstack.store.folder import KeywordLimit, MessageGone, OverQuota
from mailstack.store.index import INDEX
from mailstack.store.mailbox import FolderExists, NoSuchFolder, Store
from mailstack.store.maildir import MessageTooLarge
from mailstack.store.names import FolderNameError
from mailstack.store.notify import FolderWatcher

MSG = b"From: Anne <anne@example.org>\nTo: paul.durand@ac-normandie.test\nSubject: Bonjour\n\nHello\nworld\n"


@pytest.fixture
def mailbox(tmp_path: Path):
    return Store(tmp_path / "mail").mailbox("ac-normandie.test", "paul.durand")


def files_in(folder) -> list[str]:
    return sorted(os.listdir(folder.path / "cur") + os.listdir(folder.path / "new"))


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Archivé", "Été/2026", "日本語", "a&b", "&", "Projets & Co", "Ünïcødé/ß/Œuvre", "emoji 📬", "~tilde", "Sent"],
)
def test_mutf7_matches_twisted(name: str) -> None:
    import twisted.mail.imap4  # noqa: F401  (registers the imap4-utf-7 codec)

    for part in name.split("/"):
        assert names.encode_mutf7(part) == part.encode("imap4-utf-7").decode("ascii")
        assert names.decode_mutf7(names.encode_mutf7(part)) == part


def test_dir_names_are_dovecots() -> None:
    assert names.dir_name("INBOX") == ""
    assert names.dir_name("Archivé/2026") == ".Archiv&AOk-.2026"
    assert names.from_dir_name(".Archiv&AOk-.2026") == "Archivé/2026"
    assert names.normalize("inbox/Sub") == "INBOX/Sub"
    assert names.from_dir_name(".") is None and names.from_dir_name("..") is None
    assert names.from_dir_name(".&bad") is None


@pytest.mark.parametrize(
    "bad",
    ["", "/", "a/", "/a", "a//b", "..", "../x", "a/../b", "a.b", "x\x00y", "x\ny", "x\x7f", "*", "a%", "a\\b", " a", "a ", "x" * 300, "/".join("a" * 17)],
)
def test_bad_folder_names_refused(bad: str, mailbox) -> None:
    with pytest.raises(FolderNameError):
        names.normalize(bad)
    with pytest.raises(FolderNameError):
        mailbox.create(bad)
    assert sorted(p.name for p in mailbox.path.iterdir() if p.name.startswith(".")) == [
        ".Archive", ".Drafts", ".Junk", ".Sent", ".Trash"
    ]


@pytest.mark.parametrize("login", ["..", "../x", "a/b", "", "x\x00", "UPPER/..", ".hidden"])
def test_store_refuses_logins_that_escape(tmp_path: Path, login: str) -> None:
    with pytest.raises(ValueError):
        Store(tmp_path).mailbox("ac-normandie.test", login)
    with pytest.raises(ValueError):
        Store(tmp_path).mailbox("../etc", "paul")


# --- delivery -------------------------------------------------------------------------------------


def test_delivery_format_and_uids(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    when = datetime(2026, 9, 1, 8, 30, tzinfo=timezone.utc)
    u1 = inbox.deliver(io.BytesIO(MSG), internal_date=when)
    u2 = inbox.deliver(iter([MSG[:10], MSG[10:]]), flags=["\\Seen", "\\Answered", "Important"])
    assert (u1, u2) == (1, 2)
    crlf = MSG.replace(b"\n", b"\r\n")
    with inbox.open(u1) as f:
        assert f.read() == crlf
    names_on_disk = files_in(inbox)
    size = len(crlf)
    assert names_on_disk[0].endswith(f",S={size},W={size}")  # new/, no flags
    assert names_on_disk[1].endswith(f",S={size},W={size}:2,RSa")
    assert os.listdir(inbox.path / "tmp") == []
    assert inbox.internal_date(u1) == when.timestamp()
    uidlist = (inbox.path / "dovecot-uidlist").read_text().splitlines()
    assert uidlist[0].startswith(f"3 V{inbox.uidvalidity} N")
    assert [ln.split(" :")[0] for ln in uidlist[1:]] == ["1", "2"]
    assert (inbox.path / "dovecot-keywords").read_text() == "0 Important\n"
    msgs = inbox.messages()
    assert [m.uid for m in msgs] == [1, 2]
    assert msgs[1].flags == {"\\Seen", "\\Answered", "Important"}
    assert msgs[0].size == size


def test_drop_like_an_mda_then_uids_at_the_next_sync(mailbox, tmp_path: Path) -> None:
    inbox = mailbox.folder("INBOX")
    u1 = inbox.deliver(io.BytesIO(MSG))
    base = inbox.drop(io.BytesIO(MSG))  # no UID yet: no lock, no uid list, no index
    assert base in os.listdir(inbox.path / "new") and os.listdir(inbox.path / "tmp") == []
    assert base not in (inbox.path / "dovecot-uidlist").read_text()
    spool = tmp_path / "spool-message"
    spool.write_bytes(MSG.replace(b"\n", b"\r\n"))
    linked = inbox.drop_file(spool)
    assert os.stat(spool).st_nlink == 2  # hard-linked, not copied
    reader = mailbox.folder("INBOX")  # another reader syncs: the dropped messages get the next UIDs
    assert [m.uid for m in reader.messages()] == [u1, u1 + 1, u1 + 2]
    with reader.open(u1 + 2) as f:
        assert f.read() == MSG.replace(b"\n", b"\r\n")
    size = len(MSG.replace(b"\n", b"\r\n"))
    assert linked.endswith(f",S={size},W={size}")
    assert mailbox.usage().messages == 3


def test_drop_respects_the_quota(tmp_path: Path) -> None:
    mb = Store(tmp_path / "mail").mailbox("ac-normandie.test", "paul.durand", bytes_limit=1000)
    inbox = mb.folder("INBOX", sync=False)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 1500)
    with pytest.raises(OverQuota):
        inbox.drop(io.BytesIO(b"x" * 1500))
    with pytest.raises(OverQuota):
        inbox.drop_file(big)
    assert files_in(inbox) == [] and os.listdir(inbox.path / "tmp") == [] and os.stat(big).st_nlink == 1


@pytest.mark.parametrize("raw,stored", [(b"a\rb\nc\r\nd", b"a\r\nb\r\nc\r\nd"), (b"x\r", b"x\r\n"), (b"", b"")])
def test_line_ends_become_crlf(mailbox, raw: bytes, stored: bytes) -> None:
    inbox = mailbox.folder("INBOX")
    # split at every position, so CR/LF pairs cut between chunks are handled
    for cut in range(len(raw) + 1):
        uid = inbox.deliver([raw[:cut], raw[cut:]])
        with inbox.open(uid) as f:
            assert f.read() == stored


def test_too_large_stores_nothing(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    with pytest.raises(MessageTooLarge):
        inbox.deliver(iter([b"x" * 1000] * 20), limit=5000)
    assert files_in(inbox) == [] and os.listdir(inbox.path / "tmp") == []
    assert inbox.deliver(io.BytesIO(MSG)) == 1  # no UID was spent


def test_quota(tmp_path: Path) -> None:
    mb = Store(tmp_path).mailbox("ac-normandie.test", "paul.durand", bytes_limit=1000, messages_limit=3)
    inbox = mb.folder("INBOX")
    with pytest.raises(OverQuota):
        inbox.deliver(io.BytesIO(MSG), expected_size=2000)
    with pytest.raises(OverQuota):
        inbox.deliver(io.BytesIO(b"x" * 1500))
    assert files_in(inbox) == [] and os.listdir(inbox.path / "tmp") == []
    for _ in range(3):
        inbox.deliver(io.BytesIO(MSG))
    assert mb.usage().messages == 3 and mb.usage().bytes == 3 * len(MSG.replace(b"\n", b"\r\n"))
    with pytest.raises(OverQuota, match="3"):
        inbox.deliver(io.BytesIO(MSG))
    inbox.store([1], ["\\Deleted"])
    inbox.expunge()
    assert mb.usage().messages == 2
    inbox.deliver(io.BytesIO(MSG))
    # The file is the truth: a damaged maildirsize is recalculated.
    (mb.path / "maildirsize").write_text("garbage\n")
    assert mb.usage().messages == 3
    assert (mb.path / "maildirsize").read_text().startswith("1000S,3C\n")


# --- flags, copy, move, expunge ------------------------------------------------------------------------


def test_flags_and_modseq(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    for _ in range(3):
        inbox.deliver(io.BytesIO(MSG))
    start = inbox.highest_modseq
    changed, refused = inbox.store([1, 2], ["\\Seen", "$Label1"], "add")
    assert [m.uid for m in changed] == [1, 2] and refused == []
    m1 = changed[0].modseq
    assert m1 > start and inbox.highest_modseq == m1
    assert inbox.store([1], ["\\Seen"], "add") == ([], [])  # no change, no new MODSEQ
    changed, refused = inbox.store([1, 3], ["\\Flagged"], "add", unchanged_since=start)
    assert [m.uid for m in changed] == [3] and refused == [1]
    changed, _ = inbox.store([2], ["\\Draft"], "replace")
    assert changed[0].flags == {"\\Draft"}
    changed, _ = inbox.store([3], ["\\Flagged"], "remove")
    assert changed[0].flags == frozenset()
    assert [m.uid for m in inbox.changed_since(m1)] == [2, 3]
    assert sorted(f.split(":2,")[1] for f in os.listdir(inbox.path / "cur")) == ["", "D", "Sa"]


def test_keyword_limit(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    inbox.deliver(io.BytesIO(MSG))
    inbox.store([1], [f"kw{i}" for i in range(26)])
    with pytest.raises(KeywordLimit):
        inbox.store([1], ["one-too-many"])
    with pytest.raises(KeywordLimit):
        inbox.store([1], ["bad keyword"])


def test_copy_move_expunge(mailbox) -> None:
    inbox, archive = mailbox.folder("INBOX"), mailbox.folder("Archive")
    for i in range(3):
        inbox.deliver(io.BytesIO(MSG), flags=["\\Seen", f"Tag{i}"])
    archive.deliver(io.BytesIO(MSG), flags=["Other"])
    assert inbox.copy([1, 2], archive) == [(1, 2), (2, 3)]
    assert [m.flags for m in archive.messages()][1:] == [{"\\Seen", "Tag0"}, {"\\Seen", "Tag1"}]
    assert os.stat(inbox.path_of(1)).st_ino == os.stat(archive.path_of(2)).st_ino  # hard link
    assert inbox.move([3], archive) == [(3, 4)]
    assert [m.uid for m in inbox.messages()] == [1, 2]
    expunged, complete = inbox.expunged_since(inbox.index.expunge_floor())
    assert expunged == [3] and complete
    with archive.open(4) as f:
        assert f.read() == MSG.replace(b"\n", b"\r\n")
    # moving back gives a new UID, never an old one
    assert archive.move([4], inbox) == [(4, 4)]
    inbox.store([1, 4], ["\\Deleted"])
    assert inbox.expunge(uids=[4]) == [4]
    assert inbox.expunge() == [1]
    assert [m.uid for m in inbox.messages()] == [2]
    assert inbox.copy([2], inbox) == [(2, 5)]  # COPY into the same folder
    with pytest.raises(MessageGone):
        inbox.open(1)


# --- sync with other programs, recovery ----------------------------------------------------------------


def test_files_written_by_another_program(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    inbox.deliver(io.BytesIO(MSG))
    (inbox.path / "new" / "1700000000.other.host").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    (inbox.path / "cur" / "1700000001.other.host:2,FS").write_bytes(b"Subject: y\r\n\r\nbody\r\n")
    before = inbox.highest_modseq
    inbox.sync()
    msgs = inbox.messages()
    assert [m.uid for m in msgs] == [1, 2, 3]
    assert msgs[2].flags == {"\\Flagged", "\\Seen"} and msgs[1].size == 20
    assert all(m.modseq > before for m in msgs[1:])
    assert os.listdir(inbox.path / "new") == []  # seen: moved to cur as Dovecot does
    # another program changes flags and deletes a file
    name = next(n for n in os.listdir(inbox.path / "cur") if n.startswith("1700000001"))
    os.rename(inbox.path / "cur" / name, inbox.path / "cur" / name.replace(":2,FS", ":2,S"))
    os.unlink(inbox.path_of(1))
    inbox.sync()
    assert [m.uid for m in inbox.messages()] == [2, 3]
    assert inbox.message(3).flags == {"\\Seen"}
    assert inbox.expunged_since(before)[0] == [1]


def test_index_lost_or_corrupt_keeps_uids_and_modseq_never_goes_back(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    for _ in range(5):
        inbox.deliver(io.BytesIO(MSG))
    inbox.store([2], ["\\Seen"])
    validity, top = inbox.uidvalidity, inbox.highest_modseq
    inbox.close()
    for damage in ("delete", "garbage"):
        if damage == "delete":
            for p in inbox.path.glob(INDEX + "*"):
                p.unlink()
        else:
            (inbox.path / INDEX).write_bytes(b"this is not a database" * 100)
            for p in inbox.path.glob(INDEX + "-*"):
                p.unlink()
        f = mailbox.folder("INBOX")
        assert [m.uid for m in f.messages()] == [1, 2, 3, 4, 5]
        assert f.message(2).flags == {"\\Seen"}
        assert f.uidvalidity == validity
        assert f.highest_modseq > top
        expunged, complete = f.expunged_since(top)
        assert expunged == [] and not complete  # the client must be told VANISHED the hard way
        top = f.highest_modseq
        f.close()


def test_uidlist_lost_is_rebuilt_from_index(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    for _ in range(3):
        inbox.deliver(io.BytesIO(MSG))
    validity = inbox.uidvalidity
    (inbox.path / "dovecot-uidlist").unlink()
    inbox.deliver(io.BytesIO(MSG))
    f = mailbox.folder("INBOX")
    assert [m.uid for m in f.messages()] == [1, 2, 3, 4] and f.uidvalidity == validity
    # both lost: a new UIDVALIDITY (never one used before), and UIDs start again
    f.close()
    (inbox.path / "dovecot-uidlist").unlink()
    for p in inbox.path.glob(INDEX + "*"):
        p.unlink()
    g = mailbox.folder("INBOX")
    assert g.uidvalidity != validity and [m.uid for m in g.messages()] == [1, 2, 3, 4]


def test_torn_uidlist_line_is_ignored(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    inbox.deliver(io.BytesIO(MSG))
    with open(inbox.path / "dovecot-uidlist", "a") as f:
        f.write("2 :1700000000.partial")  # a crash in the middle of an append
    uid = inbox.deliver(io.BytesIO(MSG))
    f2 = mailbox.folder("INBOX")
    assert [m.uid for m in f2.messages()] == [1, uid] and uid >= 2


# --- folders ---------------------------------------------------------------------------------------------


def test_folders(mailbox) -> None:
    info = {f.name: f for f in mailbox.list()}
    assert set(info) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert info["Sent"].special_use == "\\Sent" and info["Sent"].subscribed
    mailbox.create("Projets/2026 été")
    mailbox.create("Rectorat", special_use="\\Flagged")
    info = {f.name: f for f in mailbox.list()}
    assert not info["Projets"].selectable and info["Projets"].has_children
    assert info["Rectorat"].special_use == "\\Flagged"
    assert (mailbox.path / ".Projets.2026 &AOk-t&AOk-").is_dir()
    with pytest.raises(FolderExists):
        mailbox.create("Rectorat")
    with pytest.raises(NoSuchFolder):
        mailbox.folder("Nope")
    mailbox.subscribe("Projets/2026 été")
    f = mailbox.folder("Projets/2026 été")
    f.deliver(io.BytesIO(MSG), flags=["K1"])
    mailbox.rename("Projets", "Anciens projets")
    assert "Anciens projets/2026 été" in mailbox.folder_names()
    assert "Anciens projets/2026 été" in mailbox.subscriptions()
    moved = mailbox.folder("Anciens projets/2026 été")
    assert [(m.uid, m.flags) for m in moved.messages()] == [(1, {"K1"})]
    assert moved.uidvalidity == f.uidvalidity
    mailbox.delete("Anciens projets/2026 été")
    assert "Anciens projets/2026 été" not in mailbox.folder_names()
    with pytest.raises(FolderNameError):
        mailbox.delete("INBOX")
    sub = (mailbox.path / "subscriptions").read_text()
    assert sub.startswith("V\t2\n\n") and "INBOX\n" in sub


def test_rename_inbox_moves_its_messages(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    inbox.deliver(io.BytesIO(MSG))
    mailbox.rename("INBOX", "Old mail")
    assert mailbox.folder("INBOX").messages() == []
    assert len(mailbox.folder("Old mail").messages()) == 1


# --- concurrency and notification ----------------------------------------------------------------------------


def _deliver_many(root: str, n: int, q) -> None:
    f = Store(Path(root)).mailbox("ac-normandie.test", "paul.durand").folder("INBOX")
    q.put([f.deliver(io.BytesIO(MSG)) for _ in range(n)])


def test_concurrent_deliveries_from_processes(tmp_path: Path) -> None:
    Store(tmp_path).mailbox("ac-normandie.test", "paul.durand")
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_deliver_many, args=(str(tmp_path), 100, q)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    uids = sorted(u for r in results for u in r)
    assert uids == list(range(1, 401))
    for r in results:
        assert r == sorted(r)  # each process saw its UIDs ascend
    f = Store(tmp_path).mailbox("ac-normandie.test", "paul.durand").folder("INBOX")
    assert [m.uid for m in f.messages()] == list(range(1, 401))


def _deliver_later(root: str, delay: float) -> None:
    time.sleep(delay)
    Store(Path(root)).mailbox("ac-normandie.test", "paul.durand").folder("INBOX").deliver(io.BytesIO(MSG))


@pytest.mark.parametrize("use_inotify", [True, False])
def test_watcher_sees_another_process_deliver(tmp_path: Path, use_inotify: bool) -> None:
    mb = Store(tmp_path).mailbox("ac-normandie.test", "paul.durand")
    inbox = mb.folder("INBOX")
    with FolderWatcher(inbox.path, use_inotify=use_inotify) as w:
        assert w.uses_inotify == use_inotify
        assert not w.wait(0.3)
        p = multiprocessing.get_context("spawn").Process(target=_deliver_later, args=(str(tmp_path), 0.2))
        p.start()
        try:
            assert w.wait(10.0)
        finally:
            p.join(30)
        inbox.sync()
        assert [m.uid for m in inbox.messages()] == [1]
        # flag changes and expunges by another session wake it too
        w.drain()
        other = mb.folder("INBOX")
        other.store([1], ["\\Seen"])
        assert w.wait(2.0)
        w.drain()
        other.store([1], ["\\Deleted"])
        other.expunge()
        assert w.wait(2.0)


def test_index_writes_do_not_wake_watchers(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    with FolderWatcher(inbox.path) as w:
        w.drain()
        with inbox.index.write():
            inbox.index.set("synced_at", 0)
        assert not w.wait(0.3)


def test_dead_lock_holder_does_not_block(mailbox) -> None:
    """A process SIGKILLed while holding the folder lock leaves a dotlock behind."""
    import signal
    import subprocess
    import sys

    inbox = mailbox.folder("INBOX")
    code = (
        "import sys, time; from pathlib import Path; from mailstack.store.uidlist import FolderLock;"
        "l = FolderLock(Path(sys.argv[1])); l.__enter__(); print('locked', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(inbox.path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert (inbox.path / "dovecot-uidlist.lock").exists()
    t0 = time.monotonic()
    assert inbox.deliver(io.BytesIO(MSG)) == 1
    assert time.monotonic() - t0 < 30  # not the 120 s stale timeout for foreign locks


def test_sqlite_corruption_detected() -> None:
    from mailstack.store.folder import _is_sqlite_corruption

    assert _is_sqlite_corruption(sqlite3.DatabaseError("file is not a database"))
    assert not _is_sqlite_corruption(sqlite3.OperationalError("database is locked"))


def test_dotlock_left_between_create_and_record(mailbox) -> None:
    """Killed in the µs between creating the dotlock and recording its inode."""
    from mailstack.store.uidlist import FolderLock, LockTimeout

    inbox = mailbox.folder("INBOX")
    (inbox.path / "mailstack.lock").write_bytes(b"pending".ljust(24))
    lock = inbox.path / "dovecot-uidlist.lock"
    lock.write_bytes(b"")
    old = time.time() - 10
    os.utime(lock, (old, old))
    assert inbox.deliver(io.BytesIO(MSG)) == 1
    # A fresh dotlock of another program (Dovecot at work) is waited for, never stolen.
    lock.write_bytes(b"")
    with pytest.raises(LockTimeout):
        with FolderLock(inbox.path, timeout=0.5):
            pass
    assert lock.exists()


# --- parsed data ---------------------------------------------------------------------------------------------

MULTIPART = (
    b"From: =?utf-8?q?H=C3=A9l=C3=A8ne_Lef=C3=A8vre?= <helene@ac-normandie.test>\r\n"
    b"To: Paul <paul.durand@ac-normandie.test>, equipe@ac-normandie.test\r\n"
    b"Subject: =?utf-8?q?R=C3=A9union_p=C3=A9dagogique?=\r\n"
    b"Message-ID: <r1@ac-normandie.test>\r\n"
    b"X-Priority: 1 (Highest)\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nOrdre du jour en pi\xc3\xa8ce jointe.\r\n"
    b"--b1\r\nContent-Type: application/pdf; name=odj.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
    b"--b1--\r\n"
)


def test_info_is_parsed_once_and_kept_in_the_index(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    uid = inbox.deliver(io.BytesIO(MULTIPART))
    info = inbox.info(uid)
    assert info.envelope.message_id == "<r1@ac-normandie.test>"
    assert [(p.maintype, p.subtype) for p in info.root.children] == [("text", "plain"), ("application", "pdf")]
    assert inbox.read_section(uid, "2") == b"JVBERi0xLjQK"
    assert inbox.read_section(uid, "1.MIME") == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    assert inbox.read_section(uid, "HEADER").endswith(b"boundary=\"b1\"\r\n\r\n")
    inbox.close()
    again = mailbox.folder("INBOX")
    stored = again.index.db.execute("SELECT info, subject FROM messages WHERE uid = ?", (uid,)).fetchone()
    assert stored[0] and stored[1] == "réunion pédagogique"
    assert again.info(uid) == info


def test_header_and_text_search(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    u1 = inbox.deliver(io.BytesIO(MULTIPART))
    u2 = inbox.deliver(io.BytesIO(MSG))
    assert inbox.search_header("subject", "RÉUNION") == {u1}
    assert inbox.search_header("from", "hélène lef") == {u1}
    assert inbox.search_header("to", "paul.durand") == {u1, u2}
    assert inbox.search_header("X-Priority", "highest") == {u1}
    assert inbox.search_header("subject", "absent") == set()
    assert inbox.search_text("PIÈCE JOINTE") == {u1}
    assert inbox.search_text("hello", body_only=True) == {u2}
    assert inbox.search_text("bonjour", body_only=True) == set()  # only in the header
    assert inbox.search_text("bonjour") == {u2}


def test_lf_files_read_as_crlf_with_sections(mailbox) -> None:
    inbox = mailbox.folder("INBOX")
    lf = MULTIPART.replace(b"\r\n", b"\n")
    (inbox.path / "cur" / f"1700000000.dovecot.host,S={len(lf)},W={len(MULTIPART)}:2,S").write_bytes(lf)
    inbox.sync()
    (m,) = inbox.messages()
    assert m.size == len(MULTIPART)
    with inbox.open(m.uid) as f:
        assert f.read() == MULTIPART
    assert inbox.read_section(m.uid, "2") == b"JVBERi0xLjQK"
    assert inbox.read_section(m.uid, "1") == "Ordre du jour en pièce jointe.".encode()


def test_full_sync_never_drops_rows_written_during_its_scan(tmp_path: Path) -> None:
    """A delivery by another process while a sync scans must not look expunged
    (found by 10 IMAP clients appending and selecting at once)."""
    ctx = multiprocessing.get_context("spawn")
    mb = Store(tmp_path).mailbox("ac-normandie.test", "paul.durand")
    inbox = mb.folder("INBOX")
    for _ in range(200):
        inbox.deliver(io.BytesIO(MSG))
    q = ctx.Queue()
    procs = [ctx.Process(target=_deliver_many, args=(str(tmp_path), 60, q)) for _ in range(2)]
    for p in procs:
        p.start()
    floor = inbox.highest_modseq
    done = 0
    while done < len(procs):
        inbox._full_sync()  # racing the deliveries
        time.sleep(0.005)
        while not q.empty():
            q.get()
            done += 1
    for p in procs:
        p.join(30)
    inbox._full_sync()
    assert [m.uid for m in inbox.messages()] == list(range(1, 321))
    assert inbox.expunged_since(floor)[0] == []


def _shared_worker(root: str, n: int, tag: str) -> None:
    inbox = Store(Path(root), shared=True).mailbox("ac-normandie.test", "paul.durand").folder("INBOX")
    for i in range(n):
        uid = inbox.deliver(io.BytesIO(MSG))
        inbox.store([uid], [f"${tag}{i}"])


def test_shared_mail_root_uses_a_rollback_journal(tmp_path: Path) -> None:
    """[storage] shared: the index works without WAL (a network file system
    has no shared memory), with several processes writing at once."""
    wal_inbox = Store(tmp_path).mailbox("ac-normandie.test", "paul.durand").folder("INBOX")
    wal_inbox.deliver(io.BytesIO(MSG))
    wal_inbox.close()  # an index made before the switch to shared: converted when opened
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_shared_worker, args=(str(tmp_path), 10, t)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    inbox = Store(tmp_path, shared=True).mailbox("ac-normandie.test", "paul.durand").folder("INBOX")
    inbox.sync()
    msgs = inbox.messages()
    assert [m.uid for m in msgs] == list(range(1, 22))
    assert sum(1 for m in msgs if any(f.startswith("$a") for f in m.flags)) == 10
    with sqlite3.connect(inbox.path / INDEX) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not (inbox.path / (INDEX + "-wal")).exists()
