"""IMAP command input without I/O: bytes in, events and values out.

``Reader`` cuts the client's byte stream into command lines and literals.
A literal announced as ``{n}`` or ``{n+}`` pauses the reader with a
``LiteralPending`` event: the session decides to buffer it into the
command (small literals), to stream it out in ``LiteralData`` chunks (an
APPEND of up to 100 MB never sits in memory) or to refuse it (TOOBIG); a
non-synchronizing literal that is refused is read and thrown away.

``tokenize`` turns a completed command into atoms, strings and lists, and
the ``parse_*`` helpers read the grammar of the arguments.  Nothing here
raises anything but ``ParseError`` on hostile input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

MAX_LINE = 64 * 1024
MAX_BUFFERED_LITERAL = 64 * 1024
MAX_DEPTH = 32
_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n\Z")
_TAG = re.compile(rb"^[!#$&'+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|~]{1,64}$")


class ParseError(ValueError):
    """A malformed command: answered with BAD, the session goes on."""


# --- events -------------------------------------------------------------------------


@dataclass
class CommandLine:
    """A complete command: text pieces and literals, in order."""

    pieces: list[Union[bytes, "Literal"]]

    @property
    def tag(self) -> bytes:
        first = self.pieces[0] if self.pieces and isinstance(self.pieces[0], bytes) else b""
        return first.split(b" ", 1)[0].strip()

    def raw(self) -> bytes:
        """The line as text (for IDLE's DONE and AUTHENTICATE responses)."""
        return b"".join(p if isinstance(p, bytes) else b"" for p in self.pieces).rstrip(b"\r\n")


@dataclass
class LiteralPending:
    """A literal was announced; call Reader.buffer/stream/refuse, then resume()."""

    tag: bytes
    prefix: bytes  # the command text before the literal (all pieces so far)
    size: int
    synchronizing: bool


@dataclass
class LiteralData:
    data: bytes


@dataclass
class LiteralEnd:
    pass


@dataclass
class LineTooLong:
    tag: bytes


Event = Union[CommandLine, LiteralPending, LiteralData, LiteralEnd, LineTooLong]


@dataclass
class Literal:
    """A literal inside a command: its bytes, or a placeholder if it was streamed."""

    data: bytes | None
    size: int
    binary: bool = False  # ~{n} (RFC 3516)


# --- the reader ---------------------------------------------------------------------------


@dataclass
class Reader:
    max_line: int = MAX_LINE
    max_buffered_literal: int = MAX_BUFFERED_LITERAL
    _buf: bytearray = field(default_factory=bytearray)
    _pieces: list = field(default_factory=list)  # the command being assembled
    _line_bytes: int = 0
    _mode: str = "line"  # line | pending | buffer | stream | discard | skipline
    _left: int = 0  # bytes left in the current literal
    _literal: bytearray = field(default_factory=bytearray)
    _pending: LiteralPending | None = None
    _pending_size: int = 0
    _pending_binary: bool = False
    _emit_end: bool = False

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes from the network; return the events they complete.
        Stops after a LiteralPending until the session decides."""
        self._buf += data
        return self.resume()

    def resume(self) -> list[Event]:
        events: list[Event] = []
        if self._emit_end:  # an empty streamed literal
            self._emit_end = False
            events.append(LiteralEnd())
        while self._mode != "pending":
            if self._mode in ("buffer", "stream", "discard"):
                if not self._buf:
                    break
                take = bytes(self._buf[: self._left])
                del self._buf[: len(take)]
                self._left -= len(take)
                if self._mode == "buffer":
                    self._literal += take
                elif self._mode == "stream" and take:
                    events.append(LiteralData(take))
                if self._left == 0:
                    if self._mode == "buffer":
                        self._pieces.append(Literal(bytes(self._literal), len(self._literal)))
                        self._literal = bytearray()
                    elif self._mode == "stream":
                        self._pieces.append(Literal(None, self._pending_size))
                        events.append(LiteralEnd())
                    self._mode = "line" if self._mode != "discard" else "skipline"
                continue
            nl = self._buf.find(b"\n")
            if nl < 0:
                if self._line_bytes + len(self._buf) > self.max_line and self._mode == "line":
                    events.append(LineTooLong(self._tag(bytes(self._buf[:80]))))
                    self._reset()
                    self._mode = "skipline"
                if self._mode == "skipline":
                    self._buf.clear()
                break
            line = bytes(self._buf[: nl + 1])
            del self._buf[: nl + 1]
            if self._mode == "skipline":
                # The rest of a refused command: a later literal marker still
                # announces bytes we must not read as commands.
                m = _LITERAL_AT_END.search(line)
                if m and m.group(2):
                    self._mode, self._left = "discard", int(m.group(1))
                else:
                    self._mode = "line"
                continue
            self._line_bytes += len(line)
            if self._line_bytes > self.max_line:
                events.append(LineTooLong(self._tag(line)))
                self._reset()
                continue
            m = _LITERAL_AT_END.search(line)
            if m:
                text = line[: m.start()]
                binary = text.endswith(b"~")
                if binary:
                    text = text[:-1]
                self._pieces.append(text)
                size = int(m.group(1))
                self._pending = LiteralPending(self._tag(), self._prefix(), size, synchronizing=not m.group(2))
                self._pending_binary = binary
                self._pending_size = size
                self._mode = "pending"
                events.append(self._pending)
                break
            self._pieces.append(line)
            events.append(CommandLine(self._pieces))
            self._reset()
        return events

    def _tag(self, line: bytes = b"") -> bytes:
        first = self._pieces[0] if self._pieces and isinstance(self._pieces[0], bytes) else line
        return first.split(b" ", 1)[0].strip()[:64]

    def _prefix(self) -> bytes:
        return b"".join(p for p in self._pieces if isinstance(p, bytes))

    def _reset(self) -> None:
        self._pieces = []
        self._line_bytes = 0
        self._pending = None

    def _decided(self) -> LiteralPending:
        if self._mode != "pending" or self._pending is None:
            raise RuntimeError("no literal is waiting for a decision")
        return self._pending

    def buffer(self) -> None:
        """Keep the literal in the command (it must be small)."""
        p = self._decided()
        if p.size > self.max_buffered_literal:
            raise RuntimeError("literal too large to buffer")
        self._mode, self._left = "buffer", p.size
        if p.size == 0:
            self._pieces.append(Literal(b"", 0, self._pending_binary))
            self._mode = "line"

    def stream(self) -> None:
        """Hand the literal out as LiteralData events, then LiteralEnd."""
        p = self._decided()
        self._mode, self._left = "stream", p.size
        if p.size == 0:
            self._pieces.append(Literal(None, 0))
            self._mode = "line"
            self._emit_end = True

    def refuse(self) -> None:
        """Drop the command.  A synchronizing literal is never sent by the
        client; a non-synchronizing one arrives anyway and is thrown away."""
        p = self._decided()
        self._reset()
        if p.synchronizing:
            self._mode = "line"
        else:
            self._mode, self._left = "discard", p.size
            if p.size == 0:
                self._mode = "skipline"


# --- tokens -------------------------------------------------------------------------------


class Atom(str):
    """An atom (NIL, flags, sequence sets, FETCH items with their [section])."""


Token = Union[Atom, bytes, Literal, list]


def tokenize(pieces: list) -> list:
    """Pieces of a command into tokens: Atom, bytes (quoted or literal string),
    Literal (streamed), and lists for parentheses."""
    out: list = []
    stack: list[list] = [out]
    for piece in pieces:
        if isinstance(piece, Literal):
            stack[-1].append(piece.data if piece.data is not None else piece)
            continue
        text = piece.rstrip(b"\r\n")
        i, n = 0, len(text)
        while i < n:
            c = text[i : i + 1]
            if c == b" ":
                i += 1
            elif c == b"(":
                if len(stack) > MAX_DEPTH:
                    raise ParseError("too deeply nested")
                new: list = []
                stack[-1].append(new)
                stack.append(new)
                i += 1
            elif c == b")":
                if len(stack) == 1:
                    raise ParseError("unbalanced ')'")
                stack.pop()
                i += 1
            elif c == b'"':
                i, s = _quoted(text, i + 1)
                stack[-1].append(s)
            elif c in (b"\r", b"\n", b"\x00"):
                raise ParseError("control character in command")
            else:
                i, atom = _atom(text, i)
                stack[-1].append(atom)
    if len(stack) != 1:
        raise ParseError("unbalanced '('")
    return out


def _quoted(text: bytes, i: int) -> tuple[int, bytes]:
    out = bytearray()
    while i < len(text):
        c = text[i]
        if c == 0x5C:  # backslash
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
        elif c == 0x22:
            return i + 1, bytes(out)
        else:
            out.append(c)
            i += 1
    raise ParseError("unterminated quoted string")


def _atom(text: bytes, i: int) -> tuple[int, Atom]:
    start = i
    depth = 0
    while i < len(text):
        c = text[i : i + 1]
        if c == b"[":
            depth += 1
        elif c == b"]":
            depth = max(depth - 1, 0)
        elif depth == 0 and c in b' ()"':
            break
        elif c in (b"\r", b"\n", b"\x00"):
            raise ParseError("control character in command")
        i += 1
    if depth:
        raise ParseError("unbalanced '['")
    if i < len(text) and text[i : i + 1] == b"<":  # partial <o.n> stays with the atom
        end = text.find(b">", i)
        if end < 0:
            raise ParseError("unterminated '<'")
        i = end + 1
    try:
        return i, Atom(text[start:i].decode("ascii"))
    except UnicodeDecodeError:
        # 8-bit in an atom (UTF8=ACCEPT mailbox names): keep it as a string
        return i, Atom(text[start:i].decode("utf-8", "surrogateescape"))


# --- a command ---------------------------------------------------------------------------------


@dataclass
class Command:
    tag: str
    name: str  # upper case; "UID FETCH" for UID commands
    args: list


def parse_command(line: CommandLine) -> Command:
    tokens = tokenize(line.pieces)
    if len(tokens) < 2 or not isinstance(tokens[0], Atom) or not isinstance(tokens[1], Atom):
        raise ParseError("expected a tag and a command")
    tag = str(tokens[0])
    if not _TAG.match(tag.encode("ascii", "replace")) or tag in ("*", "+"):
        raise ParseError("invalid tag")
    name = tokens[1].upper()
    args = tokens[2:]
    if name == "UID":
        if not args or not isinstance(args[0], Atom):
            raise ParseError("UID needs a command")
        name = "UID " + args[0].upper()
        args = args[1:]
    return Command(tag, name, args)


# --- argument grammar -------------------------------------------------------------------------------


def text(token: object, what: str = "argument") -> str:
    """An astring as text (UTF-8, bytes kept with surrogateescape)."""
    if isinstance(token, Atom):
        if token.upper() == "NIL" and what == "nstring":
            return ""
        return str(token)
    if isinstance(token, bytes):
        return token.decode("utf-8", "surrogateescape")
    raise ParseError(f"expected a {what}")


def number(token: object, what: str = "number", maximum: int = (1 << 63) - 1) -> int:
    if isinstance(token, Atom) and token.isdigit() and len(token) <= 20:
        n = int(token)
        if n <= maximum:
            return n
    raise ParseError(f"expected a {what}")


def sequence_set(token: object, largest: int) -> list[tuple[int, int]]:
    """``1:3,5,7:*`` into (low, high) ranges; ``*`` is ``largest``.

    Ranges are kept as pairs so that ``1:4294967295`` costs nothing."""
    if not isinstance(token, Atom) or not token:
        raise ParseError("expected a sequence set")
    if token == "$":
        raise ParseError("search result references ($) are not supported")
    ranges = []
    for part in token.split(","):
        lo, sep, hi = part.partition(":")
        a = _seq_number(lo, largest)
        b = _seq_number(hi, largest) if sep else a
        ranges.append((min(a, b), max(a, b)))
    return ranges


def _seq_number(s: str, largest: int) -> int:
    if s == "*":
        return largest
    if not s.isdigit() or len(s) > 10 or int(s) == 0 or int(s) > 4294967295:
        raise ParseError("invalid number in sequence set")
    return int(s)


def in_ranges(n: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= n <= hi for lo, hi in ranges)


def flags(token: object) -> list[str]:
    """A flag list ``(\\Seen $Label)`` or a single flag."""
    items = token if isinstance(token, list) else [token]
    out = []
    for f in items:
        if not isinstance(f, Atom) or not f or f == "NIL":
            raise ParseError("expected flags")
        name = str(f)
        if name.startswith("\\"):
            name = "\\" + name[1:].capitalize()
        out.append(name)
    return out


_FETCH_ATTR = re.compile(
    r"^(BODY\.PEEK|BODY|BINARY\.PEEK|BINARY|BINARY\.SIZE)\[([^\]]*)\](?:<(\d{1,10})(?:\.(\d{1,10}))?>)?$", re.I
)
_SECTION = re.compile(r"^((?:\d{1,5}\.)*\d{1,5})?(?:\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME))?(?: \((.*)\))?$", re.I)


@dataclass(frozen=True)
class FetchAttr:
    name: str  # FLAGS, UID, ... or BODY / BINARY / BINARY.SIZE for sections
    section: str = ""  # "1.2", "HEADER", "1.TEXT", "HEADER.FIELDS"
    fields: tuple[str, ...] = ()  # for HEADER.FIELDS[.NOT]
    peek: bool = False
    partial: tuple[int, int | None] | None = None  # <offset.length>
    original: str = ""  # as the client wrote it (the response echoes it)

    @property
    def structure(self) -> bool:
        """Plain ``BODY``: the non-extensible BODYSTRUCTURE, not a section."""
        return self.name == "BODY" and "[" not in self.original


MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
SIMPLE_ATTRS = {
    "FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY",
    "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ", "X-GM-MSGID",
}


def fetch_attrs(token: object) -> list[FetchAttr]:
    items = token if isinstance(token, list) else [token]
    if isinstance(token, Atom) and token.upper() in MACROS:
        return [FetchAttr(a, original=a) for a in MACROS[token.upper()]]
    out = []
    for it in items:
        if not isinstance(it, Atom):
            raise ParseError("expected FETCH items")
        up = it.upper()
        if up in SIMPLE_ATTRS and up != "X-GM-MSGID":
            out.append(FetchAttr(up, original=up))
            continue
        m = _FETCH_ATTR.match(str(it))
        if not m:
            raise ParseError(f"unknown FETCH item {str(it)[:40]!r}")
        kind = m.group(1).upper()
        sec = m.group(2)
        sm = _SECTION.match(sec)
        if not sm or (kind.startswith("BINARY") and sm.group(2)):
            raise ParseError(f"invalid section [{sec[:40]}]")
        part, what, names = sm.group(1) or "", (sm.group(2) or "").upper(), sm.group(3)
        if what == "MIME" and not part:
            raise ParseError("MIME needs a part number")
        if what.startswith("HEADER.FIELDS") != (names is not None):
            raise ParseError("HEADER.FIELDS needs a list of field names")
        fields_ = tuple(n.upper() for n in re.split(r"[ ]+", names.strip())) if names else ()
        section = ".".join(x for x in (part, what) if x)
        partial = None
        if m.group(3) is not None:
            partial = (int(m.group(3)), int(m.group(4)) if m.group(4) is not None else None)
        peek = kind.endswith(".PEEK")
        base = kind.replace(".PEEK", "")
        out.append(FetchAttr(base, section, fields_, peek, partial, original=str(it)))
    if not out:
        raise ParseError("empty FETCH item list")
    return out
