"""The Dovecot harness (tests/dovecot.py) against a real Dovecot.

What Dovecot 2.3.19.1 (Debian 12) writes on disk, observed with this harness
(``mail_location = maildir:ROOT/%d/%n/Maildir``, separator "/"):

* Folders. INBOX is the Maildir itself; "Archivé/2026" is the directory
  ``Maildir/.Archiv&AOk-.2026`` ("/" becomes ".", each level in IMAP modified
  UTF-7). The parent "Archivé" gets no directory of its own (``doveadm mailbox
  list`` still shows it, as a non-existent parent). Each folder has
  ``cur/ new/ tmp/``, an empty ``maildirfolder`` file (INBOX has one too) and
  its own ``dovecot-uidlist`` and ``dovecot-keywords``. Next to them Dovecot
  keeps its caches (``dovecot.index.log``, ``dovecot.index.cache``,
  ``dovecot.list.index.log``, ``dovecot.mailbox.log``) and, in the Maildir
  root, ``dovecot-uidvalidity`` (the next UIDVALIDITY, hex, e.g.
  ``6b063940``) plus an empty, read-only ``dovecot-uidvalidity.6b063940``.

* ``dovecot-uidlist``: a header ``3 V<uidvalidity> N<next uid> G<mailbox
  GUID, 32 hex digits>``, then one line per message, ``<uid> :<base name>``,
  where the base name is the file name without its ``:2,...`` info::

      3 V1795569985 N4 Ga855b8384139066b0d2a000083ecc375
      1 :1795569985.M965663P10768.vm,S=156,W=163
      2 :1795569986.M7854P10772.vm,S=156,W=163
      3 :1795569986.M47791P10776.vm,S=156,W=163

  A new empty folder: ``3 V1795569984 N1 G5b44850d3e39066be229000083ecc375``.
  The format allows extension fields between the UID and the " :" (Dovecot
  documents e.g. ``W<size>``, ``G<guid>``); 2.3.19 wrote none in anything we
  ran (save, LDA, flag changes, expunges and the file's rewrite, files written
  by others, IMAP sessions, ``doveadm import``): read and keep them, never
  rely on them. New messages are *appended* without touching the header, so
  N can be stale (seen: ``N4`` above records up to UID 7); the next UID is
  max(N, last UID + 1). Expunged lines stay until Dovecot rewrites the whole
  file (it did after 8 of 15 were expunged), and a UID is never reused.
  Files written by someone else get the next UIDs in this form too
  (``4 :1700000000.M1P1.other``).

* UIDVALIDITY looks like a Unix time; each new folder takes the next value
  of the shared counter (INBOX 1795569779, then "Archivé/2026" 1795569780).

* ``dovecot-keywords``: one line per keyword, ``<index> <name>``, per folder;
  index i is the letter ``chr(ord("a") + i)`` in file names (26 at most)::

      0 $Forwarded
      1 projet
      2 urgent

* File names: ``<time>.M<usec>P<pid>.<host>,S=<size>,W=<size with CRLF>``
  then ``:2,`` and the flags, system flags first in ASCII order (D draft,
  F flagged, R answered, S seen, T deleted), then keyword letters, e.g.
  ``1795569985.M965663P10768.vm,S=156,W=163:2,Sab`` (\\Seen $Forwarded
  projet), ``...:2,FRT``. Dovecot always writes ``,S=`` and ``,W=``. A message
  saved without flags has no ``:2,`` at all. Messages stay in ``new/`` (even
  with ``:2,<flags>`` added by ``doveadm flags``) until an IMAP session that
  sees them as \\Recent (SELECT) moves them to ``cur/``.

* The Maildir ``P`` (passed) flag is not an IMAP flag for Dovecot: a file
  ``...:2,PS`` reads as just \\Seen, but Dovecot keeps the ``P`` when it
  renames the file (``\\Flagged`` added gives ``...:2,FPS``).

* Line endings: messages are stored with LF, even when given with CRLF
  (``doveadm save``, LDA and IMAP APPEND alike: ``mail_save_crlf = no``);
  ``S=`` is the LF file size and ``W=`` the RFC 822 (CRLF) size. The LDA
  adds no header.

* ``subscriptions`` (Maildir root): ``V\\t2``, an empty line, then one
  subscribed name per line with its levels separated by TAB, in modified
  UTF-7: ``b"V\\t2\\n\\nArchiv&AOk-\\t2026\\n"``.
"""

from __future__ import annotations

import imaplib
import re
from pathlib import Path

import pytest

from tests.conftest import free_port

ADDRESS = "jean.dupont@ac-normandie.test"
PASSWORD = "Correct-horse-42"
FOLDER = "Archivé/2026"
ON_DISK = ".Archiv&AOk-.2026"  # "/" -> ".", each level in IMAP modified UTF-7

# (system flags, keywords) of the three messages delivered by ``_fill``
STATES = [
    (["\\Seen"], ["$Forwarded", "projet"]),
    (["\\Flagged", "\\Answered"], []),
    ([], ["urgent", "projet"]),
]


def message(n: int, eol: bytes = b"\n") -> bytes:
    lines = ["From: Claire Martin <claire.martin@ac-rouen.test>", f"To: <{ADDRESS}>",
             f"Subject: message {n} é", "Message-ID: <m{n}@ac-rouen.test>", "", f"Corps {n}.", "Fin."]
    return eol.join(line.encode() for line in lines) + eol


def _fill(dovecot, folder: str) -> list[int]:
    dovecot.add_user(ADDRESS, PASSWORD)
    # the second one is given with CRLF line ends: Dovecot stores LF anyway
    return [dovecot.deliver(ADDRESS, message(i + 1, b"\r\n" if i == 1 else b"\n"), folder, flags, keywords)
            for i, (flags, keywords) in enumerate(STATES)]


def _folder_dir(dovecot, folder: str) -> Path:
    maildir = dovecot.maildir(ADDRESS)
    return maildir if folder == "INBOX" else maildir / ON_DISK


def _files(d: Path) -> dict[str, Path]:
    """Message files of a Maildir folder (cur/ and new/) by base name (before ":2,")."""
    return {p.name.split(":", 1)[0]: p for sub in ("cur", "new") for p in (d / sub).iterdir()}


@pytest.mark.parametrize("folder", ["INBOX", FOLDER])
def test_deliver_and_read_back(dovecot, folder: str) -> None:
    assert _fill(dovecot, folder) == [1, 2, 3]
    got = dovecot.messages(ADDRESS, folder)
    assert [(uid, flags) for uid, flags, _ in got] == [
        (i + 1, set(f) | set(k)) for i, (f, k) in enumerate(STATES)
    ]
    assert [size for _, _, size in got] == [len(message(i + 1)) for i in range(3)]
    assert dovecot.uidnext(ADDRESS, folder) == 4
    assert dovecot.body(ADDRESS, folder, 2) == message(2)  # CRLF in, LF stored

    d = _folder_dir(dovecot, folder)
    assert d.is_dir() and (d / "tmp").is_dir()
    files = _files(d)
    assert len(files) == 3

    # dovecot-uidlist: "3 V<uidvalidity> N<next uid> G<mailbox guid>", then "<uid> :<base name>"
    header, *records = (d / "dovecot-uidlist").read_text().splitlines()
    assert header.startswith("3 V")
    fields = {f[0]: f[1:] for f in header.split()[1:]}
    assert set(fields) == {"V", "N", "G"} and re.fullmatch(r"[0-9a-f]{32}", fields["G"])
    assert int(fields["V"]) == dovecot.uidvalidity(ADDRESS, folder)
    last = int(records[-1].split()[0])
    assert max(int(fields["N"]), last + 1) == dovecot.uidnext(ADDRESS, folder)
    by_uid = {}
    for line in records:
        uid, rest = line.split(" ", 1)
        assert rest.startswith(":")  # no extension fields before the ":"
        by_uid[int(uid)] = rest[1:]
    assert sorted(by_uid) == [1, 2, 3] and set(by_uid.values()) == set(files)

    # dovecot-keywords: "<index> <keyword>"; file names carry keyword index i as chr(ord("a") + i)
    keywords = dict(line.split(" ", 1) for line in (d / "dovecot-keywords").read_text().splitlines())
    assert sorted(keywords.values()) == ["$Forwarded", "projet", "urgent"]
    letter = {name: chr(ord("a") + int(i)) for i, name in keywords.items()}
    system = {"\\Seen": "S", "\\Answered": "R", "\\Flagged": "F", "\\Draft": "D", "\\Deleted": "T"}
    for uid, (flags, kws) in enumerate(STATES, 1):
        base = by_uid[uid]
        data = files[base].read_bytes()
        assert data == message(uid) and b"\r" not in data
        lines = data.count(b"\n")
        assert f",S={len(data)},W={len(data) + lines}" in base  # physical size, then size with CRLF
        name = files[base].name
        info = name.split(":2,", 1)[1] if ":2," in name else ""
        assert info == "".join(sorted(system[f] for f in flags) + sorted(letter[k] for k in kws))


def test_folders_and_subscriptions_on_disk(dovecot) -> None:
    _fill(dovecot, FOLDER)
    dovecot.create_folder(ADDRESS, "Sent")
    assert sorted(dovecot.folders(ADDRESS)) == ["Archivé", "Archivé/2026", "INBOX", "Sent"]
    assert dovecot.subscriptions(ADDRESS) == [FOLDER]  # deliver() subscribes what it creates
    maildir = dovecot.maildir(ADDRESS)
    assert sorted(p.name for p in maildir.iterdir() if p.name.startswith(".")) == [ON_DISK, ".Sent"]
    assert (maildir / ON_DISK / "maildirfolder").exists()
    # "V\t2", an empty line, then one line per subscription: levels separated by TAB, in mUTF-7
    assert (maildir / "subscriptions").read_bytes() == b"V\t2\n\nArchiv&AOk-\t2026\n"


def test_flags_expunge_and_foreign_files(dovecot) -> None:
    _fill(dovecot, "INBOX")
    dovecot.set_flags(ADDRESS, "INBOX", 1, ["\\Seen", "projet"], add=False)
    dovecot.set_flags(ADDRESS, "INBOX", 2, ["\\Deleted"])
    dovecot.expunge(ADDRESS, "INBOX", 3)
    assert [(u, f) for u, f, _ in dovecot.messages(ADDRESS)] == [
        (1, {"$Forwarded"}), (2, {"\\Flagged", "\\Answered", "\\Deleted"})]
    assert dovecot.uidnext(ADDRESS) == 4

    # a file written by someone else (root, as mailstack's tests do), with the Maildir P flag
    cur = dovecot.maildir(ADDRESS) / "cur"
    (cur / "1700000000.M1P1.other:2,PS").write_bytes(message(4))
    assert dovecot.messages(ADDRESS)[-1] == (4, {"\\Seen"}, len(message(4)))  # P is not an IMAP flag
    dovecot.set_flags(ADDRESS, "INBOX", 4, ["\\Flagged"])
    assert (cur / "1700000000.M1P1.other:2,FPS").exists()  # ... but Dovecot keeps it
    assert (dovecot.maildir(ADDRESS) / "dovecot-uidlist").read_text().splitlines()[-1] == "4 :1700000000.M1P1.other"


def test_lda_delivery(dovecot) -> None:
    dovecot.add_user(ADDRESS, PASSWORD)
    assert dovecot.deliver_lda(ADDRESS, message(1), FOLDER, sender="claire.martin@ac-rouen.test") == 1
    assert dovecot.messages(ADDRESS, FOLDER) == [(1, set(), len(message(1)))]
    assert dovecot.body(ADDRESS, FOLDER, 1) == message(1)  # the LDA adds no header


def test_imap_server(dovecot) -> None:
    _fill(dovecot, "INBOX")
    port = free_port()
    dovecot.start_imap(port)
    try:
        with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
            imap.login(ADDRESS, PASSWORD)
            typ, data = imap.select("INBOX")
            assert typ == "OK" and data == [b"3"]
            typ, data = imap.fetch("1:*", "(UID FLAGS)")
            assert typ == "OK"
            got = {}
            for line in data:
                m = re.fullmatch(rb"\d+ \(UID (\d+) FLAGS \(([^)]*)\)\)", line)
                assert m, line
                got[int(m[1])] = set(m[2].decode().split()) - {"\\Recent"}
            assert got == {i + 1: set(f) | set(k) for i, (f, k) in enumerate(STATES)}
            typ, data = imap.append("INBOX", "(\\Draft)", None, message(4, b"\r\n"))
            assert typ == "OK" and b"APPENDUID" in data[0] and data[0].split()[2] == b"4]"
            imap.logout()
        assert dovecot.body(ADDRESS, "INBOX", 4) == message(4)  # stored with LF
        assert dovecot.messages(ADDRESS)[-1] == (4, {"\\Draft"}, len(message(4)))
    finally:
        dovecot.stop()
    assert not dovecot.running
    with pytest.raises(OSError):
        imaplib.IMAP4("127.0.0.1", port, timeout=2)
    # the session that saw them as \Recent moved them from new/ to cur/
    assert not any((dovecot.maildir(ADDRESS) / "new").iterdir())
