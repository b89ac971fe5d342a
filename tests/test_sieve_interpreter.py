"""Sieve interpreter: scripts run on real messages (built with the email
package) give the expected actions; hostile scripts and messages are bounded."""

from __future__ import annotations

import email
import email.policy
import io
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailstack.sieve import (Discard, Ereject, FileInto, Keep, Limits, Message, Redirect, Reject,
                             SieveRuntimeError, Vacation, compile_script, run)

PARIS = timezone(timedelta(hours=2))
SCHOOL_DAY = datetime(2026, 5, 12, 9, 30, tzinfo=PARIS)
HOLIDAY = datetime(2026, 7, 20, 16, 0, tzinfo=PARIS)
ME = "jean.dupont@ac-normandie.fr"
PRINCIPAL = "principal.college-monet@ac-normandie.fr"


def mail(sender: str = "Parent <parent@example.org>", to: str = ME, subject: str = "Bonjour",
         body: str = "Bonjour,\nune question.\n", date: str | None = "Tue, 12 May 2026 09:00:00 +0200",
         extra: list[tuple[str, str]] | None = None, html: str | None = None,
         attachment: bytes | None = None) -> bytes:
    """A real message, as a mail client would send it."""
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    if date:
        m["Date"] = date
    for name, value in extra or []:
        m[name] = value
    m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype="html")
    if attachment is not None:
        m.add_attachment(attachment, maintype="application", subtype="pdf", filename="piece.pdf")
    data = m.as_bytes()
    assert email.message_from_bytes(data, policy=email.policy.default)["From"] is not None
    return data


def view(data: bytes, envelope_from: str = "parent@example.org", envelope_to: str = ME, **kw: Any) -> Message:
    return Message.from_bytes(data, envelope_from=envelope_from, envelope_to=envelope_to, **kw)


def sieve(script: str, data: bytes | None = None, now: datetime = SCHOOL_DAY, limits: Limits = Limits(),
          **kw: Any) -> list[Any]:
    return run(compile_script(script), view(data if data is not None else mail(), **kw), now=now, limits=limits)


# -- the académie's rules ---------------------------------------------------------------

ACADEMIE = r'''
require ["fileinto", "mailbox", "imap4flags", "date", "relational", "vacation"];

# Circulars from the rectorate go to "Institution".
if allof (address :domain :is "from" "ac-normandie.fr",
          header :contains "subject" "Circulaire") {
    fileinto :create "Institution";
    stop;
}
# Mail from the head of school is flagged.
if address :is "from" "principal.college-monet@ac-normandie.fr" {
    addflag "\\Flagged";
}
# During the summer holidays, an absence reply.
if allof (currentdate :value "ge" "date" "2026-07-04",
          currentdate :value "le" "date" "2026-08-31") {
    vacation :days 7 :subject "Absence pendant les vacances"
             :addresses ["jean.dupont@ac-normandie.fr", "j.dupont@ac-normandie.fr"]
             "Je suis absent jusqu'au 31 août. En cas d'urgence, écrivez au secrétariat.";
}
'''
ABSENCE = Vacation("Je suis absent jusqu'au 31 août. En cas d'urgence, écrivez au secrétariat.",
                   "Absence pendant les vacances", None, (ME, "j.dupont@ac-normandie.fr"), 7 * 86400, False, "")


def without_handle(actions: list[Any]) -> list[Any]:
    return [Vacation(**{**a.__dict__, "handle": ""}) if isinstance(a, Vacation) else a for a in actions]


CIRCULAR = mail("Rectorat de Normandie <dsden76@ac-normandie.fr>", subject="=?utf-8?q?Circulaire_n=C2=B042_:_rentr=C3=A9e?=")


@pytest.mark.parametrize("data, now, expected", [
    (CIRCULAR, SCHOOL_DAY, [FileInto("Institution", create=True)]),
    (CIRCULAR, HOLIDAY, [FileInto("Institution", create=True)]),      # stop: no absence reply for circulars
    (mail(f"Mme la Principale <{PRINCIPAL}>"), SCHOOL_DAY, [Keep(("\\Flagged",))]),
    (mail(f"Mme la Principale <{PRINCIPAL}>"), HOLIDAY, [ABSENCE, Keep(("\\Flagged",))]),
    (mail(), SCHOOL_DAY, [Keep()]),
    (mail(), HOLIDAY, [ABSENCE, Keep()]),
    (mail(), datetime(2026, 7, 4, 0, 0, tzinfo=PARIS), [ABSENCE, Keep()]),      # first day
    (mail(), datetime(2026, 8, 31, 23, 59, tzinfo=PARIS), [ABSENCE, Keep()]),   # last day
    (mail(), datetime(2026, 9, 1, 8, 0, tzinfo=PARIS), [Keep()]),               # back at school
    (mail("Collègue <collegue@ac-normandie.fr>", subject="Réunion"), HOLIDAY, [ABSENCE, Keep()]),  # not a circular
])
def test_academie_rules(data: bytes, now: datetime, expected: list[Any]) -> None:
    assert without_handle(sieve(ACADEMIE, data, now=now)) == expected


def test_vacation_handle_is_stable_and_depends_on_the_reply() -> None:
    (v1, _), (v2, _) = sieve(ACADEMIE, now=HOLIDAY), sieve(ACADEMIE, mail(subject="Autre"), now=HOLIDAY)
    assert v1.handle == v2.handle and len(v1.handle) == 32
    other = sieve('require "vacation"; vacation "Autre texte";')[0]
    assert other.handle != v1.handle


# -- actions and the implicit keep ---------------------------------------------------------

PRE = 'require ["fileinto", "reject", "ereject", "copy", "imap4flags", "vacation", "variables"];\n'


@pytest.mark.parametrize("script, expected", [
    ("", [Keep()]),
    ("keep;", [Keep()]),
    ("keep; keep;", [Keep()]),
    ("discard;", [Discard()]),
    ("discard; keep;", [Discard(), Keep()]),
    ("stop; discard;", [Keep()]),
    ('fileinto "Archives";', [FileInto("Archives")]),
    ('fileinto "Archives"; fileinto "Archives";', [FileInto("Archives")]),
    ('fileinto "A"; fileinto "B";', [FileInto("A"), FileInto("B")]),
    ('fileinto :copy "Archives";', [FileInto("Archives", copy=True), Keep()]),
    ('fileinto "INBOX";', [Keep()]),
    ('redirect "collegue@example.org";', [Redirect("collegue@example.org")]),
    ('redirect :copy "Collègue <collegue@example.org>";', [Redirect("collegue@example.org", copy=True), Keep()]),
    ('redirect "a@example.org"; redirect "A@example.org";', [Redirect("a@example.org")]),
    ('reject "Boîte fermée";', [Reject("Boîte fermée")]),
    ('ereject "No";', [Ereject("No")]),
    ('vacation :days 0 "Absent";', [Vacation("Absent", seconds=86400, handle=...), Keep()]),
    ('keep; stop; fileinto "never";', [Keep()]),
    ('if true { fileinto "A"; stop; } fileinto "B";', [FileInto("A")]),
    ('discard; stop;', [Discard()]),
    # RFC 5232 imap4flags: the internal variable, :flags overriding it
    ('setflag "\\\\seen"; addflag ["urgent", "\\\\Flagged"]; fileinto "A";',
     [FileInto("A", ("\\Seen", "urgent", "\\Flagged"))]),
    ('addflag "a b"; removeflag "A"; keep;', [Keep(("b",))]),
    ('addflag "x"; fileinto :flags ["\\\\Answered", "junk"] "A";', [FileInto("A", ("\\Answered", "junk"))]),
    ('addflag "x"; fileinto :copy "A"; setflag "y";', [FileInto("A", ("x",), copy=True), Keep(("y",))]),
    ('addflag ["ok", "\\\\Bogus", "bad(", "OK"]; keep;', [Keep(("ok",))]),
    ('addflag "a"; if hasflag :is "A" { fileinto "has"; }', [FileInto("has", ("a",))]),
    ('set "v" "x"; addflag "v" "\\\\Seen"; if hasflag :contains "v" "seen" { fileinto :flags "${v}" "A"; }',
     [FileInto("A", ("x", "\\Seen"))]),
])
def test_actions(script: str, expected: list[Any]) -> None:
    actions = sieve(PRE + script)
    if any(isinstance(a, Vacation) for a in expected):
        actions = without_handle(actions)
        expected = [Vacation(**{**a.__dict__, "handle": ""}) if isinstance(a, Vacation) else a for a in expected]
    assert actions == expected


@pytest.mark.parametrize("script, message", [
    ('reject "no"; fileinto "A";', "fileinto cannot be combined with reject"),
    ('fileinto "A"; reject "no";', "reject cannot be combined with fileinto"),
    ('keep; ereject "no";', "ereject cannot be combined with keep"),
    ('reject "no"; redirect "a@example.org";', "redirect cannot be combined with reject"),
    ('vacation "away"; reject "no";', "reject cannot be combined with vacation"),
    ('reject "no"; ereject "no";', "ereject after reject: only one may be used"),
    ('vacation "a"; vacation "b";', "vacation used twice"),
    ('set "to" "not an address"; redirect "${to}";', 'redirect: invalid address "not an address"'),
])
def test_conflicts_fail_the_run(script: str, message: str) -> None:
    with pytest.raises(SieveRuntimeError) as e:
        sieve(PRE + script)
    assert e.value.message == message
    assert e.value.line == 2


def test_action_and_redirect_limits() -> None:
    many = "".join(f'fileinto "F{i}";' for i in range(4))
    with pytest.raises(SieveRuntimeError, match=r"too many actions \(at most 3\)"):
        sieve(PRE + many, limits=Limits(max_actions=3))
    redirects = "".join(f'redirect "r{i}@example.org";' for i in range(6))
    with pytest.raises(SieveRuntimeError, match=r"too many redirects \(at most 5\)"):
        sieve(redirects)
    assert len(sieve(redirects, limits=Limits(max_redirects=6))) == 6


# -- tests of the message --------------------------------------------------------------------

LIST_MAIL = mail("Liste SNES <snes-info@listes.example.org>", subject="[SNES-42] Grève du 12 mai",
                 extra=[("List-Id", "Infos SNES <snes-info.listes.example.org>"),
                        ("Cc", "a@example.org, B <b@example.org>, undisclosed:;"),
                        ("X-Spam-Score", "7"),
                        ("Received", "from mx1 by mx2; Tue, 12 May 2026 09:00:01 +0200"),
                        ("Received", "from origin by mx1; Tue, 12 May 2026 08:59:00 +0200")])

REQ = ('require ["fileinto", "variables", "relational", "comparator-i;ascii-numeric", "regex", "body", '
       '"envelope", "subaddress", "date", "index", "mailbox"];\n')


@pytest.mark.parametrize("test, data, expected", [
    # header, :is / :contains / :matches, comparators
    ('header :is "subject" "[snes-42] grève du 12 mai"', LIST_MAIL, True),   # i;ascii-casemap folds ASCII only...
    ('header :is "subject" "[SNES-42] GRÈVE DU 12 MAI"', LIST_MAIL, False),  # ...so È is not è
    ('header :comparator "i;octet" :is "subject" "[snes-42] grève du 12 mai"', LIST_MAIL, False),
    ('header :contains ["x-nothing", "subject"] "Grève"', LIST_MAIL, True),
    ('header :contains "subject" ""', LIST_MAIL, True),
    ('header :contains "x-nothing" ""', LIST_MAIL, False),
    ('header :matches "subject" "[*] gr?ve *"', LIST_MAIL, True),
    ('header :matches "subject" "\\\\[*"', LIST_MAIL, True),
    ('header :matches "subject" "\\\\*"', LIST_MAIL, False),
    ('header :matches "subject" "*"', mail(subject=""), True),
    # address parts, groups, display names
    ('address :localpart :is "from" "snes-info"', LIST_MAIL, True),
    ('address :domain :is "from" "LISTES.EXAMPLE.ORG"', LIST_MAIL, True),
    ('address :all :is "cc" "b@example.org"', LIST_MAIL, True),
    ('address :is "cc" "B"', LIST_MAIL, False),
    ('address :user :is "to" "jean"', mail(to="jean+eleves@ac-normandie.fr"), True),
    ('address :detail :is "to" "eleves"', mail(to="jean+eleves@ac-normandie.fr"), True),
    ('address :detail :contains "to" ""', mail(), False),   # no '+': no detail at all
    # envelope, including the null sender
    ('envelope :domain :is "from" "example.org"', mail(), True),
    ('envelope :localpart :is "to" "jean.dupont"', mail(), True),
    ('envelope :all :is "from" ""', "null-sender", True),
    # exists, size, logic
    ('exists ["from", "list-id"]', LIST_MAIL, True),
    ('exists ["from", "list-id"]', mail(), False),
    ('size :over 100', mail(), True),
    ('size :under 1K', mail(), True),
    ('size :over 1K', mail(), False),
    ('not anyof (false, allof (true, false))', mail(), True),
    # relational
    ('header :count "eq" :comparator "i;ascii-numeric" "received" "2"', LIST_MAIL, True),
    ('address :count "eq" :comparator "i;ascii-numeric" ["to", "cc"] "3"', LIST_MAIL, True),
    ('header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5"', LIST_MAIL, True),
    ('header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "10"', LIST_MAIL, False),
    ('header :value "lt" "x-spam-score" "10"', LIST_MAIL, False),   # as text, "7" sorts after "10"
    ('header :value "gt" :comparator "i;ascii-numeric" "subject" "99999999999999999999999999999"', LIST_MAIL, True),
    ('header :count "gt" :comparator "i;ascii-numeric" "x-nothing" "0"', LIST_MAIL, False),
    # regex
    ('header :regex "subject" "^\\\\[[a-z]+-[0-9]+\\\\]"', LIST_MAIL, True),
    ('header :regex :comparator "i;octet" "subject" "^\\\\[[a-z]+-[0-9]+\\\\]"', LIST_MAIL, False),
    ('header :regex "subject" "[[:digit:]]{2} mai$"', LIST_MAIL, True),
    # body
    ('body :contains "une question"', mail(), True),
    ('body :text :contains "<b>"', mail(html="<p>Réponse <b>urgente</b></p>"), True),
    ('body :content "text/html" :contains "urgente"', mail(html="<p>Réponse <b>urgente</b></p>"), True),
    ('body :content "text/plain" :contains "urgente"', mail(html="<p>Réponse <b>urgente</b></p>"), False),
    ('body :content "application" :contains "%PDF"', mail(attachment=b"%PDF-1.4 fake"), True),
    ('body :text :contains "%PDF"', mail(attachment=b"%PDF-1.4 fake"), False),
    ('body :raw :contains "JVBERi0xLjQgZmFrZQ"', mail(attachment=b"%PDF-1.4 fake"), True),   # base64 as sent
    ('body :content "text/" :contains ""', mail(), False),   # RFC 5173: a trailing slash matches nothing
    ('body :contains "équipe"', mail(body="Chère équipe,\n" + "x" * 200 + "\n"), True),   # quoted-printable/8bit decoded
    # date and index
    ('date :is "date" "date" "2026-05-12"', mail(), True),
    ('date :zone "-0500" :is "date" "hour" "02"', mail(), True),
    ('date :originalzone :is "date" "zone" "+0200"', mail(), True),
    ('date :is "date" "zone" "+0200"', mail(), True),      # local zone of "now" is +0200
    ('date :is "date" "weekday" "2"', mail(), True),       # a Tuesday
    ('date :is "date" "julian" "61172"', mail(), True),
    ('date :zone "+0000" :is "date" "iso8601" "2026-05-12T07:00:00+00:00"', mail(), True),
    ('date :zone "+0000" :is "date" "std11" "Tue, 12 May 2026 07:00:00 +0000"', mail(), True),
    ('date :is "date" "time" "09:00:00"', mail(), True),
    ('date :is "date" "year" "2026"', mail(date="not a date"), False),
    ('date :is "date" "year" "2026"', mail(date=None), False),
    ('date :originalzone :is "date" "zone" "-0000"', mail(date="Tue, 12 May 2026 07:00:00 -0000"), True),
    ('header :index 2 :contains "received" "origin"', LIST_MAIL, True),
    ('header :index 1 :last :contains "received" "origin"', LIST_MAIL, True),
    ('header :index 1 :contains "received" "origin"', LIST_MAIL, False),
    ('header :index 3 :contains "received" ""', LIST_MAIL, False),
    ('currentdate :is "weekday" "2"', mail(), True),
    ('currentdate :zone "+0000" :is "time" "07:30:00"', mail(), True),
    ('currentdate :value "lt" "iso8601" "2026-05-12T09:31"', mail(), True),
    # string and mailboxexists
    ('string :is "${undefined}" ""', mail(), True),
    ('string :count "eq" :comparator "i;ascii-numeric" ["a", "", "b"] "2"', mail(), True),
    ('mailboxexists "Institution"', mail(), True),
    ('mailboxexists ["Institution", "Nowhere"]', mail(), False),
])
def test_tests(test: str, data: bytes | str, expected: bool) -> None:
    script = REQ + f'if {test} {{ fileinto "yes"; }}'
    kw: dict[str, Any] = {"mailboxes": lambda name: name == "Institution"}
    if data == "null-sender":
        data, kw["envelope_from"] = mail(), ""
    assert isinstance(data, bytes)
    assert (sieve(script, data, **kw) == [FileInto("yes")]) is expected


# -- variables ------------------------------------------------------------------------------


@pytest.mark.parametrize("script, expected", [
    ('if header :matches "list-id" "*<*.*>" { fileinto "Listes/${2}"; }', "Listes/snes-info"),
    ('if header :matches "subject" "[*] *" { fileinto "${1}|${2}|${0}"; }',
     "SNES-42|Grève du 12 mai|[SNES-42] Grève du 12 mai"),
    ('if header :regex "subject" "^\\\\[([A-Z]+)-([0-9]+)\\\\]" { fileinto "${1}.${2}.${3}"; }', "SNES.42."),
    ('if address :matches "from" "*@*" { set :upper "u" "${1}"; fileinto "${u}"; }', "SNES-INFO"),
    ('set :lower :upperfirst "n" "JEAN"; fileinto "${n}";', "Jean"),
    ('set :lowerfirst "n" "JEAN"; fileinto "${N}";', "jEAN"),
    ('set :length "n" "Grève"; fileinto "${n}";', "5"),
    ('set :quotewildcard "n" "a*b?c\\\\d"; fileinto "${n}";', "a\\*b\\?c\\\\d"),
    ('set :quoteregex "n" "a.b(c)"; fileinto "${n}";', "a\\.b\\(c\\)"),
    ('set "a" "${b}"; set "b" "x"; fileinto "[${a}]${b}$${b}${}${1x}";', "[]x$x${}${1x}"),
    ('set "a" "*"; set "b" "${a}"; if string :matches "x" "${b}" { fileinto "wild"; }', "wild"),
    ('set :quotewildcard "q" "*"; if string :matches "x" "${q}" { fileinto "wild"; } else { fileinto "literal"; }',
     "literal"),
    ('if header :matches "subject" "[*" { } if header :matches "subject" "nothing*" { } fileinto "${1}";',
     "SNES-42] Grève du 12 mai"),   # a failed match leaves the variables as they were
])
def test_variables(script: str, expected: str) -> None:
    assert sieve(REQ + script, LIST_MAIL) == [FileInto(expected)]


def test_variable_limits() -> None:
    big = REQ + 'set "a" "' + "x" * 300 + '"; set :length "n" "${a}${a}"; fileinto "${n}";'
    # each variable keeps 100 characters, an expanded string 150
    assert sieve(big, limits=Limits(max_variable_size=100, max_string_size=150)) == [FileInto("150")]
    many = REQ + "".join(f'set "v{i}" "x";' for i in range(5))
    with pytest.raises(SieveRuntimeError, match=r"too many variables \(at most 4\)"):
        sieve(many, limits=Limits(max_variables=4))


# -- hostile scripts ---------------------------------------------------------------------------


def test_catastrophic_regex_is_stopped() -> None:
    script = REQ + 'if body :regex "(x+x+)+y" { discard; }'
    with pytest.raises(SieveRuntimeError, match="pattern matching took too long") as e:
        sieve(script, mail(body="x" * 5000 + "\n"), limits=Limits(match_seconds=0.2))
    assert e.value.line == 2


def test_catastrophic_wildcards_are_stopped() -> None:
    script = REQ + 'if body :matches "*a*a*a*a*a*a*a*a*b" { discard; }'
    with pytest.raises(SieveRuntimeError, match="pattern matching took too long"):
        sieve(script, mail(body="a" * 20000 + "\n"), limits=Limits(match_seconds=0.2))


def test_bad_regex_from_a_variable_fails_at_run_time() -> None:
    with pytest.raises(SieveRuntimeError, match='bad regular expression "a\\(": '):
        sieve(REQ + 'set "p" "a("; if header :regex "subject" "${p}" { discard; }')


# -- the message view ---------------------------------------------------------------------------


def test_headers_are_unfolded_decoded_and_raw_kept() -> None:
    data = (b"From: =?iso-8859-1?q?J=E9r=F4me?= <jerome@example.org>\r\n"
            b"Subject: =?utf-8?b?UsOpdW5pb24=?=\r\n  du conseil\r\n"
            b"X-Raw: caf\xc3\xa9 \xff\r\n\r\nbody\r\n")
    m = Message.from_bytes(data)
    assert m.header("subject") == ["Réunion  du conseil"]
    assert m.raw_header("SUBJECT") == ["=?utf-8?b?UsOpdW5pb24=?=  du conseil"]
    assert m.header("from") == ["Jérôme <jerome@example.org>"]
    assert m.raw_header("x-raw") == ["café \ufffd"]
    assert m.size == len(data)


class Tracked(io.BufferedReader):
    """A real file that remembers how far it was read when closed."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path))
        self.read_to = -1

    def close(self) -> None:
        if not self.closed:
            self.read_to = self.tell()
        super().close()


def opener_of(path: Path, opened: list[Tracked]) -> Any:
    def opener() -> Tracked:
        opened.append(Tracked(path))
        return opened[-1]
    return opener


def test_header_only_scripts_never_open_the_body(tmp_path: Path) -> None:
    path = tmp_path / "big.eml"
    header = mail().split(b"\n\n", 1)[0] + b"\n\n"
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(100 * 1024 * 1024)   # a 100 MB message (sparse: no disk used)
    opened: list[Tracked] = []
    m = Message.from_stream(opener_of(path, opened), size=path.stat().st_size, envelope_to=ME)
    assert len(opened) == 1 and opened[0].read_to == len(header)   # the header block was read, no more
    script = compile_script(REQ + 'if allof (header :contains "subject" "Bonjour", size :over 50M) { fileinto "big"; }')
    assert run(script, m) == [FileInto("big")]
    assert len(opened) == 1

    body_script = compile_script(REQ + 'if body :raw :contains "never there" { discard; }')
    assert run(body_script, m) == [Keep()]
    assert len(opened) == 2 and opened[1].closed
    assert opened[1].read_to == len(header) + 1024 * 1024   # the default bound: 1 MiB of body
    assert run(body_script, m) == [Keep()]
    assert len(opened) == 2   # read once, then kept


def test_body_reads_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.eml"
    header = b"Subject: big\n\n"
    with open(path, "wb") as f:
        f.write(header + b"start " + b"x" * 3000)
        f.seek(2 * 1024 * 1024)
        f.write(b" needle at the end")
    reads: list[int] = []

    class Counting(io.FileIO):
        def read(self, n: int = -1) -> bytes:
            data = super().read(n)
            reads.append(len(data))
            return data

    m = Message.from_stream(lambda: Counting(str(path)), max_body=64 * 1024)
    script = compile_script(REQ + 'if body :raw :contains "start" { fileinto "s"; } if body :raw :contains "needle" { discard; }')
    assert run(script, m) == [FileInto("s")]
    assert sum(reads) == len(header) + 64 * 1024   # the header block, then 64 KiB of body


def test_from_file_and_mailbox_callback(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(CIRCULAR)
    m = Message.from_file(path, envelope_from="dsden76@ac-normandie.fr", envelope_to=ME, mailboxes=lambda n: True)
    assert m.size == len(CIRCULAR)
    script = compile_script(REQ + 'if allof (mailboxexists "Institution", body :contains "question") { fileinto "Institution"; }')
    assert run(script, m) == [FileInto("Institution")]


def test_now_defaults_to_the_clock_and_naive_times_are_local() -> None:
    script = compile_script('require ["date", "relational"]; if currentdate :value "ge" "year" "2020" { discard; }')
    assert run(script, view(mail())) == [Discard()]
    assert run(script, view(mail()), now=datetime(2019, 1, 1)) == [Keep()]


def test_hostile_messages_never_break_a_run() -> None:
    """Random bytes as headers and MIME bodies: every test still answers."""
    import random
    script = compile_script(REQ + r'''
if anyof (address :all :contains ["from", "to", "cc"] "a", header :regex "subject" "x(.)",
          body :contains "x", body :content "text" :contains "y", body :raw :contains "z",
          date :value "gt" "date" "year" "1", exists "date", envelope :all :is "from" "") {
    set "a" "${1}";
}''')
    rng = random.Random(5173)
    prefixes = [b"", b"From: a@b\n", b"Content-Type: multipart/mixed; boundary=x\n\n--x\n",
                b"Content-Transfer-Encoding: base64\nContent-Type: text/plain; charset=bogus\n\n"]
    for _ in range(500):
        data = rng.choice(prefixes) + bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        assert run(script, Message.from_bytes(data, envelope_from="", envelope_to=ME)) == [Keep()]


# -- include (RFC 6609) ------------------------------------------------------------------------

INC = 'require ["include", "variables", "fileinto", "imap4flags", "copy"];\n'


class Library:
    """The loader delivery gives run(): compiled scripts by location and name,
    and a record of what was asked (the interpreter reads no files)."""

    def __init__(self, personal: dict[str, str] | None = None, global_: dict[str, str] | None = None) -> None:
        self.scripts = {("personal", n): t for n, t in (personal or {}).items()}
        self.scripts.update({("global", n): t for n, t in (global_ or {}).items()})
        self.asked: list[tuple[str, str]] = []

    def __call__(self, location: str, name: str) -> Any:
        self.asked.append((location, name))
        text = self.scripts.get((location, name))
        return None if text is None else compile_script(text)


def included(script: str, library: Library, limits: Limits = Limits(), name: str | None = "main",
             data: bytes | None = None) -> list[Any]:
    return run(compile_script(script), view(data if data is not None else mail()), now=SCHOOL_DAY,
               limits=limits, loader=library, name=name)


def test_personal_and_global_scripts_add_to_one_result() -> None:
    lib = Library(personal={"listes": INC + 'if header :contains "subject" "Bonjour" { fileinto "Listes"; }'},
                  global_={"spam": INC + 'addflag "$Junk"; fileinto :copy "Copies";'})
    assert included(INC + 'include :global "spam";\ninclude "listes";', lib) == [
        FileInto("Copies", ("$Junk",), copy=True), FileInto("Listes", ("$Junk",))]
    assert lib.asked == [("global", "spam"), ("personal", "listes")]
    # :personal is the default, and the two locations are two namespaces of names
    lib = Library(personal={"x": INC + 'fileinto "perso";'}, global_={"x": INC + 'fileinto "site";'})
    assert included(INC + 'include :personal "x"; include :global "x";', lib) == [FileInto("perso"), FileInto("site")]


def test_the_implicit_keep_is_the_whole_runs() -> None:
    """An included fileinto cancels the includer's implicit keep; an included
    keep-less script leaves it."""
    lib = Library(personal={"file": INC + 'fileinto "Archives";', "nothing": INC + 'if false { discard; }'})
    assert included(INC + 'include "file";', lib) == [FileInto("Archives")]
    assert included(INC + 'include "nothing";', lib) == [Keep()]
    # actions conflict across scripts as within one
    lib = Library(personal={"refuse": 'require "reject"; reject "non";'})
    with pytest.raises(SieveRuntimeError, match="reject cannot be combined with fileinto"):
        included(INC + 'fileinto "A"; include "refuse";', lib)


def test_once_optional_and_missing_scripts() -> None:
    lib = Library(personal={"lib": INC + 'fileinto :copy "Lib";', "a": INC + 'include :once "lib";',
                            "b": INC + 'include :once "lib";'})
    assert included(INC + 'include "a"; include "b";', lib) == [FileInto("Lib", copy=True), Keep()]
    assert lib.asked.count(("personal", "lib")) == 1
    # without :once a script may run twice (its actions merge as usual)
    lib.asked.clear()
    assert included(INC + 'include "lib"; include "lib"; include :once "lib";', lib) == [
        FileInto("Lib", copy=True), Keep()]
    assert lib.asked.count(("personal", "lib")) == 2
    # :optional: a missing script is skipped; without it, the run fails at the include
    assert included(INC + 'include :optional "absent"; fileinto "After";', lib) == [FileInto("After")]
    with pytest.raises(SieveRuntimeError) as e:
        included(INC + 'keep;\ninclude :global "absent";', lib)
    assert (e.value.message, e.value.line, e.value.col) == ('include: no global script named "absent"', 3, 1)
    with pytest.raises(SieveRuntimeError, match='no personal script named "x"'):   # no loader: nothing exists
        run(compile_script(INC + 'include "x";'), view(mail()))


def test_errors_inside_an_included_script_name_it() -> None:
    lib = Library(personal={"outer": INC + 'include "inner";',
                            "inner": INC + 'keep;\nset "to" "nobody"; redirect "${to}";',
                            "broken": INC + 'frob;'})
    with pytest.raises(SieveRuntimeError) as e:
        included(INC + '\ninclude "outer";', lib)
    assert e.value.line == 3
    assert e.value.message == ('in personal script "outer": line 2, column 1: in personal script "inner": '
                               'line 3, column 20: redirect: invalid address "nobody"')

    def failing(location: str, name: str) -> Any:
        if name == "unreadable":
            raise PermissionError("denied")
        return compile_script(lib.scripts[(location, name)])
    with pytest.raises(SieveRuntimeError, match=r'personal script "broken" does not compile: line 2, column 1'):
        run(compile_script(INC + 'include "broken";'), view(mail()), loader=failing)
    with pytest.raises(SieveRuntimeError, match=r'personal script "unreadable" cannot be read: denied'):
        run(compile_script(INC + 'include "unreadable";'), view(mail()), loader=failing)


def test_recursion_is_an_error() -> None:
    lib = Library(personal={"main": INC + 'include "main";', "a": INC + 'include "b";', "b": INC + 'include "a";',
                            "self": INC + 'include "self";'})
    with pytest.raises(SieveRuntimeError, match='personal script "a" would include itself'):
        included(INC + 'include "a";', lib)
    with pytest.raises(SieveRuntimeError, match='personal script "self" would include itself'):
        included(INC + 'include "self";', lib)
    # the running script's own name, given by the caller, counts from the start
    with pytest.raises(SieveRuntimeError, match='personal script "main" would include itself'):
        included(INC + 'include "a2";', Library(personal={"a2": INC + 'include "main";'}))
    # a global script of the same name is another script
    lib = Library(global_={"main": INC + 'fileinto "G";'})
    assert included(INC + 'include :global "main";', lib) == [FileInto("G")]
    # :once on a script that is running is a skip, not an error (RFC 6609's library pattern)
    lib = Library(personal={"a": INC + 'include :once "main"; fileinto "A";'})
    assert included(INC + 'include "a";', lib) == [FileInto("A")]


def test_return_ends_only_the_current_script_and_stop_ends_all() -> None:
    lib = Library(personal={"early": INC + 'fileinto "One"; if true { return; } fileinto "Never";',
                            "halt": INC + 'fileinto "Halt"; stop;'})
    assert included(INC + 'include "early"; fileinto "Two";', lib) == [FileInto("One"), FileInto("Two")]
    assert included(INC + 'include "halt"; fileinto "Never";', lib) == [FileInto("Halt")]
    assert included(INC + 'fileinto "A"; return; fileinto "Never";', lib) == [FileInto("A")]
    assert included(INC + 'return;', lib) == [Keep()]   # a return at the top keeps as stop does


def test_global_variables_are_shared_and_others_are_not() -> None:
    lib = Library(personal={
        "setter": INC + 'global "dossier"; set "dossier" "Classes"; set "local" "secret";',
        "reader": INC + 'global ["DOSSIER"]; fileinto "${dossier}/${local}";',
        "undeclared": INC + 'fileinto "[${dossier}]";',
        "clobber": INC + 'set "dossier" "mine"; global "dossier";',
    })
    # the main script sees the global once it declares it, and never the included script's own "local"
    assert included(INC + 'include "setter"; global "dossier"; fileinto "${dossier}|${local}";', lib) == [
        FileInto("Classes|")]
    assert included(INC + 'include "setter"; include "reader";', lib) == [FileInto("Classes/")]
    # a script that does not declare it has its own variable of that name
    assert included(INC + 'include "setter"; include "undeclared";', lib) == [FileInto("[]")]
    # an included script starts with none of the includer's variables, and its own go away after it
    assert included(INC + 'set "local" "main"; include "reader"; fileinto "${local}";', lib) == [
        FileInto("/"), FileInto("main")]
    # a global set by the includer reaches the included script
    assert included(INC + 'global "dossier"; set "dossier" "Main"; include "reader";', lib) == [FileInto("Main/")]
    # RFC 6609 §3.3: declaring global a variable already set in this script is an error
    with pytest.raises(SieveRuntimeError, match='global: "dossier" was already set in this script'):
        included(INC + 'include "clobber";', lib)
    # match variables are the script's own
    lib = Library(personal={"m": INC + 'fileinto "in:${1}";'})
    assert included(INC + 'if header :matches "subject" "*" { include "m"; fileinto "out:${1}"; }', lib) == [
        FileInto("in:"), FileInto("out:Bonjour")]


def test_variables_of_every_namespace_count_against_the_limit() -> None:
    lib = Library(personal={"many": INC + 'global "g"; set "g" "1"; set "a" "1"; set "b" "1";'})
    with pytest.raises(SieveRuntimeError, match=r"too many variables \(at most 4\)"):
        included(INC + 'set "x" "1"; set "y" "1"; include "many";', lib, limits=Limits(max_variables=4))
    # an included script's own variables go when it ends
    assert included(INC + 'include "many"; include "many"; set "x" "1"; set "y" "1";', lib,
                    limits=Limits(max_variables=4)) == [Keep()]


def test_include_depth_and_count_limits() -> None:
    chain = {f"s{i}": INC + f'include "s{i + 1}";' for i in range(6)}
    chain["s6"] = INC + 'fileinto "Bottom";'
    lib = Library(personal=chain)
    assert included(INC + 'include "s2";', lib) == [FileInto("Bottom")]            # 5 levels: allowed
    with pytest.raises(SieveRuntimeError, match=r"include: nested too deep \(at most 5 levels\)"):
        included(INC + 'include "s1";', lib)
    assert included(INC + 'include "s4";', lib, limits=Limits(max_include_depth=3)) == [FileInto("Bottom")]
    lib = Library(personal={"lib": INC + 'addflag "x";'})
    assert included(INC + 'include "lib";' * 10, lib) == [Keep(("x",))]
    with pytest.raises(SieveRuntimeError, match=r"include: too many includes \(at most 10 per message\)") as e:
        included(INC + 'include "lib";\n' * 11, lib)
    assert e.value.line == 12
    with pytest.raises(SieveRuntimeError, match=r"at most 2 per message"):
        included(INC + 'include :optional "absent";' * 3, lib, limits=Limits(max_includes=2))
