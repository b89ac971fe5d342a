"""Sieve script text to tokens (RFC 5228 §8.1), with line and column of each.

Hand-written: the grammar is small and we want exact positions and our own
error messages.  Line breaks are CRLF or a bare LF (editors save both); a
string keeps its line breaks as they were written.  Identifiers and tags are
returned lowercased, since Sieve treats them case-insensitively.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .errors import SieveError

MAX_NUMBER = 2**63 - 1
_QUANTIFIERS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGITS = re.compile(r"[0-9]+")
_PUNCT = {"[": "LBRACKET", "]": "RBRACKET", "(": "LPAREN", ")": "RPAREN",
          "{": "LBRACE", "}": "RBRACE", ";": "SEMICOLON", ",": "COMMA"}


class Kind(enum.Enum):
    IDENT = "identifier"
    TAG = "tag"
    NUMBER = "number"
    STRING = "string"
    LBRACKET = "'['"
    RBRACKET = "']'"
    LPAREN = "'('"
    RPAREN = "')'"
    LBRACE = "'{'"
    RBRACE = "'}'"
    SEMICOLON = "';'"
    COMMA = "','"
    EOF = "end of script"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    value: str | int | None
    line: int
    col: int
    end_line: int   # where the token ends (just after its last character)
    end_col: int


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line, self.line_start = text, 0, 1, 0

    @property
    def col(self) -> int:
        return self.pos - self.line_start + 1

    def error(self, message: str, line: int | None = None, col: int | None = None) -> SieveError:
        return SieveError(message, self.line if line is None else line, self.col if col is None else col)

    def newline_at(self, i: int) -> None:
        """Count a line break whose LF is at index i."""
        self.line += 1
        self.line_start = i + 1

    def skip_to(self, end: int) -> None:
        """Move to index end, counting the line breaks passed."""
        i = self.text.find("\n", self.pos, end)
        while i != -1:
            self.newline_at(i)
            i = self.text.find("\n", i + 1, end)
        self.pos = end


def tokenize(text: str) -> list[Token]:
    """All tokens of a script, ending with an EOF token; SieveError on bad input."""
    s = _Scanner(text)
    out: list[Token] = []
    n = len(text)
    while True:
        _skip_space(s)
        line, col = s.line, s.col
        if s.pos >= n:
            out.append(Token(Kind.EOF, None, line, col, line, col))
            return out
        c = text[s.pos]
        if c == '"':
            value: str | int | None = _quoted(s)
            kind = Kind.STRING
        elif c in _PUNCT:
            s.pos += 1
            value, kind = c, Kind[_PUNCT[c]]
        elif c == ":":
            m = _IDENT.match(text, s.pos + 1)
            if m is None:
                raise s.error("':' must be followed by a tag name")
            s.pos = m.end()
            value, kind = m.group().lower(), Kind.TAG
        elif "0" <= c <= "9":
            value, kind = _number(s), Kind.NUMBER
        elif (m := _IDENT.match(text, s.pos)) is not None:
            word = m.group().lower()
            if word == "text" and text.startswith(":", m.end()):
                value, kind = _multiline(s, m.end() + 1), Kind.STRING
            else:
                s.pos = m.end()
                value, kind = word, Kind.IDENT
        else:
            raise s.error(f"unexpected character {c!r}")
        out.append(Token(kind, value, line, col, s.line, s.col))


def _skip_space(s: _Scanner) -> None:
    text, n = s.text, len(s.text)
    while s.pos < n:
        c = text[s.pos]
        if c in " \t":
            s.pos += 1
        elif c == "\n":
            s.newline_at(s.pos)
            s.pos += 1
        elif c == "\r" and text.startswith("\n", s.pos + 1):
            s.pos += 1
        elif c == "#":
            end = text.find("\n", s.pos)
            s.pos = n if end == -1 else end
        elif c == "/" and text.startswith("*", s.pos + 1):
            end = text.find("*/", s.pos + 2)
            if end == -1:
                raise s.error("unterminated comment: '/*' without '*/'")
            s.skip_to(end + 2)
        else:
            return


def _quoted(s: _Scanner) -> str:
    """A quoted string; a backslash makes the next character literal (§2.4.2)."""
    text, start = s.text, s.pos
    line, col = s.line, s.col
    i, parts = start + 1, []
    while True:
        j = _next_special(text, i)
        if j == -1:
            raise s.error("unterminated string: no closing '\"'", line, col)
        parts.append(text[i:j])
        if text[j] == '"':
            s.skip_to(j + 1)
            return "".join(parts)
        if j + 1 >= len(text):
            raise s.error("unterminated string: no closing '\"'", line, col)
        parts.append(text[j + 1])
        i = j + 2


_SPECIAL = re.compile(r'["\\]')


def _next_special(text: str, i: int) -> int:
    m = _SPECIAL.search(text, i)
    return -1 if m is None else m.start()


def _number(s: _Scanner) -> int:
    text = s.text
    m = _DIGITS.match(text, s.pos)
    assert m is not None
    value, end = int(m.group()) if len(m.group()) < 30 else MAX_NUMBER + 1, m.end()
    if end < len(text) and text[end].lower() in _QUANTIFIERS:
        value *= _QUANTIFIERS[text[end].lower()]
        end += 1
    if end < len(text) and (text[end].isalnum() or text[end] == "_"):
        raise s.error(f"bad number {text[s.pos:end + 1]!r}: digits then an optional K, M or G")
    if value > MAX_NUMBER:
        raise s.error(f"number too large (at most {MAX_NUMBER})")
    s.pos = end
    return value


def _multiline(s: _Scanner, after_colon: int) -> str:
    """``text:`` up to a line holding only '.'; a leading '..' loses one dot."""
    text, n = s.text, len(s.text)
    line, col = s.line, s.col
    i = after_colon
    while i < n and text[i] in " \t":
        i += 1
    if text.startswith("#", i):
        eol = text.find("\n", i)
        i = n if eol == -1 else eol
    elif text.startswith("\r\n", i):
        i += 1
    if not text.startswith("\n", i):
        s.pos = i
        raise s.error("'text:' must be followed by the end of the line")
    s.skip_to(i + 1)
    lines: list[str] = []
    while True:
        if s.pos >= n:
            raise s.error("multi-line string 'text:' has no final '.' line", line, col)
        eol = text.find("\n", s.pos)
        end = n if eol == -1 else eol + 1
        content = text[s.pos:end]
        if content in (".", ".\n", ".\r\n"):
            s.skip_to(end)
            return "".join(lines)
        lines.append(content[1:] if content.startswith("..") else content)
        s.skip_to(end)
