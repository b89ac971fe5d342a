"""ManageSieve (RFC 5804) on the wire, without I/O: client lines in, events out; responses formatted.

A pull parser in the style of h11: ``feed`` it the bytes as they arrive,
then call ``next_event`` until it answers ``NEED_DATA``.  Between two events
the caller may change what comes next (``expect_reply`` for the client's
answer to a SASL challenge, ``reset`` after STARTTLS), which is why it hands
out one event at a time rather than a list.

Every byte comes from the network: a command line holds at most
``max_line`` bytes besides its literals, a literal at most ``max_literal``
(the caller raises it to the largest script once the client has logged
in), a command at most ``MAX_ARGS`` arguments.  A literal announced larger
than that is never read into memory: ``LiteralTooLarge`` is reported at
once and its bytes (and the rest of its line) are counted and dropped as
they arrive.  RFC 5804 §4 lets clients send only non-synchronizing literals
(``{n+}``), the data right after the CRLF, so a refusal cannot stop them
being sent; ``{n}`` is read the same way (no continuation exists in
ManageSieve), as Dovecot does.  Whether dropping or disconnecting is the
better answer to a huge literal is the session's choice.

Hand-written: no maintained Python library parses the server side of
ManageSieve, and the grammar is a few token kinds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Union

MAX_LINE = 8192  # bytes of one command line, literals excluded
MAX_QUOTED = 1024  # RFC 5804 §4: a quoted string holds at most 1024 octets
MAX_ARGS = 8  # the longest command (RENAMESCRIPT) takes two

# RFC 5804 §4: ATOM-CHAR is any CHAR but "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]".
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
MAX_ATOM = 1024
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\]){0,1024})"')
_QUOTED_OPEN = re.compile(rb'"(?:[^"\\\r\n\x00]|\\["\\])*\\?\Z')  # an unfinished quoted string
_UNESCAPE = re.compile(rb'\\(["\\])')
_LITERAL = re.compile(rb"\{([0-9]{1,10})(\+?)\}\r?\n")
_LITERAL_OPEN = re.compile(rb"\{[0-9]{0,10}(?:\+?(?:\}\r?)?)?\Z")


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True)
class Atom:
    value: str  # ASCII


@dataclass(frozen=True)
class String:
    data: bytes  # escapes removed; UTF-8 by the RFC, checked by whoever decodes it
    literal: bool = False

    def text(self) -> str:
        """The string as text (UnicodeDecodeError when it is not UTF-8)."""
        return self.data.decode("utf-8")


Arg = Union[Atom, String]


@dataclass(frozen=True)
class Command:
    name: str  # upper case
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Reply:
    """The client's answer to a SASL challenge (after ``expect_reply``)."""

    value: String


@dataclass(frozen=True)
class BadLine:
    """A line that is not a command; the parser has skipped (or is skipping) the rest of it."""

    message: str


@dataclass(frozen=True)
class LiteralTooLarge:
    """A literal over the bound: its bytes and the rest of its line are being dropped."""

    command: str  # the command name, or "" if the line did not start with one
    size: int
    limit: int


Event = Union[Command, Reply, BadLine, LiteralTooLarge]


class Parser:
    def __init__(self, max_line: int = MAX_LINE, max_literal: int = MAX_LINE):
        self.max_line = max_line
        self.max_literal = max_literal  # may change between events
        self._buf = bytearray()
        self._reply = False
        self._new_line()
        self._skip_line = False  # dropping bytes up to the next LF
        self._discard = 0  # bytes of a refused literal still to drop

    def _new_line(self) -> None:
        self._tokens: list[Arg] = []
        self._line_bytes = 0  # bytes of this line so far, literals excluded
        self._literal: bytearray | None = None  # a literal being read
        self._literal_left = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def reset(self) -> None:
        """Forget everything received so far (what a client sent after STARTTLS, before TLS)."""
        self._buf.clear()
        self._reply = False
        self._new_line()
        self._skip_line = False
        self._discard = 0

    def expect_reply(self) -> None:
        """The next line is one string: the client's answer to a SASL challenge."""
        self._reply = True

    def next_event(self) -> Event | _NeedData:
        while True:
            if self._discard:
                n = min(self._discard, len(self._buf))
                del self._buf[:n]
                self._discard -= n
                if self._discard:
                    return NEED_DATA
                self._skip_line = True  # then what is left of its command line
            if self._skip_line:
                end = self._buf.find(b"\n")
                if end < 0:
                    self._buf.clear()
                    return NEED_DATA
                del self._buf[: end + 1]
                self._skip_line = False
                self._new_line()
                self._reply = False
                continue
            if self._literal is not None:
                n = min(self._literal_left, len(self._buf))
                self._literal += self._buf[:n]
                del self._buf[:n]
                self._literal_left -= n
                if self._literal_left:
                    return NEED_DATA
                self._tokens.append(String(bytes(self._literal), literal=True))
                self._literal = None
            event = self._scan()
            if event is not None:
                return event

    # -- one line -------------------------------------------------------------------

    def _bad(self, message: str) -> BadLine:
        self._skip_line = True
        return BadLine(message)

    def _take(self, n: int) -> None:
        del self._buf[:n]
        self._line_bytes += n

    def _scan(self) -> Event | _NeedData | None:
        """Tokens until the end of the line, a literal's data, or the end of the buffer.
        None: go on in next_event (a literal's data comes next)."""
        buf = self._buf
        while True:
            if self._line_bytes > self.max_line:
                return self._bad("line too long")
            if not buf:
                return NEED_DATA
            c = buf[0]
            if c == 0x20:  # SP between tokens (a run of them is forgiven)
                self._take(1)
                continue
            if c in (0x0D, 0x0A):
                if c == 0x0D:
                    if len(buf) < 2:
                        return NEED_DATA
                    if buf[1] != 0x0A:
                        return self._bad("CR without LF")
                    del buf[:2]
                else:  # a bare LF ends a line too: lenient with hand-typed sessions
                    del buf[:1]
                return self._end_line()
            if c == 0x22:  # DQUOTE
                m = _QUOTED.match(buf)
                if m is None:
                    if _QUOTED_OPEN.match(buf) and len(buf) <= 2 * MAX_QUOTED + 2:
                        return self._wait()
                    return self._bad("invalid quoted string (at most 1024 bytes; only \\\" and \\\\ escaped; no CR, LF or NUL)")
                self._tokens.append(String(_UNESCAPE.sub(rb"\1", m.group(1))))
                self._take(m.end())
                continue
            if c == 0x7B:  # "{"
                m = _LITERAL.match(buf)
                if m is None:
                    if _LITERAL_OPEN.match(buf):
                        return self._wait()
                    return self._bad("invalid literal (expected {n+} and CRLF)")
                size = int(m.group(1))
                self._take(m.end())
                if size > self.max_literal:
                    first = self._tokens[0] if self._tokens else None
                    command = first.value.upper() if isinstance(first, Atom) and not self._reply else ""
                    self._discard = size
                    return LiteralTooLarge(command, size, self.max_literal)
                if len(self._tokens) >= MAX_ARGS + 1:
                    self._discard = size
                    return BadLine("too many arguments")
                self._literal = bytearray()
                self._literal_left = size
                return None
            m = _ATOM.match(buf)
            if m is None:
                return self._bad(f"unexpected character {chr(c)!r}" if 0x21 <= c < 0x7F else f"unexpected byte 0x{c:02x}")
            if m.end() > MAX_ATOM:
                return self._bad(f"atom longer than {MAX_ATOM} bytes")
            if m.end() == len(buf):
                return self._wait()  # the atom may go on
            self._tokens.append(Atom(m.group().decode("ascii")))
            self._take(m.end())
            if len(self._tokens) > MAX_ARGS + 1:
                return self._bad("too many arguments")

    def _wait(self) -> _NeedData | BadLine:
        """An unfinished token at the end of the buffer: wait, unless the line is already too long."""
        if self._line_bytes + len(self._buf) > self.max_line:
            return self._bad("line too long")
        return NEED_DATA

    def _end_line(self) -> Event | None:
        tokens, reply = self._tokens, self._reply
        self._new_line()
        self._reply = False
        if reply:
            if len(tokens) == 1 and isinstance(tokens[0], String):
                return Reply(tokens[0])
            return BadLine("expected one string")
        if not tokens:
            return None  # an empty line: nothing to do
        first = tokens[0]
        if not isinstance(first, Atom):
            return BadLine("expected a command name")
        return Command(first.value.upper(), tuple(tokens[1:]))


# --- responses (RFC 5804 §4) ----------------------------------------------------------


def quoted(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if len(data) > MAX_QUOTED or any(b in data for b in (b"\r", b"\n", b"\0")):
        raise ValueError("not a quoted string: over 1024 bytes, or CR, LF or NUL inside")
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(data: bytes) -> bytes:
    """A server-to-client literal (``{n}`` CRLF data)."""
    return b"{%d}\r\n" % len(data) + data


def string(text: str | bytes) -> bytes:
    """Quoted when it may be, else a literal."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        return quoted(data)
    except ValueError:
        return literal(data)


def response(status: str, text: str = "", code: str = "") -> bytes:
    """``OK``/``NO``/``BYE`` [``(code)``] [string] CRLF.  ``code`` is a
    response code already in wire form (``QUOTA/MAXSIZE``, ``TAG "x"``)."""
    assert status in ("OK", "NO", "BYE")
    line = status.encode()
    if code:
        line += b" (" + code.encode("utf-8") + b")"
    if text:
        line += b" " + string(text)
    return line + b"\r\n"


def tag_code(value: bytes) -> str:
    """The ``TAG`` response code echoing a NOOP argument (RFC 5804 §2.13)."""
    return "TAG " + string(value).decode("utf-8", "replace")


def capability_lines(capabilities: list[tuple[str, str | None]]) -> bytes:
    """One ``"NAME" ["value"]`` line each (RFC 5804 §1.7)."""
    out = b""
    for name, value in capabilities:
        out += quoted(name) + (b" " + string(value) if value is not None else b"") + b"\r\n"
    return out


__all__ = [
    "Atom", "BadLine", "Command", "Event", "LiteralTooLarge", "MAX_LINE", "NEED_DATA", "Parser", "Reply", "String",
    "capability_lines", "literal", "quoted", "response", "string", "tag_code",
]
