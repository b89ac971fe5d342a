"""PROXY protocol: the pure parser, then real daemons behind a real HAProxy.

The daemons (``mailstack imapd`` and ``smtpd`` on one dev home) listen with
``proxy = true`` and trust 127.0.0.1/32 only.  HAProxy (Debian's) runs
config/haproxy/haproxy.cfg rendered with loopback addresses and free ports;
the test clients connect to it from 127.0.0.2, so the client the daemons
must see (127.0.0.2) is not HAProxy's own address (127.0.0.1).
"""

from __future__ import annotations

import csv
import imaplib
import io
import re
import shutil
import smtplib
import socket
import sqlite3
import ssl
import struct
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailstack.config import ConfigError, parse
from mailstack.proxyproto import NEED_MORE, V2_SIGNATURE, Header, HeaderReader, ProxyError, Trusted
from mailstack.proxyproto import parse as parse_header
from tests.conftest import REPO, free_port, need, wait_for

HAPROXY_EXAMPLE = REPO / "config" / "haproxy" / "haproxy.cfg"
CLIENT = "127.0.0.2"  # the real client, as HAProxy sees it
STRANGER = "127.0.0.3"  # a direct connection from outside proxy_trusted
HAPROXY_BIN = shutil.which("haproxy") or next((p for p in ["/usr/sbin/haproxy"] if Path(p).exists()), None)


# --- the parser ----------------------------------------------------------------------------


def v2(command: int = 1, fam: int = 0x11, block: bytes = b"", version: int = 2, length: int | None = None) -> bytes:
    n = len(block) if length is None else length
    return V2_SIGNATURE + bytes([version << 4 | command, fam]) + struct.pack("!H", n) + block


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    pack = lambda a: socket.inet_pton(socket.AF_INET6, a)  # noqa: E731
    return pack(src) + pack(dst) + struct.pack("!HH", sport, dport)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


@pytest.mark.parametrize(
    "data,source,dest",
    [
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\r\n", ("192.0.2.1", 56324), ("198.51.100.2", 993)),
        (b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n", ("255.255.255.255", 65535), ("0.0.0.0", 0)),
        (b"PROXY TCP6 2001:db8::1 2001:DB8::2 1 25\r\n", ("2001:db8::1", 1), ("2001:db8::2", 25)),
        (b"PROXY TCP6 ::ffff:192.0.2.9 ::1 40000 465\r\n", ("192.0.2.9", 40000), ("::1", 465)),
        (b"PROXY UNKNOWN\r\n", None, None),
        (b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n", None, None),
    ],
)
def test_v1(data: bytes, source, dest) -> None:
    h = parse_header(data + b"A1 LOGIN")
    assert h == Header(1, source, dest, len(data))


@pytest.mark.parametrize(
    "block,fam,command,source,dest",
    [
        (inet4("192.0.2.1", "10.0.0.11", 40000, 993), 0x11, 1, ("192.0.2.1", 40000), ("10.0.0.11", 993)),
        (inet6("2001:db8::7", "2001:db8::1", 1, 25), 0x21, 1, ("2001:db8::7", 1), ("2001:db8::1", 25)),
        (inet6("::ffff:192.0.2.1", "::ffff:10.0.0.1", 2, 3), 0x21, 1, ("192.0.2.1", 2), ("10.0.0.1", 3)),
        # LOCAL (a health check): the connection's own endpoints, whatever the block says.
        (b"", 0x00, 0, None, None),
        (inet4("192.0.2.1", "10.0.0.11", 1, 2), 0x11, 0, None, None),
        # PROXY with AF_UNSPEC, AF_UNIX or UDP: fall back to the connection's endpoints.
        (b"", 0x00, 1, None, None),
        (bytes(216), 0x31, 1, None, None),
        (inet4("192.0.2.1", "10.0.0.11", 1, 2), 0x12, 1, None, None),
    ],
)
def test_v2(block: bytes, fam: int, command: int, source, dest) -> None:
    data = v2(command, fam, block)
    assert parse_header(data + b"\x16\x03\x01") == Header(2, source, dest, len(data))


def test_v2_tlvs_are_skipped() -> None:
    tlvs = tlv(0x05, b"unique-id") + tlv(0x04, b"") + tlv(0x20, b"\x01" + bytes(4) + tlv(0x21, b"TLSv1.3"))
    data = v2(1, 0x11, inet4("192.0.2.1", "10.0.0.11", 5, 6) + tlvs)
    assert parse_header(data) == Header(2, ("192.0.2.1", 5), ("10.0.0.11", 6), len(data))


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\r\n",
        v2(1, 0x21, inet6("2001:db8::7", "2001:db8::1", 1, 25) + tlv(0xE0, b"x" * 300)),
    ],
)
def test_split_byte_by_byte_and_what_follows_is_kept(data: bytes) -> None:
    reader = HeaderReader()
    after = b"\x16\x03\x01\x02\x00 ClientHello..."
    stream = data + after
    for i, byte in enumerate(stream[: len(data) - 1]):
        assert reader.feed(bytes([byte])) is NEED_MORE, i
    header = reader.feed(stream[len(data) - 1 :])
    assert isinstance(header, Header) and header.length == len(data)
    assert reader.rest == after
    assert parse_header(data[:-1]) is NEED_MORE


@pytest.mark.parametrize(
    "data,why",
    [
        (b"EHLO client.example\r\n", "no PROXY"),
        (b"\x16\x03\x01\x00\xa5\x01", "no PROXY"),  # a TLS ClientHello: not behind a proxy
        (b"GET / HTTP/1.1\r\n", "no PROXY"),
        (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "no PROXY"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "bare CR/LF"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX\r\n", "bare CR/LF"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX", "bare CR/LF"),
        (b"PROXY TCP4 1.2.3.4\x00 1.2.3.4 1 2\r\n", "control character"),
        (b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", "not 'PROXY"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", "not 'PROXY"),
        (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "not 'PROXY"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "not 'PROXY"),
        (b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", "not an IPv4"),
        (b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n", "not an IPv4"),
        (b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n", "not an IPv4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "scope id"),
        (b"PROXY TCP6 2001:db8::12345 ::1 1 2\r\n", "not an IPv6"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 \xd9\xa1 2\r\n", "control character"),
        (b"PROXY UNKNOWN " + b"f" * 100 + b"\r\n", "without CRLF"),
        (b"PROXY " + b"A" * 200, "without CRLF"),
        (V2_SIGNATURE[:11] + b"X" + bytes(8), "no PROXY"),
        (v2(version=1), "version 1"),
        (v2(command=2), "unknown command"),
        (v2(fam=0x41), "unknown family"),
        (v2(fam=0x13), "unknown family"),
        (v2(1, 0x11, bytes(8)), "needs 12"),
        (v2(1, 0x21, inet4("1.2.3.4", "1.2.3.4", 1, 2)), "needs 36"),
        (v2(1, 0x11, inet4("1.2.3.4", "1.2.3.4", 1, 2) + b"\x05\x00"), "TLV truncated"),
        (v2(1, 0x11, inet4("1.2.3.4", "1.2.3.4", 1, 2) + b"\x05\x00\x09abc"), "TLV longer"),
        (v2(1, 0x11, length=5000), "at most"),
    ],
)
def test_hostile_input_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ProxyError, match=re.escape(why)):
        parse_header(data)


def test_garbage_fails_at_its_first_byte_and_truncation_waits() -> None:
    with pytest.raises(ProxyError):
        HeaderReader().feed(b"E")
    assert parse_header(b"PRO") is NEED_MORE
    assert parse_header(b"PROXY TCP4 1.2.3.4") is NEED_MORE
    assert parse_header(V2_SIGNATURE[:5]) is NEED_MORE
    assert parse_header(v2(1, 0x11, inet4("1.2.3.4", "1.2.3.4", 1, 2))[:-1]) is NEED_MORE


def test_trusted_networks() -> None:
    t = Trusted(["127.0.0.1/32", "10.0.0.0/24", "2001:db8::/64"])
    assert "127.0.0.1" in t and "10.0.0.200" in t and "2001:db8::5" in t and "::ffff:10.0.0.3" in t
    assert "127.0.0.2" not in t and "10.0.1.1" not in t and "2001:db8:1::5" not in t and "bogus" not in t
    assert "127.0.0.1" not in Trusted([])


MINIMAL = '[server]\ndomains = ["ac-normandie.fr"]\n'


@pytest.mark.parametrize(
    "text,message",
    [
        (MINIMAL + "[[imap.listeners]]\nport = 993\nproxy = true\n",
         "server.proxy_trusted: expected the networks of the load balancers (imap.listeners[0] has proxy = true)"),
        (MINIMAL + "[[smtp.listeners]]\nport = 25\nproxy = true\n",
         "server.proxy_trusted: expected the networks of the load balancers (smtp.listeners[0] has proxy = true)"),
        ('[server]\ndomains = ["a.fr"]\nproxy_trusted = ["10.0.0.1/24"]\n', "server.proxy_trusted: expected networks in CIDR form"),
        ('[server]\ndomains = ["a.fr"]\nproxy_trusted = ["haproxy"]\n', "server.proxy_trusted: expected networks in CIDR form"),
        (MINIMAL + "[[imap.listeners]]\nport = 993\nproxy = 'yes'\n", "imap.listeners[0].proxy: expected true or false"),
    ],
)
def test_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text, "mailstack.toml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_accepts_proxy_listeners() -> None:
    cfg = parse(
        '[server]\ndomains = ["a.fr"]\nproxy_trusted = ["10.0.0.0/24", "2001:db8::/64"]\n'
        "[[imap.listeners]]\nport = 993\nproxy = true\n[[smtp.listeners]]\nport = 25\n",
        "mailstack.toml",
    )
    assert cfg.imap.listeners[0].proxy and not cfg.smtp.listeners[0].proxy
    assert cfg.server.proxy_trusted == ["10.0.0.0/24", "2001:db8::/64"]


# --- real daemons ---------------------------------------------------------------------------


def behind_proxy(config: str) -> str:
    """A dev home's configuration with every IMAP and SMTP listener behind
    the PROXY protocol, trusting 127.0.0.1 only."""
    lines, table = [], ""
    for line in config.splitlines():
        lines.append(line)
        if line.startswith("["):
            table = line
        if table == "[server]" and line == table:
            lines.append('proxy_trusted = ["127.0.0.1/32"]')
        elif table in ("[[imap.listeners]]", "[[smtp.listeners]]") and line.startswith("tls = "):
            lines.append("proxy = true")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    """smtpd and imapd on one dev home, every listener behind the PROXY protocol."""
    from tests.smtp_server import make_server

    smtp = make_server(tmp_path_factory.mktemp("proxy"))
    smtp.config.write_text(behind_proxy(smtp.config.read_text()))
    imap = smtp.imap_beside()
    smtp.start()
    try:
        imap.start()
        try:
            login = smtp.add_user("Camille", "Proxy")
            yield smtp, imap, login
        finally:
            imap.stop()
    finally:
        smtp.stop()


def _stat(sock_path: Path) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    text = data.decode().lstrip("# ")
    return [row for row in csv.DictReader(io.StringIO(text)) if row["svname"] not in ("FRONTEND", "BACKEND")]


class HAProxy:
    """Debian's haproxy running the example configuration, in the foreground, stopped by PID."""

    def __init__(self, tmp: Path, backends: dict[int, int], send_proxy: str, node2: dict[int, int] | None = None):
        """``backends``: example port -> our port, for both nodes of the
        example; with ``node2``, the example's second node gets those."""
        self.dir = tmp
        self.fronts = {port: free_port() for port in backends}
        self.stats = tmp / "haproxy.sock"
        text = HAPROXY_EXAMPLE.read_text()
        # The machine-wide parts: no chroot or user switch, logs to our file, a stats socket.
        text = re.sub(r"^\s*(chroot|user|group) .*\n", "", text, flags=re.M)
        text = text.replace("log /dev/log local0", f"log stdout format raw local0\n    stats socket {self.stats} level user")
        text = re.sub(r"bind :(\d+)", lambda m: f"bind 127.0.0.1:{self.fronts[int(m.group(1))]}", text)
        text = re.sub(
            r"\b10\.0\.0\.(\d+):(\d+)",
            lambda m: f"127.0.0.1:{(node2 if node2 and m.group(1) == '12' else backends)[int(m.group(2))]}",
            text,
        )
        text = text.replace("inter 10s", "inter 1s")  # checks pass within seconds
        text = re.sub(r"maxconn \d+", "maxconn 1000", text)  # within a test machine's descriptor limit
        text, n = re.subn(r"^(\s*server .*) send-proxy-v2\b", rf"\1 {send_proxy}", text, flags=re.M)
        assert n == 10, text
        self.config = tmp / "haproxy.cfg"
        self.config.write_text(text)
        self.log_path = tmp / "haproxy.log"

    def start(self) -> None:
        check = subprocess.run([HAPROXY_BIN, "-c", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([HAPROXY_BIN, "-db", "-f", str(self.config)], stdout=self.log, stderr=self.log)
        # Ready when every node passed its health check (through the PROXY header).
        def all_up() -> bool:
            if self.proc.poll() is not None:
                return True  # reported below
            if not self.stats.exists():
                return False
            try:
                rows = _stat(self.stats)
            except OSError:
                return False
            return bool(rows) and all(r["status"] == "UP" and r["check_status"] in ("L7OK", "L6OK") for r in rows)

        if not wait_for(all_up, timeout=30) or self.proc.poll() is not None:
            rows = _stat(self.stats) if self.proc.poll() is None else []
            self.stop()
            states = [(r["pxname"], r["svname"], r["status"], r["check_status"], r["check_desc"]) for r in rows]
            raise AssertionError(f"haproxy backends not up: {states}\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module", params=["send-proxy", "send-proxy-v2"])
def haproxy(request, daemons, tmp_path_factory):
    need(HAPROXY_BIN is not None, "haproxy (Debian package haproxy)")
    smtp, imap, _ = daemons
    backends = {
        993: imap.imaps_port, 143: imap.imap_port,
        25: smtp.mx_port, 587: smtp.submission_port, 465: smtp.submissions_port,
    }
    proxy = HAProxy(tmp_path_factory.mktemp(request.param), backends, request.param)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _log_has(server, pattern: str) -> bool:
    return wait_for(lambda: re.search(pattern, server.log_path.read_text()) is not None, timeout=10)


class _FromClient:
    """imaplib connections that leave from CLIENT's address."""

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))


class Imap(_FromClient, imaplib.IMAP4):
    pass


class Imaps(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def test_imap_through_haproxy_sees_the_client(daemons, haproxy) -> None:
    smtp, imap, login = daemons
    c = Imaps("127.0.0.1", haproxy.fronts[993], ssl_context=imap.context(), timeout=30)
    c.login(login, smtp.users[login])
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    assert _log_has(imap, rf"connect client={re.escape(CLIENT)} port={imap.imaps_port} ")
    assert _log_has(imap, rf"login user={login} client={re.escape(CLIENT)}\b")
    # 143: plain, then STARTTLS on a connection that began with a PROXY header.
    c = Imap("127.0.0.1", haproxy.fronts[143], timeout=30)
    c.starttls(ssl_context=imap.context())
    c.login(login, smtp.users[login])
    c.logout()
    assert _log_has(imap, rf"connect client={re.escape(CLIENT)} port={imap.imap_port} ")


def _message(login: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = msg["To"] = f"{login}@ac-normandie.test"
    msg["Subject"] = subject
    msg.set_content("through the load balancer\n")
    return msg


def _delivered(smtp, login: str, subject: str) -> bytes:
    found: list[bytes] = []

    def arrived() -> bool:
        found[:] = [m for m in smtp.messages(login) if f"Subject: {subject}".encode() in m]
        return bool(found)

    assert wait_for(arrived, timeout=20), subject
    return found[0]


def test_smtp_through_haproxy_sees_the_client(daemons, haproxy) -> None:
    smtp, _, login = daemons
    ctx = ssl.create_default_context(cafile=str(smtp.cafile))
    ctx.check_hostname = False  # connected by address; the chain is still verified
    tag = haproxy.config.parent.name
    with smtplib.SMTP("127.0.0.1", haproxy.fronts[587], timeout=60, source_address=(CLIENT, 0), local_hostname="client.example") as s:
        s.starttls(context=ctx)
        s.login(login, smtp.users[login])
        s.send_message(_message(login, f"starttls {tag}"))
    with smtplib.SMTP_SSL("127.0.0.1", haproxy.fronts[465], context=ctx, timeout=60,
                          source_address=(CLIENT, 0), local_hostname="client.example") as s:
        s.login(login, smtp.users[login])
        s.send_message(_message(login, f"implicit {tag}"))
    with smtplib.SMTP("127.0.0.1", haproxy.fronts[25], timeout=60, source_address=(CLIENT, 0), local_hostname="client.example") as s:
        s.send_message(_message(login, f"mx {tag}"), from_addr="someone@example.org")
    for kind in ("starttls", "implicit", "mx"):
        received = _delivered(smtp, login, f"{kind} {tag}").split(b"\r\n\r\n", 1)[0]
        first = re.search(rb"^Received: from [^\r\n]*", received, re.M)
        assert first and f"([{CLIENT}])".encode() in first.group(0), (kind, received[:400])
        assert b"127.0.0.1" not in received, kind  # HAProxy's address appears nowhere
    for port in (smtp.submission_port, smtp.submissions_port, smtp.mx_port):
        assert _log_has(smtp, rf"connect client={re.escape(CLIENT)} port={port} ")


def _ip_failures(smtp, address: str) -> int:
    with sqlite3.connect(smtp.home / "mailstack.db") as db:
        row = db.execute("SELECT failures FROM auth_failures WHERE scope = 'ip' AND key = ?", (address,)).fetchone()
    return row[0] if row else 0


def test_failed_logins_count_against_the_client(daemons, haproxy) -> None:
    smtp, imap, login = daemons
    before = _ip_failures(smtp, CLIENT)
    c = Imaps("127.0.0.1", haproxy.fronts[993], ssl_context=imap.context(), timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        c.login(login, "Wrong#password1")
    c.logout()
    assert _log_has(imap, rf"auth service=imap .*client={re.escape(CLIENT)} outcome=(?!ok)")
    ctx = ssl.create_default_context(cafile=str(smtp.cafile))
    ctx.check_hostname = False
    with smtplib.SMTP_SSL("127.0.0.1", haproxy.fronts[465], context=ctx, timeout=60,
                          source_address=(CLIENT, 0), local_hostname="client.example") as s:
        s.ehlo()
        s.user, s.password = login, "Wrong#password1"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.auth("PLAIN", s.auth_plain)  # login() would try PLAIN, then LOGIN
    assert _log_has(smtp, rf"auth service=smtp .*client={re.escape(CLIENT)} outcome=(?!ok)")
    assert _ip_failures(smtp, CLIENT) == before + 2
    assert _ip_failures(smtp, "127.0.0.1") == 0  # not HAProxy's address


# --- direct connections to the proxy listeners (no HAProxy needed) --------------------------------


def _closed(sock: socket.socket, timeout: float = 30) -> bool:
    """True once the server closed the connection (EOF or reset), reading anything it sent."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def _connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


def test_untrusted_peer_is_refused_at_once(daemons) -> None:
    smtp, imap, _ = daemons
    for server, port in ((imap, imap.imaps_port), (imap, imap.imap_port), (smtp, smtp.submission_port),
                         (smtp, smtp.submissions_port)):
        received = b""
        try:
            with _connect(port, STRANGER) as s:
                # Even a well-formed header does not help an untrusted peer.
                s.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 1000 25\r\n")
                while chunk := s.recv(4096):
                    received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed with a reset, possibly before connect() even returned
        assert received == b""  # no greeting
        assert _log_has(server, rf"client={re.escape(STRANGER)} refused: not a trusted proxy")
    assert "client=192.0.2.1" not in smtp.log_path.read_text() + imap.log_path.read_text()


def test_garbage_instead_of_a_header_is_closed_and_service_goes_on(daemons) -> None:
    smtp, imap, login = daemons
    for server, port, garbage in (
        (imap, imap.imap_port, b"A1 LOGIN x y\r\n"),
        (imap, imap.imaps_port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"),
        (smtp, smtp.mx_port, b"EHLO client.example\r\n"),
        (smtp, smtp.submissions_port, b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n"),
    ):
        with _connect(port, "127.0.0.1") as s:
            s.sendall(garbage)
            s.settimeout(30)
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
            assert data == b"", data  # not even a greeting
        assert _log_has(server, r"client=127\.0\.0\.1 closed: bad PROXY header")
    # Both daemons still serve, with a header written by hand this time (v1, then v2 before TLS).
    with _connect(smtp.mx_port, "127.0.0.1") as s:
        s.sendall(b"PROXY TCP4 192.0.2.44 127.0.0.1 4711 25\r\n")
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221")
    assert _log_has(smtp, rf"connect client=192\.0\.2\.44 port={smtp.mx_port} ")
    raw = _connect(imap.imaps_port, "127.0.0.1")
    raw.sendall(v2(1, 0x21, inet6("2001:db8::44", "::1", 4711, 993) + tlv(0x05, b"id-1")))
    with imap.context().wrap_socket(raw, server_hostname="localhost") as tls:
        f = tls.makefile("rb")
        assert f.readline().startswith(b"* OK")
        tls.sendall(b"a LOGOUT\r\n")
        assert f.readline().startswith(b"* BYE")
    assert _log_has(imap, rf"connect client=2001:db8::44 port={imap.imaps_port} ")


def test_no_header_within_ten_seconds_is_closed(daemons) -> None:
    smtp, imap, _ = daemons
    socks = [(srv, _connect(port, "127.0.0.1")) for srv, port in ((imap, imap.imaps_port), (smtp, smtp.mx_port))]
    for server, s in socks:
        with s:
            s.sendall(b"PROXY TCP4 192.0.2.1")  # a header that never ends
            assert _closed(s, timeout=60)
        assert _log_has(server, r"client=127\.0\.0\.1 closed: no PROXY header within 10 s")
