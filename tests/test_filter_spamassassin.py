"""The SpamAssassin filter against a real spamd (tests/spamd.py)."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import BinaryIO

import pytest

from mailstack.filters import Envelope, FilterError, Verdict
from mailstack.filters.spamassassin import SpamAssassin
from tests.conftest import free_port
from tests.spamd import Spamd, spamd_fixture  # noqa: F401 (the spamd fixture)

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

SPAM = (
    "Date: Tue, 24 Nov 2026 10:00:00 +0100\r\n"
    "From: Promo <promo@example.test>\r\n"
    "To: marie.curie@ac-normandie.test\r\n"
    "Message-ID: <gtube.1@example.test>\r\n"
    "Subject: Offre exceptionnelle\r\n"
    "\r\n"
    f"{GTUBE}\r\n"
).encode()

HAM = (
    "Date: Tue, 24 Nov 2026 10:00:00 +0100\r\n"
    "From: Pierre Curie <pierre.curie@ac-normandie.test>\r\n"
    "To: Marie Curie <marie.curie@ac-normandie.test>\r\n"
    "Message-ID: <20261124090000.4242@ac-normandie.test>\r\n"
    "Subject: =?utf-8?q?Conseil_de_classe_de_jeudi?=\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Bonjour Marie,\r\n"
    "\r\n"
    "Le conseil de classe de la 4e B est avancé à jeudi, 17 h, en salle 12.\r\n"
    "Peux-tu apporter les bulletins du deuxième trimestre ?\r\n"
    "\r\n"
    "Merci, bonne journée.\r\n"
    "Pierre\r\n"
).encode()

ENVELOPE = Envelope(
    queue_id="T1", listener="mx", client_ip="127.0.0.1", helo="mx.example.test", login=None,
    sender="promo@example.test", recipients=("marie.curie@ac-normandie.test",),
)


@dataclass
class BytesMessage:
    """A spooled message stand-in that counts how often it is opened."""

    data: bytes
    opened: int = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> BinaryIO:
        self.opened += 1
        return io.BytesIO(self.data)


def check(f: SpamAssassin, data: bytes) -> Verdict:
    return asyncio.run(f.check(BytesMessage(data), ENVELOPE))


def test_gtube_is_tagged_spam(spamd: Spamd) -> None:
    v = check(SpamAssassin({"port": spamd.port}), SPAM)
    assert v.action == "tag" and v.spam
    assert v.score is not None and v.score >= 1000
    h = dict(v.headers)
    assert h["X-Spam-Flag"] == "YES"
    assert h["X-Spam-Status"].startswith(f"Yes, score={v.score:.1f} required=5.0 tests=")
    assert "GTUBE" in h["X-Spam-Status"]
    assert float(h["X-Spam-Score"]) == pytest.approx(v.score, abs=0.05)
    assert v.reason == f"score {h['X-Spam-Score']}"
    for name, value in v.headers:  # what the daemon prepends must be one printable line
        assert value.isprintable() and "\n" not in value and "\r" not in value, name


def test_gtube_rejected_over_reject_score(spamd: Spamd) -> None:
    v = check(SpamAssassin({"port": spamd.port, "reject_score": 20}), SPAM)
    assert v.action == "reject"
    assert v.reply == "550 5.7.1 Message refused as spam"


def test_french_message_is_not_spam(spamd: Spamd) -> None:
    v = check(SpamAssassin({"port": spamd.port, "reject_score": 10.5}), HAM)
    assert v.action == "tag" and not v.spam
    assert v.score is not None and v.score < 5
    h = dict(v.headers)
    assert "X-Spam-Flag" not in h
    assert h["X-Spam-Status"].startswith("No, score=") and "required=5.0" in h["X-Spam-Status"]


def test_user_option_is_sent(spamd: Spamd) -> None:
    v = check(SpamAssassin({"port": spamd.port, "user": "marie.curie"}), SPAM)
    assert v.spam


def test_over_max_size_is_accepted_without_spamd() -> None:
    """Nothing listens on the port: the filter must not even try."""
    f = SpamAssassin({"port": free_port(), "max_size": 1000})
    big = SPAM + b"x" * 1000 + b"\r\n"
    msg = BytesMessage(big)
    v = asyncio.run(f.check(msg, ENVELOPE))
    assert v.action == "accept" and not v.headers and not v.spam
    assert msg.opened == 0  # its size alone decided


def test_lying_size_is_bounded_when_read() -> None:
    """A spool whose size says small but holds more: still not sent."""
    f = SpamAssassin({"port": free_port(), "max_size": 100})
    msg = BytesMessage(SPAM)
    msg_size_lie = type("Lying", (), {"size": 10, "open": msg.open})()
    v = asyncio.run(f.check(msg_size_lie, ENVELOPE))
    assert v.action == "accept" and not v.headers


def test_stopped_spamd_raises() -> None:
    server = Spamd()
    try:
        server.start()
        f = SpamAssassin({"port": server.port})
        assert check(f, HAM).action == "tag"
        server.stop()
        with pytest.raises(Exception, match=f"127.0.0.1:{server.port}"):
            check(f, HAM)
    finally:
        server.close()


def test_not_spamd_raises() -> None:
    """Something that is not spamd answers: a protocol error, not a verdict."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"220 mail.example.test ESMTP\r\n")
            conn.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        with pytest.raises(Exception, match="spamd"):
            check(SpamAssassin({"port": port}), HAM)
    finally:
        t.join(10)
        listener.close()


def test_default_fail_is_accept() -> None:
    f = SpamAssassin({})
    assert (f.name, f.default_fail) == ("spamassassin", "accept")
    assert (f.host, f.port, f.socket, f.max_size, f.reject_score, f.user) == ("127.0.0.1", 783, None, 512000, 0.0, None)


@pytest.mark.parametrize(
    "options",
    [
        {"hots": "127.0.0.1"},
        {"port": "783"},
        {"port": 0},
        {"port": 70000},
        {"port": True},
        {"host": ""},
        {"host": "spam host"},
        {"socket": "relative/spamd.sock"},
        {"socket": "/run/spamd.sock", "port": 783},
        {"max_size": 0},
        {"max_size": "512k"},
        {"reject_score": -1},
        {"reject_score": "10"},
        {"reject_score": float("nan")},
        {"user": ""},
        {"user": "marie curie"},
        {"user": "marie\r\nX: y"},
        {"user": 42},
    ],
)
def test_bad_options(options: dict) -> None:
    with pytest.raises(FilterError) as e:
        SpamAssassin(options)
    assert "\n" not in str(e.value)


def test_unix_socket(spamd: Spamd) -> None:
    f = SpamAssassin({"socket": str(spamd.socket)})
    assert f.where == str(spamd.socket)
    v = check(f, SPAM)
    assert v.spam and dict(v.headers)["X-Spam-Flag"] == "YES"


def test_smtpd_files_gtube_in_junk_and_ham_in_inbox(spamd: Spamd, tmp_path) -> None:
    """End to end: a real ``mailstack smtpd`` with the filter configured, on its MX."""
    import smtplib

    from tests.smtp_server import DOMAIN, make_server

    srv = make_server(tmp_path, extra=f'\n[[filters]]\nname = "spamassassin"\noptions = {{ port = {spamd.port} }}\n')
    srv.start()
    try:
        rcpt = srv.add_user("Marie", "Curie")
        with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=60) as s:
            s.sendmail("promo@example.test", [f"{rcpt}@{DOMAIN}"], SPAM)
            s.sendmail("pierre.curie@example.test", [f"{rcpt}@{DOMAIN}"], HAM)
        junk, inbox = srv.messages(rcpt, ".Junk"), srv.messages(rcpt)
        assert len(junk) == 1 and len(inbox) == 1
        head = junk[0].split(b"\r\n\r\n", 1)[0]
        assert b"\r\nX-Spam-Flag: YES\r\n" in head and GTUBE.encode() in junk[0]
        assert b"X-Spam-Status: Yes, score=" in head
        head = inbox[0].split(b"\r\n\r\n", 1)[0]
        assert b"X-Spam-Status: No, score=" in head and b"X-Spam-Flag" not in head
        assert b"Conseil de classe" in inbox[0] or b"Conseil_de_classe" in inbox[0]
        assert "filter=spamassassin result=tag spam" in srv.log_path.read_text()
    finally:
        srv.stop()
