"""ManageSieve (RFC 5804): the parser and formatter without sockets, then a real
``mailstack managesieved`` driven by real clients (sievelib, sieve-connect)
and by raw sockets for what no polite client sends."""

from __future__ import annotations

import base64
import re
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from mailstack.config import ConfigError, load, parse
from mailstack.managesieve.protocol import (
    NEED_DATA, Atom, BadLine, Command, LiteralTooLarge, Parser, Reply, String, capability_lines, quoted, response,
    string, tag_code,
)
from tests.conftest import need, run_cli, wait_for
from tests.managesieve_server import PASSWORD, ManageSieveServer, make_server

# --- the parser --------------------------------------------------------------------------------------


def events(parser: Parser, data: bytes = b"") -> list:
    parser.feed(data)
    out = []
    while (e := parser.next_event()) is not NEED_DATA:
        out.append(e)
    return out


def test_atoms_quoted_strings_and_literals() -> None:
    got = events(Parser(max_literal=100), b'putScript "a\\"b\\\\c" {3+}\r\nabc\r\nHAVESPACE "x" 123\r\nlistscripts\r\n')
    assert got == [
        Command("PUTSCRIPT", (String(b'a"b\\c'), String(b"abc", literal=True))),
        Command("HAVESPACE", (String(b"x"), Atom("123"))),
        Command("LISTSCRIPTS", ()),
    ]
    # A synchronizing literal is read the same way (no continuation exists in ManageSieve).
    assert events(Parser(max_literal=100), b'CHECKSCRIPT {4}\r\nkeep\r\n') == [
        Command("CHECKSCRIPT", (String(b"keep", literal=True),))]
    # UTF-8 in a quoted string; an empty one; a literal holding CRLF and quotes.
    assert events(Parser(max_literal=100), 'SETACTIVE "règles"\r\nSETACTIVE ""\r\nX {6+}\r\n"\r\n\\\r\n\r\n'.encode()) == [
        Command("SETACTIVE", (String("règles".encode()),)),
        Command("SETACTIVE", (String(b""),)),
        Command("X", (String(b'"\r\n\\\r\n', literal=True),)),
    ]
    assert String("règles".encode()).text() == "règles"


def test_every_split_across_reads_gives_the_same_events() -> None:
    data = b'PUTSCRIPT "na\\"me" {10+}\r\nkeep;\r\nstop\r\nNOOP "t"\r\nLOGOUT\r\n'
    whole = events(Parser(max_literal=100), data)
    assert len(whole) == 3
    byte_by_byte = Parser(max_literal=100)
    got = []
    for i in range(len(data)):
        got += events(byte_by_byte, data[i:i + 1])
    assert got == whole
    for cut in range(1, len(data)):
        p = Parser(max_literal=100)
        assert events(p, data[:cut]) + events(p, data[cut:]) == whole, cut


@pytest.mark.parametrize("line,message", [
    (b"\x00\xff garbage\r\n", "unexpected byte 0x00"),
    (b"(((\r\n", "unexpected character '('"),
    (b'"QUOTED" first\r\n', "expected a command name"),
    (b"NOOP \xc3\xa9\r\n", "unexpected byte 0xc3"),
    (b'NOOP "a\\n"\r\n', "invalid quoted string"),
    (b'NOOP "a\rb"\r\n', "invalid quoted string"),
    (b"NOOP {12x}\r\n", "invalid literal"),
    (b"NOOP\rX\r\n", "CR without LF"),
    (b'NOOP "' + b"a" * 1025 + b'"\r\n', "invalid quoted string"),
    (b"NOOP " + b"a" * 1025 + b"\r\n", "atom longer than 1024 bytes"),
    (b"NOOP" + b" a" * 9 + b"\r\n", "too many arguments"),
    (b"NOOP " + b'"aaaaaaaaaa" ' * 800 + b"\r\n", "line too long"),
])
def test_garbage_is_one_bad_line_and_the_next_command_parses(line: bytes, message: str) -> None:
    p = Parser()
    got = events(p, line + b"NOOP\r\n")
    assert len(got) == 2 and isinstance(got[0], BadLine) and message in got[0].message, got
    assert got[1] == Command("NOOP", ())


def test_a_line_too_long_is_refused_before_its_end_arrives() -> None:
    p = Parser(max_line=100)
    assert events(p, b"NOOP " + b"x" * 200) == [BadLine("line too long")]
    assert events(p, b"y" * 10_000) == []  # dropped as it comes, nothing kept
    assert p.buffered == 0
    assert events(p, b"zz\r\nNOOP\r\n") == [Command("NOOP", ())]


def test_a_literal_over_the_bound_is_dropped_unread() -> None:
    p = Parser(max_literal=10)
    assert events(p, b'PUTSCRIPT "s" {5000+}\r\n' + b"x" * 100) == [LiteralTooLarge("PUTSCRIPT", 5000, 10)]
    assert p.buffered == 0
    assert events(p, b"x" * 4900) == []
    assert events(p, b' "rest of the line"\r\nNOOP\r\n') == [Command("NOOP", ())]
    # the bound may change between events (it grows after a login)
    p.max_literal = 5000
    assert events(p, b'X {5000+}\r\n' + b"y" * 5000 + b"\r\n") == [Command("X", (String(b"y" * 5000, literal=True),))]
    # a literal size that is not a number the RFC allows
    assert isinstance(events(Parser(), b"X {12345678901+}\r\n")[0], BadLine)


def test_sasl_replies_and_reset() -> None:
    p = Parser()
    assert events(p, b'AUTHENTICATE "PLAIN"\r\n') == [Command("AUTHENTICATE", (String(b"PLAIN"),))]
    p.expect_reply()
    assert events(p, b'{4+}\r\nAGFi\r\nNOOP\r\n') == [Reply(String(b"AGFi", literal=True)), Command("NOOP", ())]
    p.expect_reply()
    assert events(p, b'"*"\r\n') == [Reply(String(b"*"))]
    p.expect_reply()
    assert events(p, b"NOOP\r\nNOOP\r\n") == [BadLine("expected one string"), Command("NOOP", ())]
    p.feed(b"CAPABILITY\r\n")
    p.reset()  # what came in clear after STARTTLS
    assert events(p) == []
    assert events(p, b"\r\n\r\nNOOP\r\n") == [Command("NOOP", ())]  # empty lines are ignored


# --- the formatter -------------------------------------------------------------------------------------


def test_responses() -> None:
    assert response("OK") == b"OK\r\n"
    assert response("NO", 'a "b" \\c', "QUOTA/MAXSIZE") == b'NO (QUOTA/MAXSIZE) "a \\"b\\" \\\\c"\r\n'
    assert response("BYE", "two\r\nlines") == b"BYE {10}\r\ntwo\r\nlines\r\n"
    assert response("OK", "done", tag_code(b'my "tag"')) == b'OK (TAG "my \\"tag\\"") "done"\r\n'
    assert capability_lines([("SASL", ""), ("STARTTLS", None), ("VERSION", "1.0")]) == \
        b'"SASL" ""\r\n"STARTTLS"\r\n"VERSION" "1.0"\r\n'
    assert string("x" * 1025) == b"{1025}\r\n" + b"x" * 1025
    with pytest.raises(ValueError):
        quoted("a\nb")


@pytest.mark.parametrize("value", ["", "plain", 'quote " and \\ backslash', "règles été", "crlf\r\ninside", "nul\0", "x" * 3000])
def test_formatted_strings_parse_back_to_the_same_bytes(value: str) -> None:
    data = value.encode()
    assert events(Parser(max_literal=10_000), b"X " + string(data) + b"\r\n") == [
        Command("X", (String(data, literal=string(data).startswith(b"{")),))]


# --- configuration ---------------------------------------------------------------------------------------

MINIMAL = '[server]\ndomains = ["ac-normandie.fr"]\n'


def test_config_defaults_and_errors() -> None:
    cfg = parse(MINIMAL)
    ms = cfg.managesieve
    assert (ms.enabled, ms.workers, ms.timeout, ms.max_per_address) == (True, 1, 1800, 20)
    assert [(x.address, x.port, x.tls, x.proxy) for x in ms.listeners] == [("0.0.0.0", 4190, "starttls", False)]
    for text, message in [
        (MINIMAL + "[[imap.listeners]]\nport = 4190\n[[managesieve.listeners]]\nport = 4190\n",
         "managesieve.listeners[0]: 0.0.0.0 port 4190 is already used by another listener"),
        (MINIMAL + "[[managesieve.listeners]]\nport = 4190\ntls = 'none'\n",
         "managesieve.listeners[0].tls: expected one of 'starttls', 'implicit'"),
        (MINIMAL + "[[managesieve.listeners]]\nport = 4190\nproxy = true\n",
         "server.proxy_trusted: expected the networks of the load balancers (managesieve.listeners[0] has proxy = true)"),
        (MINIMAL + "[managesieve]\ntimeout = 1\n", "managesieve.timeout: expected a number from 10 to 86400"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse(text, "m.toml")
        assert message in str(e.value)


# --- a real daemon -------------------------------------------------------------------------------------


class Raw:
    """A ManageSieve client on a bare socket, for what real clients never send."""

    def __init__(self, sock: socket.socket):
        self.sock: socket.socket = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def response(self) -> tuple[list[bytes], bytes]:
        """The lines before the OK/NO/BYE line, and that line."""
        lines = []
        while not re.match(rb"(OK|NO|BYE)\b", line := self.line()):
            lines.append(line)
        return lines, line

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def starttls(self, srv: ManageSieveServer) -> list[bytes]:
        self.send(b"STARTTLS\r\n")
        assert self.response()[1].startswith(b"OK")
        assert not self.buf
        self.sock = srv.tls(self.sock)
        caps, ok = self.response()  # unasked, RFC 5804 §2.2
        assert ok.startswith(b"OK")
        return caps

    def login(self, user: str, password: str = PASSWORD) -> bytes:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
        return self.response()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ManageSieveServer]:
    srv = make_server(tmp_path_factory.mktemp("managesieve"), proxy=True, max_per_address=5)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def raw(server: ManageSieveServer) -> Iterator[Raw]:
    r = Raw(server.raw())
    caps, ok = r.response()
    assert ok.startswith(b"OK")
    yield r
    r.sock.close()


def test_capabilities_before_and_after_starttls(server: ManageSieveServer) -> None:
    r = Raw(server.raw())
    before, ok = r.response()
    assert ok == b'OK "mailstack ManageSieve ready"'
    assert before[:2] == [b'"IMPLEMENTATION" "mailstack"', b'"SASL" ""']  # no mechanism before TLS
    assert b'"STARTTLS"' in before and b'"VERSION" "1.0"' in before and b'"MAXREDIRECTS" "5"' in before
    sieve = next(x for x in before if x.startswith(b'"SIEVE"'))
    assert {"fileinto", "vacation", "variables", "envelope"} <= set(sieve.split(b'"')[3].decode().split())
    # STARTTLS with a command sent behind it in clear: that command is dropped, never run under TLS.
    r.send(b"STARTTLS\r\nCAPABILITY\r\n")
    assert r.response()[1] == b'OK "begin TLS negotiation now"'
    r.sock = server.tls(r.sock)
    r.buf = b""
    after, ok = r.response()
    assert ok == b'OK "TLS negotiation successful"'
    assert b'"SASL" "PLAIN"' in after and b'"STARTTLS"' not in after
    r.send(b'NOOP "after"\r\n')
    assert r.response() == ([], b'OK (TAG "after") "done"')  # the injected CAPABILITY never ran
    r.send(b"STARTTLS\r\n")
    assert r.response()[1] == b'NO "TLS is already active"'
    r.send(b"LOGOUT\r\n")
    assert r.response()[1].startswith(b"OK") and r.closed()


def test_authenticate_before_starttls_is_refused(raw: Raw, server: ManageSieveServer) -> None:
    login = server.add_user("Avant", "Tls")
    raw.send(b'AUTHENTICATE "PLAIN" "' + base64.b64encode(f"\0{login}\0{PASSWORD}".encode()) + b'"\r\n')
    assert raw.response()[1] == b'NO (ENCRYPT-NEEDED) "start TLS first (STARTTLS)"'
    raw.send(b"LISTSCRIPTS\r\n")
    assert raw.response()[1] == b'NO "LISTSCRIPTS: authenticate first"'
    assert f"user={login}" not in server.log_path.read_text()  # no password was even checked


def test_bad_password_is_refused_and_counted(raw: Raw, server: ManageSieveServer) -> None:
    from mailstack.accounts.directory import Directory

    login = server.add_user("Mauvais", "Passe")
    raw.starttls(server)
    assert raw.login(login, "wrong#Password1") == b'NO "authentication failed"'
    # the continuation form: an empty challenge, the answer as a literal
    raw.send(b'AUTHENTICATE "PLAIN"\r\n')
    assert raw.line() == b'""'
    token = base64.b64encode(f"\0{login}\0also#Wrong2".encode())
    raw.send(b"{%d+}\r\n%s\r\n" % (len(token), token))
    assert raw.response()[1] == b'NO "authentication failed"'
    raw.send(b'AUTHENTICATE "PLAIN"\r\n')
    assert raw.line() == b'""'
    raw.send(b'"*"\r\n')
    assert raw.response()[1] == b'NO "authentication cancelled"'
    raw.send(b'AUTHENTICATE "DIGEST-MD5"\r\n')
    assert raw.response()[1] == b'NO "unsupported SASL mechanism DIGEST-MD5: use PLAIN"'
    lines = [x for x in server.log_path.read_text().splitlines() if f"user={login} " in x and "mailstack.auth: auth" in x]
    assert len(lines) == 2, lines
    assert all(re.search(r"auth service=managesieve session=m\d+-\d+ client=127\.0\.0\.1 outcome=bad-credentials", x)
               for x in lines), lines
    d = Directory(load(server.config))
    try:
        with d.sessions() as s:
            assert d.throttle.failures(s, "account", login) == 2
    finally:
        d.engine.dispose()
    assert raw.login(login) == b'OK "logged in"'  # and the right password still works


def test_sievelib_every_command(server: ManageSieveServer, monkeypatch) -> None:
    try:
        from sievelib.managesieve import Client
    except ImportError:
        need(False, "sievelib (pip install sievelib)")
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cafile))  # sievelib trusts the default store only
    login = server.add_user("Sophie", "Filtre")
    c = Client("localhost", server.port)
    assert c.connect(login, PASSWORD, starttls=True)
    assert c.get_implementation() == "mailstack"
    assert c.get_sasl_mechanisms() == ["PLAIN"] and not c.has_tls_support()  # the capabilities after TLS
    assert "fileinto" in c.get_sieve_capabilities()
    assert b'"VERSION" "1.0"' in c.capability()

    good = 'require "fileinto";\nif header :contains "subject" "[liste]" {\n  fileinto "Listes";\n}\n'
    assert c.havespace("tri", len(good))
    assert not c.havespace("tri", 10**6) and c.errcode == b"QUOTA/MAXSIZE"
    assert c.putscript("tri", good)
    assert not c.putscript("mauvais", 'keep;\nfileinto "Junk";\n')
    assert c.errmsg.startswith(b'line 2, column 1: missing require "fileinto"'), c.errmsg
    assert not c.putscript(".cache", "keep;") and b"cannot start with '.'" in c.errmsg

    assert c.listscripts() == (None, ["tri"])
    assert c.setactive("tri") and c.listscripts() == ("tri", [])
    assert c.getscript("tri") == good  # sievelib gives LF line ends back
    assert c.renamescript("tri", "principal")  # the active one: it stays active
    assert c.listscripts() == ("principal", [])
    account = server.account_dir(login)
    assert (account / "sieve" / "principal.sieve").read_bytes() == good.replace("\n", "\r\n").encode()
    assert (account / ".dovecot.sieve").is_symlink()
    assert str((account / ".dovecot.sieve").readlink()) == "sieve/principal.sieve"
    assert not c.renamescript("absent", "x") and c.errcode == b"NONEXISTENT"
    assert c.putscript("autre", "keep;")
    assert not c.renamescript("autre", "principal") and c.errcode == b"ALREADYEXISTS"
    assert not c.deletescript("principal") and c.errcode == b"ACTIVE"
    assert c.getscript("absent") is None and c.errcode == b"NONEXISTENT"
    assert c.checkscript("keep;")
    assert not c.checkscript("if true {\n  kep;\n}\n") and c.errmsg.startswith(b"line 2, column 3: unknown command 'kep'")
    assert c.setactive("") and c.listscripts() == (None, ["autre", "principal"])
    assert not (account / ".dovecot.sieve").exists()
    assert c.deletescript("principal") and c.listscripts() == (None, ["autre"])
    assert not (account / "sieve" / "principal.sieve").exists()

    # QUOTA/MAXSCRIPTS: fill the account up to its limit
    n = 1
    while c.putscript(f"s{n}", "keep;"):
        n += 1
        assert n < 200
    assert c.errcode == b"QUOTA/MAXSCRIPTS"
    assert not c.havespace("one-more", 10) and c.errcode == b"QUOTA/MAXSCRIPTS"
    assert c.havespace("s1", 10)  # replacing one is fine
    c.logout()
    log = server.log_path.read_text()
    assert re.search(rf"session=m\d+-\d+ login user={login} client=127\.0\.0\.1", log)
    assert re.search(rf"session=m\d+-\d+ renamescript user={login} name='tri' new='principal'", log)


def test_includes_of_scripts_not_yet_uploaded_are_accepted(server: ManageSieveServer, monkeypatch) -> None:
    """RFC 6609 §3.2: a missing included script is a matter for delivery, not
    for PUTSCRIPT/CHECKSCRIPT; a script the active one includes may be deleted."""
    try:
        from sievelib.managesieve import Client
    except ImportError:
        need(False, "sievelib (pip install sievelib)")
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cafile))
    login = server.add_user("Ines", "Inclusion")
    c = Client("localhost", server.port)
    assert c.connect(login, PASSWORD, starttls=True)
    assert "include" in c.get_sieve_capabilities()
    main = 'require "include";\ninclude :personal "classes";\ninclude :global :optional "site";\n'
    assert c.checkscript(main)
    assert c.putscript("main", main) and c.setactive("main")
    assert c.listscripts() == ("main", [])
    assert c.putscript("classes", 'require "fileinto";\nfileinto "Classes";\n')
    assert c.deletescript("classes") and c.listscripts() == ("main", [])
    assert not c.putscript("bad", 'require "include";\ninclude "../../etc/passwd";\n')
    assert c.errmsg.startswith(b'line 2, column 9: bad script name "../../etc/passwd"'), c.errmsg
    assert not c.checkscript('include "classes";\n') and b'missing require "include"' in c.errmsg, c.errmsg
    c.logout()


def test_sieve_connect_upload_list_activate_download_delete(server: ManageSieveServer, tmp_path: Path) -> None:
    need(shutil.which("sieve-connect") is not None, "sieve-connect (Debian package sieve-connect)")
    login = server.add_user("Paul", "Connecte")
    script = tmp_path / "vacances.sieve"
    script.write_text('require ["vacation"];\nvacation :days 7 "Absent jusqu\'au 3.";\n')

    def sc(*action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sieve-connect", "--nosrv", "--server", "localhost", "--port", str(server.port), "--user", login,
             "--passwordfd", "0", "--tlscafile", str(server.cafile), "--noclearauth", *action],
            input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, cwd=tmp_path)

    r = sc("--upload", "--localsieve", str(script), "--remotesieve", "vacances")
    assert r.returncode == 0, r.stderr
    stored = server.account_dir(login) / "sieve" / "vacances.sieve"
    assert stored.read_bytes() == script.read_bytes()
    r = sc("--activate", "--remotesieve", "vacances")
    assert r.returncode == 0, r.stderr
    assert str((server.account_dir(login) / ".dovecot.sieve").readlink()) == "sieve/vacances.sieve"
    r = sc("--list")
    assert r.returncode == 0 and r.stdout.splitlines() == ['"vacances" ACTIVE'], r.stdout + r.stderr
    r = sc("--download", "--remotesieve", "vacances", "--localsieve", str(tmp_path / "back.sieve"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.sieve").read_bytes() == script.read_bytes()
    r = sc("--delete", "--remotesieve", "vacances")
    assert r.returncode != 0 and "NO (ACTIVE)" in r.stderr  # the active script stays
    r = sc("--deactivate")
    assert r.returncode == 0, r.stderr
    r = sc("--delete", "--remotesieve", "vacances")
    assert r.returncode == 0, r.stderr
    assert not stored.exists() and sc("--list").stdout.strip() == ""
    bad = tmp_path / "bad.sieve"
    bad.write_text("if true {\n  stop\n}\n")
    r = sc("--upload", "--localsieve", str(bad), "--remotesieve", "bad")
    assert r.returncode != 0 and "NO \"line 2, column 7: missing ';' after 'stop'" in r.stderr, r.stderr


def test_oversized_literals(raw: Raw, server: ManageSieveServer) -> None:
    # Before a login, any literal over 8 KiB: refused, dropped, the session goes on.
    raw.send(b'PUTSCRIPT "x" {20000+}\r\n' + b"x" * 20000 + b"\r\nNOOP\r\n")
    assert raw.response()[1] == b'NO "a string has at most 8192 bytes here"'
    assert raw.response()[1] == b'OK "done"'
    login = server.add_user("Gros", "Script")
    raw.starttls(server)
    assert raw.login(login) == b'OK "logged in"'
    raw.send(b'PUTSCRIPT "big" {70000+}\r\n' + b"#" * 70000 + b"\r\nNOOP\r\n")
    assert raw.response()[1] == b'NO (QUOTA/MAXSIZE) "a script has at most 65536 bytes"'
    assert raw.response()[1] == b'OK "done"'
    assert not (server.account_dir(login) / "sieve" / "big.sieve").exists()
    # A huge one is not worth receiving: BYE at once, before any of its bytes.
    raw.send(b'PUTSCRIPT "huge" {4000000000+}\r\n')
    assert raw.response()[1] == b'BYE (QUOTA/MAXSIZE) "a script has at most 65536 bytes"'
    assert raw.closed()


def test_garbage_then_a_valid_command(raw: Raw) -> None:
    raw.send(b"\x00\xff\xfe garbage (((\r\n")
    assert raw.response()[1] == b'NO "syntax error: unexpected byte 0x00"'
    raw.send(b"BOGUS\r\nPUTSCRIPT\r\nNOOP 12\r\nCAPABILITY\r\n")
    assert raw.response()[1] == b'NO "unknown command BOGUS"'
    assert raw.response()[1] == b'NO "PUTSCRIPT: authenticate first"'
    assert raw.response()[1] == b'NO "syntax: NOOP [\\"tag\\"]"'
    caps, ok = raw.response()
    assert ok == b'OK "capability completed"' and caps[0] == b'"IMPLEMENTATION" "mailstack"'


def test_too_many_errors_end_with_bye(raw: Raw, server: ManageSieveServer) -> None:
    raw.send(b"BOGUS\r\n" * 25)
    for _ in range(20):
        assert raw.response()[1] == b'NO "unknown command BOGUS"'
    assert raw.response()[1] == b'BYE "too many errors"'
    assert raw.closed()
    assert wait_for(lambda: "client=127.0.0.1 too many errors; disconnecting" in server.log_path.read_text())


def test_connections_per_address_are_limited(server: ManageSieveServer) -> None:
    held = [Raw(server.raw()) for _ in range(5)]
    try:
        for r in held:
            assert r.response()[1].startswith(b"OK")
        extra = Raw(server.raw())
        assert extra.response() == ([], b'BYE (TRYLATER) "too many connections from your address"')
        assert extra.closed()
    finally:
        for r in held:
            r.sock.close()
    # the slots come back once those close
    assert wait_for(lambda: _greets(server))


def _greets(server: ManageSieveServer) -> bool:
    with server.raw() as s:
        r = Raw(s)
        return r.response()[1].startswith(b"OK")


def test_connect_disconnect_log_lines(server: ManageSieveServer) -> None:
    login = server.add_user("Line", "Journal")
    r = Raw(server.raw())
    r.response()
    r.starttls(server)
    assert r.login(login) == b'OK "logged in"'
    r.send(b"LOGOUT\r\n")
    assert r.response()[1] == b'OK "logout completed"' and r.closed()

    def disconnected() -> str | None:
        log = server.log_path.read_text()
        m = re.search(rf"session=(m\d+-\d+) login user={login} client=127\.0\.0\.1", log)
        if m and f"session={m.group(1)} disconnect user={login}" in log:
            return m.group(1)
        return None

    assert wait_for(lambda: disconnected() is not None)
    sid = disconnected()
    log = server.log_path.read_text()
    assert re.search(rf"session={sid} connect client=127\.0\.0\.1 port={server.port} tls=starttls", log)
    assert f"session={sid} client=127.0.0.1 starttls" in log


def test_proxy_listener_takes_the_client_from_the_header(server: ManageSieveServer) -> None:
    assert server.proxy_port
    with socket.create_connection(("127.0.0.1", server.proxy_port), timeout=30) as s:
        s.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 4190\r\n")
        r = Raw(s)
        assert r.response()[1].startswith(b"OK")
        r.send(b"LOGOUT\r\n")
        assert r.response()[1].startswith(b"OK")
    assert wait_for(lambda: f"connect client=203.0.113.7 port={server.proxy_port}" in server.log_path.read_text())


def test_running_daemon_passes_mailstack_check(server: ManageSieveServer) -> None:
    r = run_cli("check", config=server.config)
    assert f"managesieve 127.0.0.1:{server.port}: mailstack answers" in r.stdout, r.stdout + r.stderr


def test_sighup_reloads_and_sessions_go_on(server: ManageSieveServer) -> None:
    r = Raw(server.raw())
    r.response()
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload: certificate" in server.log_path.read_text())
    r.send(b"NOOP\r\n")
    assert r.response()[1] == b'OK "done"'
    r.sock.close()


def test_idle_sessions_are_disconnected(tmp_path: Path) -> None:
    srv = make_server(tmp_path, timeout=10)
    srv.start()
    try:
        r = Raw(srv.raw())
        r.sock.settimeout(60)
        r.response()
        assert r.response() == ([], b'BYE "idle for too long, disconnecting"')
        assert r.closed()
    finally:
        srv.stop()
    assert "idle for too long; disconnecting" in srv.log_path.read_text()
    assert "stopping pid=" in srv.log_path.read_text()


def test_sigterm_says_bye_to_open_sessions(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    srv.start()
    try:
        r = Raw(srv.raw())
        r.response()
        srv.proc.send_signal(signal.SIGTERM)
        assert r.response() == ([], b'BYE (TRYLATER) "server shutting down"')
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()
