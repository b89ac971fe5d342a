"""The Postfix harness (tests/postfix.py) against a real Postfix.

What Postfix 3.7 (Debian 12) writes, observed with this harness: virtual(8)
delivers each message to ``Maildir/new/`` as one file named
``<time>.V<dev>I<inode>M<usec>.<host>`` (no ``,S=`` size, no ``:2,`` info),
owned by the mail user, with LF line ends, after prepending
``Return-Path: <sender>``, ``X-Original-To:``, ``Delivered-To:`` and its
``Received:`` header; cleanup(8) adds the missing ``Message-Id:``, ``Date:``
and ``From:`` for a loopback client.
"""

from __future__ import annotations

import os
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, need, wait_for
from tests.postfix import (
    Postfix,
    PostfixError,
    missing_binaries,
    smtp_source,
    wait_delivered,
)

SENDER = "claire.martin@ac-rouen.test"


def _need_postfix() -> None:
    absent = missing_binaries()
    need(not absent, f"Postfix ({', '.join(absent)}; Debian package postfix)")
    need(os.geteuid() == 0, "root, to run a Postfix master and deliver as the mailstack-test user")


@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postfix]:
    """One instance for the module: its first start (queue creation, checks) takes about 2 s."""
    _need_postfix()
    with Postfix(tmp_path_factory.mktemp("postfix"), free_port(), users=["alice", "bench"]) as server:
        yield server


def _send(port: int, rcpt: str, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail(SENDER, [rcpt], b"Subject: test\r\n\r\n" + body)


def test_delivers_to_maildir(postfix: Postfix) -> None:
    _send(postfix.port, "alice@bench.test", b"Corps du message.\r\n.point en tete\r\n")
    wait_delivered(lambda: postfix.count_delivered("alice"), 1, timeout=10)
    (path,) = (postfix.maildir("alice") / "new").iterdir()
    assert path.stat().st_uid == postfix.pw.pw_uid
    data = path.read_bytes()
    assert data.startswith(f"Return-Path: <{SENDER}>\n".encode())
    assert b"\nDelivered-To: alice@bench.test\n" in data
    assert data.endswith(b"\n\nCorps du message.\n.point en tete\n")  # dot-unstuffed, LF line ends
    assert postfix.count_delivered("alice") == 1


def test_refuses_relay_and_unknown_users(postfix: Postfix) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as relay:
        _send(postfix.port, "someone@elsewhere.test", b"relay?\r\n")
    assert relay.value.recipients["someone@elsewhere.test"][0] == 554
    with pytest.raises(smtplib.SMTPRecipientsRefused) as unknown:
        _send(postfix.port, "nobody@bench.test", b"who?\r\n")
    assert unknown.value.recipients["nobody@bench.test"][0] == 550
    with pytest.raises(PostfixError, match="Relay access denied"):
        smtp_source(postfix.port, sessions=1, messages=1, size=100, sender=SENDER,
                    recipient="someone@elsewhere.test", timeout=30)


def test_smtp_source_load(postfix: Postfix) -> None:
    sent = smtp_source(postfix.port, sessions=4, messages=20, size=2000, sender=SENDER,
                       recipient="bench@bench.test", timeout=30)
    waited = wait_delivered(lambda: postfix.count_delivered("bench"), 20, timeout=20)
    assert sent > 0 and waited >= 0
    assert postfix.count_delivered("bench") == 20
    # postlogd writes the log asynchronously: the mail can be on disk before its log line
    assert wait_for(lambda: postfix.log.read_text().count("to=<bench@bench.test>, relay=virtual") == 20)
    assert "status=deferred" not in postfix.log.read_text()


def test_add_user_stop_and_close(tmp_path: Path) -> None:
    _need_postfix()
    port = free_port()
    with Postfix(tmp_path / "postfix", port, users=[]) as server:
        assert server.running
        master = server._master_pid()
        assert master is not None
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            _send(port, "carol@bench.test", b"too early\r\n")
        server.add_user("carol")  # reloads the running instance
        _send(port, "carol@bench.test", b"bienvenue\r\n")
        wait_delivered(lambda: server.count_delivered("carol"), 1, timeout=10)
        server.stop()
        assert not server.running and not Path(f"/proc/{master}").exists()

        def port_closed() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except OSError:
                return True
            return False

        # stop() waits for the master's children too; the kernel may take a moment more.
        assert wait_for(port_closed, timeout=5), "the port still accepts connections after stop()"
    # after close() the mail is in workdir/vmail, even if it was kept elsewhere meanwhile
    maildir = tmp_path / "postfix" / "vmail" / "bench.test" / "carol" / "Maildir"
    assert not (tmp_path / "postfix" / "vmail").is_symlink()
    assert [p.read_bytes().endswith(b"\n\nbienvenue\n") for p in (maildir / "new").iterdir()] == [True]
    with pytest.raises(TimeoutError):
        wait_delivered(lambda: 0, 1, timeout=0.05)
