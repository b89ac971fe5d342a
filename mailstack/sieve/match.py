"""Comparators (RFC 4790) and match types: :is :contains :matches :regex :count :value.

Pure functions over strings.  ``:matches`` wildcards and ``:regex`` patterns
run on the ``regex`` module rather than ``re``: it takes a timeout, so a
hostile pattern (``(x+x+)+y``, or ``*a*a*a*a*b`` against a long body) costs at
most the run's budget (``Limits.match_seconds``) and then fails the run
instead of hanging delivery.  It also knows the POSIX classes
(``[[:digit:]]``) that Sieve regexes (POSIX extended) use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import regex

from .errors import SieveRuntimeError

DEFAULT_COMPARATOR = "i;ascii-casemap"
COMPARATORS = frozenset({"i;octet", "i;ascii-casemap", "i;ascii-numeric"})
RELATIONS = {
    "gt": lambda c: c > 0, "ge": lambda c: c >= 0, "lt": lambda c: c < 0,
    "le": lambda c: c <= 0, "eq": lambda c: c == 0, "ne": lambda c: c != 0,
}
MAX_PATTERN = 4096         # characters of one :regex pattern
MAX_REPEAT = 10_000        # product of {m,n} bounds: compile time grows with it
MAX_CACHED = 256           # compiled patterns kept per run
_CASEMAP = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}   # i;ascii-casemap folds ASCII only
_REPEAT = regex.compile(r"(?<!\\)\{([0-9]+)(?:,([0-9]*))?\}")


def fold(s: str, comparator: str) -> str:
    return s.translate(_CASEMAP) if comparator == "i;ascii-casemap" else s


def _numeric(s: str) -> tuple[int, int, str]:
    """i;ascii-numeric: the leading digits as a number; none is +infinity.
    Compared as (length, digits) so that a hostile 100-digit string costs nothing."""
    n = 0
    while n < len(s) and "0" <= s[n] <= "9":
        n += 1
    if n == 0:
        return (1, 0, "")
    digits = s[:n].lstrip("0")
    return (0, len(digits), digits)


def compare(a: str, b: str, comparator: str) -> int:
    """-1, 0 or 1 as a sorts before, with or after b under the comparator."""
    if comparator == "i;ascii-numeric":
        x, y = _numeric(a), _numeric(b)
    else:
        x, y = fold(a, comparator), fold(b, comparator)
    return (x > y) - (x < y)


@dataclass
class Budget:
    """The time left for pattern matching in one run, and its compiled patterns."""

    seconds: float
    deadline: float = 0.0
    cache: dict[tuple[str, str, str], regex.Pattern[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SieveRuntimeError("pattern matching took too long")
        return left


@dataclass(frozen=True)
class Result:
    matched: bool
    groups: tuple[str, ...] | None = None   # ${0}, ${1}... of a successful :matches or :regex


NO_MATCH = Result(False)


def test(values: Sequence[str], keys: Sequence[str], mtype: str, relation: str | None,
         comparator: str, budget: Budget) -> Result:
    """Does any value match any key?  (RFC 5228 §2.7.1: values outer, keys inner)."""
    if mtype == "count":
        count = str(sum(1 for _ in values))
        return Result(any(RELATIONS[relation](compare(count, k, comparator)) for k in keys))  # type: ignore[index]
    for value in values:
        for key in keys:
            if mtype == "is":
                if _equal(value, key, comparator):
                    return Result(True)
            elif mtype == "contains":
                if fold(key, comparator) in fold(value, comparator):
                    return Result(True)
            elif mtype == "value":
                if RELATIONS[relation](compare(value, key, comparator)):  # type: ignore[index]
                    return Result(True)
            elif mtype == "matches":
                groups = _glob(value, key, comparator, budget)
                if groups is not None:
                    return Result(True, groups)
            elif mtype == "regex":
                groups = _regex(value, key, comparator, budget)
                if groups is not None:
                    return Result(True, groups)
    return NO_MATCH


def _equal(a: str, b: str, comparator: str) -> bool:
    if comparator == "i;ascii-numeric":
        return _numeric(a) == _numeric(b)
    return fold(a, comparator) == fold(b, comparator)


# -- :matches ------------------------------------------------------------------------


def _glob_pattern(key: str, comparator: str, budget: Budget) -> regex.Pattern[str] | str:
    """A compiled pattern, or the plain string when the key has no wildcard."""
    cached = budget.cache.get(("glob", comparator, key))
    if cached is not None:
        return cached
    parts, plain, i = [], [], 0
    wild = False
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key):
            parts.append(regex.escape(fold(key[i + 1], comparator)))
            plain.append(key[i + 1])
            i += 2
            continue
        if c == "*":
            parts.append("(.*?)")
            wild = True
        elif c == "?":
            parts.append("(.)")
            wild = True
        else:
            parts.append(regex.escape(fold(c, comparator)))
            plain.append(c)
        i += 1
    if not wild:
        return "".join(plain)
    pattern = regex.compile("".join(parts), regex.DOTALL)
    _remember(budget, ("glob", comparator, key), pattern)
    return pattern


def _glob(value: str, key: str, comparator: str, budget: Budget) -> tuple[str, ...] | None:
    pattern = _glob_pattern(key, comparator, budget)
    if isinstance(pattern, str):
        return (value,) if fold(value, comparator) == fold(pattern, comparator) else None
    m = _run(pattern, fold(value, comparator), budget, full=True)
    if m is None:
        return None
    # Groups come from the original text: folding keeps every index in place.
    return (value,) + tuple(value[m.start(g):m.end(g)] for g in range(1, (pattern.groups or 0) + 1))


# -- :regex --------------------------------------------------------------------------


def _flags(comparator: str) -> int:
    # POSIX extended regexes in the C locale: '.' matches newlines, ASCII classes,
    # i;ascii-casemap folds only ASCII letters.
    return regex.DOTALL | regex.ASCII | (regex.IGNORECASE if comparator == "i;ascii-casemap" else 0)


def compile_regex(pattern: str, comparator: str = DEFAULT_COMPARATOR) -> regex.Pattern[str]:
    """The compiled pattern; ValueError saying why it is refused.

    Counted repetitions are bounded before compiling: ``((a{255}){255}){255}``
    takes the regex module seconds to compile, and compiling has no timeout."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"longer than {MAX_PATTERN} characters")
    product = 1
    for m in _REPEAT.finditer(pattern):
        bound = m.group(2) or m.group(1)
        product *= max(1, int(bound[:6]))
        if product > MAX_REPEAT:
            raise ValueError(f"repetition counts too large (their product is over {MAX_REPEAT})")
    try:
        return regex.compile(pattern, _flags(comparator))
    except (regex.error, OverflowError, RecursionError) as e:
        raise ValueError(str(e)) from None


def regex_problem(pattern: str, comparator: str = DEFAULT_COMPARATOR) -> str | None:
    """Why a pattern is refused, or None."""
    try:
        compile_regex(pattern, comparator)
    except ValueError as e:
        return str(e)
    return None


def _regex(value: str, key: str, comparator: str, budget: Budget) -> tuple[str, ...] | None:
    pattern = budget.cache.get(("regex", comparator, key))
    if pattern is None:
        try:
            pattern = compile_regex(key, comparator)
        except ValueError as e:
            raise SieveRuntimeError(f"bad regular expression \"{key}\": {e}") from None
        _remember(budget, ("regex", comparator, key), pattern)
    m = _run(pattern, value, budget, full=False)
    if m is None:
        return None
    return tuple(g or "" for g in (m.group(0),) + m.groups())


# -- shared ----------------------------------------------------------------------------


def _remember(budget: Budget, key: tuple[str, str, str], pattern: regex.Pattern[str]) -> None:
    if len(budget.cache) >= MAX_CACHED:
        budget.cache.clear()
    budget.cache[key] = pattern


def _run(pattern: regex.Pattern[str], text: str, budget: Budget, full: bool) -> regex.Match[str] | None:
    try:
        if full:
            return pattern.fullmatch(text, timeout=budget.left())
        return pattern.search(text, timeout=budget.left())
    except TimeoutError:
        raise SieveRuntimeError("pattern matching took too long") from None


def quote_wildcard(s: str) -> str:
    """RFC 5229 :quotewildcard: make * ? and backslash literal for :matches."""
    return "".join("\\" + c if c in "*?\\" else c for c in s)


def quote_regex(s: str) -> str:
    """:quoteregex (regex draft): make every regex special character literal."""
    return "".join("\\" + c if c in "\\^$.[]|()?*+{}" else c for c in s)
