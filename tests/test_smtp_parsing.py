"""SMTP line-level pieces without sockets: paths and reply codes."""

from __future__ import annotations

import pytest

from mailstack.smtp.address import parse_path
from mailstack.smtp.replies import enhance


@pytest.mark.parametrize(
    ("arg", "want"),
    [
        ("<jean.dupont@ac-normandie.fr>", ("jean.dupont@ac-normandie.fr", "")),
        ("<a@b.fr> SIZE=10 BODY=8BITMIME", ("a@b.fr", "SIZE=10 BODY=8BITMIME")),
        ("<>", ("<>", "")),
        ("<> SIZE=5", ("<>", "SIZE=5")),
        ("a@b.fr", ("a@b.fr", "")),
        ("a@b.fr SMTPUTF8", ("a@b.fr", "SMTPUTF8")),
        ("<@relay.example,@other.example:a@b.fr>", ("a@b.fr", "")),  # source route dropped
        ('<"jean dupont"@b.fr>', ('"jean dupont"@b.fr', "")),
        ("<a@[192.0.2.1]>", ("a@[192.0.2.1]", "")),
        ("<postmaster>", ("postmaster", "")),
        ("<éloïse.dupré@ac-normandie.fr>", ("éloïse.dupré@ac-normandie.fr", "")),
        ("", ("", "")),
        ("<<<>>>", (None, None)),
        ("<a b@c.fr>", (None, None)),
        ("<a@b.fr", (None, None)),
        ("a@b.fr>", (None, None)),
        ("<a@b@c.fr>", (None, None)),
        ("<" + "a" * 250 + "@b.fr>", (None, None)),
        ("<a@b.fr>\r\nRCPT TO:<x@y>", (None, None)),
        ("<x@../../tmp/p>", (None, None)),  # domains become file names (quarantine): no slash, no ".."
        ("<x@a..b.fr>", (None, None)),
        ("<x@-a.fr>", (None, None)),
        ("<x@exämple.fr>", ("x@exämple.fr", "")),
    ],
)
def test_parse_path(arg: str, want: tuple) -> None:
    assert parse_path(arg) == want


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("250 2.1.5 Recipient OK", "250 2.1.5 Recipient OK"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("503 Error: need RCPT command", "503 5.5.1 need RCPT command"),
        ("552 Error: message size exceeds fixed maximum message size", "552 5.3.4 message size exceeds fixed maximum message size"),
        ("500 Error: bad syntax", "500 5.5.2 bad syntax"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("220 mail.example ESMTP", "220 mail.example ESMTP"),  # greeting
        ("354 End data", "354 End data"),  # intermediate
        ("250-PIPELINING", "250-PIPELINING"),  # EHLO continuation
        ("599 odd", "599 5.0.0 odd"),
    ],
)
def test_every_reply_gets_an_enhanced_code(line: str, want: str) -> None:
    assert enhance(line) == want


# --- the spool ---------------------------------------------------------------------------


def test_spool_keeps_small_messages_in_memory_and_big_ones_in_a_file(tmp_path) -> None:
    from mailstack.smtp.spool import MEMORY_LIMIT, SpoolFile

    small = SpoolFile(tmp_path, "small", b"Received: x\r\n", 10**9)
    small.write(b"a" * 1000)
    small.finish()
    assert not small.on_disk and small.open().read() == b"Received: x\r\n" + b"a" * 1000
    big = SpoolFile(tmp_path, "big", b"R\r\n", 10**9)
    big.write(b"b" * (MEMORY_LIMIT + 1))
    big.finish()
    assert big.on_disk and (tmp_path / "big").stat().st_size == MEMORY_LIMIT + 4
    big.discard()
    assert not (tmp_path / "big").exists()


def test_spool_sync_after_close_still_fsyncs(tmp_path, monkeypatch) -> None:
    """The queue asks for a durable file after the session closed it."""
    import os

    from mailstack.smtp import spool as spool_mod

    s = spool_mod.SpoolFile(tmp_path, "m", b"", 10**9)
    s.write(b"x" * (spool_mod.MEMORY_LIMIT + 10))
    s.finish()
    synced = []
    real = os.fsync
    monkeypatch.setattr(spool_mod.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    s.finish(sync=True)
    assert len(synced) == 1
    small = spool_mod.SpoolFile(tmp_path, "n", b"", 10**9)
    small.write(b"y")
    small.finish(sync=True)  # written out to a file, then fsynced
    assert len(synced) == 2 and (tmp_path / "n").read_bytes() == b"y"


def test_spool_write_error_is_remembered_not_raised(tmp_path) -> None:
    from mailstack.smtp.spool import MEMORY_LIMIT, SpoolFile

    s = SpoolFile(tmp_path / "missing-dir", "m", b"", 10**9)
    s.write(b"z" * (MEMORY_LIMIT + 1))  # the spill fails: no such directory
    s.write(b"more")
    assert isinstance(s.error, OSError) and s.size == MEMORY_LIMIT + 5
