"""Addresses in header values, and their parts for :localpart, :domain, :user, :detail.

Parsing reuses the store's RFC 5322 address parser: it is written for hostile
input (no recursion on nested comments, never raises, bounded output), which
``email.utils.getaddresses`` is not (it recurses on nested comments).
"""

from __future__ import annotations

import re

from ..store.mime import parse_addresses

MAX_ADDRESSES = 1000          # addresses taken from one header field
SUBADDRESS_SEPARATOR = "+"    # RFC 5233: user+detail@domain
_MISSING = ("MISSING_MAILBOX", "MISSING_DOMAIN")   # parse_addresses' fill-ins for IMAP
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z"
                     r"|\[[^\[\]\\]+\]\Z")


def addr_specs(value: str, limit: int = MAX_ADDRESSES) -> list[str]:
    """The addr-specs (local@domain, or a bare local part) of one header field."""
    out = []
    for a in parse_addresses(value, limit):
        if a.host is None:   # group start or end marker
            continue
        local = "" if a.mailbox == _MISSING[0] else a.mailbox or ""
        domain = "" if a.host == _MISSING[1] else a.host
        out.append(f"{local}@{domain}" if domain else local)
    return out


def part(spec: str, which: str) -> str | None:
    """One part of an addr-spec; None when it has no such part (:detail without '+')."""
    local, at, domain = spec.rpartition("@")
    if not at:
        local, domain = spec, ""
    if which == "all":
        return spec
    if which == "localpart":
        return local
    if which == "domain":
        return domain
    user, sep, detail = local.partition(SUBADDRESS_SEPARATOR)
    if which == "user":
        return user
    return detail if sep else None   # detail


def parse_single(text: str) -> str | None:
    """The addr-spec of text holding exactly one full address ("Name <a@b>" or a@b), else None."""
    if len(text) > 998:
        return None
    found = [a for a in parse_addresses(text, 3) if a.host is not None]
    if len(found) != 1:
        return None
    a = found[0]
    if a.mailbox in (None, "", _MISSING[0]) or a.host in (None, "", _MISSING[1]) or not _DOMAIN.match(a.host):
        return None
    return f"{_quote_local(a.mailbox)}@{a.host}"


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+)*\Z")


def _quote_local(local: str) -> str:
    """A local part as written in an addr-spec: quoted when not a dot-atom."""
    if _DOT_ATOM.match(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
