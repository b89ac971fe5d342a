"""Sieve grammar (RFC 5228 §8.2): tokens to a tree of frozen dataclasses.

The parser knows only the grammar; whether a command exists, what it takes
and what it needs required is the business of ``validate``.  It enforces the
limits that protect the parser itself: script size, nesting depth, number of
commands and tests, length of string lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .errors import SieveError
from .lexer import Kind, Token, tokenize
from .limits import DEFAULT_LIMITS, Limits


@dataclass(frozen=True)
class StringList:
    """A string, or a bracketed list of strings (``bracketed`` tells which)."""

    values: tuple[str, ...]
    line: int
    col: int
    bracketed: bool = False


@dataclass(frozen=True)
class Number:
    value: int
    line: int
    col: int


@dataclass(frozen=True)
class Tag:
    name: str   # lowercase, without the ':'
    line: int
    col: int


Argument = Union[StringList, Number, Tag]


@dataclass(frozen=True)
class Test:
    name: str   # lowercase
    arguments: tuple[Argument, ...]
    tests: tuple["Test", ...]
    line: int
    col: int
    test_list: bool = False   # tests were written as a parenthesised list


@dataclass(frozen=True)
class Command:
    name: str   # lowercase
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    block: tuple["Command", ...] | None   # None: the command ended with ';'
    line: int
    col: int
    test_list: bool = False


def decode_script(script: str | bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    """The script as text, refusing oversized scripts and invalid UTF-8 (§2.2)."""
    data = script.encode("utf-8", "surrogatepass") if isinstance(script, str) else script
    if len(data) > limits.max_script_size:
        raise SieveError(f"script too large: {len(data)} bytes, at most {limits.max_script_size}", 1, 1)
    if isinstance(script, str):
        return script
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[:e.start].decode("utf-8")
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        raise SieveError("invalid UTF-8 in script", line, col) from None


def parse(script: str | bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Command, ...]:
    """The commands of a script; SieveError (with line and column) if malformed."""
    return _Parser(tokenize(decode_script(script, limits)), limits).script()


class _Parser:
    def __init__(self, tokens: list[Token], limits: Limits) -> None:
        self.tokens, self.i, self.limits, self.nodes = tokens, 0, limits, 0

    # -- token helpers ------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        t = self.tokens[self.i]
        if t.kind is not Kind.EOF:
            self.i += 1
        return t

    def expect(self, kind: Kind, what: str) -> Token:
        if self.tok.kind is not kind:
            raise self.unexpected(what)
        return self.take()

    def unexpected(self, what: str) -> SieveError:
        t = self.tok
        found = t.kind.value if t.kind is not Kind.IDENT else f"'{t.value}'"
        return SieveError(f"expected {what}, found {found}", t.line, t.col)

    def count(self, t: Token, depth: int) -> None:
        self.nodes += 1
        if self.nodes > self.limits.max_commands:
            raise SieveError(f"too many commands and tests (at most {self.limits.max_commands})", t.line, t.col)
        if depth > self.limits.max_depth:
            raise SieveError(f"nesting too deep (at most {self.limits.max_depth} levels)", t.line, t.col)

    # -- grammar ------------------------------------------------------------------

    def script(self) -> tuple[Command, ...]:
        commands = self.commands(0)
        if self.tok.kind is not Kind.EOF:
            raise self.unexpected("a command")
        return commands

    def commands(self, depth: int) -> tuple[Command, ...]:
        out = []
        while self.tok.kind is Kind.IDENT:
            out.append(self.command(depth))
        return tuple(out)

    def command(self, depth: int) -> Command:
        name = self.take()
        self.count(name, depth)
        arguments, tests, test_list = self.arguments(depth)
        last = self.tokens[self.i - 1]
        if self.tok.kind is Kind.SEMICOLON:
            self.take()
            block = None
        elif self.tok.kind is Kind.LBRACE:
            brace = self.take()
            if depth + 1 > self.limits.max_depth:
                raise SieveError(f"nesting too deep (at most {self.limits.max_depth} levels)", brace.line, brace.col)
            block = self.commands(depth + 1)
            self.expect(Kind.RBRACE, "a command or '}'")
        else:
            raise SieveError(f"missing ';' after '{name.value}'", last.end_line, last.end_col)
        return Command(str(name.value), arguments, tests, block, name.line, name.col, test_list)

    def arguments(self, depth: int) -> tuple[tuple[Argument, ...], tuple[Test, ...], bool]:
        args: list[Argument] = []
        while True:
            t = self.tok
            if t.kind is Kind.STRING:
                self.take()
                args.append(StringList((str(t.value),), t.line, t.col))
            elif t.kind is Kind.LBRACKET:
                args.append(self.string_list())
            elif t.kind is Kind.NUMBER:
                self.take()
                args.append(Number(int(t.value or 0), t.line, t.col))
            elif t.kind is Kind.TAG:
                self.take()
                args.append(Tag(str(t.value), t.line, t.col))
            else:
                break
        if self.tok.kind is Kind.IDENT:
            return tuple(args), (self.test(depth + 1),), False
        if self.tok.kind is Kind.LPAREN:
            return tuple(args), self.test_list(depth + 1), True
        return tuple(args), (), False

    def string_list(self) -> StringList:
        open_ = self.take()
        values = [str(self.expect(Kind.STRING, "a string").value)]
        while self.tok.kind is Kind.COMMA:
            self.take()
            t = self.expect(Kind.STRING, "a string after ','")
            values.append(str(t.value))
            if len(values) > self.limits.max_list_length:
                raise SieveError(f"string list too long (at most {self.limits.max_list_length} strings)", t.line, t.col)
        self.expect(Kind.RBRACKET, "',' or ']'")
        return StringList(tuple(values), open_.line, open_.col, True)

    def test(self, depth: int) -> Test:
        name = self.expect(Kind.IDENT, "a test")
        self.count(name, depth)
        arguments, tests, test_list = self.arguments(depth)
        return Test(str(name.value), arguments, tests, name.line, name.col, test_list)

    def test_list(self, depth: int) -> tuple[Test, ...]:
        self.take()
        tests = [self.test(depth)]
        while self.tok.kind is Kind.COMMA:
            self.take()
            tests.append(self.test(depth))
        self.expect(Kind.RPAREN, "',' or ')'")
        return tuple(tests)
