"""SRS: mail we forward leaves with a rewritten envelope sender (so SPF
passes at the receiver), and a bounce to that address goes back to the
original sender; the MX relays nothing else through it.

A real smtpd forwards through an alias and a Sieve redirect to a remote MX
(an aiosmtpd sink found through a real DNS server on loopback).
"""

from __future__ import annotations

import smtplib

import pytest

from mailstack import config as config_mod
from mailstack.accounts.directory import write_secret
from mailstack.smtp.srs import Rewriter
from tests.smtp_server import DOMAIN


def rewriter(tmp_path, **srs) -> Rewriter:
    write_secret(tmp_path / "secret.key")
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in srs.items())
    cfg = config_mod.parse(f'[server]\ndomains = ["{DOMAIN}", "lycee.test"]\n[auth]\nsecret_file = "secret.key"\n'
                           f"[srs]\n{extra}", base=tmp_path)
    return Rewriter(cfg)


def test_forward_and_reverse(tmp_path) -> None:
    r = rewriter(tmp_path)
    out = r.forward("alice@sender.test")
    assert out.startswith("SRS0=") and out.endswith(f"@{DOMAIN}") and r.is_srs(out)
    assert r.reverse(out) == "alice@sender.test"
    assert r.reverse(out.lower()) == "alice@sender.test"  # some MTAs lowercase the local part
    assert r.forward("") == ""  # a bounce stays a bounce
    assert r.forward(f"jean.dupont@{DOMAIN}") == f"jean.dupont@{DOMAIN}"  # our users are not rewritten
    assert r.forward("prof@lycee.test") == "prof@lycee.test"
    again = r.forward(out)  # forwarded twice (through another of our aliases)
    assert again.startswith("SRS1=") and r.reverse(again) == out
    tampered = out.replace("SRS0=", "SRS0=x", 1)
    assert r.reverse(tampered) is None
    (tmp_path / "other").mkdir()
    assert rewriter(tmp_path / "other").reverse(out) is None  # another installation's secret
    assert rewriter(tmp_path, domain="lycee.test").forward("a@b.test").endswith("@lycee.test")


@pytest.fixture
def forwarding(world, tmp_path):
    world.dns.add("remote.test", "MX", "10 mx4.remote.test.")
    world.dns.add("sender.test", "MX", "10 mx4.remote.test.")
    srv = world.server()
    srv.cli("alias", "add", f"ancien@{DOMAIN}", "friend@remote.test")
    return srv


def test_forwarded_mail_is_rewritten_and_its_bounce_goes_back(world, forwarding) -> None:
    srv = forwarding
    with srv.mx() as s:
        s.sendmail("alice@sender.test", [f"ancien@{DOMAIN}"], b"Subject: pour l'ancien\r\n\r\nx\r\n")
    (got,) = world.sink4.wait(1)
    assert got.rcpt_tos == ["friend@remote.test"]
    assert got.mail_from.startswith("SRS0=") and got.mail_from.endswith(f"=sender.test=alice@{DOMAIN}")

    # The remote MX bounces it later, to the SRS address: it reaches alice.
    with srv.mx() as s:
        s.sendmail("<>", [got.mail_from], b"Subject: Undelivered Mail Returned to Sender\r\n\r\nbounce\r\n")
    bounced = world.sink4.wait(2)[1]
    assert bounced.rcpt_tos == ["alice@sender.test"] and bounced.mail_from in ("", "<>")  # the null sender

    # Not a bounce, or a forged address: refused, nothing relayed.
    with srv.mx() as s, pytest.raises(smtplib.SMTPRecipientsRefused):
        s.sendmail("spammer@bad.test", [got.mail_from], b"x")
    forged = got.mail_from.replace("SRS0=", "SRS0=zz", 1)
    with srv.mx() as s, pytest.raises(smtplib.SMTPRecipientsRefused):
        s.sendmail("<>", [forged], b"x")
    assert len(world.sink4.received) == 2


def test_our_users_mail_keeps_its_sender(world, forwarding) -> None:
    srv = forwarding
    with srv.submission(srv.sender) as s:
        s.sendmail(f"{srv.sender}@{DOMAIN}", ["friend@remote.test"], b"Subject: direct\r\n\r\nx\r\n")
    (got,) = world.sink4.wait(1)
    assert got.mail_from == f"{srv.sender}@{DOMAIN}"


def test_srs_can_be_turned_off(world, tmp_path) -> None:
    world.dns.add("remote.test", "MX", "10 mx4.remote.test.")
    srv = world.server()
    srv.config.write_text(srv.config.read_text() + "\n[srs]\nenabled = false\n")
    srv.stop()
    srv.start()
    srv.cli("alias", "add", f"ancien@{DOMAIN}", "friend@remote.test")
    with srv.mx() as s:
        s.sendmail("alice@sender.test", [f"ancien@{DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
    (got,) = world.sink4.wait(1)
    assert got.mail_from == "alice@sender.test"

