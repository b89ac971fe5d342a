"""Outbound mail: the queue runner of a real ``mailstack smtpd`` delivering to
real SMTP servers on loopback, found through a real DNS server.

Two MX hosts on one port: one sink on 127.0.0.1, another on ::1.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import time
from pathlib import Path


from tests.conftest import free_port, run_cli
from tests.smtp_server import DOMAIN

REMOTE = "remote.test"
BODY = b"Subject: outbound\r\nFrom: {sender}\r\nTo: friend@remote.test\r\n\r\n.leading dot\r\nline two\r\n"


def send(srv, rcpts: list[str], body: bytes | None = None) -> None:
    sender = f"{srv.sender}@{DOMAIN}"
    with srv.submission(srv.sender) as s:
        s.sendmail(sender, rcpts, body or BODY.replace(b"{sender}", sender.encode()))


def queue_dir(srv) -> Path:
    return srv.home / "spool" / "queue"


def wait_empty(srv, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not list(queue_dir(srv).glob("*.json")):
            return
        time.sleep(0.05)
    raise AssertionError("queue not empty: " + ", ".join(p.read_text() for p in queue_dir(srv).glob("*.json")))


def wait_inbox(srv, login: str, n: int, timeout: float = 30) -> list[email.message.EmailMessage]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs = srv.messages(login)
        if len(msgs) >= n:
            return [email.message_from_bytes(m, policy=email.policy.default) for m in msgs]
        time.sleep(0.05)
    raise AssertionError(f"{len(srv.messages(login))} messages in {login}'s INBOX, expected {n}")


def report(msg: email.message.EmailMessage) -> dict[str, str]:
    """The per-recipient fields of a DSN (message/delivery-status), flattened."""
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    part = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    blocks = part.get_payload()
    fields: dict[str, str] = {}
    for b in blocks:
        for k, v in b.items():
            fields[k.lower()] = str(v)
    return fields


def test_delivery_by_mx_preference_one_connection_for_all_recipients(world):
    world.dns.add(REMOTE, "MX", "10 mx6.remote.test.", "20 mx4.remote.test.")
    srv = world.server()
    send(srv, ["a@remote.test", "b@remote.test"])
    (got,) = world.sink6.wait(1)
    assert sorted(got.rcpt_tos) == ["a@remote.test", "b@remote.test"]
    assert world.sink6.connections == 1 and world.sink4.connections == 0
    assert b"\r\n.leading dot\r\n" in got.data  # dot-stuffing undone by the receiver: sent stuffed
    assert got.data.startswith(b"Received: from ")  # our trace header travels
    assert got.mail_from == f"{srv.sender}@{DOMAIN}"
    wait_empty(srv)
    world.dns.add("other.test", "MX", "20 mx6.remote.test.", "10 mx4.remote.test.")
    send(srv, ["c@other.test"])
    world.sink4.wait(1)
    assert len(world.sink6.received) == 1


def test_starttls_is_used_when_offered(world, smtp_sink):
    tls_sink = smtp_sink("127.0.0.1", starttls=True)
    world.dns.add("tls.test", "MX", "10 mx4.remote.test.")
    srv = world.server(port=tls_sink.port)
    send(srv, ["x@tls.test"])
    (got,) = tls_sink.wait(1)
    assert got.tls


def test_second_mx_when_the_first_refuses(world):
    world.sink4.greeting = "554 5.3.2 not now"
    world.dns.add(REMOTE, "MX", "10 mx4.remote.test.", "20 mx6.remote.test.")
    srv = world.server()
    send(srv, ["a@remote.test"])
    world.sink6.wait(1)
    assert world.sink4.connections >= 1 and not world.sink4.received
    wait_empty(srv)


def test_unreachable_first_mx_falls_back(world):
    world.dns.add(REMOTE, "MX", "10 dead.remote.test.", "20 mx6.remote.test.")
    world.dns.add("dead.remote.test", "A", "127.0.0.1")
    world.sink4.stop()  # connection refused on 127.0.0.1
    srv = world.server()
    send(srv, ["a@remote.test"])
    world.sink6.wait(1)
    wait_empty(srv)


def test_temporary_failure_is_retried(world):
    world.dns.add(REMOTE, "MX", "10 mx4.remote.test.")
    world.sink4.data_replies = ["451 4.3.0 try again later"]
    srv = world.server()
    send(srv, ["a@remote.test"])
    (got,) = world.sink4.wait(1)  # the second attempt, a second or two later
    assert world.sink4.connections == 2
    wait_empty(srv)
    log = srv.log_path.read_text()
    assert "status=deferred reply=451 4.3.0" in log and "status=sent" in log


def test_permanent_failure_bounces_to_the_sender(world):
    world.dns.add(REMOTE, "MX", "10 mx4.remote.test.")
    world.sink4.rcpt_replies = {"nobody@remote.test": "550 5.1.1 no such user here"}
    srv = world.server()
    send(srv, ["nobody@remote.test", "friend@remote.test"])
    (got,) = world.sink4.wait(1)
    assert got.rcpt_tos == ["friend@remote.test"]
    (bounce,) = wait_inbox(srv, srv.sender, 1)
    assert not any(part.defects for part in bounce.walk()), [part.defects for part in bounce.walk()]
    fields = report(bounce)
    assert fields["final-recipient"] == "rfc822; nobody@remote.test"
    assert fields["action"] == "failed" and fields["status"] == "5.1.1"
    assert "550 5.1.1 no such user here" in fields["diagnostic-code"]
    assert bounce["Auto-Submitted"] == "auto-replied"
    headers = next(p for p in bounce.walk() if p.get_content_type() == "text/rfc822-headers")
    assert b"Subject: outbound" in headers.get_payload(decode=True)
    wait_empty(srv)


def test_no_bounce_for_a_bounce(world):
    """Mail from the null sender to an alias forwarding to a refusing remote host."""
    world.dns.add(REMOTE, "MX", "10 mx4.remote.test.")
    world.sink4.rcpt_replies = {"gone@remote.test": "550 5.1.1 gone"}
    srv = world.server()
    srv.cli("alias", "add", f"fwd@{DOMAIN}", "gone@remote.test")
    with srv.mx() as s:
        s.sendmail("<>", [f"fwd@{DOMAIN}"], b"Subject: a bounce\r\n\r\nx\r\n")
    wait_empty(srv)
    assert "status=bounced" in srv.log_path.read_text()
    assert not list((srv.home / "spool" / "queue").glob("*.json"))
    assert srv.messages(srv.sender) == []


def test_null_mx_bounces_at_once_signed(world):
    world.dns.add("nullmx.test", "MX", "0 .")
    srv = world.server()
    srv.cli("dkim", "keygen", DOMAIN, "--selector", "s1")
    send(srv, ["someone@nullmx.test"])
    (bounce,) = wait_inbox(srv, srv.sender, 1)
    assert report(bounce)["status"] == "5.1.10"
    assert f"d={DOMAIN}" in " ".join(str(bounce["DKIM-Signature"]).split())  # DMARC-aligned with MAILER-DAEMON@
    wait_empty(srv)


def test_unknown_domain_bounces(world):
    srv = world.server()
    send(srv, ["someone@no-such-domain.test"])
    (bounce,) = wait_inbox(srv, srv.sender, 1)
    assert report(bounce)["status"] == "5.1.2"


def test_expiry_warns_then_bounces(world):
    world.dns.add(REMOTE, "MX", "10 mx4.remote.test.")
    world.sink4.greeting = "421 4.3.2 busy"
    srv = world.server(lifetime=4, warn_after=1)
    send(srv, ["late@remote.test"])
    warning, bounce = wait_inbox(srv, srv.sender, 2, timeout=30)
    assert warning["Subject"].startswith("Delayed Mail")
    assert report(warning)["action"] == "delayed" and "will-retry-until" in report(warning)
    assert report(bounce)["action"] == "failed" and report(bounce)["status"] == "4.4.7"
    wait_empty(srv)
    assert not world.sink4.received


def test_queue_survives_sigkill_and_never_resends_confirmed(world):
    world.dns.add(REMOTE, "MX", "10 mx4.remote.test.")
    world.sink4.greeting = "421 4.3.2 busy"
    srv = world.server(retry_min=1)
    send(srv, ["a@remote.test"])
    deadline = time.monotonic() + 20
    while world.sink4.connections < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait()
    srv.log.close()
    (entry_file,) = queue_dir(srv).glob("*.json")
    entry = json.loads(entry_file.read_text())
    # As if a.remote had confirmed one recipient just before the crash:
    entry["recipients"].append({"address": "b@remote.test", "local": False, "status": "delivered",
                                "reason": "250 ok", "remote_mta": "mx4", "notified": False})
    entry_file.write_text(json.dumps(entry))
    world.sink4.greeting = None
    srv.start()
    (got,) = world.sink4.wait(1)
    assert got.rcpt_tos == ["a@remote.test"]  # b was confirmed: never sent again
    wait_empty(srv)


def test_queue_commands(world):
    world.dns.add(REMOTE, "MX", "10 mx4.remote.test.")
    world.sink4.greeting = "421 4.3.2 busy"
    srv = world.server(retry_min=3600, retry_max=3600)
    send(srv, ["a@remote.test"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = srv.cli("queue", "list")
        if "last: " in out:
            break
        time.sleep(0.1)
    assert "421 4.3.2 busy" in out and "a@remote.test" in out and "1 message(s), 1 recipient(s) waiting" in out
    entry_id = out.splitlines()[1].split()[0]
    shown = srv.cli("queue", "show", entry_id)
    assert "<a@remote.test> pending" in shown and "Subject: outbound" in shown
    assert srv.cli("queue", "hold", entry_id).strip() == f"held {entry_id}"
    assert "held" in srv.cli("queue", "list")
    world.sink4.greeting = None
    srv.cli("queue", "flush")
    time.sleep(2)
    assert not world.sink4.received  # held: not tried
    assert srv.cli("queue", "release", entry_id).strip() == f"released {entry_id}"
    world.sink4.wait(1)
    wait_empty(srv)

    send(srv, ["b@remote.test"])  # delivered at once; then a held one to delete
    world.sink4.wait(2)
    world.sink4.greeting = "421 4.3.2 busy"
    send(srv, ["c@remote.test"])
    deadline = time.monotonic() + 20
    while "c@remote.test" not in (out := srv.cli("queue", "list")) and time.monotonic() < deadline:
        time.sleep(0.1)
    entry_id = out.splitlines()[1].split()[0]
    srv.cli("queue", "delete", entry_id)
    assert "0 message(s)" in srv.cli("queue", "list")

    for args, text in (
        (("queue", "show", "nope"), "is not a queue ID"),
        (("queue", "delete", "0" * 20), "no message 00000000000000000000 in the queue"),
    ):
        r = run_cli(*args, config=srv.config)
        assert r.returncode == 1 and text in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_a_confirmed_transaction_is_not_resent_when_the_host_goes_away(world):
    """Transaction 1 (a) is confirmed; the host drops the session before
    transaction 2 (b): only b goes to the next MX host."""
    world.dns.add(REMOTE, "MX", "10 mx4.remote.test.", "20 mx6.remote.test.")
    world.sink4.rcpt_replies = {"b@remote.test": "452 4.5.3 Too many recipients"}
    world.sink4.rset_drop = True
    srv = world.server()
    send(srv, ["a@remote.test", "b@remote.test"])
    (first,) = world.sink4.wait(1)
    (second,) = world.sink6.wait(1)
    assert first.rcpt_tos == ["a@remote.test"] and second.rcpt_tos == ["b@remote.test"]
    wait_empty(srv)
    time.sleep(0.5)
    assert len(world.sink4.received) == 1 and len(world.sink6.received) == 1


def test_a_garbled_reply_neither_stalls_the_queue_nor_duplicates(world):
    """One domain's host answers nonsense (aiosmtplib raises on it); the other
    domain gets its copy once, and the entry still ages and bounces."""
    world.dns.add("good.test", "MX", "10 mx4.remote.test.")
    world.dns.add("bad.test", "MX", "10 mx6.remote.test.")
    world.sink6.ehlo_garbage = True
    srv = world.server(lifetime=4, warn_after=0)
    send(srv, ["x@good.test", "y@bad.test"])
    (bounce,) = wait_inbox(srv, srv.sender, 1)
    fields = report(bounce)
    assert fields["final-recipient"] == "rfc822; y@bad.test" and fields["status"] == "4.4.7"
    assert "invalid reply" in fields["diagnostic-code"]
    wait_empty(srv)
    assert [m.rcpt_tos for m in world.sink4.received] == [["x@good.test"]]


def test_delivery_to_a_real_postfix(world, tmp_path):
    """The remote MX is a stock Postfix from Debian: the message arrives whole,
    with our DKIM signature, through its virtual(8) delivery."""
    from tests.postfix import Postfix, wait_delivered
    from tests.test_postfix_harness import _need_postfix

    _need_postfix()
    with Postfix(tmp_path / "postfix", free_port(), users=["friend"]) as pf:
        world.dns.add("bench.test", "MX", "10 mx4.remote.test.")
        srv = world.server(port=pf.port)
        srv.cli("dkim", "keygen", DOMAIN, "--selector", "s1")
        body = b"Subject: to postfix\r\nFrom: " + f"{srv.sender}@{DOMAIN}".encode() + b"\r\n\r\n.dot\r\n" + b"y" * 998 + b"\r\n"
        send(srv, ["friend@bench.test"], body)
        wait_delivered(lambda: pf.count_delivered("friend"), 1, timeout=30)
        (path,) = (pf.maildir("friend") / "new").iterdir()
        data = path.read_bytes()
        assert b"\nDKIM-Signature: v=1; a=rsa-sha256;" in data or data.startswith(b"DKIM-Signature")
        assert data.endswith(b"\n\n.dot\n" + b"y" * 998 + b"\n")
        wait_empty(srv)
