"""IMAP response formatting (mailstack.imap.format): exact bytes, and every
output read back by a strict little IMAP s-expression reader.

The expected BODYSTRUCTURE, BODY and ENVELOPE bytes below are Dovecot 2.3's
answers for the same messages (taken from its IMAP server), except where a
comment names a deliberate difference.
"""

from __future__ import annotations

import io
import itertools
import random
import re

import pytest

from mailstack.imap import format as F
from mailstack.store import mime
from mailstack.store.mime import Address, Envelope

# --- a strict reader for what we write ------------------------------------------------

_ATOM = re.compile(rb'[^(){ %*"\\\x00-\x1f\x7f-\xff]+')   # ASTRING-CHAR (atoms may hold "]" here)
_FLAG = re.compile(rb'\\(?:\*|[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+)')


class Atom(bytes):
    """An atom read back (a quoted or literal string is plain bytes)."""


def read_sexp(data: bytes, utf8: bool = False) -> list:
    """Parse a sequence of IMAP values (atoms, NIL, numbers, quoted strings,
    literals, parenthesized lists) and fail on anything malformed."""
    pos = 0
    stack: list[list] = [[]]
    while pos < len(data):
        c = data[pos:pos + 1]
        if c == b" ":
            if pos == 0 or data[pos - 1:pos] in (b" ", b"("):
                raise AssertionError(f"stray space at {pos}: {data!r}")
            pos += 1
            continue
        if stack[-1] and data[pos - 1:pos] not in (b" ", b"(", b")") and c != b")":
            raise AssertionError(f"values not separated at {pos}: {data!r}")
        if c == b"(":
            stack.append([])
            pos += 1
        elif c == b")":
            if len(stack) == 1:
                raise AssertionError(f"unbalanced ')' at {pos}: {data!r}")
            if data[pos - 1:pos] == b" ":
                raise AssertionError(f"space before ')' at {pos}: {data!r}")
            done = stack.pop()
            stack[-1].append(done)
            pos += 1
        elif c == b'"':
            out = bytearray()
            pos += 1
            while True:
                ch = data[pos:pos + 1]
                if not ch:
                    raise AssertionError(f"unterminated quoted string: {data!r}")
                if ch == b'"':
                    pos += 1
                    break
                if ch == b"\\":
                    esc = data[pos + 1:pos + 2]
                    assert esc in (b'"', b"\\"), f"bad escape at {pos}: {data!r}"
                    out += esc
                    pos += 2
                    continue
                assert ch not in (b"\r", b"\n", b"\0"), f"CR/LF/NUL in quoted string: {data!r}"
                assert utf8 or ch[0] < 0x80, f"8-bit in quoted string: {data!r}"
                out += ch
                pos += 1
            if utf8:
                out.decode("utf-8")   # quoted UTF-8 must be valid
            stack[-1].append(bytes(out))
        elif c == b"{":
            m = re.compile(rb"\{(\d+)\}\r\n").match(data, pos)
            assert m, f"bad literal at {pos}: {data!r}"
            n = int(m.group(1))
            body = data[m.end():m.end() + n]
            assert len(body) == n, f"short literal: {data!r}"
            assert b"\0" not in body
            stack[-1].append(body)
            pos = m.end() + n
        else:   # an atom, number or NIL; a flag is "\\" atom (or "\\*")
            m = _FLAG.match(data, pos) if c == b"\\" else _ATOM.match(data, pos)
            assert m, f"unexpected byte {c!r} at {pos}: {data!r}"
            word = m.group()
            stack[-1].append(None if word == b"NIL" else int(word) if word.isdigit() else Atom(word))
            pos = m.end()
    assert len(stack) == 1, f"unbalanced '(': {data!r}"
    return stack[0]


def read_one(data: bytes, utf8: bool = False):
    values = read_sexp(data, utf8)
    assert len(values) == 1, values
    return values[0]


def test_reader_rejects_malformed() -> None:
    for bad in [b'("a"', b'"a', b"(a))", b'"a\\b"', b"{5}\r\nabc", b'"a\r\nb"', b'"\xe9"', b"(a  b)", b'"a""b"']:
        with pytest.raises(AssertionError):
            read_sexp(bad)
    assert read_sexp(b'(NIL "a \\"b\\"" {3}\r\nx\ny 12 \\Seen)') == [[None, b'a "b"', b"x\ny", 12, b"\\Seen"]]


# --- strings -------------------------------------------------------------------------


def test_atom_ok() -> None:
    assert F.atom_ok("INBOX") and F.atom_ok("$Label1") and F.atom_ok("a.b-c_d@e")
    for bad in ["", "a b", "a(", "a)", "{", "a%", "a*", 'a"', "a\\", "a]", "\x01", "a\x7f", "é"]:
        assert not F.atom_ok(bad), bad


def test_astring() -> None:
    assert F.astring("Sent") == b"Sent"
    assert F.astring(b"Drafts") == b"Drafts"
    assert F.astring("a]b") == b"a]b"                   # resp-specials are ASTRING-CHARs
    assert F.astring("NIL") == b'"NIL"'                 # never mistaken for "no value"
    assert F.astring("nil") == b'"nil"'
    assert F.astring("") == b'""'
    assert F.astring("Mes documents") == b'"Mes documents"'
    assert F.astring('say "hi"') == b'"say \\"hi\\""'
    assert F.astring("a\\b") == b'"a\\\\b"'
    assert F.astring("Archivé") == b"{8}\r\nArchiv\xc3\xa9"
    assert F.astring("Archivé", utf8=True) == b'"Archiv\xc3\xa9"'
    assert F.astring("a\r\nb") == b"{4}\r\na\r\nb"


def test_string_quoted_or_literal() -> None:
    assert F.string("hello") == b'"hello"'
    assert F.string("") == b'""'
    assert F.string('\\"') == b'"\\\\\\""'
    assert F.string("a" * 1000) == b'"' + b"a" * 1000 + b'"'
    assert F.string("a" * 1001) == b"{1001}\r\n" + b"a" * 1001
    assert F.string("a\nb") == b"{3}\r\na\nb"
    assert F.string("a\rb") == b"{3}\r\na\rb"
    assert F.string(b"a\0b") == b"{3}\r\na\x80b"        # NUL is legal nowhere: 0x80, as Dovecot
    # 8-bit: literal, unless the client enabled UTF8=ACCEPT and it is valid UTF-8
    assert F.string("été") == b"{5}\r\n\xc3\xa9t\xc3\xa9"
    assert F.string("été", utf8=True) == b'"\xc3\xa9t\xc3\xa9"'
    latin1 = b"\xe9t\xe9".decode("utf-8", "surrogateescape")   # as the store keeps raw 8-bit bytes
    assert F.string(latin1) == b"{3}\r\n\xe9t\xe9"
    assert F.string(latin1, utf8=True) == b"{3}\r\n\xe9t\xe9"
    assert F.string("é" * 600, utf8=True).startswith(b"{1200}\r\n")


def test_nstring() -> None:
    assert F.nstring(None) == b"NIL"
    assert F.nstring("") == b'""'
    assert F.nstring("NIL") == b'"NIL"'
    assert F.nstring("Réunion", utf8=True) == b'"R\xc3\xa9union"'
    assert F.nstring("Réunion") == b"{8}\r\nR\xc3\xa9union"


def test_mailbox_names() -> None:
    assert F.mailbox("INBOX") == b"INBOX"
    assert F.mailbox("inbox") == b"INBOX"
    assert F.mailbox("Inbox/Sub") == b"INBOX/Sub"
    assert F.mailbox("Archivé/2026") == b"Archiv&AOk-/2026"
    assert F.mailbox("Éléments envoyés") == b'"&AMk-l&AOk-ments envoy&AOk-s"'
    assert F.mailbox("R&D") == b"R&-D"
    assert F.mailbox("日本語") == b"&ZeVnLIqe-"
    assert F.mailbox("Archivé/2026", utf8=True) == b'"Archiv\xc3\xa9/2026"'
    assert F.mailbox("R&D", utf8=True) == b"R&D"
    assert F.mailbox("Nil") == b'"Nil"'


# --- small values --------------------------------------------------------------------


def test_flag_list_order() -> None:
    assert F.flag_list([]) == b"()"
    assert F.flag_list(["$Label", "\\Seen"]) == b"(\\Seen $Label)"
    assert F.flag_list(["\\Draft", "zeta", "\\seen", "Alpha", "\\DELETED", "\\Flagged", "\\Answered", "$Forwarded",
                        "\\Recent", "alpha"]) == \
        b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft \\Recent $Forwarded Alpha alpha zeta)"
    assert F.flag_list({"\\Seen", "\\Seen"}) == b"(\\Seen)"
    assert F.flag_list(["\\*", "\\Deleted", "$MDNSent"]) == b"(\\Deleted $MDNSent \\*)"
    for bad in ["a b", "", "(x", "été", "\\"]:
        with pytest.raises(ValueError):
            F.flag_list([bad])
    assert read_one(F.flag_list(["\\Seen", "$Label"])) == [b"\\Seen", b"$Label"]


def test_internal_date() -> None:
    ts = 1795571248.9   # 2026-11-25 01:47:28.9 UTC
    assert F.internal_date(ts) == b'"25-Nov-2026 01:47:28 +0000"'
    assert F.internal_date(ts, 60) == b'"25-Nov-2026 02:47:28 +0100"'
    assert F.internal_date(ts, -300) == b'"24-Nov-2026 20:47:28 -0500"'
    assert F.internal_date(ts, 330) == b'"25-Nov-2026 07:17:28 +0530"'
    assert F.internal_date(1772323200) == b'" 1-Mar-2026 00:00:00 +0000"'   # date-day-fixed
    assert F.internal_date(0) == b'" 1-Jan-1970 00:00:00 +0000"'
    months = [F.internal_date(1767225600 + 86400 * 31 * m)[4:7] for m in range(12)]   # from 1 Jan 2026
    assert months == [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
                      b"Nov", b"Dec"]
    with pytest.raises(ValueError):
        F.internal_date(ts, 24 * 60)


def test_internal_date_ignores_locale() -> None:
    import locale
    saved = locale.setlocale(locale.LC_TIME)
    try:
        for name in ("fr_FR.UTF-8", "fr_FR.utf8", "C.UTF-8"):
            try:
                locale.setlocale(locale.LC_TIME, name)
                break
            except locale.Error:
                continue
        assert F.internal_date(1779667200) == b'"25-May-2026 00:00:00 +0000"'
    finally:
        locale.setlocale(locale.LC_TIME, saved)


def test_sequence_set() -> None:
    assert F.sequence_set([1]) == b"1"
    assert F.sequence_set([1, 2, 3, 5, 7, 8, 9]) == b"1:3,5,7:9"
    assert F.sequence_set([9, 8, 7, 5, 3, 2, 1, 2, 3]) == b"1:3,5,7:9"
    assert F.sequence_set(iter([4, 6])) == b"4,6"
    assert F.sequence_set(range(1, 100001)) == b"1:100000"
    assert F.sequence_set([4294967295, 4294967294]) == b"4294967294:4294967295"
    for bad in ([], [0], [-1, 2]):
        with pytest.raises(ValueError):
            F.sequence_set(bad)


def test_sequence_set_random() -> None:
    rng = random.Random(7)
    for _ in range(200):
        ns = {rng.randint(1, 60) for _ in range(rng.randint(1, 40))}
        out = F.sequence_set(ns).decode()
        back: set[int] = set()
        last = 0
        for piece in out.split(","):
            a, _, b = piece.partition(":")
            lo, hi = int(a), int(b or a)
            assert lo <= hi and lo > last + 1 or last == 0   # sorted, maximal ranges
            back.update(range(lo, hi + 1))
            last = hi
        assert back == ns


# --- ENVELOPE and BODYSTRUCTURE on real messages ------------------------------------

PLAIN = b"""From: Anne Martin <anne.martin@ac-normandie.fr>
To: paul@example.org
Subject: Conseil de classe
Date: Tue, 24 Nov 2026 09:15:00 +0100
Message-ID: <1@ac-normandie.fr>

Bonjour,
le conseil a lieu mardi.
"""

MIXED_2231 = b"""From: "Dupont, Jean" <jean.dupont@ac-normandie.fr>
To: undisclosed-recipients:;
Cc: Profs: a@x.fr, "B \\"the\\" b" <b@x.fr>;, c@y.fr
Subject: =?utf-8?q?=C3=A9t=C3=A9?= test
Date: Wed, 25 Nov 2026 10:00:00 +0000
Message-ID: <2@x>
In-Reply-To: <1@ac-normandie.fr>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XYZ"; foo=bar

preamble
--XYZ
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit
Content-Language: fr, en
Content-Location: http://x/y

\xc3\xa9t\xc3\xa9
--XYZ
Content-Type: application/pdf; name*=utf-8''%C3%A9t%C3%A9%20rapport.pdf
Content-Disposition: attachment; filename*0*=utf-8''%C3%A9t%C3%A9;
 filename*1=" rapport.pdf"; size=1234
Content-Transfer-Encoding: base64
Content-ID: <part2@x>
Content-Description: Le rapport
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

JVBERi0xLjQK
JVBERi0xLjQK
--XYZ
Content-Type: text/plain; name="\xc3\xa9t\xc3\xa9.txt"
Content-Disposition: inline

raw 8-bit name
--XYZ--
epilogue
"""

FORWARDED = b"""From: a@b.c
To: d@e.f
Subject: fwd
Content-Type: multipart/mixed; boundary=b1

--b1
Content-Type: text/plain

see attached
--b1
Content-Type: message/rfc822
Content-Disposition: attachment; filename="msg.eml"

From: "Jos\xc3\xa9" <jose@x.es>
To: group: ;
Subject: =?iso-8859-1?q?r=E9union?=
Date: Mon, 23 Nov 2026 08:00:00 -0500
Message-ID: <inner@x.es>
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

r=E9union
--alt
Content-Type: Text/HTML; Charset=ISO-8859-1

<p>r\xe9union</p>
--alt--

--b1--
"""

NO_FINAL_NEWLINE = b"""Subject:
From: Nobody
Content-Type: text/plain; charset="us-ascii"; format=flowed; delsp=yes
Content-Transfer-Encoding: 7bit

no newline at end"""

DIGEST = b"""From: list@x
Subject: digest
Content-Type: multipart/digest; boundary=d

--d

Subject: m1

one
--d
Content-Type: text/plain

two
--d--
"""

QUOTES = b"""From: "a \\\\ b \\" c" <x@y>
Reply-To: <r@y>
Sender: s@y
Bcc: (only comment)
Subject: He said "hi" \\o/
Content-Type: image/png; name="a \\"b\\".png"
Content-Disposition: attachment
Content-Language: de

AAAA
"""


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def parse(data: bytes) -> mime.MessageInfo:
    return mime.parse_message(io.BytesIO(data))


def both(data: bytes) -> list[mime.MessageInfo]:
    """The message stored with LF and with CRLF: clients must see the same thing."""
    lf = data.replace(b"\r\n", b"\n")
    return [parse(lf), parse(crlf(lf))]


def test_plain_message() -> None:
    for info in both(PLAIN):
        assert F.body_structure(info.root, True) == \
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 36 2 NIL NIL NIL NIL)'
        assert F.body_structure(info.root, False) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 36 2)'
        assert F.envelope(info.envelope) == (
            b'("Tue, 24 Nov 2026 09:15:00 +0100" "Conseil de classe" '
            b'(("Anne Martin" NIL "anne.martin" "ac-normandie.fr")) '
            b'(("Anne Martin" NIL "anne.martin" "ac-normandie.fr")) '
            b'(("Anne Martin" NIL "anne.martin" "ac-normandie.fr")) '
            b'((NIL NIL "paul" "example.org")) NIL NIL NIL "<1@ac-normandie.fr>")')


def test_multipart_rfc2231_and_8bit_params() -> None:
    # Deliberate differences from Dovecot: parameters keep the header's order with
    # the default charset first (Dovecot: extended parameters after the others,
    # default charset last); an RFC 2231 value is re-encoded whole in UTF-8
    # (Dovecot joins the sections as they are: "utf-8''%C3%A9t%C3%A9 rapport.pdf"
    # with a raw space); a raw 8-bit value is sent in that RFC 2231 form too
    # (Dovecot: an 8-bit literal, of unknown charset to the client).
    text = b'("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 5 0'
    pdf = (b'("application" "pdf" ("name*" "utf-8\'\'%C3%A9t%C3%A9%20rapport.pdf") "<part2@x>" "Le rapport" '
           b'"base64" 26')
    raw8 = b'("text" "plain" ("charset" "us-ascii" "name*" "utf-8\'\'%C3%A9t%C3%A9.txt") NIL NIL "7bit" 14 0'
    for info in both(MIXED_2231):
        assert F.body_structure(info.root, True) == (
            b"(" + text + b' NIL NIL ("fr" "en") "http://x/y")'
            + pdf + b' "Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename*" '
            b'"utf-8\'\'%C3%A9t%C3%A9%20rapport.pdf" "size" "1234")) NIL NIL)'
            + raw8 + b' NIL ("inline" NIL) NIL NIL) "mixed" ("boundary" "XYZ" "foo" "bar") NIL NIL NIL)')
        assert F.body_structure(info.root, False) == b"(" + text + b")" + pdf + b")" + raw8 + b') "mixed")'
        # Deliberate difference: Dovecot sends a name with quotes as a literal, we quote it.
        assert F.envelope(info.envelope) == (
            b'("Wed, 25 Nov 2026 10:00:00 +0000" "=?utf-8?q?=C3=A9t=C3=A9?= test" '
            b'(("Dupont, Jean" NIL "jean.dupont" "ac-normandie.fr")) '
            b'(("Dupont, Jean" NIL "jean.dupont" "ac-normandie.fr")) '
            b'(("Dupont, Jean" NIL "jean.dupont" "ac-normandie.fr")) '
            b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
            b'((NIL NIL "Profs" NIL)(NIL NIL "a" "x.fr")("B \\"the\\" b" NIL "b" "x.fr")(NIL NIL NIL NIL)'
            b'(NIL NIL "c" "y.fr")) NIL "<1@ac-normandie.fr>" "<2@x>")')
    # A client that enabled UTF8=ACCEPT gets the raw UTF-8 name as text.
    raw_part = parse(MIXED_2231).root.children[2]
    assert F.body_structure(raw_part, False, utf8=True) == \
        b'("text" "plain" ("charset" "us-ascii" "name" "\xc3\xa9t\xc3\xa9.txt") NIL NIL "7bit" 14 0)'


def test_message_rfc822_part() -> None:
    josé = b'(({5}\r\nJos\xc3\xa9 NIL "jose" "x.es"))'
    inner_env = (b'("Mon, 23 Nov 2026 08:00:00 -0500" "=?iso-8859-1?q?r=E9union?=" ' + josé + b" " + josé + b" "
                 + josé + b' ((NIL NIL "group" NIL)(NIL NIL NIL NIL)) NIL NIL NIL "<inner@x.es>")')
    for info in both(FORWARDED):
        # Deliberate difference: types and parameter names lowercase ("text" "html"
        # "charset"); Dovecot repeats the header's case ("Text" "HTML" "Charset").
        assert F.body_structure(info.root, True) == (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 0 NIL NIL NIL NIL)'
            b'("message" "rfc822" NIL NIL NIL "7bit" 388 ' + inner_env
            + b' (("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 9 0 NIL NIL NIL NIL)'
            b'("text" "html" ("charset" "ISO-8859-1") NIL NIL "7bit" 14 0 NIL NIL NIL NIL) '
            b'"alternative" ("boundary" "alt") NIL NIL NIL) 17 NIL ("attachment" ("filename" "msg.eml")) NIL NIL) '
            b'"mixed" ("boundary" "b1") NIL NIL NIL)')
        assert F.body_structure(info.root, False) == (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 0)'
            b'("message" "rfc822" NIL NIL NIL "7bit" 388 ' + inner_env
            + b' (("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 9 0)'
            b'("text" "html" ("charset" "ISO-8859-1") NIL NIL "7bit" 14 0) "alternative") 17) "mixed")')
        assert F.envelope(info.envelope) == (
            b'(NIL "fwd" ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) '
            b'((NIL NIL "d" "e.f")) NIL NIL NIL NIL)')
        assert F.envelope(info.root.children[1].envelope, utf8=True).startswith(  # type: ignore[arg-type]
            b'("Mon, 23 Nov 2026 08:00:00 -0500" "=?iso-8859-1?q?r=E9union?=" (("Jos\xc3\xa9" NIL "jose" "x.es"))')


def test_empty_subject_missing_domain_no_final_newline() -> None:
    for info in both(NO_FINAL_NEWLINE):
        # Deliberate difference: the encoding in lowercase; Dovecot repeats "7BIT" as written.
        assert F.body_structure(info.root, True) == (
            b'("text" "plain" ("charset" "us-ascii" "format" "flowed" "delsp" "yes") NIL NIL "7bit" 17 0 '
            b'NIL NIL NIL NIL)')
        assert F.envelope(info.envelope) == (
            b'(NIL "" ((NIL NIL "Nobody" "MISSING_DOMAIN")) ((NIL NIL "Nobody" "MISSING_DOMAIN")) '
            b'((NIL NIL "Nobody" "MISSING_DOMAIN")) NIL NIL NIL NIL NIL)')


def test_digest_default_message_rfc822() -> None:
    for info in both(DIGEST):
        assert F.body_structure(info.root, True) == (
            b'(("message" "rfc822" NIL NIL NIL "7bit" 18 (NIL "m1" NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL)'
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL) '
            b'"digest" ("boundary" "d") NIL NIL NIL)')
        assert F.body_structure(info.root, False) == (
            b'(("message" "rfc822" NIL NIL NIL "7bit" 18 (NIL "m1" NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0) 2)'
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0) "digest")')


def test_quotes_and_backslashes() -> None:
    for info in both(QUOTES):
        assert F.body_structure(info.root, True) == \
            b'("image" "png" ("name" "a \\"b\\".png") NIL NIL "7bit" 6 NIL ("attachment" NIL) ("de") NIL)'
        # Deliberate difference: Dovecot sends these two as literals, we quote and escape.
        env = F.envelope(info.envelope)
        assert env == (b'(NIL "He said \\"hi\\" \\\\o/" (("a \\\\ b \\" c" NIL "x" "y")) ((NIL NIL "s" "y")) '
                       b'((NIL NIL "r" "y")) NIL NIL NIL NIL NIL)')
        assert read_one(env)[1] == b'He said "hi" \\o/'


def test_envelope_8bit_and_utf8() -> None:
    raw = "=?utf-8?q?x?= caf\udce9 Réunion"   # raw latin-1 byte + raw UTF-8, as the store keeps them
    env = Envelope(subject=raw, from_=[Address("Élodie", None, "elodie", "x.fr")])
    out = F.envelope(env)
    assert out == (b'(NIL {27}\r\n=?utf-8?q?x?= caf\xe9 R\xc3\xa9union (({7}\r\n\xc3\x89lodie NIL "elodie" "x.fr")) '
                   b'NIL NIL NIL NIL NIL NIL NIL)')
    out8 = F.envelope(env, utf8=True)
    assert out8 == (b'(NIL {27}\r\n=?utf-8?q?x?= caf\xe9 R\xc3\xa9union (("\xc3\x89lodie" NIL "elodie" "x.fr")) '
                    b'NIL NIL NIL NIL NIL NIL NIL)')
    for data, u in ((out, False), (out8, True)):
        value = read_one(data, utf8=u)
        assert len(value) == 10 and value[1] == raw.encode("utf-8", "surrogateescape")


def test_envelope_empty_and_source_route() -> None:
    assert F.envelope(Envelope()) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    env = parse(b"From: <@relay.example:joe@x.org>\nTo: A <a@b>, B <b@c>\n\nx\n").envelope
    assert F.address_list(env.from_) == b'((NIL "@relay.example" "joe" "x.org"))'
    assert F.address_list(env.to) == b'(("A" NIL "a" "b")("B" NIL "b" "c"))'
    assert F.address_list([]) == b"NIL"


def _mixed_eol(lf: bytes) -> bytes:
    lines = lf.split(b"\n")
    return b"".join(line + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(lines[:-1])) + lines[-1]


def test_sizes_are_those_of_the_crlf_message() -> None:
    """Every announced size and line count is that of the section of the CRLF
    message actually served, whether the file has LF, CRLF or both."""
    parts = {PLAIN: 1, MIXED_2231: 3, FORWARDED: 4, NO_FINAL_NEWLINE: 1, DIGEST: 3, QUOTES: 1}
    for sample, count in parts.items():
        lf = sample.replace(b"\r\n", b"\n")
        served = crlf(lf)
        ref = parse(served)
        assert _check_sizes(read_one(F.body_structure(ref.root, True)), ref, served) == count
        for stored in (lf, _mixed_eol(lf)):
            info = parse(stored)
            assert F.body_structure(info.root, True) == F.body_structure(ref.root, True)
            assert F.body_structure(info.root, False) == F.body_structure(ref.root, False)


def _check_sizes(body: list, info: mime.MessageInfo, served: bytes, section: str = "",
                 encapsulated: bool = False) -> int:
    """Walk a parsed BODYSTRUCTURE with IMAP section numbers; return the parts checked."""
    if isinstance(body[0], list):                       # multipart: its parts, then the subtype
        children = list(itertools.takewhile(lambda b: isinstance(b, list), body))
        return sum(_check_sizes(c, info, served, f"{section}.{n}" if section else str(n))
                   for n, c in enumerate(children, 1))
    sec = (section + ".1" if encapsulated else section) or "1"
    start, end = mime.section_range(info, sec)
    assert body[6] == end - start, (sec, body)
    count = 1
    if body[0] == b"text":
        assert body[7] == served[start:end].count(b"\n"), (sec, body)
    if (body[0], body[1]) == (b"message", b"rfc822"):
        assert body[9] == served[start:end].count(b"\n"), (sec, body)
        count += _check_sizes(body[8], info, served, sec, encapsulated=True)
    return count


def test_opaque_and_edge_parts() -> None:
    # A message/rfc822 that could not be parsed has no envelope: written as opaque data.
    p = mime.Part(maintype="message", subtype="rfc822", body_size=10, body_bare_lf=2, body_lines=2)
    assert F.body_structure(p, False) == b'("application" "octet-stream" NIL NIL NIL "7bit" 12)'
    p = mime.Part(maintype="video", subtype="mp4", params=[("name", "a" * 1200)], language=["fr"],
                  location="https://x/y z", md5="abc", disposition=("attachment", []))
    out = F.body_structure(p, True)
    assert out.startswith(b'("video" "mp4" ("name" {1200}\r\n' + b"a" * 1200 + b") NIL NIL")
    assert out.endswith(b' "7bit" 0 "abc" ("attachment" NIL) ("fr") "https://x/y z")')
    read_one(out)
    latin1 = mime.Part(maintype="application", subtype="pdf", params=[("name", "\udce9t\udce9.pdf")])
    assert F.body_structure(latin1, False) == b'("application" "pdf" ("name*" "\'\'%E9t%E9.pdf") NIL NIL "7bit" 0)'
    assert F.body_structure(latin1, False, utf8=True) == F.body_structure(latin1, False)


def _random_message(rng: random.Random, depth: int = 0) -> bytes:
    eol = rng.choice([b"\n", b"\r\n"])
    kind = rng.random() if depth < 3 else 0
    if kind < 0.5:
        ctype = rng.choice([b"text/plain; charset=utf-8", b"text/html", b"application/pdf; name=\"a b.pdf\"",
                            b"image/png; name*=utf-8''%C3%A9.png", b"text/plain; name=\"\xc3\xa9\""])
        body = eol.join(rng.choice([b"hello", b"", b"caf\xc3\xa9", b"x" * rng.randint(0, 90)])
                        for _ in range(rng.randint(0, 6)))
        return b"Content-Type: " + ctype + eol + b"Content-Disposition: attachment" + eol + eol + body
    if kind < 0.75:
        inner = _random_message(rng, depth + 1)
        return (b"Content-Type: message/rfc822" + eol + eol + b"From: J\xc3\xa9 <j@x>" + eol + b"Subject: r" + eol
                + inner)
    boundary = b"b%d" % rng.randint(0, 10 ** 6)
    parts = [_random_message(rng, depth + 1) for _ in range(rng.randint(1, 4))]
    out = b"Content-Type: multipart/" + rng.choice([b"mixed", b"alternative", b"related"]) + b"; boundary=" \
        + boundary + eol + eol
    for p in parts:
        out += b"--" + boundary + eol + p + eol
    return out + b"--" + boundary + b"--" + eol


def test_random_structures_are_well_formed() -> None:
    rng = random.Random(2026)
    for _ in range(150):
        raw = b"From: a@b\nSubject: t\n" + _random_message(rng)
        info = parse(raw)
        served = crlf(raw)
        for ext in (True, False):
            for utf8 in (False, True):
                out = F.body_structure(info.root, ext, utf8=utf8)
                read_one(out, utf8=utf8)
                assert out == F.body_structure(parse(served).root, ext, utf8=utf8)
        ref = parse(served)
        assert _check_sizes(read_one(F.body_structure(ref.root, True)), ref, served) >= 1
        read_one(F.envelope(info.envelope))


# --- untagged responses --------------------------------------------------------------


def test_fetch_response() -> None:
    out = F.fetch_response(12, [(b"UID", b"40"), (b"FLAGS", F.flag_list(["\\Seen"])),
                                (b"INTERNALDATE", F.internal_date(1795571248)), (b"RFC822.SIZE", b"2048")])
    assert out == b'* 12 FETCH (UID 40 FLAGS (\\Seen) INTERNALDATE "25-Nov-2026 01:47:28 +0000" RFC822.SIZE 2048)\r\n'
    assert read_sexp(out[len(b"* 12 FETCH "):-2]) == \
        [[b"UID", 40, b"FLAGS", [b"\\Seen"], b"INTERNALDATE", b"25-Nov-2026 01:47:28 +0000", b"RFC822.SIZE", 2048]]
    info = parse(FORWARDED)
    out = F.fetch_response(3, [(b"UID", b"7"), (b"BODYSTRUCTURE", F.body_structure(info.root, True)),
                               (b"ENVELOPE", F.envelope(info.envelope))])
    assert out.startswith(b"* 3 FETCH (UID 7 BODYSTRUCTURE ((") and out.endswith(b" NIL NIL NIL NIL))\r\n")
    assert len(read_one(out[len(b"* 3 FETCH "):-2])) == 6


def test_status_list_search_responses() -> None:
    assert F.status_response(F.mailbox("Archivé"), [("MESSAGES", 3), ("uidnext", 7), ("UNSEEN", 0)]) == \
        b"* STATUS Archiv&AOk- (MESSAGES 3 UIDNEXT 7 UNSEEN 0)\r\n"
    assert F.status_response(F.mailbox("Mes docs"), []) == b'* STATUS "Mes docs" ()\r\n'
    assert F.list_response(["\\HasNoChildren"], "/", F.mailbox("inbox")) == \
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
    assert F.list_response(["\\HasChildren", "\\Sent"], "/", F.mailbox("Éléments envoyés"),
                           b'("CHILDINFO" ("SUBSCRIBED"))') == \
        b'* LIST (\\HasChildren \\Sent) "/" "&AMk-l&AOk-ments envoy&AOk-s" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    assert F.list_response([], "", b'""') == b'* LIST () NIL ""\r\n'
    assert F.list_response(["\\Noselect"], "/", b"Public", command="LSUB") == b'* LSUB (\\Noselect) "/" Public\r\n'
    assert F.search_response([]) == b"* SEARCH\r\n"
    assert F.search_response([2, 3, 6]) == b"* SEARCH 2 3 6\r\n"
    assert F.search_response([2], modseq=917162500) == b"* SEARCH 2 (MODSEQ 917162500)\r\n"
    assert F.esearch_response("A282", [("MIN", 2), ("COUNT", 3), ("ALL", F.sequence_set([2, 10, 11]))], uid=True) \
        == b'* ESEARCH (TAG "A282") UID MIN 2 COUNT 3 ALL 2,10:11\r\n'
    assert F.esearch_response(None, [("count", 0)]) == b"* ESEARCH COUNT 0\r\n"
    assert F.esearch_response("a b", []) == b'* ESEARCH (TAG "a b")\r\n'
    assert F.vanished_response([41, 43, 44, 45]) == b"* VANISHED 41,43:45\r\n"
    assert F.vanished_response([300, 1, 2], earlier=True) == b"* VANISHED (EARLIER) 1:2,300\r\n"
    with pytest.raises(ValueError):
        F.vanished_response([])
