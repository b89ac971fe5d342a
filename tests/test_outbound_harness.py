"""The outbound-delivery harness: tests/dns_server.py and tests/smtp_sink.py.

The queue-runner tests trust these fixtures to behave like real DNS and
real remote MX hosts, so their behaviour is pinned here first.
"""

from __future__ import annotations

import smtplib
import socket
import ssl

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from tests.conftest import need, wait_for
from tests.dns_server import DnsServer
from tests.smtp_sink import SmtpSink


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --- DNS ------------------------------------------------------------------------------


def test_mx_a_aaaa(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.1")
    dns_server.add("mx2.example.test", "AAAA", "::1")
    r = dns_server.resolver()
    mx = r.resolve("Example.TEST.", "MX")
    # compression makes the exchange borrow the question's case; DNS names compare case-insensitively
    assert sorted((rd.preference, rd.exchange.to_text().lower()) for rd in mx) == [(10, "mx1.example.test."), (20, "mx2.example.test.")]
    assert mx.response.flags & dns.flags.AA
    assert [rd.address for rd in r.resolve("MX1.example.test", "A")] == ["127.0.0.1"]
    assert [rd.address for rd in r.resolve("mx2.example.test", "AAAA")] == ["::1"]


def test_add_appends_set_replaces_remove_forgets(dns_server: DnsServer) -> None:
    r = dns_server.resolver()
    dns_server.add("h.example.test", "A", "127.0.0.1")
    dns_server.add("h.example.test.", "A", "127.0.0.2", ttl=30)
    answer = r.resolve("h.example.test", "A")
    assert sorted(rd.address for rd in answer) == ["127.0.0.1", "127.0.0.2"]
    dns_server.set("h.example.test", "A", "127.0.0.3")
    assert [rd.address for rd in r.resolve("h.example.test", "A")] == ["127.0.0.3"]
    dns_server.remove("h.example.test", "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("h.example.test", "A")


def test_txt_short_and_long(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    long_value = "v=DKIM1; k=rsa; p=" + "A" * 380
    dns_server.add("sel._domainkey.example.test", "TXT", f'"{long_value}"')
    r = dns_server.resolver()
    assert [rd.strings for rd in r.resolve("example.test", "TXT")] == [(b"v=spf1 ip4:127.0.0.1 -all",)]
    (rd,) = r.resolve("sel._domainkey.example.test", "TXT")
    assert [len(s) for s in rd.strings] == [255, len(long_value) - 255]
    assert b"".join(rd.strings) == long_value.encode()


def test_nxdomain_versus_nodata(dns_server: DnsServer) -> None:
    dns_server.add("a.b.example.test", "A", "127.0.0.1")
    r = dns_server.resolver()
    with pytest.raises(dns.resolver.NoAnswer):  # exists, no AAAA
        r.resolve("a.b.example.test", "AAAA")
    with pytest.raises(dns.resolver.NoAnswer):  # empty non-terminal
        r.resolve("b.example.test", "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("c.example.test", "A")
    for name, rcode in (("b.example.test", dns.rcode.NOERROR), ("nope.example.test", dns.rcode.NXDOMAIN)):
        response = dns.query.udp(dns.message.make_query(name, "MX"), dns_server.host, port=dns_server.port, timeout=5)
        assert response.rcode() == rcode
        assert not response.answer
        (soa,) = response.authority
        assert soa.name.to_text() == "example.test."
        assert soa[0].to_text() == "ns.example.test. hostmaster.example.test. 1 3600 600 86400 60"


def test_cname_chain(dns_server: DnsServer) -> None:
    dns_server.add("mail.example.test", "CNAME", "relay.example.test.")
    dns_server.add("relay.example.test", "CNAME", "host.other.test.")
    dns_server.add("host.other.test", "A", "127.0.0.9")
    r = dns_server.resolver()
    answer = r.resolve("mail.example.test", "A")
    assert [rd.address for rd in answer] == ["127.0.0.9"]
    assert answer.canonical_name.to_text() == "host.other.test."
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("mail.example.test", "AAAA")
    dns_server.add("dangling.example.test", "CNAME", "gone.other.test.")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("dangling.example.test", "A")


def test_fail_until_set_or_remove(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    dns_server.fail("example.test", "MX")
    r = dns_server.resolver()
    r.lifetime = 2
    with pytest.raises((dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout)):
        r.resolve("example.test", "MX")
    query = dns.message.make_query("example.test", "MX")
    assert dns.query.udp(query, dns_server.host, port=dns_server.port, timeout=5).rcode() == dns.rcode.SERVFAIL
    assert r.resolve("mx.example.test", "A")  # other names unaffected
    dns_server.set("example.test", "MX", "20 mx.example.test.")
    assert [rd.preference for rd in r.resolve("example.test", "MX")] == [20]
    dns_server.fail("mx.example.test", rcode="REFUSED")  # every type
    query = dns.message.make_query("mx.example.test", "AAAA")
    assert dns.query.udp(query, dns_server.host, port=dns_server.port, timeout=5).rcode() == dns.rcode.REFUSED
    dns_server.remove("mx.example.test")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("mx.example.test", "A")


def test_truncation_falls_back_to_tcp(dns_server: DnsServer) -> None:
    addresses = [f"127.0.1.{i}" for i in range(1, 41)]
    dns_server.add("many.example.test", "A", *addresses)
    query = dns.message.make_query("many.example.test", "A")  # no EDNS: 512 bytes
    udp = dns.query.udp(query, dns_server.host, port=dns_server.port, timeout=5)
    assert udp.flags & dns.flags.TC and not udp.answer
    big = dns.message.make_query("many.example.test", "A", use_edns=0, payload=4096)
    assert len(dns.query.udp(big, dns_server.host, port=dns_server.port, timeout=5).answer[0]) == 40
    r = dns_server.resolver()
    r.use_edns(False)
    assert sorted(rd.address for rd in r.resolve("many.example.test", "A")) == sorted(addresses)
    tcp = dns.query.tcp(query, dns_server.host, port=dns_server.port, timeout=5)
    assert len(tcp.answer[0]) == 40


def test_query_log_and_garbage(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # malformed packets are ignored
        s.sendto(b"\x00\x01garbage", (dns_server.host, dns_server.port))
        s.sendto(b"", (dns_server.host, dns_server.port))
    with socket.create_connection((dns_server.host, dns_server.port), timeout=5) as s:
        s.sendall(b"\x00\x05abcde")
    r = dns_server.resolver()
    r.resolve("EXAMPLE.test.", "MX")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("mx.example.test", "AAAA")
    assert dns_server.queries == [("example.test", "MX"), ("mx.example.test", "AAAA")]
    dns_server.clear()
    assert dns_server.queries == []
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("example.test", "MX")


def test_context_manager() -> None:
    with DnsServer() as server:
        server.add("x.test", "A", "127.0.0.1")
        assert server.resolver().resolve("x.test", "A")
    with pytest.raises(dns.exception.DNSException):
        resolver = server.resolver()
        resolver.lifetime = 1
        resolver.resolve("x.test", "A")


# --- SMTP sinks -------------------------------------------------------------------------


def send(host: str, port: int, rcpts: list[str], body: bytes = b"Subject: hi\r\n\r\nhello\r\n") -> dict:
    with smtplib.SMTP(host, port, timeout=30) as s:
        return s.sendmail("sender@example.test", rcpts, body)


def test_sinks_on_both_families_share_a_port(smtp_sink) -> None:
    need(ipv6_loopback(), "IPv6 loopback (::1)")
    v4: SmtpSink = smtp_sink()
    v6: SmtpSink = smtp_sink("::1", v4.port)
    assert v6.port == v4.port
    send("127.0.0.1", v4.port, ["a@example.test"])
    send("::1", v6.port, ["b@example.test"], b"Subject: six\r\n\r\n\xc3\xa9t\xc3\xa9\r\n")
    (m4,), (m6,) = v4.wait(1), v6.wait(1)
    assert (m4.rcpt_tos, m4.peer, m4.tls, m4.mail_from) == (["a@example.test"], "127.0.0.1", False, "sender@example.test")
    assert (m6.rcpt_tos, m6.peer) == (["b@example.test"], "::1")
    assert m6.data.endswith(b"\xc3\xa9t\xc3\xa9\r\n")
    # port=0 on ::1 picks a port that 127.0.0.1 can take too
    six = smtp_sink("::1")
    four = smtp_sink("127.0.0.1", six.port)
    assert four.port == six.port


def test_ehlo_and_options(smtp_sink) -> None:
    sink: SmtpSink = smtp_sink()
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        for ext in ("8bitmime", "pipelining", "size"):
            assert s.has_extn(ext), ext
        assert int(s.esmtp_features["size"]) >= 200 * 1024 * 1024
        assert not s.has_extn("starttls")
        s.sendmail("s@example.test", ["r@example.test"], b"x: y\r\n\r\nbody\r\n", mail_options=["BODY=8BITMIME"])
    (m,) = sink.wait(1)
    assert m.mail_options == ["SIZE=14", "BODY=8BITMIME"]  # smtplib adds SIZE itself
    assert m.data == b"x: y\r\n\r\nbody\r\n"


def test_rcpt_replies(smtp_sink) -> None:
    sink: SmtpSink = smtp_sink()
    sink.rcpt_replies = {"gone@example.test": "550 5.1.1 no such user", "later@example.test": "451 4.2.1 later"}
    refused = send("127.0.0.1", sink.port, ["ok@example.test", "Gone@Example.test", "later@example.test"])
    assert refused == {"Gone@Example.test": (550, b"5.1.1 no such user"), "later@example.test": (451, b"4.2.1 later")}
    (m,) = sink.wait(1)
    assert m.rcpt_tos == ["ok@example.test"]
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send("127.0.0.1", sink.port, ["gone@example.test"])


def test_data_replies_in_sequence(smtp_sink) -> None:
    sink: SmtpSink = smtp_sink()
    sink.data_replies = ["451 4.3.0 try again", "552 5.3.4 too big"]
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as s:
        for expected in (451, 552):
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail("s@example.test", ["r@example.test"], b"\r\nbody\r\n")
            assert e.value.smtp_code == expected
        s.sendmail("s@example.test", ["r@example.test"], b"\r\nthird\r\n")
    (m,) = sink.wait(1)
    assert m.data == b"\r\nthird\r\n"
    assert len(sink.refused) == 2 and sink.data_replies == []
    assert sink.connections == 1


def test_greeting_refusal(smtp_sink) -> None:
    sink: SmtpSink = smtp_sink()
    sink.greeting = "554 5.3.2 no service"
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP("127.0.0.1", sink.port, timeout=30)
    assert e.value.smtp_code == 554
    with socket.create_connection(("127.0.0.1", sink.port), timeout=30) as raw, raw.makefile("rb") as f:
        assert f.readline() == b"554 5.3.2 no service\r\n"
        raw.sendall(b"EHLO client.test\r\nQUIT\r\n")
        assert f.readline().startswith(b"503 ")
        assert f.readline().startswith(b"221 ")
        assert f.readline() == b""
    sink.greeting = None
    send("127.0.0.1", sink.port, ["r@example.test"])
    assert len(sink.wait(1)) == 1
    assert sink.connections == 3


def test_starttls(smtp_sink) -> None:
    sink: SmtpSink = smtp_sink(starttls=True, hostname="mx1.example.test")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=context)
        s.ehlo()
        assert not s.has_extn("starttls")
        assert s.sock.getpeercert(binary_form=True)
        s.sendmail("s@example.test", ["r@example.test"], b"\r\nsecret\r\n")
    send("127.0.0.1", sink.port, ["plain@example.test"])
    tls, plain = sink.wait(2)
    assert (tls.tls, tls.rcpt_tos) == (True, ["r@example.test"])
    assert (plain.tls, plain.rcpt_tos) == (False, ["plain@example.test"])
    assert sink.connections == 2


def test_wait_times_out_naming_the_count(smtp_sink) -> None:
    sink: SmtpSink = smtp_sink()
    send("127.0.0.1", sink.port, ["r@example.test"])
    with pytest.raises(AssertionError, match="expected 2 message.*received 1"):
        sink.wait(2, timeout=0.5)
    assert wait_for(lambda: sink.connections == 1)


def test_stop_closes_idle_sessions() -> None:
    sink = SmtpSink()
    with sink:
        client = smtplib.SMTP("127.0.0.1", sink.port, timeout=30)
        client.ehlo()
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        client.noop()
        client.noop()
    client.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sink.port), timeout=5).close()
