"""Checks a parsed script against the commands we know, and compiles it.

Separate from parsing so that the grammar stays small and so that a site can
switch extensions off (``extensions=``) without touching the parser.  Each
command and test is described once in ``SPECS``: its extension, its
positional arguments, the tags it takes (tags of one group exclude each
other), whether it takes tests or a block, and an optional extra check.

The output is a ``Script`` of ``Node``s whose arguments are plain values
(strings, tuples of strings, ints) and whose tags are already sorted into
groups, so the interpreter never looks at syntax again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

from . import dates, match, variables
from .address import parse_single
from .errors import SieveError
from .limits import DEFAULT_LIMITS, Limits
from .names import name_problem
from .parser import Argument, Command, Number, StringList, Tag, Test, parse

SUPPORTED_EXTENSIONS = frozenset({
    "fileinto", "reject", "ereject", "envelope", "imap4flags", "copy", "body", "variables",
    "relational", "regex", "date", "index", "vacation", "vacation-seconds", "mailbox",
    "subaddress", "include", "comparator-i;octet", "comparator-i;ascii-casemap", "comparator-i;ascii-numeric",
})
_IMPLIES = {"vacation-seconds": "vacation"}

# Headers the address test may read (RFC 5228 §5.1: those holding addresses).
ADDRESS_HEADERS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender", "resent-to",
    "resent-cc", "resent-bcc", "resent-reply-to", "return-path", "delivered-to", "x-original-to",
    "envelope-to", "x-envelope-to", "x-original-from", "disposition-notification-to", "errors-to",
    "mail-followup-to", "mail-reply-to", "original-recipient",
})
ENVELOPE_PARTS = frozenset({"from", "to"})
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")

STRING, STRINGS, NUMBER = "string", "strings", "number"
_KIND_TEXT = {STRING: "a string", STRINGS: "a string list", NUMBER: "a number"}


@dataclass(frozen=True)
class Node:
    """A validated command or test.

    ``tags`` maps a group name (match, comparator, part, zone, transform,
    size, period, case, first, quote) to ``(tag, value)``, and any other tag
    to its value (True when it takes no argument)."""

    name: str
    tags: Mapping[str, Any]
    args: tuple[Any, ...]
    tests: tuple["Node", ...]
    block: tuple["Node", ...] | None
    line: int
    col: int


@dataclass(frozen=True)
class Script:
    requires: frozenset[str]
    commands: tuple[Node, ...]


@dataclass(frozen=True)
class TagSpec:
    group: str | None = None   # tags of one group exclude each other
    arg: str | None = None     # kind of the value the tag takes, if any
    ext: str | None = None     # extension the tag needs


@dataclass(frozen=True)
class Spec:
    is_test: bool
    ext: str | None = None
    signatures: tuple[tuple[tuple[str, str], ...], ...] = ((),)   # ((kind, label), ...) per arity
    tags: Mapping[str, TagSpec] = field(default_factory=dict)
    tests: str = "none"   # none | one | list
    block: bool = False
    check: Callable[["_Validator", "_Call"], None] | None = None


@dataclass
class _Call:
    """A node being validated, with the syntax kept for error positions."""

    ast: Union[Command, Test]
    spec: Spec
    tags: dict[str, Any]
    tag_at: dict[str, Argument]   # tag group or name -> the Tag (or its argument)
    args: list[Any]
    arg_at: list[Argument]


def validate(commands: tuple[Command, ...], extensions: frozenset[str] = SUPPORTED_EXTENSIONS) -> Script:
    """The compiled script; SieveError naming line and column if it is not valid."""
    return _Validator(extensions).script(commands)


def compile_script(script: str | bytes, *, extensions: frozenset[str] = SUPPORTED_EXTENSIONS,
                   limits: Limits = DEFAULT_LIMITS) -> Script:
    """Parse and validate: what ManageSieve runs on PUTSCRIPT and delivery before running."""
    return validate(parse(script, limits), extensions)


class _Validator:
    def __init__(self, extensions: frozenset[str]) -> None:
        self.extensions = extensions
        self.requires: set[str] = set()

    def error(self, message: str, at: Any) -> SieveError:
        return SieveError(message, at.line, at.col)

    def script(self, commands: tuple[Command, ...]) -> Script:
        i = 0
        while i < len(commands) and commands[i].name == "require":
            self.node(commands[i], False)
            i += 1
        body = self.block(commands[i:])
        return Script(frozenset(self.requires), body)

    def block(self, commands: tuple[Command, ...]) -> tuple[Node, ...]:
        out, previous = [], ""
        for c in commands:
            if c.name == "require":
                raise self.error("'require' must come before any other command", c)
            if c.name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise self.error(f"'{c.name}' without 'if' before it", c)
            out.append(self.node(c, False))
            previous = c.name
        return tuple(out)

    def node(self, ast: Union[Command, Test], is_test: bool) -> Node:
        kind = "test" if is_test else "command"
        spec = SPECS.get(ast.name)
        if spec is None:
            raise self.error(f"unknown {kind} '{ast.name}'", ast)
        if spec.is_test != is_test:
            other = "test" if spec.is_test else "command"
            raise self.error(f"'{ast.name}' is a {other}, not a {kind}", ast)
        self.need(spec.ext, f"'{ast.name}'", ast)
        call = _Call(ast, spec, {}, {}, [], [])
        self.arguments(call)
        tests = self.tests(call)
        block = None
        if isinstance(ast, Command):
            if spec.block and ast.block is None:
                raise self.error(f"'{ast.name}' needs a block {{ ... }}", ast)
            if not spec.block and ast.block is not None:
                raise self.error(f"'{ast.name}' takes no block", ast)
            if ast.block is not None:
                block = self.block(ast.block)
        if spec.check is not None:
            spec.check(self, call)
        if "comparator" in spec.tags:
            _check_match(self, call)
        return Node(ast.name, call.tags, tuple(call.args), tests, block, ast.line, ast.col)

    def need(self, ext: str | None, what: str, at: Any) -> None:
        if ext is not None and ext not in self.requires:
            raise self.error(f"missing require \"{ext}\" for {what}", at)

    def arguments(self, call: _Call) -> None:
        args, spec, name = call.ast.arguments, call.spec, call.ast.name
        i = 0
        while i < len(args):
            a = args[i]
            i += 1
            if not isinstance(a, Tag):
                call.args.append(a)
                call.arg_at.append(a)
                continue
            if call.args:
                raise self.error(f"tag ':{a.name}' must come before the other arguments of '{name}'", a)
            ts = spec.tags.get(a.name)
            if ts is None:
                raise self.error(f"unknown tag ':{a.name}' for '{name}'", a)
            self.need(ts.ext, f"':{a.name}'", a)
            key = ts.group or a.name
            if key in call.tags:
                earlier = call.tags[key][0] if ts.group else a.name
                if earlier == a.name:
                    raise self.error(f"tag ':{a.name}' given twice", a)
                raise self.error(f"tags ':{earlier}' and ':{a.name}' cannot be used together", a)
            value: Any = True
            at: Argument = a
            if ts.arg is not None:
                if i >= len(args) or isinstance(args[i], Tag):
                    raise self.error(f"':{a.name}' needs {_KIND_TEXT[ts.arg]}", a)
                at = args[i]
                value = self.coerce(args[i], ts.arg, f"':{a.name}'")
                i += 1
            call.tags[key] = (a.name, value) if ts.group else value
            call.tag_at[key] = at
        self.positional(call)

    def positional(self, call: _Call) -> None:
        name, n = call.ast.name, len(call.args)
        sigs = call.spec.signatures
        sig = next((s for s in sigs if len(s) == n), None)
        if sig is None:
            longest = max(sigs, key=len)
            if n > len(longest):
                raise self.error(f"unexpected argument to '{name}'", call.arg_at[len(longest)])
            missing = next(s for s in sorted(sigs, key=len) if len(s) > n)[n]
            raise self.error(f"'{name}' needs {_KIND_TEXT[missing[0]]} ({missing[1]})", call.ast)
        call.args = [self.coerce(a, kind, f"'{name}' ({label})") for a, (kind, label) in zip(call.args, sig)]

    def coerce(self, a: Argument, kind: str, what: str) -> Any:
        if kind == NUMBER and isinstance(a, Number):
            return a.value
        if kind == STRINGS and isinstance(a, StringList):
            return a.values
        if kind == STRING and isinstance(a, StringList) and not a.bracketed:
            return a.values[0]
        found = "a number" if isinstance(a, Number) else "a tag" if isinstance(a, Tag) else "a string list"
        raise self.error(f"{what} expects {_KIND_TEXT[kind]}, not {found}", a)

    def tests(self, call: _Call) -> tuple[Node, ...]:
        ast, want = call.ast, call.spec.tests
        if want == "none":
            if ast.tests:
                t = ast.tests[0]
                if isinstance(ast, Command) and not ast.test_list:
                    raise self.error(f"missing ';' before '{t.name}'", t)
                raise self.error(f"'{ast.name}' takes no test", t)
            return ()
        if not ast.tests:
            raise self.error(f"'{ast.name}' needs {'a test' if want == 'one' else 'a list of tests (...)'}", ast)
        if want == "one" and ast.test_list:
            raise self.error(f"'{ast.name}' takes one test, not a list", ast.tests[0])
        if want == "list" and not ast.test_list:
            raise self.error(f"'{ast.name}' needs a list of tests in parentheses", ast.tests[0])
        return tuple(self.node(t, True) for t in ast.tests)

    def constant(self, s: str) -> bool:
        """True when s has no variable reference, so it can be checked now."""
        return "variables" not in self.requires or "${" not in s


# -- extra checks ------------------------------------------------------------------


def _check_require(v: _Validator, call: _Call) -> None:
    for ext in call.args[0]:
        name = ext.lower()
        if name not in v.extensions:
            raise v.error(f"unsupported extension \"{ext}\"", call.arg_at[0])
        v.requires.add(name)
        if name in _IMPLIES:
            v.requires.add(_IMPLIES[name])


def _check_match(v: _Validator, call: _Call) -> None:
    """Comparator, match type and keys of any test that compares strings."""
    tags = call.tags
    comparator = tags.get("comparator", ("comparator", match.DEFAULT_COMPARATOR))[1].lower()
    if "comparator" in tags:
        if comparator not in match.COMPARATORS:
            raise v.error(f"unknown comparator \"{comparator}\"", call.tag_at["comparator"])
        if comparator == "i;ascii-numeric":
            v.need("comparator-i;ascii-numeric", "comparator \"i;ascii-numeric\"", call.tag_at["comparator"])
        tags["comparator"] = ("comparator", comparator)
    mtype, rel = tags.get("match", ("is", None))
    if mtype in ("count", "value"):
        if rel.lower() not in match.RELATIONS:
            raise v.error(f"unknown relation \"{rel}\": gt, ge, lt, le, eq or ne", call.tag_at["match"])
        tags["match"] = (mtype, rel.lower())
    if comparator == "i;ascii-numeric" and mtype in ("contains", "matches", "regex"):
        raise v.error(f"comparator \"i;ascii-numeric\" cannot be used with ':{mtype}'", call.tag_at["match"])
    if mtype == "regex" and call.args:
        keys = call.args[-1]
        for key in (keys if isinstance(keys, tuple) else (keys,)):
            if v.constant(key):
                problem = match.regex_problem(key, comparator)
                if problem:
                    raise v.error(f"bad regular expression \"{key}\": {problem}", call.arg_at[-1])


def _check_index(v: _Validator, call: _Call) -> None:
    if "last" in call.tags and "index" not in call.tags:
        raise v.error("':last' needs ':index'", call.tag_at["last"])
    if call.tags.get("index", 1) < 1:
        raise v.error("':index' counts from 1", call.tag_at["index"])


def _check_header_names(v: _Validator, call: _Call, names: tuple[str, ...], at: Argument,
                        addresses: bool = False) -> None:
    for h in names:
        if not v.constant(h):
            continue
        if not _FIELD_NAME.match(h):
            raise v.error(f"invalid header name \"{h}\"", at)
        if addresses and h.lower() not in ADDRESS_HEADERS:
            raise v.error(f"header \"{h}\" does not hold addresses", at)


def _check_header(v: _Validator, call: _Call) -> None:
    _check_index(v, call)
    _check_header_names(v, call, call.args[0], call.arg_at[0])


def _check_address(v: _Validator, call: _Call) -> None:
    _check_index(v, call)
    _check_header_names(v, call, call.args[0], call.arg_at[0], addresses=True)


def _check_exists(v: _Validator, call: _Call) -> None:
    _check_header_names(v, call, call.args[0], call.arg_at[0])


def _check_envelope(v: _Validator, call: _Call) -> None:
    for part in call.args[0]:
        if v.constant(part) and part.lower() not in ENVELOPE_PARTS:
            raise v.error(f"unknown envelope part \"{part}\": \"from\" or \"to\"", call.arg_at[0])


def _check_size(v: _Validator, call: _Call) -> None:
    if "size" not in call.tags:
        raise v.error("'size' needs ':over' or ':under'", call.ast)


def _check_zone(v: _Validator, call: _Call) -> None:
    zone = call.tags.get("zone")
    if zone and zone[0] == "zone" and v.constant(zone[1]) and dates.parse_zone(zone[1]) is None:
        raise v.error(f"bad time zone \"{zone[1]}\": +hhmm or -hhmm", call.tag_at["zone"])


def _check_date_part(v: _Validator, part: str, at: Argument) -> None:
    if v.constant(part) and part.lower() not in dates.DATE_PARTS:
        raise v.error(f"unknown date part \"{part}\"", at)


def _check_date(v: _Validator, call: _Call) -> None:
    _check_index(v, call)
    _check_zone(v, call)
    _check_header_names(v, call, (call.args[0],), call.arg_at[0])
    _check_date_part(v, call.args[1], call.arg_at[1])


def _check_currentdate(v: _Validator, call: _Call) -> None:
    _check_zone(v, call)
    _check_date_part(v, call.args[0], call.arg_at[0])


def _check_variable_names(v: _Validator, names: tuple[str, ...], at: Argument) -> None:
    for name in names:
        if not variables.valid_name(name):
            raise v.error(f"invalid variable name \"{name}\"", at)


def _check_set(v: _Validator, call: _Call) -> None:
    _check_variable_names(v, (call.args[0],), call.arg_at[0])
    if "quote" in call.tags and call.tags["quote"][0] == "quoteregex":
        v.need("regex", "':quoteregex'", call.tag_at["quote"])


def _check_flag_command(v: _Validator, call: _Call) -> None:
    if len(call.args) == 2:
        v.need("variables", f"a variable name in '{call.ast.name}'", call.arg_at[0])
        _check_variable_names(v, (call.args[0],), call.arg_at[0])


def _check_hasflag(v: _Validator, call: _Call) -> None:
    if len(call.args) == 2:
        v.need("variables", "a variable list in 'hasflag'", call.arg_at[0])
        _check_variable_names(v, call.args[0], call.arg_at[0])


def _check_fileinto(v: _Validator, call: _Call) -> None:
    if call.args[0] == "":
        raise v.error("'fileinto' needs a mailbox name", call.arg_at[0])


def _check_redirect(v: _Validator, call: _Call) -> None:
    if v.constant(call.args[0]) and parse_single(call.args[0]) is None:
        raise v.error(f"invalid address \"{call.args[0]}\"", call.arg_at[0])


def _check_vacation(v: _Validator, call: _Call) -> None:
    for a in call.tags.get("addresses", ()):
        if v.constant(a) and parse_single(a) is None:
            raise v.error(f"invalid address \"{a}\" in ':addresses'", call.tag_at["addresses"])
    sender = call.tags.get("from")
    if sender is not None and v.constant(sender) and parse_single(sender) is None:
        raise v.error(f"invalid address \"{sender}\" in ':from'", call.tag_at["from"])


def _check_include(v: _Validator, call: _Call) -> None:
    name = call.args[0]
    if not v.constant(name):   # RFC 6609 §3.2: never expanded, so that it can be checked here
        raise v.error("the script name of 'include' cannot hold variables", call.arg_at[0])
    problem = name_problem(name)
    if problem:
        raise v.error(f"bad script name \"{name}\": {problem}", call.arg_at[0])


def _check_global(v: _Validator, call: _Call) -> None:
    v.need("variables", "'global'", call.ast)
    _check_variable_names(v, call.args[0], call.arg_at[0])


# -- the table ----------------------------------------------------------------------

_COMPARATOR = {"comparator": TagSpec("comparator", STRING)}
_MATCH = {
    "is": TagSpec("match"), "contains": TagSpec("match"), "matches": TagSpec("match"),
    "regex": TagSpec("match", None, "regex"),
    "count": TagSpec("match", STRING, "relational"), "value": TagSpec("match", STRING, "relational"),
}
_PART = {
    "all": TagSpec("part"), "localpart": TagSpec("part"), "domain": TagSpec("part"),
    "user": TagSpec("part", None, "subaddress"), "detail": TagSpec("part", None, "subaddress"),
}
_INDEX = {"index": TagSpec(None, NUMBER, "index"), "last": TagSpec(None, None, "index")}
_FLAGS = {"flags": TagSpec(None, STRINGS, "imap4flags")}
_NAMES_KEYS = (((STRINGS, "header names"), (STRINGS, "keys")),)

SPECS: dict[str, Spec] = {
    # control (RFC 5228 §3)
    "require": Spec(False, signatures=(((STRINGS, "extensions"),),), check=_check_require),
    "if": Spec(False, tests="one", block=True),
    "elsif": Spec(False, tests="one", block=True),
    "else": Spec(False, block=True),
    "stop": Spec(False),
    # include (RFC 6609)
    "include": Spec(False, "include", (((STRING, "script name"),),), {
        "personal": TagSpec("location"), "global": TagSpec("location"), "once": TagSpec(), "optional": TagSpec(),
    }, check=_check_include),
    "return": Spec(False, "include"),
    "global": Spec(False, "include", (((STRINGS, "variable names"),),), check=_check_global),
    # actions (RFC 5228 §4 and extensions)
    "keep": Spec(False, tags=_FLAGS),
    "discard": Spec(False),
    "fileinto": Spec(False, "fileinto", (((STRING, "mailbox"),),),
                     {"copy": TagSpec(None, None, "copy"), "create": TagSpec(None, None, "mailbox"), **_FLAGS},
                     check=_check_fileinto),
    "redirect": Spec(False, None, (((STRING, "address"),),), {"copy": TagSpec(None, None, "copy")},
                     check=_check_redirect),
    "reject": Spec(False, "reject", (((STRING, "reason"),),)),
    "ereject": Spec(False, "ereject", (((STRING, "reason"),),)),
    "vacation": Spec(False, "vacation", (((STRING, "reason"),),), {
        "days": TagSpec("period", NUMBER), "seconds": TagSpec("period", NUMBER, "vacation-seconds"),
        "subject": TagSpec(None, STRING), "from": TagSpec(None, STRING),
        "addresses": TagSpec(None, STRINGS), "mime": TagSpec(), "handle": TagSpec(None, STRING),
    }, check=_check_vacation),
    "set": Spec(False, "variables", (((STRING, "name"), (STRING, "value")),), {
        "lower": TagSpec("case"), "upper": TagSpec("case"),
        "lowerfirst": TagSpec("first"), "upperfirst": TagSpec("first"),
        "quotewildcard": TagSpec("quote"), "quoteregex": TagSpec("quote"), "length": TagSpec(),
    }, check=_check_set),
    "setflag": Spec(False, "imap4flags", (((STRINGS, "flags"),), ((STRING, "variable"), (STRINGS, "flags"))),
                    check=_check_flag_command),
    "addflag": Spec(False, "imap4flags", (((STRINGS, "flags"),), ((STRING, "variable"), (STRINGS, "flags"))),
                    check=_check_flag_command),
    "removeflag": Spec(False, "imap4flags", (((STRINGS, "flags"),), ((STRING, "variable"), (STRINGS, "flags"))),
                       check=_check_flag_command),
    # tests (RFC 5228 §5 and extensions)
    "address": Spec(True, None, _NAMES_KEYS, {**_COMPARATOR, **_MATCH, **_PART, **_INDEX}, check=_check_address),
    "allof": Spec(True, tests="list"),
    "anyof": Spec(True, tests="list"),
    "envelope": Spec(True, "envelope", (((STRINGS, "envelope parts"), (STRINGS, "keys")),),
                     {**_COMPARATOR, **_MATCH, **_PART}, check=_check_envelope),
    "exists": Spec(True, None, (((STRINGS, "header names"),),), check=_check_exists),
    "false": Spec(True),
    "true": Spec(True),
    "header": Spec(True, None, _NAMES_KEYS, {**_COMPARATOR, **_MATCH, **_INDEX}, check=_check_header),
    "not": Spec(True, tests="one"),
    "size": Spec(True, None, ((),), {"over": TagSpec("size", NUMBER), "under": TagSpec("size", NUMBER)},
                 check=_check_size),
    "body": Spec(True, "body", (((STRINGS, "keys"),),), {
        **_COMPARATOR, **_MATCH,
        "raw": TagSpec("transform"), "text": TagSpec("transform"), "content": TagSpec("transform", STRINGS),
    }),
    "string": Spec(True, "variables", (((STRINGS, "source"), (STRINGS, "keys")),), {**_COMPARATOR, **_MATCH}),
    "hasflag": Spec(True, "imap4flags", (((STRINGS, "flags"),), ((STRINGS, "variables"), (STRINGS, "flags"))),
                    {**_COMPARATOR, **_MATCH}, check=_check_hasflag),
    "date": Spec(True, "date", (((STRING, "header name"), (STRING, "date part"), (STRINGS, "keys")),), {
        **_COMPARATOR, **_MATCH, **_INDEX,
        "zone": TagSpec("zone", STRING), "originalzone": TagSpec("zone"),
    }, check=_check_date),
    "currentdate": Spec(True, "date", (((STRING, "date part"), (STRINGS, "keys")),),
                        {**_COMPARATOR, **_MATCH, "zone": TagSpec("zone", STRING)}, check=_check_currentdate),
    "mailboxexists": Spec(True, "mailbox", (((STRINGS, "mailbox names"),),)),
}
