"""mailstack.store.mime: offsets checked against the stdlib email package,
envelopes, IMAP sections, JSON round trips, bounded memory, hostile input."""

from __future__ import annotations

import io
import random
import re
import tracemalloc
from email import message_from_bytes, policy
from email.header import decode_header as std_decode_header, make_header
from email.message import EmailMessage, Message
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from typing import Iterator

import pytest

from mailstack.store import mime
from mailstack.store.mime import Address, MessageInfo, Part

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40


def parse(raw: bytes, chunk_size: int = 65536) -> MessageInfo:
    return mime.parse_message(io.BytesIO(raw), chunk_size)


def fix_boundaries(msg: Message) -> Message:
    """Deterministic boundaries, so the fuzz test is reproducible."""
    for i, part in enumerate(msg.walk()):
        if part.get_content_maintype() == "multipart":
            part.set_boundary(f"=_mailstack_{i}_=")
    return msg


def mixed_message() -> EmailMessage:
    m = EmailMessage()
    m["From"] = '"Dupont, Jean" <jean.dupont@ac-normandie.fr>'
    m["To"] = "Marie Martin <marie.martin@ac-normandie.fr>, paul.durand@ac-normandie.fr"
    m["Cc"] = "undisclosed-recipients:;"
    m["Subject"] = "Réunion de rentrée"
    m["Date"] = "Mon, 01 Sep 2025 08:30:00 +0200"
    m["Message-ID"] = "<rentree-2025@ac-normandie.fr>"
    m["In-Reply-To"] = "<plan@ac-normandie.fr>"
    m.set_content("Bonjour à tous,\nla réunion aura lieu lundi.\n")
    m.add_alternative("<p>Bonjour à tous,</p><p>la réunion aura lieu lundi.</p>", subtype="html")
    m.add_attachment(PDF, maintype="application", subtype="pdf", filename="Compte-rendu réunion été.pdf")
    m.add_attachment(PNG, maintype="image", subtype="png", filename="plan.png")
    return fix_boundaries(m)  # type: ignore[return-value]


def related_message() -> Message:
    alt = MIMEMultipart("alternative")
    alt.attach(MIMEText("Voir le plan ci-dessous.\n", "plain", "utf-8"))
    alt.attach(MIMEText('<p>Voir le plan :</p><img src="cid:plan@x">\n', "html", "utf-8"))
    img = MIMEImage(PNG, "png")
    img["Content-ID"] = "<plan@x>"
    related = MIMEMultipart("related")
    related.attach(alt)
    related.attach(img)
    related["From"] = "secretariat@college.fr"
    related["To"] = "profs@college.fr"
    related["Subject"] = "Plan"
    return fix_boundaries(related)


def inner_message() -> EmailMessage:
    inner = EmailMessage()
    inner["From"] = "Parent <parent@example.org>"
    inner["To"] = "prof@college.fr"
    inner["Subject"] = "Absence"
    inner["Date"] = "Tue, 02 Sep 2025 07:00:00 +0200"
    inner["Message-ID"] = "<absence@example.org>"
    inner.set_content("Mon fils est malade.\n")
    inner.add_alternative("<p>Mon fils est malade.</p>\n", subtype="html")
    return inner


def forward_message() -> EmailMessage:
    m = EmailMessage()
    m["From"] = "prof@college.fr"
    m["To"] = "cpe@college.fr"
    m["Subject"] = "Fwd: Absence"
    m.set_content("Pour information.\n")
    m.add_attachment(inner_message())
    return fix_boundaries(m)  # type: ignore[return-value]


DIGEST = (
    b"From: liste@college.fr\n"
    b"Subject: Digest\n"
    b"Content-Type: multipart/digest; boundary=\"dg\"\n"
    b"\n"
    b"preamble\n"
    b"--dg\n"
    b"\n"
    b"From: a@college.fr\nSubject: un\n\nPremier.\n"
    b"\n--dg\n"
    b"\n"
    b"From: b@college.fr\nSubject: deux\n\nSecond.\n"
    b"\n--dg\n"
    b"Content-Type: text/plain\n"
    b"\n"
    b"Fin du digest.\n"
    b"--dg--\n"
    b"epilogue\n"
)


def utf8_message() -> EmailMessage:
    m = EmailMessage(policy=policy.SMTPUTF8)
    m["From"] = "Éloïse Dhérouville <eloise@collège.fr>"
    m["To"] = "zoé@collège.fr"
    m["Subject"] = "Café à 10 h"
    m.set_content("Ça va ?\n")
    return m


SAMPLES: dict[str, bytes] = {}
for _name, _msg in [("mixed", mixed_message()), ("related", related_message()), ("forward", forward_message())]:
    SAMPLES[_name + "-crlf"] = _msg.as_bytes(policy=policy.SMTP)
    SAMPLES[_name + "-lf"] = _msg.as_bytes(policy=policy.default)
SAMPLES["digest-lf"] = DIGEST
SAMPLES["digest-crlf"] = DIGEST.replace(b"\n", b"\r\n")
SAMPLES["utf8-crlf"] = utf8_message().as_bytes()
SAMPLES["single-lf"] = b"From: a@b.fr\nSubject: hi\n\nhello\nworld"


# -- helpers ----------------------------------------------------------------------

def bare_lf(data: bytes) -> int:
    return data.count(b"\n") - data.count(b"\r\n")


def check_invariants(raw: bytes, info: MessageInfo) -> None:
    """What every parse must satisfy, whatever the input."""
    assert info.size == len(raw)
    root = info.root
    assert (root.header_offset, root.end_offset, info.header_size) == (0, len(raw), root.body_offset)

    def walk(p: Part, lo: int, hi: int) -> None:
        assert lo <= p.header_offset <= p.body_offset <= p.end_offset <= hi
        header, body = raw[p.header_offset:p.body_offset], raw[p.body_offset:p.end_offset]
        assert (p.body_size, p.body_lines) == (len(body), body.count(b"\n"))
        assert (p.header_bare_lf, p.body_bare_lf) == (bare_lf(header), bare_lf(body))
        assert p.maintype == p.maintype.lower() and p.encoding == p.encoding.upper()
        if p.maintype == "multipart":
            assert p.children
            start = p.body_offset
            for c in p.children:
                walk(c, start, p.end_offset)
                start = c.end_offset
        elif (p.maintype, p.subtype) == ("message", "rfc822"):
            assert len(p.children) == 1 and p.envelope is not None
            child = p.children[0]
            assert (child.header_offset, child.end_offset) == (p.body_offset, p.end_offset)
            walk(child, p.body_offset, p.end_offset)
        else:
            assert not p.children and p.envelope is None

    walk(root, 0, len(raw))


def compare_with_email(raw: bytes, p: Part, m: Message) -> None:
    """The part tree, MIME headers and bodies agree with the email package."""
    assert (p.maintype, p.subtype) == (m.get_content_maintype(), m.get_content_subtype())
    header = BytesHeaderParser(policy=policy.compat32).parsebytes(raw[p.header_offset:p.body_offset])
    assert header.items() == m.items()
    if (p.maintype, p.subtype) == ("message", "rfc822"):
        compare_with_email(raw, p.children[0], m.get_payload(0))
    elif m.is_multipart():
        assert len(p.children) == len(m.get_payload())
        for child, sub in zip(p.children, m.get_payload()):
            compare_with_email(raw, child, sub)
    else:
        # _payload: the undecoded text as parsed (get_payload() re-decodes 8-bit bodies)
        assert raw[p.body_offset:p.end_offset] == m._payload.encode("ascii", "surrogateescape")
    for key in ("charset", "boundary", "name"):
        if m.get_param(key) is not None:
            assert dict(p.params)[key] == collapse_rfc2231_value(m.get_param(key))
    if m.get_filename() is not None:
        assert p.disposition is not None and dict(p.disposition[1])["filename"] == m.get_filename()


def all_parts(p: Part, prefix: str = "") -> Iterator[tuple[str, Part]]:
    """(IMAP part number, part) pairs, RFC 3501 numbering."""
    if p.maintype == "message" and p.children and prefix:
        p = p.children[0]
    if p.maintype != "multipart":
        return
    for i, c in enumerate(p.children, 1):
        number = f"{prefix}.{i}" if prefix else str(i)
        yield number, c
        yield from all_parts(c, number)


# -- structure against the email package ------------------------------------------

@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_structure_matches_email_package(name: str) -> None:
    raw = SAMPLES[name]
    info = parse(raw)
    check_invariants(raw, info)
    compare_with_email(raw, info.root, message_from_bytes(raw, policy=policy.compat32))


def test_mixed_message_fields() -> None:
    info = parse(SAMPLES["mixed-crlf"])
    root = info.root
    assert [(c.maintype, c.subtype) for c in root.children] == [
        ("multipart", "alternative"), ("application", "pdf"), ("image", "png")]
    text, html = root.children[0].children
    assert (text.params, text.encoding, text.body_lines) == ([("charset", "utf-8")], "8BIT", 2)
    assert html.subtype == "html"
    pdf = root.children[1]
    assert pdf.encoding == "BASE64"
    # RFC 2231 as the email package wrote it, decoded
    assert b"filename*=utf-8''Compte-rendu%20r%C3%A9union%20%C3%A9t%C3%A9.pdf" in SAMPLES["mixed-crlf"]
    assert pdf.disposition == ("attachment", [("filename", "Compte-rendu réunion été.pdf")])
    assert info.headers["subject"] == "=?utf-8?q?R=C3=A9union_de_rentr=C3=A9e?="
    assert mime.decode_header(info.headers["subject"]) == "Réunion de rentrée"
    assert set(info.headers) == {"from", "to", "cc", "subject", "date", "message-id",
                                 "in-reply-to", "content-type"}


def test_lf_and_crlf_variants_agree() -> None:
    """LF-only files give the same structure; sizes differ exactly by the bare LFs."""
    for name in ("mixed", "related", "forward", "digest"):
        crlf, lf = parse(SAMPLES[name + "-crlf"]), parse(SAMPLES[name + "-lf"])
        assert crlf.root.header_bare_lf == crlf.root.body_bare_lf == 0
        assert lf.size + lf.root.header_bare_lf + lf.root.body_bare_lf == crlf.size

        def pairs(a: Part, b: Part) -> Iterator[tuple[Part, Part]]:
            yield a, b
            assert len(a.children) == len(b.children)
            for x, y in zip(a.children, b.children):
                yield from pairs(x, y)

        for a, b in pairs(crlf.root, lf.root):
            assert (a.maintype, a.subtype, a.params, a.body_lines) == (b.maintype, b.subtype, b.params, b.body_lines)
            assert a.body_size == b.body_size + b.body_bare_lf
        assert crlf.envelope == lf.envelope


def test_mixed_line_endings() -> None:
    raw = (b"From: a@b.fr\r\nSubject: x\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\n"
           b"--b\n\r\none\r\ntwo\n"
           b"\r\n--b\r\nContent-Type: text/html\n\r\n<p>\n"
           b"--b--\n")
    info = parse(raw)
    check_invariants(raw, info)
    one, two = info.root.children
    assert raw[one.body_offset:one.end_offset] == b"one\r\ntwo\n"
    assert (one.body_lines, one.body_bare_lf) == (2, 1)
    assert raw[two.header_offset:two.body_offset] == b"Content-Type: text/html\n\r\n"
    assert raw[two.body_offset:two.end_offset] == b"<p>"
    assert (info.root.header_bare_lf, info.root.body_bare_lf) == (2, 5)


def test_digest_children_default_to_message_rfc822() -> None:
    info = parse(DIGEST)
    kinds = [(c.maintype, c.subtype) for c in info.root.children]
    assert kinds == [("message", "rfc822"), ("message", "rfc822"), ("text", "plain")]
    first = info.root.children[0]
    assert first.envelope is not None and first.envelope.subject == "un"
    assert first.envelope.from_ == [Address(None, None, "a", "college.fr")]
    assert DIGEST[first.body_offset:first.end_offset] == b"From: a@college.fr\nSubject: un\n\nPremier.\n"
    assert first.body_lines == 4
    assert info.root.children[2].params == [("charset", "us-ascii")]


def test_message_rfc822_attachment_and_sections() -> None:
    raw = SAMPLES["forward-crlf"]
    info = parse(raw)
    text, fwd = info.root.children
    assert (fwd.maintype, fwd.subtype) == ("message", "rfc822")
    env = fwd.envelope
    assert env is not None
    assert (env.subject, env.date, env.message_id) == ("Absence", "Tue, 02 Sep 2025 07:00:00 +0200",
                                                       "<absence@example.org>")
    assert env.from_ == env.sender == env.reply_to == [Address("Parent", None, "parent", "example.org")]
    assert env.to == [Address(None, None, "prof", "college.fr")] and env.cc == env.bcc == []

    def sect(s: str) -> bytes:
        a, b = mime.section_range(info, s)
        return raw[a:b]

    inner = message_from_bytes(sect("2"), policy=policy.compat32)
    assert inner["Subject"] == "Absence" and inner.get_content_type() == "multipart/alternative"
    assert sect("") == raw
    assert sect("HEADER") == raw[:raw.index(b"\r\n\r\n") + 4]
    assert sect("TEXT") == raw[raw.index(b"\r\n\r\n") + 4:]
    assert sect("1") == b"Pour information.\r\n"
    assert sect("1.MIME").startswith(b"Content-Type: text/plain") and sect("1.MIME").endswith(b"\r\n\r\n")
    assert sect("2.MIME").startswith(b"Content-Type: message/rfc822")
    assert sect("2.HEADER") == sect("2")[:sect("2").index(b"\r\n\r\n") + 4]
    assert sect("2.HEADER.FIELDS (SUBJECT)") == sect("2.HEADER")
    assert sect("2.TEXT") == sect("2")[len(sect("2.HEADER")):]
    assert sect("2.1") == b"Mon fils est malade.\r\n"
    assert sect("2.2") == b"<p>Mon fils est malade.</p>\r\n"
    assert sect("2.2.MIME").startswith(b"Content-Type: text/html")
    for bad in ("3", "0", "2.3", "1.2", "MIME", "1.HEADER", "2.1.TEXT", "1.", "x", "2..1"):
        with pytest.raises(ValueError):
            mime.section_range(info, bad)


def test_sections_of_a_single_part_message() -> None:
    raw = SAMPLES["single-lf"]
    info = parse(raw)
    assert mime.section_range(info, "1") == mime.section_range(info, "TEXT") == (len(raw) - 11, len(raw))
    assert mime.section_range(info, "1.MIME") == mime.section_range(info, "HEADER") == (0, len(raw) - 11)
    assert info.root.body_lines == 1 and info.root.params == [("charset", "us-ascii")]
    with pytest.raises(ValueError):
        mime.section_range(info, "2")


def test_sections_of_every_part_match_email() -> None:
    raw = SAMPLES["related-lf"]
    info = parse(raw)
    numbers = [n for n, _ in all_parts(info.root)]
    assert numbers == ["1", "1.1", "1.2", "2"]
    m = message_from_bytes(raw, policy=policy.compat32)
    a, b = mime.section_range(info, "1.2")
    assert raw[a:b].decode() == m.get_payload(0).get_payload(1).get_payload()
    a, b = mime.section_range(info, "2")
    assert raw[a:b].decode() == m.get_payload(1).get_payload()
    assert info.root.children[1].id == "<plan@x>"


# -- headers, envelope, addresses ---------------------------------------------------

def test_non_ascii_headers_kept_raw() -> None:
    info = parse(SAMPLES["utf8-crlf"])
    env = info.envelope
    assert env.subject == "Café à 10 h"
    assert env.from_ == [Address("Éloïse Dhérouville", None, "eloise", "collège.fr")]
    assert env.to == [Address(None, None, "zoé", "collège.fr")]
    # latin-1 bytes are not UTF-8: kept as surrogates, exact bytes come back
    raw = b"Subject: caf\xe9 \xff\r\nFrom: \xe9l\xe8ve <e@x.fr>\r\n\r\n"
    info = parse(raw)
    assert info.envelope.subject is not None
    assert info.envelope.subject.encode("utf-8", "surrogateescape") == b"caf\xe9 \xff"
    assert mime.decode_header(info.envelope.subject) == "café ÿ"
    assert mime.from_json(mime.to_json(info)) == info
    assert mime.to_json(info).isascii()


def test_envelope_defaults_and_unfolding() -> None:
    raw = (b"from: A <a@x.fr>\r\nSubject: first\r\n  line two\r\nSUBJECT: second\r\n"
           b"Sender:\r\nIn-Reply-To:\r\nReferences: <r1@x>\r\n <r2@x>\r\n\r\nbody\r\n")
    info = parse(raw)
    env = info.envelope
    assert env.subject == "first  line two"        # unfolded (CRLF removed), first occurrence
    assert env.sender == env.reply_to == env.from_ == [Address("A", None, "a", "x.fr")]
    assert (env.date, env.message_id, env.in_reply_to) == (None, None, "")
    assert info.headers["references"] == "<r1@x> <r2@x>"
    assert "sender" in info.headers and "date" not in info.headers


ADDRESSES = [
    ('"Dupont, Jean" <jean.dupont@ac-normandie.fr>', [("Dupont, Jean", None, "jean.dupont", "ac-normandie.fr")]),
    ("a@b.fr (Alice Martin)", [("Alice Martin", None, "a", "b.fr")]),
    ("=?utf-8?q?Jos=C3=A9?= <jose@x.fr>, bob@y.fr",
     [("=?utf-8?q?Jos=C3=A9?=", None, "jose", "x.fr"), (None, None, "bob", "y.fr")]),
    ("undisclosed-recipients:;", [(None, None, "undisclosed-recipients", None), (None, None, None, None)]),
    ('Profs: a@x.fr, "B, C" <b@x.fr>;, d@y.fr',
     [(None, None, "Profs", None), (None, None, "a", "x.fr"), ("B, C", None, "b", "x.fr"),
      (None, None, None, None), (None, None, "d", "y.fr")]),
    ("root", [(None, None, "root", "MISSING_DOMAIN")]),
    ("<@relay.example,@r2.example:joe@example.org>", [(None, "@relay.example,@r2.example", "joe", "example.org")]),
    ("Joe Bloggs joe@example.org", [("Joe Bloggs", None, "joe", "example.org")]),
    ('"John \\"JJ\\" Doe" <"john doe"@example.org>', [('John "JJ" Doe', None, "john doe", "example.org")]),
    ("John (the boss) Doe <jd@x.fr>", [("John Doe", None, "jd", "x.fr")]),
    ("John Q. Public <jqp@x.fr>", [("John Q. Public", None, "jqp", "x.fr")]),
    ("a@b.fr, , ,c@d.fr", [(None, None, "a", "b.fr"), (None, None, "c", "d.fr")]),
    ("Nom <a@b.fr", [("Nom", None, "a", "b.fr")]),
    ("Groupe: a@b.fr", [(None, None, "Groupe", None), (None, None, "a", "b.fr"), (None, None, None, None)]),
    ("José <jose@é.fr>", [("José", None, "jose", "é.fr")]),
    ("<@x.fr>", [(None, None, "MISSING_MAILBOX", "x.fr")]),
    ("(junk) a@b.fr (Real Name)", [("Real Name", None, "a", "b.fr")]),
    ("", []),
]


@pytest.mark.parametrize("value,expected", ADDRESSES)
def test_parse_addresses(value: str, expected: list[tuple[str | None, ...]]) -> None:
    assert mime.parse_addresses(value) == [Address(*e) for e in expected]


@pytest.mark.parametrize("value", [
    '"Dupont, Jean" <jean.dupont@ac-normandie.fr>, Marie <m@x.fr>',
    'Profs: a@x.fr, "B, C" <b@x.fr>;, d@y.fr',
    "undisclosed-recipients:;",
    "John Q. Public <jqp@x.fr>, a@b.fr",
])
def test_addresses_agree_with_headerregistry(value: str) -> None:
    """On well-formed lists the stdlib's RFC 5322 parser is right: agree with it."""
    header = message_from_bytes(f"To: {value}\n\n".encode(), policy=policy.default)["To"]
    expected: list[Address] = []
    for group in header.groups:
        if group.display_name is not None:
            expected.append(Address(None, None, group.display_name, None))
        expected += [Address(a.display_name or None, None, a.username, a.domain) for a in group.addresses]
        if group.display_name is not None:
            expected.append(Address(None, None, None, None))
    assert mime.parse_addresses(value) == expected


@pytest.mark.parametrize("value,expected", [
    ("=?utf-8?q?Jos=C3=A9?= Dupont", "José Dupont"),
    ("=?UTF-8?B?w6l0w6k=?= =?utf-8?b?w6l0w6k=?=", "étéété"),
    ("=?utf-8?q?=C3?= =?utf-8?q?=A9?=", "é"),                       # UTF-8 split across words
    ("=?iso-8859-1?q?caf=E9?=  =?utf-8?q?_cr=C3=A8me?=", "café crème"),
    ("a =?utf-8?q?b?= c", "a b c"),
    ("=?utf-8*fr?q?oui?=", "oui"),                                   # RFC 2231 language
    ("=?utf-8?b?QQ?=", "A"),                                          # missing padding
    ("=?utf-8?b?Q?=", "=?utf-8?b?Q?="),                               # undecodable: kept
    ("=?x-unknown?q?abc?=", "abc"),
    ("=?base64?q?abc?=", "abc"),                                      # not a text codec
    ("plain \udce9t\udce9 \udc80", "plain été €"),                    # raw 8-bit as windows-1252
    ("lone \ud800 surrogate", "lone \ufffd surrogate"),
    ("", ""),
])
def test_decode_header(value: str, expected: str) -> None:
    assert mime.decode_header(value) == expected


@pytest.mark.parametrize("value", ["=?utf-8?q?R=C3=A9union_de_rentr=C3=A9e?=", "Re: =?iso-8859-1?q?=E9t=E9?= ok",
                                   "=?utf-8?b?w6k=?= =?utf-8?b?w6k=?=", "no words at all"])
def test_decode_header_agrees_with_email_header(value: str) -> None:
    assert mime.decode_header(value) == str(make_header(std_decode_header(value)))


def test_decode_header_never_raises() -> None:
    rng = random.Random(2047)
    alphabet = "=?_QqBbutf-8iso8859 \t\r\n\udce9\ud800é€abc/+"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        out = mime.decode_header(text)
        out.encode("utf-8")          # no surrogates left


def test_mime_fields() -> None:
    raw = (b"Content-Type: Text/X-MyOwn; (comment) Charset=\"us-ascii\"; foo=\"quoted\\\"string\";\r\n"
           b" name*0*=utf-8''%C3%A9t; name*1=\"e.txt\"; name=plain.txt\r\n"
           b"Content-ID: <foo@example.com>\r\nContent-MD5: Q2hlY2s=\r\n"
           b"Content-Disposition: INLINE; filename*=iso-8859-1''%E9t%E9.txt\r\n"
           b"Content-Description: hello\r\nContent-Language: fr, en (comment)\r\n"
           b"Content-Location: http://example.com/x\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\nx\r\n")
    p = parse(raw).root
    assert (p.maintype, p.subtype) == ("text", "x-myown")
    assert p.params == [("charset", "us-ascii"), ("foo", 'quoted"string'), ("name", "éte.txt")]
    assert (p.id, p.md5, p.description, p.location) == ("<foo@example.com>", "Q2hlY2s=", "hello",
                                                        "http://example.com/x")
    assert p.disposition == ("inline", [("filename", "été.txt")])
    assert (p.language, p.encoding, p.body_size, p.body_lines) == (["fr", "en"], "QUOTED-PRINTABLE", 3, 1)
    bad = parse(b"Content-Type: garbage\nContent-Transfer-Encoding: ?invalid\n\nx").root
    assert (bad.maintype, bad.subtype, bad.params, bad.encoding) == ("text", "plain", [("charset", "us-ascii")], "7BIT")


# -- delimiters: the cases where parsers disagree (values as Dovecot 2.3 gives) -------

def test_delimiter_line_break_and_empty_bodies() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nA\r\n--x\r\n"
           b"Content-Type: text/html\r\n\r\n--x--\r\n")
    a, b = parse(raw).root.children
    assert (raw[a.body_offset:a.end_offset], a.body_lines) == (b"A", 0)
    # the blank line's break belongs to the delimiter: an empty body, a header without it
    assert raw[b.header_offset:b.body_offset] == b"Content-Type: text/html\r\n"
    assert (b.body_size, b.subtype) == (0, "html")


def test_delimiter_prefers_exact_match_over_prefix() -> None:
    inner_longer = (b"Content-Type: multipart/mixed; boundary=\"abc\"\n\n--abc\n"
                    b"Content-Type: multipart/mixed; boundary=\"abcdef\"\n\n--abcdef\n\ninner\n--abcdef--\n--abc--\n")
    outer_longer = (b"Content-Type: multipart/mixed; boundary=\"abcdef\"\n\n--abcdef\n"
                    b"Content-Type: multipart/mixed; boundary=\"abc\"\n\n--abc\n\ninner\n--abcdef--\n")
    for raw in (inner_longer, outer_longer):
        info = parse(raw)
        check_invariants(raw, info)
        (mp,) = info.root.children
        (leaf,) = mp.children
        assert raw[leaf.body_offset:leaf.end_offset] == b"inner"
    padded = b"Content-Type: multipart/mixed; boundary=x\n\n--x \t\n\nA\n--x--junk\nepilogue"
    (leaf,) = parse(padded).root.children
    assert padded[leaf.body_offset:leaf.end_offset] == b"A"


def test_same_boundary_nested_belongs_to_the_innermost() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=x\n\n--x\n"
           b"Content-Type: multipart/alternative; boundary=x\n\n--x\n\nA\n--x\n\nB\n--x--\n"
           b"--x\n\nC\n--x--\n")
    info = parse(raw)
    check_invariants(raw, info)
    alternative, c = info.root.children
    assert [raw[p.body_offset:p.end_offset] for p in alternative.children] == [b"A", b"B"]
    assert raw[c.body_offset:c.end_offset] == b"C"


def test_sections_of_a_message_rfc822_root() -> None:
    raw = b"Content-Type: message/rfc822\n\nSubject: in\n\nbody\n"
    info = parse(raw)

    def sect(s: str) -> bytes:
        a, b = mime.section_range(info, s)
        return raw[a:b]

    assert sect("1") == sect("TEXT") == b"Subject: in\n\nbody\n"
    assert (sect("1.HEADER"), sect("1.TEXT"), sect("1.1")) == (b"Subject: in\n\n", b"body\n", b"body\n")
    assert info.root.envelope is not None and info.root.envelope.subject == "in"


def test_unusable_multipart_and_message_become_opaque() -> None:
    for raw in (b"Content-Type: multipart/mixed\n\nno boundary\n",
                b"Content-Type: multipart/mixed; boundary=zz\n\nnever a delimiter\n",
                b"Content-Type: multipart/mixed; boundary=\"" + b"b" * 201 + b"\"\n\n--" + b"b" * 201 + b"\n\nx\n",
                b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nRnJvbTogYUBiCgpoaQo=\n"):
        info = parse(raw)
        check_invariants(raw, info)
        assert (info.root.maintype, info.root.subtype, info.root.children) == ("application", "octet-stream", [])


def test_unclosed_boundaries_end_at_eof() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\n"
           b"Content-Type: multipart/mixed; boundary=c\n\n--c\n\nxx\n")
    info = parse(raw)
    check_invariants(raw, info)
    leaf = info.root.children[0].children[0]
    assert raw[leaf.body_offset:] == b"xx\n" and leaf.end_offset == len(raw)


# -- JSON -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_json_round_trip(name: str) -> None:
    info = parse(SAMPLES[name])
    text = mime.to_json(info)
    assert text.isascii() and mime.from_json(text) == info
    assert mime.to_json(mime.from_json(text)) == text
    assert len(text) < 4 * 1024           # compact: a few hundred bytes per part


def test_from_json_rejects_garbage() -> None:
    for bad in ("", "nope", "[]", "[2, 0]", "[1]", '[1, 0, 0, null, {}, []]', "{}"):
        with pytest.raises(ValueError):
            mime.from_json(bad)


# -- streaming: chunk sizes, memory ---------------------------------------------------

@pytest.mark.parametrize("name", ["mixed-crlf", "forward-lf", "digest-crlf", "related-lf"])
def test_chunk_size_does_not_matter(name: str) -> None:
    raw = SAMPLES[name]
    expected = mime.to_json(parse(raw))
    for size in (1, 2, 3, 7, 64, 1000):
        assert mime.to_json(parse(raw, size)) == expected


class GeneratedStream:
    """A read()-able stream over a generator: the message never exists whole."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks, self.pending = blocks, b""

    def read(self, n: int = -1) -> bytes:
        while len(self.pending) < n:
            block = next(self.blocks, None)
            if block is None:
                break
            self.pending += block
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


def repeat(block: bytes, total: int) -> Iterator[bytes]:
    for _ in range(total // len(block)):
        yield block


def attachment_message(total: int) -> Iterator[bytes]:
    yield (b"From: a@b.fr\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n"
           b"--zz\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
           b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    yield from repeat(b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n" * 800, total)
    yield b"\r\n--zz--\r\n"


def measure(blocks: Iterator[bytes]) -> tuple[MessageInfo, int]:
    tracemalloc.start()
    try:
        info = mime.parse_message(GeneratedStream(blocks))  # type: ignore[arg-type]
        return info, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_for_a_50_mb_attachment() -> None:
    total = 50 * 1024 * 1024
    info, peak = measure(attachment_message(total))
    assert peak < 5 * 1024 * 1024, peak
    text, blob = info.root.children
    size = total // (78 * 800) * 78 * 800
    assert (blob.body_size, blob.body_lines, blob.encoding) == (size, size // 78, "BASE64")
    assert text.body_size == 14 and info.size == blob.end_offset + len(b"\r\n--zz--\r\n")


def test_memory_is_bounded_without_any_newline() -> None:
    total = 50 * 1024 * 1024
    info, peak = measure(repeat(b"x" * 65536, total))      # one 50 MB header line
    assert peak < 5 * 1024 * 1024, peak
    assert (info.size, info.header_size, info.root.body_size) == (total, total, 0)
    head = iter([b"Subject: " + b"s" * 65536, *repeat(b"s" * 65536, total), b"\n\n", *repeat(b"y" * 65536, total)])
    info, peak = measure(head)
    assert peak < 5 * 1024 * 1024, peak
    assert info.envelope.subject == "s" * mime.MAX_FIELD
    assert info.root.body_size == total and info.size == 2 * total + 65536 + 11


def test_only_stream_errors_propagate() -> None:
    class Broken:
        def read(self, n: int) -> bytes:
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        mime.parse_message(Broken())  # type: ignore[arg-type]


# -- hostile input --------------------------------------------------------------------

def test_deep_nesting_is_capped() -> None:
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(10_000))
    info = parse(raw + b"\nbody\n")
    check_invariants(raw + b"\nbody\n", info)
    depth, p = 0, info.root
    while p.children:
        depth, p = depth + 1, p.children[-1]
    assert depth <= mime.MAX_DEPTH and p.maintype == "application"
    nested = b"Content-Type: message/rfc822\n\n" * 10_000 + b"Subject: deep\n\nbody"
    info = parse(nested)
    check_invariants(nested, info)
    depth, p = 0, info.root
    while p.children:
        depth, p = depth + 1, p.children[0]
    assert depth == mime.MAX_DEPTH and mime.from_json(mime.to_json(info)) == info


def test_part_count_is_capped() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\nx\n" * 100_000 + b"--b--\n"
    info = parse(raw)
    check_invariants(raw, info)
    children = info.root.children
    assert len(children) == mime.MAX_PARTS - 1
    assert raw[children[-1].body_offset:children[-1].end_offset] == b"x"
    assert info.root.end_offset == len(raw)       # the rest is the multipart's body


def test_header_caps() -> None:
    raw = (b"Subject: " + b"s" * 200_000 + b"\r\n folded\r\n" + b"X-Junk: j\r\n" * 200_000
           + b"From: late@x.fr\r\n\r\nbody")
    info = parse(raw)
    check_invariants(raw, info)
    assert info.envelope.subject == "s" * mime.MAX_FIELD
    assert info.envelope.from_ == [Address(None, None, "late", "x.fr")]
    assert raw[info.root.body_offset:] == b"body"


@pytest.mark.parametrize("raw", [
    b"", b"\n", b"\r\n\r\n", b"\0" * 1000, b"\xff\xfe\xfd\n\n\xc3", b"no header at all\n",
    b"Subject: x", b"Subject: x\r", b"Content-Type: multipart/mixed; boundary=b\n\n--b",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b--", b"Content-Type: message/rfc822\n\n",
    b"Content-Type: multipart/mixed; boundary=\"\"\n\n--\n\nx\n",
    b"Content-Type: multipart/digest; boundary=d\n\n--d\n--d\n--d--\n",
    b"To: " + b"a@b," * 100_000 + b"\n\n",
    b"Content-Type: text/plain; " + b"(" * 50_000 + b"\n\n",
    b"Content-Type: text/plain; name*0*=x-bad''%ZZ%; name*1*=%C3\n\n",
    b"X" * 3_000_000 + b"\n\n" + b"-" * 1_000_000,
])
def test_hostile_inputs_do_not_raise(raw: bytes) -> None:
    info = parse(raw)
    check_invariants(raw, info)
    assert mime.from_json(mime.to_json(info)) == info


TOKENS = [b"\n", b"\r\n", b"\r", b"--", b"\n--", b"\n\n", b"\0", b"\xff", b"\xc3", b":", b'"', b"(", b")",
          b"<", b">", b";", b"=?utf-8?q?", b"?=", b" ", b"\t", b"Content-Type: multipart/mixed; boundary=",
          b"Content-Type: message/rfc822\n", b"Content-Transfer-Encoding: base64\n", b"*0*=utf-8''%C3"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    boundaries = re.findall(rb'boundary="?([^"\r\n;]+)', data) or [b"x"]
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b) + 1)
        op = rng.randrange(7)
        if op == 0:
            del b[i:i + rng.randint(1, 300)]
        elif op == 1:
            b[i:i] = rng.choice(TOKENS)
        elif op == 2 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 3:
            b[i:i] = b[i:i + rng.randint(1, 400)]
        elif op == 4:
            b[i:i] = b"\n--" + rng.choice(boundaries) + rng.choice([b"", b"--", b" "]) + rng.choice([b"\n", b"\r\n", b""])
        elif op == 5:
            b[i:i + 500] = b[i:i + 500].replace(b"\r\n", b"\n")
        else:
            del b[i:]
    return bytes(b)


def test_fuzz_mutated_real_messages() -> None:
    rng = random.Random(20250901)
    seeds = list(SAMPLES.values())
    for _ in range(800):
        raw = mutate(rng, rng.choice(seeds))
        info = parse(raw, rng.choice([1, 5, 64, 4096]))
        check_invariants(raw, info)
        text = mime.to_json(info)
        assert mime.from_json(text) == info
        assert mime.to_json(parse(raw)) == text            # chunking never changes the result
        for number, part in all_parts(info.root):
            assert mime.section_range(info, number) == (part.body_offset, part.end_offset)
            a, b = mime.section_range(info, number + ".MIME")
            assert 0 <= a <= b <= len(raw)
        for section in ("", "HEADER", "TEXT", "1"):
            a, b = mime.section_range(info, section)
            assert 0 <= a <= b <= len(raw)
