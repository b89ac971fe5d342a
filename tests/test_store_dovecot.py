"""Interop with a real Dovecot on the same Maildir, both ways."""

from __future__ import annotations

import io

from mailstack.store.mailbox import Store

ADDR = "anne.martin@ac-normandie.test"


def msg(i: int) -> bytes:
    return f"From: Paul <paul@example.org>\r\nTo: {ADDR}\r\nSubject: message {i}\r\n\r\nBody {i}\r\nline two\r\n".encode()


def test_dovecot_maildir_read_by_mailstack(dovecot) -> None:
    dovecot.add_user(ADDR, "secret")
    dovecot.deliver(ADDR, msg(1), flags=["\\Seen"], keywords=["$Forwarded", "projet"])
    dovecot.deliver(ADDR, msg(2))
    dovecot.deliver_lda(ADDR, msg(3))
    dovecot.deliver(ADDR, msg(4), folder="Archivé/2026", flags=["\\Flagged", "\\Answered"], keywords=["urgent"])
    dovecot.set_flags(ADDR, "INBOX", 2, ["\\Deleted"])
    dovecot.expunge(ADDR, "INBOX", 2)
    theirs = {f: dovecot.messages(ADDR, f) for f in ("INBOX", "Archivé/2026")}
    validity = {f: dovecot.uidvalidity(ADDR, f) for f in theirs}
    dovecot.stop()

    mb = Store(dovecot.mail_root).mailbox("ac-normandie.test", "anne.martin")
    assert "Archivé/2026" in mb.folder_names()
    for name, expected in theirs.items():
        f = mb.folder(name)
        assert f.uidvalidity == validity[name]
        ours = [(m.uid, set(m.flags)) for m in f.messages()]
        assert ours == [(uid, flags) for uid, flags, _ in expected], name
        for m in f.messages():
            with f.open(m.uid) as fh:
                data = fh.read()
            assert data.startswith(b"From: Paul") and b"\r\n" in data and b"\n\n" not in data
            assert len(data) == m.size  # the CRLF size clients are told
    inbox = mb.folder("INBOX")
    assert [m.uid for m in inbox.messages()] == [1, 3]
    # mailstack continues the UID sequence where Dovecot left it
    assert inbox.deliver(io.BytesIO(msg(5))) == 4


def test_mailstack_maildir_read_by_dovecot(dovecot) -> None:
    dovecot.add_user(ADDR, "secret")
    mb = Store(dovecot.mail_root).mailbox("ac-normandie.test", "anne.martin")
    inbox = mb.folder("INBOX")
    inbox.deliver(io.BytesIO(msg(1)), flags=["\\Seen", "projet"])
    inbox.deliver(io.BytesIO(msg(2)))
    inbox.deliver(io.BytesIO(msg(3)), flags=["\\Draft", "$Forwarded"])
    inbox.store([2], ["\\Deleted"])
    inbox.expunge()
    mb.create("Rectorat/Circulaires")
    circ = mb.folder("Rectorat/Circulaires")
    inbox.copy([1], circ)
    inbox.move([3], circ)
    mb.subscribe("Rectorat/Circulaires")
    ours = {n: [(m.uid, set(m.flags), m.size) for m in mb.folder(n).messages()] for n in ("INBOX", "Rectorat/Circulaires")}
    validity = {n: mb.folder(n).uidvalidity for n in ours}

    assert "Rectorat/Circulaires" in dovecot.folders(ADDR)
    assert "Rectorat/Circulaires" in dovecot.subscriptions(ADDR)
    for name, expected in ours.items():
        assert dovecot.uidvalidity(ADDR, name) == validity[name]
        assert dovecot.messages(ADDR, name) == expected, name
    assert dovecot.body(ADDR, "INBOX", 1) == msg(1)  # Dovecot reads our CRLF files as they are
    # Dovecot continues where mailstack left off, and mailstack sees it
    assert dovecot.deliver(ADDR, msg(6)) == 4
    dovecot.stop()
    inbox = mb.folder("INBOX")
    assert [m.uid for m in inbox.messages()] == [1, 4]


def test_interleaved_writers_never_share_a_uid(dovecot) -> None:
    dovecot.add_user(ADDR, "secret")
    mb = Store(dovecot.mail_root).mailbox("ac-normandie.test", "anne.martin")
    uids = []
    for i in range(6):
        if i % 2:
            uids.append(dovecot.deliver(ADDR, msg(i), keywords=[f"kw{i}"]))
        else:
            uids.append(mb.folder("INBOX").deliver(io.BytesIO(msg(i)), flags=[f"mine{i}"]))
    assert uids == [1, 2, 3, 4, 5, 6]
    theirs = dovecot.messages(ADDR)
    assert [(u, f) for u, f, _ in theirs] == [(i + 1, {f"mine{i}" if i % 2 == 0 else f"kw{i}"}) for i in range(6)]
    dovecot.stop()
    ours = mb.folder("INBOX").messages()
    assert [(m.uid, set(m.flags)) for m in ours] == [(u, f) for u, f, _ in theirs]
