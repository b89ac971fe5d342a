"""The ClamAV adapter against a real clamd (tests/clamd.py), over its Unix socket and TCP."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
from pathlib import Path
from typing import BinaryIO

import pytest

from mailstack.filters import Envelope, FilterError, Verdict
from mailstack.filters.clamav import DEFAULT_MAX_SIZE, ClamAV, ClamdError, parse_reply, ping
from tests.clamd import EICAR, SIGNATURE, STREAM_MAX, Clamd, clamd  # noqa: F401
from tests.conftest import free_port
from tests.smtp_server import DOMAIN, make_server

ENVELOPE = Envelope("q1", "mx", "127.0.0.1", "client.example.org", None, "a@example.org", (f"jean.dupont@{DOMAIN}",))
FOUND = f"550 5.7.1 Virus found: {SIGNATURE}.UNOFFICIAL"


class _Reads:
    """A file that records every read request, to check the adapter reads in chunks."""

    def __init__(self, f: BinaryIO, sizes: list[int]):
        self._f, self._sizes = f, sizes

    def read(self, n: int = -1) -> bytes:
        self._sizes.append(n)
        return self._f.read(n)

    def __enter__(self) -> _Reads:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


class FileMessage:
    """A spooled message (mailstack.filters.Message) backed by a file."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        self.reads: list[int] = []

    def open(self) -> _Reads:
        return _Reads(open(self.path, "rb"), self.reads)


def message(tmp_path: Path, data: bytes, name: str = "msg.eml") -> FileMessage:
    (tmp_path / name).write_bytes(data)
    return FileMessage(tmp_path / name)


def scan(options: dict, msg: FileMessage) -> Verdict:
    return asyncio.run(ClamAV(options).check(msg, ENVELOPE))


@pytest.fixture(params=["unix", "tcp"])
def where(request, clamd: Clamd) -> dict:  # noqa: F811
    """The adapter's options for the running clamd, once per transport."""
    return {"socket": clamd.socket} if request.param == "unix" else {"host": "127.0.0.1", "port": clamd.port}


PLAIN = b"From: a@example.org\r\nTo: jean.dupont@ac-normandie.test\r\nSubject: test\r\n\r\n" + EICAR + b"\r\n"
CLEAN = b"From: a@example.org\r\nTo: jean.dupont@ac-normandie.test\r\nSubject: hello\r\n\r\nNothing to see here.\r\n"


def mime_attachment(payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        b"From: a@example.org\r\nTo: jean.dupont@ac-normandie.test\r\nSubject: devoirs\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nCi-joint.\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=\"devoir.com\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b1--\r\n"
    )


# --- verdicts from a real clamd -------------------------------------------------------


def test_eicar_in_a_plain_body_is_refused_with_the_virus_name(tmp_path: Path, where: dict) -> None:
    v = scan(where, message(tmp_path, PLAIN))
    assert v.action == "reject"
    assert v.reply == FOUND
    assert v.reason.startswith(SIGNATURE)


def test_eicar_as_a_base64_attachment_is_refused(tmp_path: Path, where: dict) -> None:
    """The raw stream does not hold the EICAR bytes: clamd found them by decoding the MIME part."""
    data = mime_attachment(EICAR)
    assert EICAR not in data
    v = scan(where, message(tmp_path, data))
    assert v.action == "reject" and v.reply == FOUND


def test_clean_message_is_accepted(tmp_path: Path, where: dict) -> None:
    assert scan(where, message(tmp_path, CLEAN)) == Verdict.accept()
    assert scan(where, message(tmp_path, mime_attachment(b"harmless bytes\r\n" * 100))) == Verdict.accept()


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_clean_99_mb_message_is_accepted_in_chunks_with_small_memory(tmp_path: Path, where: dict) -> None:
    path = tmp_path / "big.eml"
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    block = line * (1024 * 1024 // len(line))
    with open(path, "wb") as f:
        f.write(b"From: a@example.org\r\nTo: jean.dupont@ac-normandie.test\r\nSubject: big\r\n\r\n")
        while f.tell() < 99 * 1024 * 1024:
            f.write(block)
    del block
    msg = FileMessage(path)
    assert 99 * 1024 * 1024 <= msg.size < DEFAULT_MAX_SIZE
    _peak_rss_reset()
    before = _peak_rss()
    v = scan(where, msg)
    growth = _peak_rss() - before
    assert v == Verdict.accept()
    assert growth < 30 * 1024 * 1024, f"peak RSS grew by {growth / 1e6:.1f} MB"
    assert len(msg.reads) > 1000 and all(0 < n <= 65536 for n in msg.reads)


# --- failures raise: the pipeline applies `fail` (tempfail by default) -----------------


def test_default_fail_is_tempfail() -> None:
    f = ClamAV({})
    assert (f.name, f.default_fail, f.socket) == ("clamav", "tempfail", "/run/clamav/clamd.ctl")
    assert f.max_size == 104857600 + 1024 * 1024 and f.chunk == 65536


def test_clamd_down_on_tcp_raises(tmp_path: Path) -> None:
    with pytest.raises(ClamdError, match="cannot connect"):
        scan({"host": "127.0.0.1", "port": free_port()}, message(tmp_path, CLEAN))


def test_clamd_down_on_unix_socket_raises(tmp_path: Path) -> None:
    """A socket file left behind by a dead clamd refuses connections; a missing one too."""
    stale = tmp_path / "clamd.ctl"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: connect() gets ECONNREFUSED
        with pytest.raises(ClamdError, match="cannot connect"):
            scan({"socket": str(stale)}, message(tmp_path, CLEAN))
    with pytest.raises(ClamdError, match="cannot connect"):
        scan({"socket": str(tmp_path / "absent.ctl")}, message(tmp_path, CLEAN))


def test_stopped_clamd_raises(tmp_path: Path, clamd: Clamd) -> None:  # noqa: F811
    """A second private clamd, scanned once, then stopped: connection refused."""
    other = Clamd(clamd.binary)
    other.start()
    try:
        for options in ({"socket": other.socket}, {"host": "127.0.0.1", "port": other.port}):
            assert scan(options, message(tmp_path, CLEAN)) == Verdict.accept()
    finally:
        other.stop(keep=True)
    try:
        for options in ({"socket": other.socket}, {"host": "127.0.0.1", "port": other.port}):
            with pytest.raises(ClamdError, match="cannot connect"):
                scan(options, message(tmp_path, CLEAN))
    finally:
        other.stop()


def test_message_over_max_size_is_not_sent(tmp_path: Path, where: dict) -> None:
    msg = message(tmp_path, CLEAN + b"x" * 5000)
    with pytest.raises(ClamdError, match="max_size"):
        scan({**where, "max_size": 4096}, msg)
    assert msg.reads == []


def test_message_that_grows_past_max_size_is_not_sent_whole(tmp_path: Path, where: dict) -> None:
    msg = message(tmp_path, CLEAN + b"x" * 5000)
    msg.size = 100  # the spool's word; the bytes are checked as they are sent too
    with pytest.raises(ClamdError, match="grew past max_size"):
        scan({**where, "max_size": 4096, "chunk": 1024}, msg)


def test_clamd_stream_limit_error_raises(tmp_path: Path, where: dict) -> None:
    """Past clamd's StreamMaxLength it answers "INSTREAM size limit exceeded. ERROR" and hangs up."""
    path = tmp_path / "huge.eml"
    with open(path, "wb") as f:
        f.write(CLEAN)
        f.truncate(STREAM_MAX + 4 * 1024 * 1024)  # sparse: zeros that cost no disk
    with pytest.raises(ClamdError, match="size limit exceeded"):
        scan({**where, "max_size": 1 << 30}, FileMessage(path))


def test_ping(clamd: Clamd) -> None:  # noqa: F811
    asyncio.run(ping(socket=clamd.socket))
    asyncio.run(ping(host="127.0.0.1", port=clamd.port))
    with pytest.raises(ClamdError):
        asyncio.run(ping(host="127.0.0.1", port=free_port()))


def test_replies_are_parsed_and_names_sanitized() -> None:
    assert parse_reply(b"stream: OK\0") == Verdict.accept()
    v = parse_reply(b"stream: Win.Test.EICAR_HDB-1(44d88612fea8a8f36de82e1278abb02f:68) FOUND\0")
    assert v.reply == "550 5.7.1 Virus found: Win.Test.EICAR_HDB-1"
    assert v.reason == "Win.Test.EICAR_HDB-1(44d88612fea8a8f36de82e1278abb02f:68)"
    v = parse_reply(b"stream: Evil\r\n250 OK\x1b[0m" + b"A" * 500 + b" FOUND\0")
    assert v.action == "reject" and v.reply.startswith("550 5.7.1 Virus found: Evil??250 OK?[0m")
    assert all(" " <= c <= "~" for c in v.reply) and len(v.reply) <= len("550 5.7.1 Virus found: ") + 128
    for bad in (b"INSTREAM size limit exceeded. ERROR\0", b"stream: Can't allocate memory ERROR\0", b"UNKNOWN COMMAND\0", b""):
        with pytest.raises(ClamdError):
            parse_reply(bad)


@pytest.mark.parametrize(
    "options, word",
    [
        ({"sockets": "/run/clamav/clamd.ctl"}, "sockets"),
        ({"socket": "clamd.ctl"}, "socket"),
        ({"socket": 3310}, "socket"),
        ({"socket": "/" + "x" * 120}, "socket"),
        ({"socket": "/run/clamav/clamd.ctl", "host": "127.0.0.1"}, "socket"),
        ({"port": 3310}, "port"),
        ({"host": ""}, "host"),
        ({"host": "a b"}, "host"),
        ({"host": "127.0.0.1", "port": 0}, "port"),
        ({"host": "127.0.0.1", "port": "3310"}, "port"),
        ({"host": "127.0.0.1", "port": True}, "port"),
        ({"chunk": 0}, "chunk"),
        ({"chunk": 65536.0}, "chunk"),
        ({"max_size": -1}, "max_size"),
        ({"max_size": "100M"}, "max_size"),
    ],
)
def test_bad_options_are_refused_in_one_line(options: dict, word: str) -> None:
    with pytest.raises(FilterError) as e:
        ClamAV(options)
    assert word in str(e.value) and "\n" not in str(e.value)


# --- end to end: a real `mailstack smtpd` with the clamav filter ------------------------


def test_smtpd_refuses_eicar_at_end_of_data_and_tempfails_when_clamd_is_down(tmp_path: Path, clamd: Clamd) -> None:  # noqa: F811
    rcpt = f"jean.dupont@{DOMAIN}"
    for port, expected in ((clamd.port, (550, b"5.7.1 Virus found: " + SIGNATURE.encode())), (free_port(), (451, b"4.7.1"))):
        srv = make_server(tmp_path / str(port), extra=f'\n[[filters]]\nname = "clamav"\noptions = {{ host = "127.0.0.1", port = {port} }}\n')
        srv.add_user("Jean", "Dupont")
        srv.start()
        try:
            with srv.mx() as s:
                with pytest.raises(smtplib.SMTPDataError) as e:
                    s.sendmail("a@example.org", [rcpt], mime_attachment(EICAR))
                assert e.value.smtp_code == expected[0] and e.value.smtp_error.startswith(expected[1])
                if port == clamd.port:  # the same session goes on: a clean message is delivered
                    assert s.sendmail("a@example.org", [rcpt], CLEAN) == {}
            delivered = srv.messages("jean.dupont")
            assert all(EICAR not in m and b"devoir.com" not in m for m in delivered)
            assert len(delivered) == (1 if port == clamd.port else 0)
        finally:
            srv.stop()
