"""SMTP reply lines: enhanced status codes (RFC 2034, RFC 3463) on every reply.

aiosmtpd writes many replies without one ("250 OK", "501 Syntax: ...").
Advertising ENHANCEDSTATUSCODES promises them on every 2xx/4xx/5xx reply
except the greeting and the EHLO/HELO answer, so the daemon passes each line
through ``enhance`` in one place instead of rewriting aiosmtpd's commands.
"""

from __future__ import annotations

import re

_HAS_ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

# Class defaults by reply code where aiosmtpd gives none.
_DEFAULTS = {
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    252: "2.5.0",
    421: "4.3.0",
    451: "4.3.0",
    452: "4.3.1",
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    535: "5.7.8",
    538: "5.7.11",
    550: "5.0.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}


def code_of(line: str) -> int:
    """The reply code of a reply line (0 if it has none)."""
    head = line[:3]
    return int(head) if head.isdigit() else 0


def enhance(line: str) -> str:
    """Add the enhanced status code a reply line lacks.  Greetings (220),
    intermediate replies (3xx) and multi-line EHLO continuation lines pass."""
    code = code_of(line)
    if code < 200 or code == 220 or 300 <= code < 400 or line[3:4] == "-" or _HAS_ENHANCED.match(line):
        return line
    enhanced = _DEFAULTS.get(code, f"{code // 100}.0.0")
    text = line[4:]
    if text.startswith("Error: "):
        text = text[7:]
    return f"{code} {enhanced} {text}".rstrip()
