"""The SMTP daemon as a real process, driven by smtplib, swaks and raw sockets over loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import need, wait_for
from tests.smtp_server import DOMAIN, PASSWORD, SmtpServer, make_server

LIMIT = 104_857_600


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> SmtpServer:
    srv = make_server(tmp_path_factory.mktemp("smtp"))
    srv.add_user("Jean", "Dupont")
    srv.add_user("Marie", "Curie")
    srv.add_user("Paul", "Martin")
    srv.cli("alias", "add", "profs", "jean.dupont", "marie.curie")
    srv.cli("alias", "add", "direction", "paul.martin", f"profs@{DOMAIN}")  # a list containing a list
    srv.cli("alias", "add", "secretariat", "marie.curie")
    srv.start()
    yield srv
    srv.stop()


class Raw:
    """A byte-level SMTP client: for pipelining, smuggling and protocol errors."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: its code and its last line's text."""
        while True:
            nl = self.buf.find(b"\r\n")
            while nl < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; pending {self.buf!r}")
                self.buf += chunk
                nl = self.buf.find(b"\r\n")
            line, self.buf = self.buf[:nl].decode(), self.buf[nl + 2 :]
            if line[3:4] != "-":
                return int(line[:3]), line[4:]

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def starttls(self, ctx: ssl.SSLContext) -> None:
        assert self.cmd("STARTTLS")[0] == 220
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def body_of(stored: bytes) -> bytes:
    """A stored message without the Received header we add."""
    assert stored.startswith(b"Received: from ")
    end = stored.index(b"\r\n", stored.index(b";\r\n\t") + 3)
    return stored[end + 2 :]


def count(server: SmtpServer, login: str) -> int:
    return len(server.messages(login))


# --- MX (port 25) ---------------------------------------------------------------------


def test_mx_ehlo_advertises_extensions_and_no_auth(server: SmtpServer) -> None:
    with server.mx() as s:
        code, text = s.ehlo("client.example.org")
        assert code == 250
        ext = text.decode().splitlines()[1:]
        for want in ("SIZE 104857600", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING", "STARTTLS"):
            assert want in ext
        assert not any(e.startswith("AUTH") for e in ext)
        s.starttls(context=server.context())
        s.ehlo()
        assert not s.has_extn("auth") and not s.has_extn("starttls")
        assert s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0jean.dupont\0" + PASSWORD.encode()).decode())[0] == 504


def test_mx_delivers_to_account_with_received_header(server: SmtpServer) -> None:
    before = count(server, "jean.dupont")
    msg = b"From: a@example.org\r\nSubject: hello\r\n\r\nline\r\n.starts with a dot\r\n"
    with server.mx() as s:
        assert s.sendmail("a@example.org", [f"jean.dupont@{DOMAIN}"], msg) == {}
    stored = server.messages("jean.dupont")[before:]
    assert len(stored) == 1
    assert body_of(stored[0]) == msg
    head = stored[0][: stored[0].index(b"From: ")].decode()
    assert "with ESMTP id " in head and f"for <jean.dupont@{DOMAIN}>" in head and "[127.0.0.1]" in head


def test_mx_lists_expand_and_each_member_gets_one_copy(server: SmtpServer) -> None:
    before = {u: count(server, u) for u in ("jean.dupont", "marie.curie", "paul.martin")}
    with server.mx() as s:
        rcpts = [f"direction@{DOMAIN}", f"profs@{DOMAIN}", f"jean.dupont@{DOMAIN}", f"JEAN.DUPONT@{DOMAIN.upper()}"]
        assert s.sendmail("a@example.org", rcpts, b"Subject: circulaire\r\n\r\nx\r\n") == {}
    for u in before:
        assert count(server, u) == before[u] + 1, u


@pytest.mark.parametrize(
    "rcpt",
    ["someone@example.org", "jean.dupont@example.org", "x@[127.0.0.1]", "a%example.org@example.org",
     f"jean.dupont@{DOMAIN}.example.org", f"@{DOMAIN}:a@example.org"],
)
def test_mx_never_relays(server: SmtpServer, rcpt: str) -> None:
    with server.mx() as s:
        s.ehlo()
        s.mail("a@example.org")
        code, text = s.docmd("RCPT", f"TO:<{rcpt}>")  # smtplib would rewrite a source route
        assert (code, text.decode()) == (554, "5.7.1 Relay access denied")  # a source route is ignored


def test_mx_unknown_local_recipient_is_refused_at_rcpt(server: SmtpServer) -> None:
    with server.mx() as s:
        s.ehlo()
        s.mail("a@example.org")
        assert s.rcpt(f"nobody@{DOMAIN}") == (550, b"5.1.1 Recipient address unknown")
        assert s.rcpt(f"jean%dupont@{DOMAIN}")[0] == 550
        assert s.rcpt(f"jean.dupont@{DOMAIN}")[0] == 250  # the session goes on


def test_mx_relay_refused_with_local_sender_and_after_an_auth_attempt(server: SmtpServer) -> None:
    with server.mx() as s:
        s.ehlo()
        assert s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0jean.dupont\0" + PASSWORD.encode()).decode())[0] == 538
        s.mail(f"jean.dupont@{DOMAIN}")
        assert s.rcpt("victim@example.org")[0] == 554


# --- submission (587, 465) ------------------------------------------------------------


def test_submission_refuses_auth_and_mail_before_starttls(server: SmtpServer) -> None:
    s = smtplib.SMTP("localhost", server.submission_port, timeout=30)
    s.ehlo()
    assert not s.has_extn("auth") and s.has_extn("starttls")
    assert s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0jean.dupont\0" + PASSWORD.encode()).decode())[0] == 530
    assert s.docmd("MAIL", f"FROM:<jean.dupont@{DOMAIN}>")[0] == 530
    s.starttls(context=server.context())
    s.ehlo()
    assert s.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    assert s.docmd("MAIL", f"FROM:<jean.dupont@{DOMAIN}>") == (530, b"5.7.0 Authentication required")
    s.quit()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_auth_with_initial_response(server: SmtpServer, mechanism: str) -> None:
    s = server.submission()
    s.ehlo()
    s.user, s.password = "jean.dupont", PASSWORD
    method = s.auth_plain if mechanism == "PLAIN" else s.auth_login
    code, text = s.auth(mechanism, method, initial_response_ok=True)
    assert (code, text) == (235, b"2.7.0 Authenticated as jean.dupont")
    s.quit()


def test_submission_auth_login_by_challenges_and_bad_password(server: SmtpServer) -> None:
    r = Raw(server.submission_port)
    r.cmd("EHLO c")
    r.starttls(server.context())
    r.cmd("EHLO c")
    code, text = r.cmd("AUTH LOGIN")
    assert (code, base64.b64decode(text)) == (334, b"Username:")
    code, text = r.cmd(base64.b64encode(b"marie.curie"))
    assert (code, base64.b64decode(text)) == (334, b"Password:")
    assert r.cmd(base64.b64encode(b"wrong-password")) == (535, "5.7.8 Authentication credentials invalid")
    assert r.cmd("AUTH PLAIN")[0] == 334
    assert r.cmd("*")[0] == 501  # cancelled: one reply, the session goes on
    assert r.cmd("AUTH PLAIN !!notbase64")[0] == 501
    assert r.cmd("NOOP")[0] == 250
    r.close()


def test_submission_sends_only_as_own_address_or_its_aliases(server: SmtpServer) -> None:
    before = count(server, "paul.martin")
    with server.submission("jean.dupont") as s:
        for other in (f"marie.curie@{DOMAIN}", "boss@example.org", f"secretariat@{DOMAIN}"):
            with pytest.raises(smtplib.SMTPSenderRefused) as e:
                s.sendmail(other, [f"paul.martin@{DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
            assert e.value.smtp_code == 553 and e.value.smtp_error.startswith(b"5.7.1")
        with pytest.raises(smtplib.SMTPSenderRefused):
            s.sendmail("<>", [f"paul.martin@{DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
        assert s.sendmail(f"jean.dupont@{DOMAIN}", [f"paul.martin@{DOMAIN}"], b"Subject: own\r\n\r\nx\r\n") == {}
        assert s.sendmail(f"profs@{DOMAIN}", [f"paul.martin@{DOMAIN}"], b"Subject: as list\r\n\r\nx\r\n") == {}
    assert count(server, "paul.martin") == before + 2
    head = server.messages("paul.martin")[-1].split(b"Subject:")[0].decode()
    assert "ESMTPSA" in head and "(authenticated sender: jean.dupont)" in head and "TLSv1." in head


def test_submission_queues_remote_recipients_durably(server: SmtpServer) -> None:
    before = count(server, "marie.curie")
    with server.submission("jean.dupont") as s:
        s.sendmail(f"jean.dupont@{DOMAIN}", ["parent@example.org", f"marie.curie@{DOMAIN}"], b"Subject: sortie\r\n\r\nx\r\n")
    assert count(server, "marie.curie") == before + 1
    queue = server.home / "spool" / "queue"
    entries = [json.loads(p.read_text()) for p in queue.glob("*.json")]
    mine = [e for e in entries if e["recipients"][0]["address"] == "parent@example.org"]
    assert len(mine) == 1
    assert mine[0]["sender"] == f"jean.dupont@{DOMAIN}" and not mine[0]["recipients"][0]["local"]
    assert b"Subject: sortie" in (queue / f"{mine[0]['id']}.eml").read_bytes()
    assert not any((server.home / "spool" / "incoming").iterdir())


def test_submission_unknown_local_recipient_refused(server: SmtpServer) -> None:
    with server.submission("jean.dupont") as s:
        s.mail(f"jean.dupont@{DOMAIN}")
        assert s.rcpt(f"personne@{DOMAIN}")[0] == 550


def test_submissions_465_implicit_tls(server: SmtpServer) -> None:
    before = count(server, "jean.dupont")
    with server.submissions("marie.curie") as s:
        assert not s.has_extn("starttls")
        s.sendmail(f"marie.curie@{DOMAIN}", [f"jean.dupont@{DOMAIN}"], b"Subject: 465\r\n\r\nx\r\n")
    assert count(server, "jean.dupont") == before + 1
    plain = socket.create_connection(("127.0.0.1", server.submissions_port), timeout=10)
    plain.sendall(b"EHLO x\r\n")  # no TLS: the handshake fails, no SMTP is spoken
    plain.settimeout(10)
    try:
        assert not plain.recv(100).startswith(b"2")
    except (ConnectionResetError, TimeoutError):
        pass
    plain.close()


def test_tls_below_1_2_refused(server: SmtpServer) -> None:
    ctx = server.context()
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionError)):
        smtplib.SMTP_SSL("localhost", server.submissions_port, context=ctx, timeout=10)


# --- size, streaming, chunking -------------------------------------------------------


def test_declared_size_over_limit_refused_at_mail(server: SmtpServer) -> None:
    with server.mx() as s:
        s.ehlo()
        assert s.mail("a@example.org", [f"SIZE={LIMIT + 1}"]) == (552, b"5.3.4 message size exceeds fixed maximum message size")
        assert s.mail("a@example.org", [f"SIZE={LIMIT}"])[0] == 250


def _big_message(path: Path, size: int) -> str:
    """A file of ``size`` bytes of CRLF lines (some starting with a dot); its sha256."""
    line = b"." + b"0123456789abcdef" * 4 + b"\r\n"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        head = b"Subject: big\r\n\r\n"
        f.write(head)
        h.update(head)
        left = size - len(head)
        block = line * 1000
        while left >= len(block):
            f.write(block)
            h.update(block)
            left -= len(block)
        tail = b"x" * (left - 2) + b"\r\n"
        f.write(tail)
        h.update(tail)
    return h.hexdigest()


def test_99_mb_arrives_byte_identical_and_101_mb_is_refused(server: SmtpServer, tmp_path: Path) -> None:
    src = tmp_path / "m.eml"
    digest = _big_message(src, 99 * 1024 * 1024)
    before = count(server, "jean.dupont")
    with server.submission("marie.curie") as s:
        s.sendmail(f"marie.curie@{DOMAIN}", [f"jean.dupont@{DOMAIN}"], src.read_bytes())
    files = sorted(p for p in (server.maildir("jean.dupont") / "new").iterdir())
    newest = max(files, key=lambda p: p.stat().st_mtime_ns)
    with open(newest, "rb") as f:
        first = f.read(4096)
        f.seek(first.index(b"Subject: big"))
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == digest
    assert count(server, "jean.dupont") == before + 1

    _big_message(src, 101 * 1024 * 1024)
    with server.submission("marie.curie") as s:
        s.ehlo()
        s.mail(f"marie.curie@{DOMAIN}")  # no SIZE: the overflow is found while the data flows
        s.rcpt(f"jean.dupont@{DOMAIN}")
        code, text = s.data(src.read_bytes())
        assert code == 552 and text.startswith(b"5.3.4")
        assert s.noop()[0] == 250
    assert count(server, "jean.dupont") == before + 1
    assert not any((server.home / "spool" / "incoming").iterdir())


def test_bdat_chunks_stream_and_pipelined_refusal_keeps_sync(server: SmtpServer) -> None:
    before = count(server, "marie.curie")
    r = Raw(server.mx_port)
    r.cmd("EHLO client.example.org")
    r.send(b"BDAT 5\r\nhello")
    assert r.reply()[0] == 503  # no transaction: the 5 bytes are still consumed
    assert r.cmd("NOOP")[0] == 250
    r.cmd("MAIL FROM:<a@example.org>")
    r.cmd(f"RCPT TO:<marie.curie@{DOMAIN}>")
    part1, part2 = b"Subject: chunks\r\n\r\nfirst ", b"second\r\n.not unstuffed\r\n"
    r.send(b"BDAT %d\r\n" % len(part1) + part1)
    assert r.reply() == (250, f"2.0.0 {len(part1)} octets received")
    r.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    code, text = r.reply()
    assert code == 250 and text.startswith("2.0.0 Ok: queued as ")
    assert r.cmd("QUIT")[0] == 221
    assert body_of(server.messages("marie.curie")[-1]) == part1 + part2
    assert count(server, "marie.curie") == before + 1


def test_bdat_with_bad_size_closes_the_session(server: SmtpServer) -> None:
    r = Raw(server.mx_port)
    r.cmd("EHLO c")
    assert r.cmd("BDAT lots")[0] == 501
    assert r.reply()[0] == 421
    assert r.closed()


def test_pipelined_transaction(server: SmtpServer) -> None:
    before = count(server, "paul.martin")
    r = Raw(server.mx_port)
    r.send(
        b"EHLO client.example.org\r\nMAIL FROM:<a@example.org> SIZE=100\r\n"
        + f"RCPT TO:<nobody@{DOMAIN}>\r\nRCPT TO:<paul.martin@{DOMAIN}>\r\nDATA\r\n".encode()
    )
    assert [r.reply()[0] for _ in range(5)] == [250, 250, 550, 250, 354]
    r.send(b"Subject: piped\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@example.org>\r\n" + f"RCPT TO:<paul.martin@{DOMAIN}>\r\nDATA\r\n".encode())
    assert [r.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    r.send(b"Subject: piped 2\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert [r.reply()[0] for _ in range(2)] == [250, 221]
    assert count(server, "paul.martin") == before + 2


def test_enhanced_status_codes_on_every_reply(server: SmtpServer) -> None:
    r = Raw(server.mx_port)
    replies = [r.cmd(c) for c in ("MAIL FROM:<a@b>", "EHLO c", "RCPT TO:<x@y>", "MAIL FROM:<a@example.org>",
                                   "MAIL FROM:<a@example.org>", "FOO", "RSET", "VRFY x", "NOOP", "DATA")]
    del replies[1]  # the EHLO answer carries none (RFC 2034)
    for code, text in replies:
        assert text[:1] == str(code)[0] and text[1] == "." and text.split()[0].count(".") == 2, (code, text)
    r.close()


# --- hostile input --------------------------------------------------------------------


@pytest.mark.parametrize("smuggle", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"])
def test_smtp_smuggling_is_refused_and_never_makes_a_second_message(server: SmtpServer, smuggle: bytes) -> None:
    before = {u: count(server, u) for u in ("jean.dupont", "marie.curie")}
    r = Raw(server.mx_port)
    r.cmd("EHLO attacker.example.org")
    r.cmd("MAIL FROM:<a@example.org>")
    r.cmd(f"RCPT TO:<jean.dupont@{DOMAIN}>")
    assert r.cmd("DATA")[0] == 354
    r.send(
        b"Subject: innocent\r\n\r\nhello" + smuggle
        + f"MAIL FROM:<admin@{DOMAIN}>\r\nRCPT TO:<marie.curie@{DOMAIN}>\r\nDATA\r\n".encode()
        + b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    code, text = r.reply()
    assert code == 554 and text.startswith("5.5.2 Bare CR or LF")
    assert r.cmd("NOOP")[0] == 250  # one reply only: nothing was taken as commands
    r.close()
    time.sleep(0.2)
    assert {u: count(server, u) for u in before} == before


def test_pre_starttls_pipelined_commands_are_discarded(server: SmtpServer) -> None:
    r = Raw(server.mx_port)
    r.cmd("EHLO c")
    r.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
    assert r.reply()[0] == 220
    r.sock = server.context().wrap_socket(r.sock, server_hostname="localhost")
    assert r.cmd("NOOP") == (250, "2.0.0 OK")  # the injected MAIL got no reply: it never ran
    assert r.cmd("RCPT TO:<x@y>") == (503, "5.5.1 send HELO first")  # the session starts over
    r.cmd("EHLO c")
    assert r.cmd(f"RCPT TO:<jean.dupont@{DOMAIN}>") == (503, "5.5.1 need MAIL command")
    r.close()


def test_garbage_and_long_lines_get_errors_and_the_session_goes_on(server: SmtpServer) -> None:
    r = Raw(server.mx_port)
    assert r.cmd(b"\xff\xfe\x00garbage")[0] == 500
    assert r.cmd(b"EHLO " + b"a" * 5000)[0] == 500
    assert r.cmd("")[0] == 500
    assert r.cmd("EHLO ok")[0] == 250
    for bad in ("<<<>>>", "<a\x01b@example.org>", "<a b@example.org>", "<a@b@example.org>"):
        assert r.cmd(f"MAIL FROM:{bad}") == (553, "5.1.3 Error: malformed address"), bad
    assert r.cmd(b"MAIL FROM:<\xff@example.org>") == (553, "5.1.3 Error: malformed address")  # not UTF-8
    assert r.cmd("MAIL FROM:<a@example.org> BODY=WEIRD")[0] == 501
    assert r.cmd("MAIL FROM:<a@example.org> SMTPUTF8 BODY=8BITMIME SIZE=10")[0] == 250
    assert r.cmd("RCPT TO:<jean.dupont@ac-normandie.test> NOTIFY=NEVER")[0] == 555
    assert r.cmd("NOOP")[0] == 250
    r.close()


def test_too_many_errors_close_the_session(server: SmtpServer) -> None:
    r = Raw(server.mx_port)
    r.cmd("EHLO c")
    r.cmd("MAIL FROM:<a@example.org>")
    codes = [r.cmd(f"RCPT TO:<nobody{i}@{DOMAIN}>")[0] for i in range(20)]
    assert codes == [550] * 20
    assert r.cmd(f"RCPT TO:<nobody@{DOMAIN}>")[0] == 550
    assert r.reply()[0] == 421
    assert r.closed()


def test_daemon_survives_abrupt_disconnects_mid_data(server: SmtpServer) -> None:
    for _ in range(3):
        r = Raw(server.mx_port)
        r.cmd("EHLO c")
        r.cmd("MAIL FROM:<a@example.org>")
        r.cmd(f"RCPT TO:<jean.dupont@{DOMAIN}>")
        r.cmd("DATA")
        r.send(b"Subject: cut\r\n\r\n" + (b"x" * 998 + b"\r\n") * 300)  # past the in-memory part: a spool file
        assert wait_for(lambda: any((server.home / "spool" / "incoming").iterdir()))
        r.close()
        assert wait_for(lambda: not any((server.home / "spool" / "incoming").iterdir()))
    with server.mx() as s:
        assert s.noop()[0] == 250


# --- real clients: swaks ---------------------------------------------------------------


def _swaks(*args: str) -> subprocess.CompletedProcess:
    need(shutil.which("swaks") is not None, "swaks (Debian package swaks)")
    return subprocess.run(["swaks", "--silent", "1", *args], capture_output=True, text=True, timeout=60)


def test_swaks_submission_starttls_auth(server: SmtpServer) -> None:
    before = count(server, "marie.curie")
    r = _swaks("--server", f"127.0.0.1:{server.submission_port}", "--tls", "--auth", "PLAIN",
               "--auth-user", "jean.dupont", "--auth-password", PASSWORD,
               "--from", f"jean.dupont@{DOMAIN}", "--to", f"marie.curie@{DOMAIN}", "--header", "Subject: swaks 587")
    assert r.returncode == 0, r.stdout + r.stderr
    assert count(server, "marie.curie") == before + 1
    assert b"Subject: swaks 587" in server.messages("marie.curie")[-1]


def test_swaks_submissions_465_auth_login(server: SmtpServer) -> None:
    before = count(server, "jean.dupont")
    r = _swaks("--server", f"127.0.0.1:{server.submissions_port}", "--tlsc", "--auth", "LOGIN",
               "--auth-user", f"marie.curie@{DOMAIN}", "--auth-password", PASSWORD,
               "--from", f"marie.curie@{DOMAIN}", "--to", f"jean.dupont@{DOMAIN}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert count(server, "jean.dupont") == before + 1


def test_swaks_mx_pipelining_and_refusals(server: SmtpServer) -> None:
    before = count(server, "paul.martin")
    r = _swaks("--server", f"127.0.0.1:{server.mx_port}", "--pipeline", "--from", "parent@example.org",
               "--to", f"paul.martin@{DOMAIN}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert count(server, "paul.martin") == before + 1
    relay = _swaks("--server", f"127.0.0.1:{server.mx_port}", "--from", "x@example.org", "--to", "y@example.net")
    assert relay.returncode != 0 and "554 5.7.1" in relay.stdout + relay.stderr
    spoof = _swaks("--server", f"127.0.0.1:{server.submission_port}", "--tls", "--auth", "PLAIN",
                   "--auth-user", "jean.dupont", "--auth-password", PASSWORD,
                   "--from", f"paul.martin@{DOMAIN}", "--to", f"marie.curie@{DOMAIN}")
    assert spoof.returncode != 0 and "553 5.7.1" in spoof.stdout + spoof.stderr
    noauth = _swaks("--server", f"127.0.0.1:{server.submission_port}", "--auth", "PLAIN",
                    "--auth-user", "jean.dupont", "--auth-password", PASSWORD,
                    "--from", f"jean.dupont@{DOMAIN}", "--to", f"marie.curie@{DOMAIN}")
    assert noauth.returncode != 0  # AUTH is not offered before STARTTLS


# --- limits: their own servers ----------------------------------------------------------


def test_quota_refused_at_rcpt_with_size_and_at_end_of_data(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    srv.add_user("Jean", "Dupont")
    srv.cli("user", "quota", "jean.dupont", "--bytes", "20000")
    srv.start()
    try:
        with srv.mx() as s:
            s.ehlo()
            s.mail("a@example.org", ["SIZE=50000"])
            code, text = s.rcpt(f"jean.dupont@{DOMAIN}")
            assert code == 552 and text.startswith(b"5.2.2")
            s.rset()
            s.mail("a@example.org")  # no SIZE: found at the end of DATA
            assert s.rcpt(f"jean.dupont@{DOMAIN}")[0] == 250
            code, text = s.data(b"Subject: big\r\n\r\n" + b"x" * 30000 + b"\r\n")
            assert code == 552 and text.startswith(b"5.2.2")
            assert s.sendmail("a@example.org", [f"jean.dupont@{DOMAIN}"], b"Subject: small\r\n\r\nx\r\n") == {}
        assert count(srv, "jean.dupont") == 1
    finally:
        srv.stop()


def test_connection_limit_per_address_and_inactivity_timeout(tmp_path: Path) -> None:
    srv = make_server(tmp_path, max_per_address=3, timeout=5)
    srv.add_user("Jean", "Dupont")
    srv.start()
    try:
        held = [Raw(srv.mx_port) for _ in range(3)]
        extra = Raw(srv.mx_port)
        assert extra.greeting[0] == 421 and extra.closed()
        for r in held:
            r.close()
        # A slow upload lasting longer than the timeout goes through: the
        # clock restarts with every chunk.
        r = Raw(srv.mx_port)
        r.cmd("EHLO slow")
        r.cmd("MAIL FROM:<a@example.org>")
        r.cmd(f"RCPT TO:<jean.dupont@{DOMAIN}>")
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: slow\r\n\r\n")
        for _ in range(4):
            time.sleep(2)
            r.send(b"a line of a slow upload\r\n")
        r.send(b".\r\n")
        assert r.reply()[0] == 250
        idle = time.monotonic()
        assert wait_for(r.closed, timeout=15)
        assert time.monotonic() - idle >= 4
    finally:
        srv.stop()
    assert count(srv, "jean.dupont") == 1


def test_sigterm_stops_cleanly_and_restart_clears_unacknowledged_spool(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    srv.add_user("Jean", "Dupont")
    srv.start()
    r = Raw(srv.mx_port)
    r.cmd("EHLO c")
    r.cmd("MAIL FROM:<a@example.org>")
    r.cmd(f"RCPT TO:<jean.dupont@{DOMAIN}>")
    r.cmd("DATA")
    r.send(b"Subject: never finished\r\n\r\n" + (b"x" * 998 + b"\r\n") * 400)  # past the in-memory part
    time.sleep(0.3)
    os.killpg(srv.proc.pid, 9)  # a crash mid-transfer
    srv.proc.wait()
    srv.log.close()
    r.close()
    assert any((srv.home / "spool" / "incoming").iterdir())
    srv.start()
    try:
        assert not any((srv.home / "spool" / "incoming").iterdir())
        with srv.mx() as s:
            s.sendmail("a@example.org", [f"jean.dupont@{DOMAIN}"], b"Subject: after\r\n\r\nx\r\n")
    finally:
        srv.stop()
    assert srv.proc.returncode == 0
    assert [b"never finished" in m for m in srv.messages("jean.dupont")] == [False]
    assert "Traceback" not in srv.log_path.read_text()


def test_concurrent_sessions_all_delivered(server: SmtpServer) -> None:
    before = count(server, "marie.curie")
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            with server.mx() as s:
                for j in range(5):
                    s.sendmail("a@example.org", [f"marie.curie@{DOMAIN}"], f"Subject: {i}-{j}\r\n\r\nx\r\n".encode())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert count(server, "marie.curie") == before + 50


def test_mail_sent_over_smtp_is_read_over_imap_with_uids(server: SmtpServer) -> None:
    """The two daemons meet only in the store: SMTP drops the file, IMAP gives it its UID."""
    imap = server.imap_beside()
    imap.start()
    try:
        c = imap.connect("paul.martin")
        typ, data = c.select("INBOX")
        before = int(data[0])
        c.close()
        body = b"Subject: over both daemons\r\n\r\nBonjour\r\n"
        with server.submission("jean.dupont") as s:
            s.sendmail(f"jean.dupont@{DOMAIN}", [f"paul.martin@{DOMAIN}"], body)
        typ, data = c.select("INBOX")
        assert int(data[0]) == before + 1
        typ, data = c.uid("FETCH", "*", "(UID BODY.PEEK[])")
        assert typ == "OK" and data[0][1].endswith(body)
        uid = int(data[0][0].split(b"UID ")[1].split()[0])
        typ, data = c.status("INBOX", "(UIDNEXT)")
        assert f"UIDNEXT {uid + 1}".encode() in data[0]
        # A client in IDLE hears of the next message at once, even right after a sync.
        c.send(b"i1 IDLE\r\n")
        assert c.readline().startswith(b"+")
        with server.mx() as s:
            s.sendmail("parent@example.org", [f"paul.martin@{DOMAIN}"], b"Subject: pushed\r\n\r\nx\r\n")
        c.sock.settimeout(10)
        assert c.readline().strip() == f"* {before + 2} EXISTS".encode()
        c.send(b"DONE\r\n")
        assert c.readline().startswith(b"i1 OK")
        c.logout()
    finally:
        imap.stop()


def test_alias_reaching_nobody_is_refused_at_rcpt(server: SmtpServer) -> None:
    server.cli("alias", "add", "boucle1", f"paul.martin@{DOMAIN}")
    server.cli("alias", "add", "boucle2", f"boucle1@{DOMAIN}")
    server.cli("alias", "add", "boucle1", f"boucle2@{DOMAIN}")
    server.cli("alias", "remove", "boucle1", f"paul.martin@{DOMAIN}")  # now a loop reaching no one
    with server.mx() as s:
        s.ehlo()
        s.mail("a@example.org")
        assert s.rcpt(f"boucle2@{DOMAIN}") == (550, b"5.1.1 Recipient address unknown")


def test_transfer_slots_come_back_after_bdat_reset_and_disconnect(tmp_path: Path) -> None:
    srv = make_server(tmp_path, max_transfers=1)
    srv.add_user("Jean", "Dupont")
    srv.start()
    try:
        for ending in ("RSET", "disconnect", "STARTTLS"):
            r = Raw(srv.mx_port)
            r.cmd("EHLO c")
            r.cmd("MAIL FROM:<a@example.org>")
            r.cmd(f"RCPT TO:<jean.dupont@{DOMAIN}>")
            r.send(b"BDAT 3\r\nabc")
            assert r.reply()[0] == 250  # the transfer holds the only slot
            if ending == "disconnect":
                r.close()
                time.sleep(0.3)
            elif ending == "STARTTLS":
                r.starttls(srv.context())
                r.close()
            else:
                assert r.cmd("RSET")[0] == 250
                r.close()
            with srv.mx() as s:  # the slot is free again: no 451 after a 10 s wait
                assert s.sendmail("a@example.org", [f"jean.dupont@{DOMAIN}"], f"Subject: {ending}\r\n\r\nx\r\n".encode()) == {}
        assert count(srv, "jean.dupont") == 3
    finally:
        srv.stop()
