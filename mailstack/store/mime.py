"""Streaming MIME structure parser for the Maildir store's index.

The store indexes every message once; IMAP then answers ENVELOPE,
BODYSTRUCTURE, RFC822.SIZE and BODY[section] from the index and byte ranges
of the file, without parsing again.  So this module reads a message once,
in chunks, keeps no body and only capped header values (memory does not grow
with the message), and returns plain data; formatting IMAP is left to the
IMAP layer.

Conventions, chosen once and relied upon by the index and the IMAP layer:

* Offsets are offsets in the bytes given.  A line ends at LF, with or
  without a CR before it (a lone CR is an ordinary byte), so CRLF, LF-only
  and mixed files all parse.  IMAP sends CRLF: ``*_bare_lf`` count the LFs
  without CR, which a server converting on the fly adds to the sizes.
* Header values are unfolded, stripped, and decoded as UTF-8 with
  ``surrogateescape``: ``value.encode("utf-8", "surrogateescape")`` gives
  back the exact bytes (IMAP must send them raw); :func:`to_json` escapes the
  surrogates, so the stored JSON is plain ASCII.  :func:`decode_header`
  turns them into text for SEARCH and SORT.
* Delimiters follow Dovecot: a line starting with ``--boundary`` of any
  open multipart, innermost first, an exact line (only white space after
  it) preferred over a prefix match; the line break before it belongs to it.
  A header ends at its blank line (or a delimiter, or EOF): as for Dovecot,
  a line that is no field stays in the header and hides nothing after it.
  Sizes and line counts agree with Dovecot's BODYSTRUCTURE (LFs counted).
* Nothing but the stream's own I/O errors can raise.  Caps bound memory and
  time on hostile input: beyond them bytes still count for offsets and sizes.
* Part types are what BODYSTRUCTURE shows: a multipart always has children,
  a message/rfc822 exactly one child and an envelope.  One that cannot be
  descended into (no boundary or no part found, base64-encoded message,
  nesting or part cap) becomes application/octet-stream, an opaque body.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import unquote_to_bytes

__all__ = [
    "Address", "Envelope", "Part", "MessageInfo", "parse_message", "section_range",
    "to_json", "from_json", "decode_header", "parse_addresses", "HEADER_NAMES",
]

MAX_DEPTH = 100                # nesting levels; deeper multiparts/messages stay opaque
MAX_PARTS = 10_000             # parts per message (Dovecot's default); then the rest is body
MAX_FIELD = 64 * 1024          # bytes kept of one header field value
MAX_HEADER = 1024 * 1024       # bytes kept of one part's header
MAX_STORED = 8 * 1024 * 1024   # bytes kept of header values in one message
MAX_ADDRESSES = 50_000         # addresses parsed in one message
MAX_BOUNDARY = 200             # longer boundary parameters are unusable (RFC 2046 says 70)
_HEAD = 2 + MAX_BOUNDARY + 2 + 80   # bytes of a line looked at to recognise a delimiter
_PEEK = 1024                   # bytes of a header line looked at to find its name

HEADER_NAMES = ("from", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to",
                "references", "content-type", "list-id", "reply-to", "sender")
_MIME_FIELDS = frozenset({"content-type", "content-transfer-encoding", "content-id",
                          "content-description", "content-md5", "content-disposition",
                          "content-language", "content-location"})
_MESSAGE_FIELDS = _MIME_FIELDS | frozenset(HEADER_NAMES)
_IDENTITY = frozenset({"7BIT", "8BIT", "BINARY"})   # encodings a message/rfc822 may have
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_FOLDED = re.compile(rb"(?:[ \t][^\n]*+\n)++")
_EOL = re.compile(rb"\r?\n")
_TOKEN = r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+"
_TYPE = re.compile(rf"\s*({_TOKEN})\s*/\s*({_TOKEN})")
_FIRST_TOKEN = re.compile(rf"\s*({_TOKEN})")
_ONLY_TOKEN = re.compile(rf"\s*({_TOKEN})\s*$")


@dataclass
class Address:
    """An RFC 3501 address.  A group is a start marker (mailbox = group name,
    host None), its members, then an end marker (all None)."""
    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@dataclass
class Envelope:
    """RFC 3501 ENVELOPE data, raw (RFC 2047 words kept: IMAP sends them as is).
    An empty address list is NIL; absent Sender/Reply-To are copies of From."""
    date: str | None = None
    subject: str | None = None
    from_: list[Address] = field(default_factory=list)
    sender: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    in_reply_to: str | None = None
    message_id: str | None = None


@dataclass
class Part:
    """One MIME entity: BODYSTRUCTURE fields and byte ranges.

    header_offset <= body_offset <= end_offset; the MIME header is
    [header_offset, body_offset) including its blank line, the body
    [body_offset, end_offset).  body_lines counts LFs in the body (as Dovecot
    does); header_bare_lf/body_bare_lf count LFs without a CR before them.
    Types are lowercase; text/* without a charset gets ("charset", "us-ascii")
    first (RFC 2046 default); parameter names are lowercase, RFC 2231 values
    decoded and joined.  message/rfc822: children == [encapsulated root part]
    and envelope set; multipart: the parts, never empty.
    """
    header_offset: int = 0
    body_offset: int = 0
    end_offset: int = 0
    maintype: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=list)
    id: str | None = None
    description: str | None = None
    encoding: str = "7BIT"
    md5: str | None = None
    disposition: tuple[str, list[tuple[str, str]]] | None = None
    language: list[str] | None = None
    location: str | None = None
    body_size: int = 0
    body_lines: int = 0
    header_bare_lf: int = 0
    body_bare_lf: int = 0
    children: list[Part] = field(default_factory=list)
    envelope: Envelope | None = None


@dataclass
class MessageInfo:
    """Everything the index keeps about one message (see module docstring)."""
    size: int
    header_size: int
    envelope: Envelope
    headers: dict[str, str]   # HEADER_NAMES present, first occurrence, raw unfolded
    root: Part


class _Bounds(NamedTuple):
    delims: tuple[bytes, ...]      # b"--" + boundary of each open multipart, outermost first
    rx: re.Pattern[bytes] | None   # "\n" + any of them; None when too many to compile cheaply
    keep: int                      # bytes kept at a chunk's end so no match is cut

    def find(self, buf: bytes, start: int, end: int) -> int:
        """Index of the LF before the first line of buf[start:end] starting with a delimiter."""
        if self.rx is not None:
            m = self.rx.search(buf, start, end)
            return -1 if m is None else m.start()
        i = buf.find(b"\n--", start, end)
        while i >= 0 and not buf.startswith(self.delims, i + 1, end):
            i = buf.find(b"\n--", i + 1, end)
        return i


class _Hit(NamedTuple):
    idx: int       # index into delims; -1 for end of input
    closing: bool  # "--boundary--"
    end: int       # where the parts ending here end (before the delimiter's line break)
    nl: int        # LFs before `end`
    bare: int      # bare LFs before `end`


def _bounds(delims: tuple[bytes, ...]) -> _Bounds:
    """A regex finds delimiters at C speed; deep (hostile) nesting uses find() instead,
    as compiling one regex per multipart would cost more than it saves."""
    rx = re.compile(b"\n(?:" + b"|".join(map(re.escape, delims)) + b")") if len(delims) <= 8 else None
    return _Bounds(delims, rx, 1 + max(map(len, delims)))


class _Parser:
    """One pass over the stream: a buffer, counters, and the recursive descent."""

    def __init__(self, stream: BinaryIO, chunk_size: int) -> None:
        self.stream, self.chunk = stream, max(1, int(chunk_size))
        self.buf, self.base, self.pos, self.eof = b"", 0, 0, False
        self.nl = self.bare = 0          # LFs / bare LFs consumed so far
        self.parts = self.stored = self.addresses = 0
        self.overflow = False            # part cap reached: stop looking for delimiters

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _more(self) -> bool:
        """Read one chunk; keep 4 bytes behind pos for CR/LF look-behind."""
        if self.eof:
            return False
        data = self.stream.read(self.chunk)
        if not data:
            self.eof = True
            return False
        drop = max(0, self.pos - 4)
        self.buf = self.buf[drop:] + bytes(data)
        self.base += drop
        self.pos -= drop
        return True

    def _advance(self, to: int) -> None:
        """Consume buf[pos:to], counting its LFs and bare LFs."""
        buf, p = self.buf, self.pos
        n = buf.count(b"\n", p, to)
        if n:
            crlf = buf.count(b"\r\n", p, to) + (buf[p] == 10 and p > 0 and buf[p - 1] == 13)
            self.nl += n
            self.bare += n - crlf
        self.pos = to

    def _peek(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n and self._more():
            pass
        return self.buf[self.pos:self.pos + n]

    def _line(self, keep: int) -> bytes:
        """Consume one line, however long; return at most `keep` bytes of it."""
        got, size = [], 0
        while True:
            i = self.buf.find(b"\n", self.pos)
            end = len(self.buf) if i < 0 else i + 1
            if size <= keep + 1:
                got.append(self.buf[self.pos:min(end, self.pos + keep + 2 - size)])
                size += len(got[-1])
            self._advance(end)
            if i >= 0 or not self._more():
                break
        line = b"".join(got)
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        return line[:keep]

    def _delimiter(self, bounds: _Bounds, floor: int) -> _Hit | None:
        """Is the line at pos a delimiter?  `floor` is where the innermost open
        part starts: the line break before the delimiter is cut only above it."""
        head = self._peek(_HEAD)
        best = None
        for idx in range(len(bounds.delims) - 1, -1, -1):
            d = bounds.delims[idx]
            if head.startswith(d):
                rest = head[len(d):]
                closing = rest.startswith(b"--")
                rest = rest[2:] if closing else rest
                cut = rest.find(b"\n")
                if (cut >= 0 or len(head) < _HEAD) and not rest[:cut if cut >= 0 else None].strip(b" \t\r"):
                    best = (idx, closing)
                    break
                best = best or (idx, closing)
        if best is None:
            return None
        at = self.offset
        if at > floor:
            eol = 2 if self.pos >= 2 and self.buf[self.pos - 2] == 13 else 1
            return _Hit(best[0], best[1], at - eol, self.nl - 1, self.bare - (eol == 1))
        return _Hit(best[0], best[1], at, self.nl, self.bare)

    def _scan(self, bounds: _Bounds | None, floor: int) -> _Hit:
        """Skip body up to the next delimiter line of an open multipart, or EOF."""
        if bounds is not None and not self.overflow:
            at_line_start = self.offset == 0 or self.buf[self.pos - 1] == 10
            if at_line_start and (hit := self._delimiter(bounds, floor)):
                return hit
            while True:
                if (i := bounds.find(self.buf, self.pos, len(self.buf))) >= 0:
                    self._advance(i + 1)
                    if hit := self._delimiter(bounds, floor):
                        return hit
                elif self.eof:
                    break
                else:
                    self._advance(max(self.pos, len(self.buf) - bounds.keep))
                    self._more()
        self._advance(len(self.buf))
        while self._more():
            self._advance(len(self.buf))
        return _Hit(-1, False, self.offset, self.nl, self.bare)

    def _header(self, bounds: _Bounds | None, floor: int,
                wanted: frozenset[str]) -> tuple[dict[str, str], _Hit | None]:
        """Read a header up to its blank line (consumed), a delimiter or EOF.  A line
        that is no field is junk inside the header (as for Dovecot: it must not
        hide the fields after it).  Keeps the first occurrence of the wanted
        fields, within the caps.  Runs of lines not kept, and folded lines, are
        taken by regexes: millions of header lines cost C time, not Python time."""
        kept: dict[str, bytearray] = {}
        cur: bytearray | None = None     # the field being kept, while it may still grow
        hit, seen, stop = None, (-1, -1), -1
        while True:
            if cur is None:
                limit = len(self.buf)
                if bounds is not None and not self.overflow:   # the next delimiter line ends the run
                    if seen != (self.base, limit):
                        seen, stop = (self.base, limit), bounds.find(self.buf, max(self.pos - 1, 0), limit)
                    limit = limit if stop < 0 else stop + 1
                m = _skipper(tuple(sorted(wanted.difference(kept)))).match(self.buf, self.pos, limit)
                self._advance(m.end() if m else self.pos)
            elif m := _FOLDED.match(self.buf, self.pos):
                cur = self._store(cur, _EOL.sub(b"", m.group()), kept)
                self._advance(m.end())
            if not (head := self._peek(_PEEK)):
                break
            if head[0] == 10 or head.startswith(b"\r\n"):
                self._line(0)
                break
            if head.startswith(b"--") and bounds is not None and not self.overflow:
                if hit := self._delimiter(bounds, floor):
                    break
            if head[0] in (32, 9):
                value = self._line(MAX_FIELD)
            elif m := _FIELD.match(head):
                name = m.group(1).decode("ascii").lower()
                value = self._line(MAX_FIELD + _PEEK)[m.end():].lstrip(b" \t")
                cur = kept.setdefault(name, bytearray()) if name in wanted and name not in kept else None
            else:
                self._line(0)
                cur = None
                continue
            if cur is not None:
                cur = self._store(cur, value, kept)
        return {k: v.decode("utf-8", "surrogateescape").strip(" \t\r") for k, v in kept.items()}, hit

    def _store(self, cur: bytearray, value: bytes, kept: dict[str, bytearray]) -> bytearray | None:
        """Append within the caps; None once a cap stops the field from growing."""
        room = min(MAX_FIELD - len(cur), MAX_HEADER - sum(map(len, kept.values())), MAX_STORED - self.stored)
        cur += value[:max(0, room)]
        self.stored += max(0, min(room, len(value)))
        return cur if room > len(value) else None

    def part(self, bounds: _Bounds | None, depth: int, digest: bool,
             message: bool) -> tuple[Part, _Hit, dict[str, str]]:
        """Parse one entity from its header to the hit that ends it."""
        self.parts += 1
        start, bare0 = self.offset, self.bare
        fields, hit = self._header(bounds, start, _MESSAGE_FIELDS if message else _MIME_FIELDS)
        p = _describe(fields, digest)
        p.header_offset = start
        if hit is None:
            p.body_offset, nl_b, bare_b = self.offset, self.nl, self.bare
            deeper = depth < MAX_DEPTH and self.parts < MAX_PARTS and not self.overflow
            boundary = _boundary_of(p) if p.maintype == "multipart" else None
            if deeper and boundary:
                hit = self._multipart(p, boundary, bounds, depth, start)
            elif deeper and (p.maintype, p.subtype) == ("message", "rfc822") and p.encoding in _IDENTITY:
                child, hit, child_fields = self.part(bounds, depth + 1, False, True)
                p.children, p.envelope = [child], self.envelope(child_fields)
            else:
                hit = self._scan(bounds, start)
        else:
            p.body_offset, nl_b, bare_b = hit.end, hit.nl, hit.bare
        if p.body_offset > hit.end:     # empty body: the header's blank line went to the delimiter
            p.body_offset, nl_b, bare_b = hit.end, hit.nl, hit.bare
        p.end_offset, p.body_size = hit.end, hit.end - p.body_offset
        p.body_lines, p.body_bare_lf, p.header_bare_lf = hit.nl - nl_b, hit.bare - bare_b, bare_b - bare0
        if not p.children and (p.maintype == "multipart" or (p.maintype, p.subtype) == ("message", "rfc822")):
            p.maintype, p.subtype = "application", "octet-stream"
        return p, hit, fields

    def _multipart(self, p: Part, boundary: bytes, bounds: _Bounds | None, depth: int, floor: int) -> _Hit:
        """Preamble, parts, epilogue; returns the hit of an enclosing delimiter or EOF."""
        inner = _bounds((bounds.delims if bounds else ()) + (b"--" + boundary,))
        own = len(inner.delims) - 1
        hit = self._scan(inner, floor)
        while hit.idx == own:
            self._line(0)
            if hit.closing or self.parts >= MAX_PARTS:
                self.overflow = self.overflow or not hit.closing
                return self._scan(bounds, floor)
            child, hit, _ = self.part(inner, depth + 1, p.subtype == "digest", False)
            p.children.append(child)
        return hit

    def envelope(self, f: dict[str, str]) -> Envelope:
        def addresses(name: str) -> list[Address]:
            found = parse_addresses(f.get(name), MAX_ADDRESSES - self.addresses)
            self.addresses += len(found)
            return found
        frm = addresses("from")
        return Envelope(f.get("date"), f.get("subject"), frm, addresses("sender") or list(frm),
                        addresses("reply-to") or list(frm), addresses("to"), addresses("cc"),
                        addresses("bcc"), f.get("in-reply-to"), f.get("message-id"))


@functools.lru_cache(maxsize=64)
def _skipper(keep: tuple[str, ...]) -> re.Pattern[bytes]:
    """A run of complete header lines not kept: not blank, not a field named in `keep`
    (the caller cuts the run at a delimiter line)."""
    names = b"|(?i:" + b"|".join(re.escape(n.encode()) for n in keep) + rb")[ \t]*:" if keep else b""
    return re.compile(rb"(?:(?!\r?\n" + names + rb")[^\n]*+\n)*+")


def parse_message(stream: BinaryIO, chunk_size: int = 65536) -> MessageInfo:
    """Parse a message read once from `stream`; only the stream's errors raise."""
    parser = _Parser(stream, chunk_size)
    root, _, fields = parser.part(None, 0, False, True)
    return MessageInfo(size=root.end_offset, header_size=root.body_offset,
                       envelope=parser.envelope(fields),
                       headers={k: fields[k] for k in HEADER_NAMES if k in fields}, root=root)


# -- MIME header fields ---------------------------------------------------------------

def _describe(f: dict[str, str], digest: bool) -> Part:
    """A Part with the BODYSTRUCTURE fields of a MIME header (RFC 2045 defaults)."""
    ct = _content_type(f.get("content-type"))
    maintype, subtype, params = ct or (("message", "rfc822", []) if digest else ("text", "plain", []))
    if maintype == "text" and all(k != "charset" for k, _ in params):
        params.insert(0, ("charset", "us-ascii"))
    cte = _ONLY_TOKEN.match(_strip_comments(f.get("content-transfer-encoding", "")))
    disposition = None
    cd = _strip_comments(f.get("content-disposition", ""))
    if m := _FIRST_TOKEN.match(cd):
        disposition = (m.group(1).lower(), _params(cd[m.end():]))
    language = None
    if (cl := f.get("content-language")) is not None:
        language = [t.strip() for t in _strip_comments(cl).split(",") if t.strip()] or None
    return Part(maintype=maintype, subtype=subtype, params=params, id=f.get("content-id"),
                description=f.get("content-description"),
                encoding=cte.group(1).upper() if cte else "7BIT", md5=f.get("content-md5"),
                disposition=disposition, language=language, location=f.get("content-location"))


def _boundary_of(p: Part) -> bytes | None:
    value = next((v for k, v in p.params if k == "boundary"), "")
    raw = value.encode("utf-8", "surrogateescape")
    return raw if 0 < len(raw) <= MAX_BOUNDARY else None


def _content_type(value: str | None) -> tuple[str, str, list[tuple[str, str]]] | None:
    if value is None or not (m := _TYPE.match(value := _strip_comments(value))):
        return None
    return m.group(1).lower(), m.group(2).lower(), _params(value[m.end():])


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*+)"?', re.S)
_SPLIT = re.compile(r'"(?:[^"\\]|\\.)*+"?|;|[^;"]+', re.S)
_SECTION = re.compile(r"(.+)\*([0-9]{1,4})")


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s, flags=re.S)


def _strip_comments(s: str) -> str:
    """Drop RFC 822 comments outside quoted strings (nesting and escapes respected)."""
    if "(" not in s:
        return s
    out, depth = [], 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*+"?|\\.?|[()]|[^"()\\]+', s, re.S):
        t = m.group()
        if t == "(":
            depth += 1
        elif t == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(t)
    return "".join(out)


def _params(s: str) -> list[tuple[str, str]]:
    """`; name=value` pairs in order, first occurrence wins, RFC 2231 joined."""
    chunks: list[str] = []
    cur: list[str] = []
    for token in _SPLIT.finditer(s):
        if token.group() == ";":
            chunks.append("".join(cur))
            cur = []
        else:
            cur.append(token.group())
    chunks.append("".join(cur))
    plain: dict[str, str] = {}
    ext: dict[str, dict[int, tuple[bool, str]]] = {}
    order: dict[str, None] = {}
    for chunk in chunks:
        name, eq, value = chunk.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not eq or not name:
            continue
        if value.startswith('"'):
            value = _unescape(_QUOTED.match(value).group(1))  # type: ignore[union-attr]
        encoded = name.endswith("*")
        base = name[:-1] if encoded else name
        num = None
        if m := _SECTION.fullmatch(base):
            base, num = m.group(1), int(m.group(2))
        elif encoded:
            num = 0
        order.setdefault(base)
        if num is None:
            plain.setdefault(base, value)
        else:
            ext.setdefault(base, {}).setdefault(num, (encoded, value))
    return [(b, _rfc2231(ext[b]) if b in ext else plain[b]) for b in order]


def _rfc2231(sections: dict[int, tuple[bool, str]]) -> str:
    charset, data = None, bytearray()
    for i, num in enumerate(sorted(sections)):
        if num != i:
            break
        encoded, value = sections[num]
        if encoded and i == 0 and value.count("'") >= 2:
            cs, _, value = value.split("'", 2)
            charset = cs or None
        raw = value.encode("utf-8", "surrogateescape")
        data += unquote_to_bytes(raw) if encoded else raw
    return _decode_bytes(bytes(data), charset)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with a MIME charset; unknown or absent: UTF-8 with surrogateescape."""
    if charset:
        try:
            info = codecs.lookup(charset.strip())
            if getattr(info, "_is_text_encoding", True):
                return data.decode(info.name, "replace")
        except (LookupError, UnicodeError, ValueError, TypeError):
            pass
    return data.decode("utf-8", "surrogateescape")


# -- addresses --------------------------------------------------------------------

_ADDR = re.compile(r'[ \t\r\n]*(?:(")|(\[(?:[^\]\\]|\\.)*+\]?)|(\()|([<>@,;:.])|([^ \t\r\n"\[(<>@,;:.]+))', re.S)
_COMMENT = re.compile(r"[^()\\]+|\\.?|[()]", re.S)
_Token = tuple[str, str, bool]   # kind (a atom, q quoted, d literal, c comment, or the special), text, space before


def _tokens(s: str) -> list[_Token]:
    toks: list[_Token] = []
    i = 0
    while (m := _ADDR.match(s, i)) is not None:
        sp, i = m.start(m.lastindex or 0) > m.start(), m.end()
        if m.group(1):
            q = _QUOTED.match(s, m.start(1))
            toks.append(("q", _unescape(q.group(1)), sp))  # type: ignore[union-attr]
            i = q.end()  # type: ignore[union-attr]
        elif m.group(2):
            toks.append(("d", m.group(2), sp))
        elif m.group(3):
            depth, text = 1, []
            while depth and i < len(s):
                t = _COMMENT.match(s, i).group()  # type: ignore[union-attr]
                i += len(t)
                depth += (t == "(") - (t == ")")
                if depth:
                    text.append(t[1:] if t[0] == "\\" else t)
            toks.append(("c", "".join(text), sp))
        elif m.group(4):
            toks.append((m.group(4), m.group(4), sp))
        else:
            toks.append(("a", m.group(5), sp))
    return toks


def _phrase(toks: list[_Token]) -> str | None:
    out: list[str] = []
    for _, text, sp in toks:
        out.append(" " + text if sp and out else text)
    return "".join(out).strip() or None


def _join(toks: list[_Token]) -> str:
    return "".join(text for _, text, _ in toks)


def _mailbox(item: list[_Token]) -> Address | None:
    comments, toks, gap = [], [], False
    for kind, text, sp in item:
        if kind == "c":
            comments.append(text.strip())
            gap = True
        else:
            toks.append((kind, text, sp or gap))
            gap = False
    if not toks:
        return None
    kinds = [t[0] for t in toks]
    name = adl = None
    if "<" in kinds:
        i = kinds.index("<")
        j = kinds.index(">", i) if ">" in kinds[i:] else len(toks)
        name, inner = _phrase(toks[:i]), toks[i + 1:j]
        inner_kinds = [t[0] for t in inner]
        if inner_kinds[:1] == ["@"] and ":" in inner_kinds:          # source route
            c = inner_kinds.index(":")
            adl, inner = _join(inner[:c]) or None, inner[c + 1:]
    else:   # bare addr-spec; tolerate "Joe Bloggs joe@example.org"
        at = kinds.index("@") if "@" in kinds else len(toks)
        cut = max((n for n in range(1, at) if toks[n][2] and "." not in (kinds[n], kinds[n - 1])), default=0)
        name, inner = _phrase(toks[:cut]), toks[cut:]
    inner_kinds = [t[0] for t in inner]
    at = inner_kinds.index("@") if "@" in inner_kinds else len(inner)
    if name is None and comments:   # "addr (Name)": the last comment names it (as Dovecot)
        name = comments[-1] or None
    # Host NIL would mean group syntax to a client: say what is missing instead (as Dovecot).
    return Address(name, adl, _join(inner[:at]) or "MISSING_MAILBOX", _join(inner[at + 1:]) or "MISSING_DOMAIN")


def parse_addresses(value: str | None, limit: int = MAX_ADDRESSES) -> list[Address]:
    """RFC 5322 address list to RFC 3501 addresses, tolerant of real-world junk:
    quoted and encoded display names, comments, groups, routes, missing parts.
    At most about `limit` addresses (a group's end marker is always added)."""
    out: list[Address] = []
    item: list[_Token] = []
    group = angle = False
    for tok in _tokens(value or "") if limit > 0 else ():
        kind = tok[0]
        if kind in "<>":
            angle = kind == "<"
        elif not angle and kind in (",", ";", ":"):
            if kind == ":" and not group and all(t[0] != "@" for t in item):   # a phrase has no "@"
                out.append(Address(None, None, _phrase([t for t in item if t[0] != "c"]) or "", None))
                group = True
            else:
                if (a := _mailbox(item)) is not None:
                    out.append(a)
                if kind == ";" and group:
                    out.append(Address(None, None, None, None))
                    group = False
            item = []
            if len(out) >= limit:
                break
            continue
        item.append(tok)
    else:
        if (a := _mailbox(item)) is not None:
            out.append(a)
    if group:
        out.append(Address(None, None, None, None))
    return out


# -- RFC 2047 ---------------------------------------------------------------------

_EW = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_SURROGATE = re.compile("[\ud800-\udfff]")


_UNESCAPE_8BIT = {0xDC00 + b: bytes([b]).decode("cp1252", "ignore") or chr(b) for b in range(0x80, 0x100)}


def _ew_bytes(enc: str, text: str) -> bytes | None:
    if enc in "Qq":
        raw = text.replace("_", " ").encode("utf-8", "surrogatepass")
        return re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)
    try:
        raw = text.encode("ascii")
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
    except (UnicodeError, binascii.Error):
        return None


def decode_header(value: str) -> str:
    """RFC 2047 decoding to clean text for SEARCH and SORT; never raises.

    Adjacent encoded words of one charset are joined before decoding (UTF-8
    split across words); undecodable words stay as they are; raw 8-bit bytes
    that were not UTF-8 read as windows-1252; the result has no surrogates."""
    text = value.translate(_UNESCAPE_8BIT)
    out: list[str] = []
    pos, charset, pending = 0, None, bytearray()
    for m in _EW.finditer(text):
        data = _ew_bytes(m.group(2), m.group(3))
        if data is None:
            continue
        gap, cs = text[pos:m.start()], m.group(1).split("*", 1)[0].lower()
        adjacent = charset is not None and not gap.strip(" \t\r\n")   # RFC 2047: drop the space
        if not adjacent or cs != charset:
            if charset is not None:
                out.append(_decode_bytes(bytes(pending), charset))
            if not adjacent:
                out.append(gap)
            charset, pending = cs, bytearray()
        pending += data
        pos = m.end()
    if charset is not None:
        out.append(_decode_bytes(bytes(pending), charset))
    out.append(text[pos:])
    return _SURROGATE.sub("\ufffd", "".join(out))


# -- IMAP sections ----------------------------------------------------------------

_PART_NUMBERS = re.compile(r"([0-9]+(?:\.[0-9]+)*+)(?:\.(?=.)|$)", re.S)


def section_range(info: MessageInfo, section: str) -> tuple[int, int]:
    """Byte range [start, end) of an IMAP section ("", "HEADER", "TEXT", "1.2",
    "1.2.MIME", "2.HEADER", ...; HEADER.FIELDS... give the header's range, the
    IMAP layer filters).  RFC 3501: part 1 of a non-multipart entity is its
    body; HEADER and TEXT after numbers need a message/rfc822 part."""
    spec = section.strip().upper()
    m = _PART_NUMBERS.match(spec)
    nums = [int(n) for n in m.group(1).split(".")] if m else []
    kind = spec[m.end():] if m else spec
    if kind.startswith("HEADER.FIELDS"):
        kind = "HEADER"
    if kind not in ("", "HEADER", "TEXT", "MIME") or 0 in nums:
        raise ValueError(f"bad section: {section!r}")
    part = info.root
    for k, n in enumerate(nums):
        if k and part.maintype == "message" and part.children:
            part = part.children[0]
        if part.maintype == "multipart" and n <= len(part.children):
            part = part.children[n - 1]
        elif part.maintype == "multipart" or n != 1:
            raise ValueError(f"no such part: {section!r}")
    if not nums:
        if kind == "MIME":
            raise ValueError(f"bad section: {section!r}")
        message = part
    elif kind == "":
        return part.body_offset, part.end_offset
    elif kind == "MIME":
        return part.header_offset, part.body_offset
    elif part.maintype == "message" and part.children:
        message = part.children[0]
    else:
        raise ValueError(f"{section!r}: not a message/rfc822 part")
    if kind == "HEADER":
        return message.header_offset, message.body_offset
    if kind == "TEXT":
        return message.body_offset, message.end_offset
    return message.header_offset, message.end_offset


# -- JSON -------------------------------------------------------------------------

_FORMAT = 1
_SCALARS = ("header_offset", "body_offset", "end_offset", "maintype", "subtype", "params", "id",
            "description", "encoding", "md5", "disposition", "language", "location",
            "body_size", "body_lines", "header_bare_lf", "body_bare_lf")


def _env_out(e: Envelope) -> list[object]:
    lists = [[[a.name, a.adl, a.mailbox, a.host] for a in x]
             for x in (e.from_, e.sender, e.reply_to, e.to, e.cc, e.bcc)]
    return [e.date, e.subject, *lists, e.in_reply_to, e.message_id]


def _env_in(a: list[Any]) -> Envelope:
    f, s, r, t, c, b = ([Address(*x) for x in v] for v in a[2:8])
    return Envelope(a[0], a[1], f, s, r, t, c, b, a[8], a[9])


def _part_out(p: Part) -> list[object]:
    return [getattr(p, n) for n in _SCALARS] + [
        [_part_out(c) for c in p.children], None if p.envelope is None else _env_out(p.envelope)]


def _part_in(a: list[Any]) -> Part:
    if len(a) != len(_SCALARS) + 2:
        raise ValueError("bad part record")
    p = Part(**dict(zip(_SCALARS, a)))
    p.params = [(k, v) for k, v in p.params]
    if p.disposition is not None:
        p.disposition = (p.disposition[0], [(k, v) for k, v in p.disposition[1]])
    p.children = [_part_in(c) for c in a[-2]]
    p.envelope = None if a[-1] is None else _env_in(a[-1])
    return p


def to_json(info: MessageInfo) -> str:
    """Compact JSON (positional lists, ASCII only) for the SQLite index."""
    return json.dumps([_FORMAT, info.size, info.header_size, _env_out(info.envelope),
                       info.headers, _part_out(info.root)], separators=(",", ":"))


def from_json(text: str) -> MessageInfo:
    """Inverse of to_json; ValueError if the text is not one of its outputs."""
    try:
        a = json.loads(text)
        if a[0] != _FORMAT:
            raise ValueError(f"unknown index format {a[0]!r}")
        return MessageInfo(a[1], a[2], _env_in(a[3]), dict(a[4]), _part_in(a[5]))
    except (TypeError, IndexError, KeyError) as e:
        raise ValueError(f"bad index record: {e}") from None
