"""RFC 5229 variables: names, ${...} expansion, and the modifiers of ``set``."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from .match import quote_regex, quote_wildcard

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+)\}")

# Modifiers in the order they apply (RFC 5229 §4.1: highest precedence first).
MODIFIERS: tuple[tuple[str, object], ...] = (
    ("lower", str.lower), ("upper", str.upper),
    ("lowerfirst", lambda s: s[:1].lower() + s[1:]), ("upperfirst", lambda s: s[:1].upper() + s[1:]),
    ("quotewildcard", quote_wildcard), ("quoteregex", quote_regex),
    ("length", lambda s: str(len(s))),
)


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def expand(text: str, variables: Mapping[str, str], matches: Sequence[str], max_size: int) -> str:
    """Replace ${name} and ${N} once (values are not expanded again); unknown names
    give the empty string, malformed references stay as written (§3)."""
    if "${" not in text:
        return text

    out: list[str] = []
    size, pos = 0, 0
    for m in _REFERENCE.finditer(text):
        ref = m.group(1)
        if ref[0].isdigit():
            n = int(ref) if len(ref) < 6 else -1
            value = matches[n] if 0 <= n < len(matches) else ""
        else:
            value = variables.get(ref.lower(), "")
        out += (text[pos:m.start()], value)
        size += m.start() - pos + len(value)
        pos = m.end()
        if size >= max_size:   # stop early: "${a}${a}..." must not build megabytes first
            break
    else:
        out.append(text[pos:])
    return "".join(out)[:max_size]


def apply_modifiers(value: str, modifiers: Sequence[str]) -> str:
    for name, function in MODIFIERS:
        if name in modifiers:
            value = function(value)  # type: ignore[operator]
    return value
