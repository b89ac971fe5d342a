"""The address in MAIL FROM / RCPT TO (RFC 5321 4.1.2), strictly and quickly.

aiosmtpd runs the e-mail header parser of the standard library (meant for
RFC 5322 headers, lenient, and slow: it builds a class per call); an SMTP
path has a much smaller grammar, so we read it with one regular expression.
"""

from __future__ import annotations

import re

# <[@route,@route:]local@domain> [parameters], or a bare address (some clients).
# Local part: a dot-string or a quoted string; domain: a name or an address literal.
# Never control characters, nor the lone surrogates that stand for bytes
# that are not UTF-8 (aiosmtpd decodes with surrogateescape).
_BAD = r"\x00-\x20\x7f\ud800-\udfff"
_LOCAL = rf'(?:"(?:[^"\\{_BAD}]|[ \t]|\\[ -~])*"|[^{_BAD}<>()\[\]\\,;:@"]+)'
# Domain labels: letters and digits (any script, for SMTPUTF8), hyphens inside;
# never a slash, an empty label or "..": domains end up in file names (quarantine).
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_DOMAIN = rf"(?:\[[^\[\]\\{_BAD}]+\]|{_LABEL}(?:\.{_LABEL})*)"
_PATH = re.compile(
    rf"<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?(?P<addr>{_LOCAL}@{_DOMAIN}|{_LOCAL})?>(?P<rest>[^\r\n]*)"
    rf"|(?P<bare>{_LOCAL}@{_DOMAIN})(?P<bare_rest>(?:[ \t][^\r\n]*)?)"
)
MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3: a path is at most 256 octets with its brackets


def parse_path(arg: str) -> tuple[str | None, str | None]:
    """(address, rest) for aiosmtpd: ("<>", rest) for the null path, (None, None)
    when malformed.  A source route is dropped, as RFC 5321 C asks."""
    if not arg.strip():
        return "", ""  # aiosmtpd answers a syntax error
    m = _PATH.fullmatch(arg.strip())
    if m is None:
        return None, None
    if m.group("bare") is not None:
        addr, rest = m.group("bare"), m.group("bare_rest")
    else:
        addr, rest = m.group("addr") or "<>", m.group("rest")
    if len(addr) > MAX_ADDRESS:
        return None, None
    return addr, rest.strip()
