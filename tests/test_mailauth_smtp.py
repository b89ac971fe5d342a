"""Message authentication end to end: a real ``mailstack smtpd`` checking
SPF, DKIM and DMARC on its MX against a real DNS server, and signing what
its users send so that an independent verifier (Perl's Mail::DKIM) accepts it.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time

import dkim
import pytest

from mailstack.mailauth.keys import keygen
from tests.smtp_server import DOMAIN, make_server
from tests.outbound_world import queue_toml
from tests.test_queue import send

REMOTE = "remote.test"


def message(author: str = f"alice@{REMOTE}", extra: bytes = b"") -> bytes:
    return (
        f"From: Alice <{author}>\r\nTo: someone@{DOMAIN}\r\nSubject: checked\r\n"
        f"Date: Wed, 25 Nov 2026 08:00:00 +0000\r\nMessage-ID: <1@{REMOTE}>\r\n".encode()
        + extra + b"\r\nHello from the outside.\r\n"
    )


@pytest.fixture
def mx(tmp_path, dns_server, smtp_sink):
    sink = smtp_sink("127.0.0.1")
    srv = make_server(tmp_path, extra=queue_toml(dns_server.port, sink.port))
    srv.start()
    srv.rcpt = srv.add_user("Someone", "Here")
    srv.dns, srv.sink = dns_server, sink
    key = keygen(tmp_path / "remote-keys", REMOTE, "sel", "rsa")
    dns_server.add(f"sel._domainkey.{REMOTE}", "TXT", " ".join(f'"{c}"' for c in _chunks(key.txt_record())))
    srv.remote_key = key
    yield srv
    srv.stop()


def _chunks(text: str) -> list[str]:
    return [text[i:i + 200] for i in range(0, len(text), 200)]


def signed(msg: bytes, key) -> bytes:
    return dkim.sign(msg, b"sel", REMOTE.encode(), key.signing_key(), include_headers=[b"from", b"to", b"subject"]) + msg


def deliver_mx(srv, msg: bytes, sender: str = f"alice@{REMOTE}") -> None:
    with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=30) as s:
        s.ehlo("mx.remote.test")
        s.sendmail(sender, [f"{srv.rcpt}@{DOMAIN}"], msg)


def delivered(srv, folder: str = "") -> email.message.EmailMessage:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msgs = srv.messages(srv.rcpt, folder)
        if msgs:
            (raw,) = msgs
            return email.message_from_bytes(raw, policy=email.policy.default)
        time.sleep(0.05)
    raise AssertionError(f"nothing in {srv.rcpt}'s {folder or 'INBOX'}")


def results(msg) -> str:
    (ar,) = msg.get_all("Authentication-Results")
    return " ".join(str(ar).split())


def test_pass_everywhere_and_forged_results_removed(mx):
    mx.dns.add(REMOTE, "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    mx.dns.add(f"_dmarc.{REMOTE}", "TXT", '"v=DMARC1; p=reject"')
    forged = b"Authentication-Results: localhost; dkim=pass header.d=ac-normandie.test\r\n"
    deliver_mx(mx, forged + signed(message(), mx.remote_key))
    msg = delivered(mx)
    ar = results(msg)  # exactly one: ours; the forged copy is gone
    assert ar.startswith("localhost;")
    assert "spf=pass" in ar and "smtp.mailfrom=alice@remote.test" in ar
    assert "dkim=pass" in ar and "header.d=remote.test" in ar
    assert "dmarc=pass" in ar and "header.from=remote.test" in ar
    assert list(msg.keys())[0] == "Authentication-Results"  # on top, above our Received


def test_spf_fail_with_dmarc_reject_is_refused(mx):
    mx.dns.add(REMOTE, "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    mx.dns.add(f"_dmarc.{REMOTE}", "TXT", '"v=DMARC1; p=reject"')
    with pytest.raises(smtplib.SMTPDataError) as e:
        deliver_mx(mx, message())
    assert e.value.smtp_code == 550 and b"5.7.1" in e.value.smtp_error and b"DMARC" in e.value.smtp_error
    time.sleep(0.5)
    assert mx.messages(mx.rcpt) == [] and mx.messages(mx.rcpt, ".Junk") == []


def test_dmarc_quarantine_files_in_junk(mx):
    mx.dns.add(REMOTE, "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    mx.dns.add(f"_dmarc.{REMOTE}", "TXT", '"v=DMARC1; p=quarantine"')
    deliver_mx(mx, message())
    msg = delivered(mx, ".Junk")
    ar = results(msg)
    assert "spf=fail" in ar and "dmarc=fail" in ar
    assert mx.messages(mx.rcpt) == []


def test_spf_softfail_without_dmarc_is_delivered(mx):
    mx.dns.add(REMOTE, "TXT", '"v=spf1 ip4:192.0.2.1 ~all"')
    deliver_mx(mx, message())
    ar = results(delivered(mx))
    assert "spf=softfail" in ar and "dmarc=none" in ar


def test_tampered_signature_fails_dkim(mx):
    mx.dns.add(REMOTE, "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    tampered = signed(message(), mx.remote_key).replace(b"Hello from", b"Hullo from")
    deliver_mx(mx, tampered)
    ar = results(delivered(mx))
    assert "dkim=fail" in ar and "spf=pass" in ar and "dmarc=none" in ar  # no DMARC record


def test_submission_is_signed_and_independent_verifiers_agree(mx, tmp_path):
    """Perl's Mail::DKIM checks the RSA signature (Debian 12's predates Ed25519);
    dkimpy's verifier checks both."""
    from tests.test_mailauth import dkimpy_dnsfunc, perl_verify

    r = mx.cli("dkim", "keygen", DOMAIN, "--selector", "s1")
    record = r.splitlines()[1].split(" IN TXT ", 1)[1]
    mx.dns.add(f"s1._domainkey.{DOMAIN}", "TXT", record)
    r = mx.cli("dkim", "keygen", DOMAIN, "--selector", "e1", "--algorithm", "ed25519")
    mx.dns.add(f"e1._domainkey.{DOMAIN}", "TXT", r.splitlines()[1].split(" IN TXT ", 1)[1])
    mx.dns.add(REMOTE, "MX", "10 mx4.remote.test.")
    mx.dns.add("mx4.remote.test", "A", "127.0.0.1")
    mx.sender = mx.rcpt
    send(mx, [f"friend@{REMOTE}"])
    (got,) = mx.sink.wait(1)
    assert got.data.count(b"DKIM-Signature:") == 2
    sigs, _ = perl_verify(got.data, mx.dns.port)
    assert [DOMAIN, "rsa-sha256", "pass"] in [s[:3] for s in sigs], sigs
    d = dkim.DKIM(got.data)
    for i in range(2):
        assert d.verify(idx=i, dnsfunc=dkimpy_dnsfunc(mx.dns)), i
    assert b"a=ed25519-sha256" in got.data and b"a=rsa-sha256" in got.data
    tampered = dkim.DKIM(got.data.replace(b"line two", b"line 2"))
    for i in range(2):
        with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
            tampered.verify(idx=i, dnsfunc=dkimpy_dnsfunc(mx.dns))


def test_no_signature_for_a_from_the_sender_does_not_own(mx):
    mx.cli("dkim", "keygen", DOMAIN, "--selector", "s1")
    colleague = mx.add_user("Paul", "Durand")
    mx.dns.add(REMOTE, "MX", "10 mx4.remote.test.")
    mx.dns.add("mx4.remote.test", "A", "127.0.0.1")
    sender = f"{mx.rcpt}@{DOMAIN}"
    with mx.submission(mx.rcpt) as s:
        for author in (sender, f"{colleague}@{DOMAIN}"):
            s.sendmail(sender, [f"friend@{REMOTE}"], f"From: <{author}>\r\nSubject: x\r\n\r\nbody\r\n".encode())
    own, forged = sorted(mx.sink.wait(2), key=lambda r: colleague.encode() in r.data)
    assert b"DKIM-Signature:" in own.data
    assert b"DKIM-Signature:" not in forged.data
    assert "not signing: From: <" in mx.log_path.read_text()


def test_forged_results_removed_from_a_message_without_body(mx):
    mx.dns.add(REMOTE, "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    deliver_mx(mx, b"Authentication-Results: localhost; dmarc=pass header.from=bank.test\r\nSubject: no body\r\n")
    ar = results(delivered(mx))  # one: ours
    assert "bank.test" not in ar and "spf=pass" in ar


def test_an_unusable_author_beside_a_real_one_does_not_escape_dmarc(mx):
    mx.dns.add(REMOTE, "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    mx.dns.add(f"_dmarc.{REMOTE}", "TXT", '"v=DMARC1; p=reject"')
    msg = message().replace(b"From: Alice <alice@remote.test>", b"From: nobody, Alice <alice@remote.test>")
    with pytest.raises(smtplib.SMTPDataError) as e:
        deliver_mx(mx, msg)
    assert e.value.smtp_code == 550


def test_mail_loop_is_refused(mx):
    hops = b"".join(b"Received: from a.test by b.test; Wed, 25 Nov 2026 08:00:00 +0000\r\n" for _ in range(51))
    with pytest.raises(smtplib.SMTPDataError) as e:
        deliver_mx(mx, hops + message())
    assert e.value.smtp_code == 554 and b"5.4.6" in e.value.smtp_error
