"""Vacation without a server: RFC 3834's rules, the reply, the once-per-period
record, and the rule `mailstack vacation set` writes into a script."""

from __future__ import annotations

import multiprocessing
from datetime import date
from pathlib import Path

import pytest

from mailstack.sieve import Message, Vacation, compile_script
from mailstack.sieve.vacation import Answered, refusal, reply, rule, with_rule, without_rule

ME = "camille.dupont@ac-normandie.test"


def view(headers: str, sender: str = "parent@example.org") -> Message:
    return Message.from_bytes(headers.replace("\n", "\r\n").encode() + b"\r\nbody\r\n", envelope_from=sender, envelope_to=ME)


@pytest.mark.parametrize("headers, sender, why", [
    (f"To: {ME}\nSubject: hi\n", "parent@example.org", None),
    (f"Cc: Camille <{ME}>\n", "parent@example.org", None),
    (f"To: {ME}\n", "", "null sender"),
    (f"To: {ME}\n", ME, "sent by the user"),
    (f"To: {ME}\n", "MAILER-DAEMON@example.org", "automated sender"),
    (f"To: {ME}\n", "owner-profs@lists.example.org", "automated sender"),
    (f"To: {ME}\n", "profs-request@lists.example.org", "automated sender"),
    (f"To: {ME}\n", "noreply@example.org", "automated sender"),
    (f"To: {ME}\nAuto-Submitted: auto-replied\n", "parent@example.org", "auto-submitted"),
    (f"To: {ME}\nAuto-Submitted: no\n", "parent@example.org", None),
    (f"To: {ME}\nPrecedence: bulk\n", "parent@example.org", "bulk precedence"),
    (f"To: {ME}\nList-Id: <profs.example.org>\n", "parent@example.org", "mailing list"),
    (f"To: {ME}\nX-Auto-Response-Suppress: OOF, AutoReply\n", "parent@example.org", "replies suppressed by the sender"),
    ("To: someone-else@example.org\n", "parent@example.org", "the user is not in To or Cc"),
])
def test_refusal(headers: str, sender: str, why: str | None) -> None:
    assert refusal(view(headers, sender), sender, [ME]) == why


def test_reply_headers_and_threading() -> None:
    v = view(f"To: {ME}\nSubject: Réunion\nMessage-ID: <abc@example.org>\nReferences: <x@y>\n")
    out = reply(Vacation("Absente.\nRetour lundi.", from_=None), v, ME, "mail.test", now=0)
    head, _, body = out.partition(b"\r\n\r\n")
    assert f"From: {ME}".encode() in head and b"To: parent@example.org" in head
    assert b"Subject: =?utf-8?" in head  # "Auto: Réunion", RFC 2047
    assert b"Auto-Submitted: auto-replied" in head and b"In-Reply-To: <abc@example.org>" in head
    assert b"References: <x@y> <abc@example.org>" in head
    assert body == b"Absente.\r\nRetour lundi.\r\n"
    hostile = reply(Vacation("x", subject="a\r\nBcc: victim@example.org"), v, ME, "mail.test", now=0)
    assert b"\r\nBcc:" not in hostile


def _claim(d: str, q) -> None:
    q.put(Answered(Path(d)).claim("parent@example.org", "h", 3600))


def test_answered_once_per_period_even_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), q)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    assert sorted(results) == [False, False, False, True]
    a = Answered(tmp_path)
    assert not a.claim("Parent@Example.org", "h", 3600)  # addresses compare without case
    assert a.claim("parent@example.org", "other handle", 3600)
    assert a.claim("parent@example.org", "h", 3600, now=4e9)  # the period is over


@pytest.mark.parametrize("script", [
    "",
    'require "fileinto";\nif header :contains "subject" "x" { fileinto "X"; }\n',
    'require ["fileinto"]; require "imap4flags"; if true { addflag "\\\\Seen"; }',
    "# a comment\nkeep;\n",
])
def test_the_rule_goes_after_the_requires_and_comes_out_again(script: str) -> None:
    r = rule(date(2026, 12, 19), date(2027, 1, 4), 'Absent "x"', "Parti\nen vacances", 7, ["c@ac-normandie.test"])
    combined = with_rule(script, r)
    compile_script(combined)  # a valid script
    assert with_rule(combined, r) == combined  # set twice: one rule
    assert without_rule(combined).split() == script.split()  # a newline may have been added after the requires


def test_a_dovecot_single_script_is_adopted(tmp_path: Path) -> None:
    """A plain .dovecot.sieve (Dovecot before its sieve/ directory) keeps working."""
    from mailstack.sieve.scripts import ScriptStore

    (tmp_path / ".dovecot.sieve").write_text('require "fileinto";\nfileinto "Old";\n')
    store = ScriptStore(tmp_path)
    assert store.list() == [("dovecot.orig", True)]
    assert store.active_script() is not None
    assert (tmp_path / ".dovecot.sieve").is_symlink()
    assert "fileinto" in store.get("dovecot.orig")
