"""IMAP response formatting without I/O: values in, wire bytes out.

The grammar is RFC 3501 section 9 (IMAP4rev1), with RFC 9051 (IMAP4rev2)
and RFC 6855 (UTF8=ACCEPT) where they are compatible.  The session layer
adds tags and writes the bytes; nothing here touches a socket, so every
response shape can be tested byte for byte.  Choices made once here, so
that every response agrees:

* A string is an atom only where the grammar allows one (astring), never
  ``NIL`` (a client would read it as "no value"); otherwise a quoted
  string when it can be one (short, no CR, LF or NUL, 7-bit unless the
  client enabled UTF8=ACCEPT and the bytes are valid UTF-8); otherwise a
  literal ``{n}\\r\\n...``.  NUL is legal in neither form (it needs
  BINARY's literal8): it is replaced by 0x80, as Dovecot does in bodies.
* Header values (ENVELOPE, BODYSTRUCTURE) are sent as their raw bytes:
  the store keeps them as ``str`` decoded with UTF-8 + ``surrogateescape``
  and ``.encode("utf-8", "surrogateescape")`` gives the original bytes
  back.  RFC 2047 words are sent as they are, clients decode them.
* BODYSTRUCTURE and BODY follow Dovecot 2.3's style (quoted lowercase
  type, subtype and encoding, parameter lists, NIL for absent fields), so
  clients that work with Dovecot see what they know.  Sizes are those of
  the message as served, with CRLF line ends.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Iterable
from urllib.parse import quote_from_bytes

from ..store import mime
from ..store.names import encode_mutf7

__all__ = [
    "MAX_QUOTED", "atom_ok", "astring", "string", "nstring", "quoted", "literal", "mailbox",
    "flag_list", "internal_date", "sequence_set", "address_list", "envelope", "body_structure",
    "fetch_response", "status_response", "list_response", "search_response", "esearch_response",
    "vanished_response",
]

NIL = b"NIL"
MAX_QUOTED = 1000
"""Longest string sent quoted; longer ones go as literals (no client line-length surprises)."""

# ATOM-CHAR: any CHAR (0x01-0x7f) but atom-specials: ( ) { SP CTL % * " \ ]
_ATOM = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+')
# ASTRING-CHAR: ATOM-CHAR or resp-specials ("]")
_ASTRING = re.compile(rb'[^(){ %*"\\\x00-\x1f\x7f-\xff]+')
_NOT_QUOTABLE = re.compile(rb"[\x00\r\n]")
_8BIT = re.compile(rb"[\x80-\xff]")
_ESCAPE = re.compile(rb'(["\\])')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Flags in the order Dovecot writes them (clients and humans compare outputs).
_SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
_SYSTEM_RANK = {f.lower(): (i, f) for i, f in enumerate(_SYSTEM_FLAGS)}


def _raw(s: str | bytes) -> bytes:
    """The bytes of a value: str from the store goes back to its original bytes."""
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


# --- strings -------------------------------------------------------------------------


def atom_ok(s: str) -> bool:
    """Whether `s` can be sent as an atom (RFC 3501 ``atom``): the only form
    that needs no quoting, used for flags and astrings."""
    return bool(s) and _ATOM.fullmatch(_raw(s)) is not None


def quoted(data: bytes) -> bytes:
    """A quoted string with ``\\`` and ``"`` escaped; the caller checked it may be one."""
    return b'"' + _ESCAPE.sub(rb"\\\1", data) + b'"'


def literal(data: bytes) -> bytes:
    """A synchronizing literal ``{n}\\r\\n`` + data (NUL, illegal there, becomes 0x80)."""
    data = data.replace(b"\0", b"\x80")
    return b"{%d}\r\n" % len(data) + data


def _quotable(data: bytes, utf8: bool) -> bool:
    if len(data) > MAX_QUOTED or _NOT_QUOTABLE.search(data):
        return False
    if _8BIT.search(data) is None:
        return True
    if not utf8:  # RFC 3501: 8-bit data only in literals
        return False
    try:  # RFC 6855: quoted strings may carry UTF-8, and only UTF-8
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def string(s: str | bytes, *, utf8: bool = False) -> bytes:
    """A string, quoted when it can be, else a literal.  `utf8` is true once the
    client did ENABLE UTF8=ACCEPT: valid UTF-8 may then be quoted."""
    data = _raw(s)
    return quoted(data) if _quotable(data, utf8) else literal(data)


def nstring(s: str | bytes | None, *, utf8: bool = False) -> bytes:
    """A string, or NIL for an absent value (an empty value is ``""``, not NIL)."""
    return NIL if s is None else string(s, utf8=utf8)


def astring(s: str | bytes, *, utf8: bool = False) -> bytes:
    """An atom when the grammar allows it (never NIL, which would read as no value),
    else a string: the shortest form clients expect for names."""
    data = _raw(s)
    if data and _ASTRING.fullmatch(data) and data.upper() != NIL:
        return data
    return string(data, utf8=utf8)


def mailbox(name: str, utf8: bool = False) -> bytes:
    """A folder name ("Archives/2026", "/" separated) as sent in LIST, STATUS...:
    modified UTF-7 per level (RFC 3501 5.1.3) unless the client enabled
    UTF8=ACCEPT (RFC 6855 3: names are then sent as UTF-8); INBOX in capitals."""
    levels = name.split("/")
    if levels[0].upper() == "INBOX":
        levels[0] = "INBOX"
    if not utf8:
        levels = [encode_mutf7(level) for level in levels]
    return astring("/".join(levels), utf8=utf8)


# --- small values --------------------------------------------------------------------


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Label)``: system flags first in Dovecot's order, then keywords
    sorted, so a message's flags always read the same.  ``\\*`` (PERMANENTFLAGS)
    comes last.  A flag that is not an atom is a bug upstream: ValueError."""
    system: dict[int, str] = {}
    keywords: set[str] = set()
    star = False
    for f in flags:
        if f == "\\*":
            star = True
        elif (known := _SYSTEM_RANK.get(f.lower())) is not None:
            system[known[0]] = known[1]
        elif atom_ok(f[1:] if f.startswith("\\") else f):
            keywords.add(f)
        else:
            raise ValueError(f"not a flag: {f!r}")
    out = [system[i] for i in sorted(system)] + sorted(keywords, key=lambda k: (k.casefold(), k))
    if star:
        out.append("\\*")
    return b"(" + " ".join(out).encode("ascii") + b")"


def internal_date(ts: float, tz_offset_minutes: int = 0) -> bytes:
    """INTERNALDATE ``"25-Nov-2026 01:47:28 +0000"`` (RFC 3501 date-time: day padded
    with a space, English month names whatever the locale, numeric zone)."""
    if not -24 * 60 < tz_offset_minutes < 24 * 60:
        raise ValueError(f"bad time zone offset: {tz_offset_minutes} minutes")
    d = datetime.fromtimestamp(ts, timezone(timedelta(minutes=tz_offset_minutes)))
    hh, mm = divmod(abs(tz_offset_minutes), 60)
    sign = "-" if tz_offset_minutes < 0 else "+"
    return (f'"{d.day:2d}-{_MONTHS[d.month - 1]}-{d.year:04d} '
            f'{d.hour:02d}:{d.minute:02d}:{d.second:02d} {sign}{hh:02d}{mm:02d}"').encode("ascii")


def sequence_set(numbers: Iterable[int]) -> bytes:
    """``1:3,5,7:9`` from any numbers (sorted, deduplicated): short SEARCH,
    ESEARCH, COPYUID and VANISHED answers.  The grammar has no empty set and
    no 0: ValueError."""
    ns = sorted(set(numbers))
    if not ns:
        raise ValueError("an empty sequence set cannot be written")
    if ns[0] < 1:
        raise ValueError(f"not a message number: {ns[0]}")
    out: list[str] = []
    start = prev = ns[0]
    for n in ns[1:] + [0]:
        if n != prev + 1:
            out.append(str(start) if start == prev else f"{start}:{prev}")
            start = n
        prev = n
    return ",".join(out).encode("ascii")


# --- ENVELOPE ------------------------------------------------------------------------


def address_list(addresses: list[mime.Address], utf8: bool = False) -> bytes:
    """``((name adl mailbox host)...)`` or NIL when empty; group markers
    (host NIL) are written as they are, as RFC 3501 7.4.2 describes."""
    if not addresses:
        return NIL
    return b"(" + b"".join(
        b"(" + b" ".join(nstring(v, utf8=utf8) for v in (a.name, a.adl, a.mailbox, a.host)) + b")"
        for a in addresses) + b")"


def envelope(env: mime.Envelope, utf8: bool = False) -> bytes:
    """The ENVELOPE parenthesized list, values raw (8-bit bytes force a literal
    unless `utf8`): date, subject, from, sender, reply-to, to, cc, bcc,
    in-reply-to, message-id."""
    return b"(" + b" ".join([
        nstring(env.date, utf8=utf8), nstring(env.subject, utf8=utf8),
        *(address_list(x, utf8) for x in (env.from_, env.sender, env.reply_to, env.to, env.cc, env.bcc)),
        nstring(env.in_reply_to, utf8=utf8), nstring(env.message_id, utf8=utf8),
    ]) + b")"


# --- BODYSTRUCTURE -------------------------------------------------------------------


def _param_list(params: list[tuple[str, str]], utf8: bool) -> bytes:
    """``("name" "value" ...)`` or NIL.  A value that is text beyond the raw
    bytes of the header (decoded from RFC 2231 ``name*=charset''...``) goes back
    to the RFC 2231 form, in UTF-8, as Dovecot sends it: 7-bit, and clients
    decode it already."""
    if not params:
        return NIL
    out: list[bytes] = []
    for name, value in params:
        if any(ord(c) > 0x7F for c in value) and not _is_raw_utf8(value, utf8):
            raw = value.encode("utf-8", "surrogateescape")
            charset = b"utf-8" if _valid_utf8(raw) else b""
            out += [string(name + "*"), string(charset + b"''" + quote_from_bytes(raw, safe="").encode("ascii"))]
        else:
            out += [string(name, utf8=utf8), string(value, utf8=utf8)]
    return b"(" + b" ".join(out) + b")"


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_raw_utf8(value: str, utf8: bool) -> bool:
    """A UTF-8 client gets UTF-8 text quoted, the shortest faithful form."""
    return utf8 and not any(0xDC80 <= ord(c) <= 0xDCFF for c in value)


def _extension(p: mime.Part, first: bytes, utf8: bool) -> bytes:
    """body-ext-1part / body-ext-mpart after their first field: disposition,
    language, location (all four always written, as Dovecot does)."""
    if p.disposition is None:
        dsp = NIL
    else:
        dsp = b"(" + string(p.disposition[0], utf8=utf8) + b" " + _param_list(p.disposition[1], utf8) + b")"
    lang = NIL if not p.language else b"(" + b" ".join(string(t, utf8=utf8) for t in p.language) + b")"
    return b" " + b" ".join([first, dsp, lang, nstring(p.location, utf8=utf8)])


def _opaque(p: mime.Part) -> bool:
    """A message/rfc822 without its parsed content cannot be written as body-type-msg."""
    return p.maintype == "message" and p.subtype == "rfc822" and (not p.children or p.envelope is None)


def body_structure(part: mime.Part, extensible: bool, *, utf8: bool = False) -> bytes:
    """BODYSTRUCTURE (`extensible`, with md5, disposition, language and location)
    or BODY, per RFC 3501 7.4.2, recursively.

    Sizes are those of the message as served, with CRLF line ends: the stored
    body size plus its bare LFs (for a message/rfc822 part, its body is the
    whole encapsulated message).  Line counts are LFs, as Dovecot counts."""
    if part.maintype == "multipart" and part.children:
        out = b"".join(body_structure(c, extensible, utf8=utf8) for c in part.children)
        out += b" " + string(part.subtype, utf8=utf8)
        if extensible:
            out += _extension(part, _param_list(part.params, utf8), utf8)
        return b"(" + out + b")"
    maintype, subtype = ("application", "octet-stream") if _opaque(part) else (part.maintype, part.subtype)
    fields = [string(maintype, utf8=utf8), string(subtype, utf8=utf8), _param_list(part.params, utf8),
              nstring(part.id, utf8=utf8), nstring(part.description, utf8=utf8),
              string(part.encoding.lower(), utf8=utf8), b"%d" % (part.body_size + part.body_bare_lf)]
    if (maintype, subtype) == ("message", "rfc822"):
        assert part.envelope is not None
        fields += [envelope(part.envelope, utf8), body_structure(part.children[0], extensible, utf8=utf8),
                   b"%d" % part.body_lines]
    elif maintype == "text":
        fields.append(b"%d" % part.body_lines)
    out = b" ".join(fields)
    if extensible:
        out += _extension(part, nstring(part.md5, utf8=utf8), utf8)
    return b"(" + out + b")"


# --- untagged responses --------------------------------------------------------------


def fetch_response(seq: int, items: list[tuple[bytes, bytes]]) -> bytes:
    """``* 12 FETCH (UID 40 FLAGS (\\Seen))\\r\\n`` from formatted (name, value) pairs."""
    return b"* %d FETCH (" % seq + b" ".join(name + b" " + value for name, value in items) + b")\r\n"


def status_response(name_bytes: bytes, items: Iterable[tuple[str, int]]) -> bytes:
    """``* STATUS name (MESSAGES 3 UIDNEXT 7)\\r\\n``; `name_bytes` from :func:`mailbox`."""
    body = " ".join(f"{k.upper()} {int(v)}" for k, v in items).encode("ascii")
    return b"* STATUS " + name_bytes + b" (" + body + b")\r\n"


def list_response(attributes: list[str], delimiter: str, name_bytes: bytes, extra: bytes = b"",
                  *, command: str = "LIST") -> bytes:
    """``* LIST (\\HasNoChildren) "/" INBOX\\r\\n`` (or LSUB); an empty delimiter
    is NIL (flat namespace); `extra` is LIST-EXTENDED data such as
    ``("CHILDINFO" ("SUBSCRIBED"))``, written after a space."""
    delim = string(delimiter) if delimiter else NIL
    out = b"* " + command.encode("ascii") + b" (" + " ".join(attributes).encode("ascii") + b") "
    out += delim + b" " + name_bytes
    if extra:
        out += b" " + extra
    return out + b"\r\n"


def search_response(numbers: Iterable[int], modseq: int | None = None) -> bytes:
    """``* SEARCH 2 3 6\\r\\n`` (always sent, empty when nothing matched), with
    ``(MODSEQ n)`` for CONDSTORE (RFC 7162 3.1.5)."""
    out = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
    if modseq is not None:
        out += b" (MODSEQ %d)" % modseq
    return out + b"\r\n"


def esearch_response(tag: str | None, items: Iterable[tuple[str, int | bytes]], uid: bool = False) -> bytes:
    """``* ESEARCH (TAG "A1") UID MIN 2 COUNT 3 ALL 2,10:11\\r\\n`` (RFC 4731);
    ints are written as numbers, bytes (e.g. from :func:`sequence_set`) as they are."""
    out = b"* ESEARCH"
    if tag is not None:
        out += b" (TAG " + string(tag) + b")"
    if uid:
        out += b" UID"
    for name, value in items:
        out += b" " + name.upper().encode("ascii") + b" " + (b"%d" % value if isinstance(value, int) else value)
    return out + b"\r\n"


def vanished_response(uids: Iterable[int], earlier: bool = False) -> bytes:
    """``* VANISHED (EARLIER) 41,43:116\\r\\n`` (RFC 7162 QRESYNC)."""
    return b"* VANISHED " + (b"(EARLIER) " if earlier else b"") + sequence_set(uids) + b"\r\n"
