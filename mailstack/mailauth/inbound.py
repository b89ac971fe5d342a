"""SPF, DKIM and DMARC for mail arriving at our MX, summed up in one header.

``authenticate`` is blocking (DNS lookups, hashing); the daemon runs it in a
thread.  DMARC is evaluated here rather than by authheaders' ``check_dmarc``,
which (0.16.3) cannot be trusted with our own domains:

- it extracts domains with ``@([a-z0-9.]+)``, so ``ac-normandie.fr`` becomes
  ``ac`` and alignment fails for every hyphenated domain;
- it applies ``sp=`` to the organizational domain itself (``p=reject;
  sp=none`` reads as "none" for mail from the very domain that says reject);
- it ignores ``pct=``, and takes SERVFAIL for "no record" (none, not temperror);
- through publicsuffix2 (2.20191221), an unlisted TLD loses the default "*"
  rule, so every ``*.test`` domain shares the org domain ``test``.

What we keep from it is its public suffix list (read once, not per call as
``get_org_domain`` does) for organizational domains, as RFC 7489 3.2 asks.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
import re
import threading
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path
from typing import BinaryIO

import dns.exception
import dns.name
import dns.resolver
import spf as pyspf

from .dkim import DkimResult, field_name, field_values, read_header_block, split_fields, verify_parts

# --- organizational domains (RFC 7489 3.2) -----------------------------------------------

_SYSTEM_PSL = Path("/usr/share/publicsuffix/public_suffix_list.dat")  # Debian's, kept current by apt
_psl = None
_psl_lock = threading.Lock()


def _suffix_list():
    global _psl
    with _psl_lock:
        if _psl is None:
            from publicsuffix2 import PublicSuffixList

            try:
                from authheaders.findpsl import (
                    location,  # an operator's override, as authheaders honours it
                )
            except ImportError:
                location = None
            if location is None and _SYSTEM_PSL.exists():
                location = _SYSTEM_PSL
            if location is None:
                ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
                with importlib.resources.as_file(ref) as path, open(path, encoding="utf-8") as f:
                    _psl = PublicSuffixList(f)
            else:
                with open(location, encoding="utf-8") as f:
                    _psl = PublicSuffixList(f)
        return _psl


@functools.lru_cache(maxsize=4096)
def org_domain(domain: str) -> str:
    """The registrable domain: the public suffix plus one label.

    An unlisted TLD is itself the suffix (the list's implicit "*" rule).
    """
    domain = domain.lower().rstrip(".")
    labels = domain.split(".")
    suffix = _suffix_list().get_tld(domain, wildcard=True, strict=False) or labels[-1]
    n = suffix.count(".") + 1
    return domain if len(labels) <= n else ".".join(labels[-(n + 1):])


def aligned(a: str, b: str, mode: str) -> bool:
    """DMARC identifier alignment: strict (s) is equality, relaxed (r) same org domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


# --- SPF --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpfResult:
    result: str  # pass | fail | softfail | neutral | none | temperror | permerror
    identity: str  # "mailfrom" or "helo" (the null sender)
    domain: str  # the domain checked
    reason: str = ""
    address: str = ""  # the MAIL FROM address, for smtp.mailfrom


def check_spf(client_ip: str, mail_from: str, helo: str) -> SpfResult:
    """RFC 7208 check_host on MAIL FROM, or on HELO for the null sender."""
    mail_from = mail_from.strip().strip("<>")
    identity = "mailfrom" if mail_from else "helo"
    domain = (mail_from.rpartition("@")[2] if mail_from else helo).strip().rstrip(".").lower()
    try:
        result, explanation = pyspf.check2(i=client_ip, s=mail_from, h=helo)
    except Exception as e:  # noqa: BLE001 (a bad address or a library fault: nothing was concluded)
        return SpfResult("temperror", identity, domain, f"SPF check failed: {type(e).__name__}")
    result = (result or "none").lower()
    who = f"domain of {domain}" if identity == "mailfrom" else f"helo {domain}"
    reason = {
        "pass": f"{who} designates {client_ip} as permitted sender",
        "fail": f"{who} does not designate {client_ip} as permitted sender",
        "softfail": f"{who} discourages use of {client_ip}",
        "neutral": f"{client_ip} is neither permitted nor denied by {who}",
        "none": f"{who} has no SPF policy",
    }.get(result, explanation or "")
    return SpfResult(result, identity, domain, reason, mail_from)


# --- DMARC (RFC 7489) ----------------------------------------------------------------------

_POLICIES = ("none", "quarantine", "reject")
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z0-9-]{2,63}$")


class _TempError(Exception):
    pass


class _PermError(Exception):
    pass


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass | fail | none | temperror | permerror
    header_from: str = ""
    policy: str = "none"  # what applies to this message: pct= and sp= taken into account
    published: dict[str, str] = field(default_factory=dict)  # p, sp, pct of the record used
    reason: str = ""


def _txt(name: str) -> list[str]:
    try:
        answer = dns.resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN, dns.name.NameTooLong,
            dns.name.LabelTooLong, dns.name.EmptyLabel):
        return []
    except dns.exception.DNSException as e:
        raise _TempError(f"DNS error for {name}: {type(e).__name__}") from None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def parse_record(text: str) -> dict[str, str] | None:
    """Tags of a DMARC record (names lowercased), None if not ``v=DMARC1`` first."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        if not eq:
            if not tags:
                return None
            continue  # a stray token: ignore it, as unknown tags are ignored
        tags.setdefault(name, value.strip())
    if next(iter(tags.items()), None) != ("v", "DMARC1"):
        return None
    return tags


def _record_at(domain: str) -> dict[str, str] | None:
    """The one DMARC record at _dmarc.DOMAIN; none when absent or ambiguous."""
    records = [r for r in (parse_record(t) for t in _txt(f"_dmarc.{domain}")) if r is not None]
    return records[0] if len(records) == 1 else None


def _discover(from_domain: str) -> tuple[dict[str, str] | None, bool]:
    """RFC 7489 6.6.3: the From domain's record, else its org domain's (second: True)."""
    record = _record_at(from_domain)
    if record is not None:
        return record, False
    org = org_domain(from_domain)
    if org != from_domain:
        record = _record_at(org)
        if record is not None:
            return record, True
    return None, False


def _from_domains(headers: bytes) -> list[str]:
    """The author domains (RFC 5322.From); _PermError when there is none usable."""
    values = field_values(headers, b"from")
    if not values:
        raise _PermError("no From header")
    domains = []
    for _, addr in getaddresses(values):
        domain = addr.rpartition("@")[2].strip().rstrip(".").lower() if "@" in addr else ""
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            domain = ""
        # An unusable address beside a real one must not hide the real one's
        # policy (a sender could otherwise turn p=reject into permerror).
        if _DOMAIN.match(domain) and domain not in domains:
            domains.append(domain)
    if not domains:
        raise _PermError("no usable address in From")
    return domains


def _evaluate(from_domain: str, spf: SpfResult, dkim: list[DkimResult]) -> DmarcResult:
    record, at_org = _discover(from_domain)
    if record is None:
        return DmarcResult("none", from_domain, reason="no DMARC record")
    p = record.get("p", "").lower()
    if p not in _POLICIES:
        if not record.get("rua"):
            return DmarcResult("permerror", from_domain, reason="DMARC record without a valid p=")
        p = "none"  # RFC 7489 6.6.3: act as if p=none when rua= is there
    sp = record.get("sp", "").lower()
    sp = sp if sp in _POLICIES else p
    try:
        pct = min(100, max(0, int(record.get("pct", "100"))))
    except ValueError:
        pct = 100
    published = {"p": p, "sp": sp, "pct": str(pct)}
    aspf = "s" if record.get("aspf", "r").lower() == "s" else "r"
    adkim = "s" if record.get("adkim", "r").lower() == "s" else "r"

    spf_aligned = aligned(spf.domain, from_domain, aspf)
    if (spf.result == "pass" and spf_aligned) or any(
        r.result == "pass" and aligned(r.domain, from_domain, adkim) for r in dkim
    ):
        return DmarcResult("pass", from_domain, published=published)
    if (spf.result == "temperror" and spf_aligned) or any(
        r.result == "temperror" and aligned(r.domain, from_domain, adkim) for r in dkim
    ):
        return DmarcResult("temperror", from_domain, published=published, reason="an aligned check could not complete")
    policy = sp if at_org else p
    if pct < 100 and random.random() * 100 >= pct:  # not sampled: one step less strict (6.6.4)
        policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
    return DmarcResult("fail", from_domain, policy=policy, published=published)


_SEVERITY = {"pass": 0, "none": 1, "temperror": 2, "permerror": 3, "fail": 4}
_STRICTNESS = {"none": 0, "quarantine": 1, "reject": 2}


def check_dmarc(headers: bytes, spf: SpfResult, dkim: list[DkimResult]) -> DmarcResult:
    """DMARC for the message's author domain(s); the strictest outcome when several."""
    try:
        domains = _from_domains(headers)
    except _PermError as e:
        return DmarcResult("permerror", reason=str(e))
    results = []
    for d in domains:
        try:
            results.append(_evaluate(d, spf, dkim))
        except _TempError as e:
            results.append(DmarcResult("temperror", d, reason=str(e)))
    return max(results, key=lambda r: (_SEVERITY[r.result], _STRICTNESS[r.policy]))


# --- the verdict and its header -------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    header: bytes  # one Authentication-Results field, folded, CRLF-terminated
    spf: str
    dkim: list[DkimResult]
    dmarc: str
    dmarc_policy: str  # none | quarantine | reject: what DMARC asks for this message
    from_domain: str = ""  # the RFC 5322.From domain DMARC judged ("" when none)

    def action(self, enforce: bool) -> str:
        """accept, quarantine or reject; without ``enforce`` DMARC is only reported.

        A temperror is accepted here: the daemon may prefer a 451 itself.
        """
        if not enforce or self.dmarc != "fail" or self.dmarc_policy == "none":
            return "accept"
        return self.dmarc_policy


def authenticate(message: BinaryIO, *, authserv_id: str, client_ip: str, helo: str, mail_from: str) -> Verdict:
    """Check SPF, DKIM and DMARC; ``message`` is read once, from its current position."""
    try:
        headers = read_header_block(message)
        dkim = verify_parts(headers, message)
    except ValueError as e:
        headers, dkim = b"", [DkimResult("permerror", reason=str(e))]
    spf = check_spf(client_ip, mail_from, helo)
    dmarc = check_dmarc(headers, spf, dkim) if headers else DmarcResult("permerror", reason="no header")
    return Verdict(
        header=format_header(authserv_id, spf, dkim, dmarc),
        spf=spf.result,
        dkim=dkim,
        dmarc=dmarc.result,
        dmarc_policy=dmarc.policy if dmarc.result == "fail" else "none",
        from_domain=dmarc.header_from,
    )


_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+$")  # RFC 2045 token minus what we never need
_ADDRESS = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]*@[A-Za-z0-9_.-]+$")  # RFC 8601 [local-part] "@" domain


def _comment(text: str) -> str:
    """A safe RFC 5322 comment: printable ASCII, no nesting or escapes needed."""
    text = re.sub(r"[^\x20-\x7e]|[()\\]", "?", text)[:120].strip()
    return f"({text})" if text else ""


def _value(text: str) -> str:
    """A property value: a token as is, anything else quoted."""
    if _TOKEN.match(text) or _ADDRESS.match(text):
        return text
    return '"' + re.sub(r'[^\x20-\x7e]|["\\]', "?", text)[:200] + '"'


def format_header(authserv_id: str, spf: SpfResult, dkim: list[DkimResult], dmarc: DmarcResult) -> bytes:
    """RFC 8601 Authentication-Results, one result per line, folded under 78 columns."""
    results: list[list[str]] = []
    if spf.identity == "mailfrom":  # the address when it needs no quoting, else its domain
        checked = f"smtp.mailfrom={spf.address if _ADDRESS.match(spf.address) else _value(spf.domain)}"
    else:
        checked = f"smtp.helo={_value(spf.domain)}"
    results.append([f"spf={spf.result}", _comment(spf.reason), checked if spf.domain else ""])
    for r in dkim or [DkimResult("none")]:
        props = [
            f"header.d={_value(r.domain)}" if r.domain else "",
            f"header.s={_value(r.selector)}" if r.selector else "",
            f"header.a={_value(r.algorithm)}" if r.algorithm else "",
            f"header.i={_value(r.identity)}" if r.identity else "",
        ]
        results.append([f"dkim={r.result}", _comment(r.reason), *props])
    note = ""
    if dmarc.published:
        pub = dmarc.published
        note = f"p={pub['p']} sp={pub['sp']} pct={pub['pct']} dis={dmarc.policy if dmarc.result == 'fail' else 'none'}"
    elif dmarc.reason:
        note = dmarc.reason
    results.append(
        [f"dmarc={dmarc.result}", _comment(note), f"header.from={_value(dmarc.header_from)}" if dmarc.header_from else ""]
    )
    lines = [f"Authentication-Results: {_value(authserv_id)};"]
    for i, words in enumerate(results):
        text = " ".join(w for w in words if w) + (";" if i < len(results) - 1 else "")
        lines.extend(_wrap(text))
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _wrap(text: str, width: int = 76) -> list[str]:
    """Continuation lines (leading space) of at most ``width`` columns where spaces allow."""
    out: list[str] = []
    line = ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = "  " + word
        else:
            line = f"{line} {word}" if line else f" {word}"
    out.append(line)
    return out


# --- forged results ------------------------------------------------------------------------


def _skip_cfws(s: bytes, i: int) -> int:
    """Index after folding white space and (nested) comments starting at ``i``."""
    n = len(s)
    while i < n:
        c = s[i:i + 1]
        if c in (b" ", b"\t", b"\r", b"\n"):
            i += 1
        elif c == b"(":
            depth = 0
            while i < n:
                c = s[i:i + 1]
                if c == b"\\":
                    i += 2
                    continue
                if c == b"(":
                    depth += 1
                elif c == b")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def _authserv_id(value: bytes) -> bytes | None:
    """The authserv-id at the start of an Authentication-Results value."""
    i = _skip_cfws(value, 0)
    if value[i:i + 1] == b'"':
        out = bytearray()
        i += 1
        while i < len(value):
            c = value[i:i + 1]
            if c == b"\\":
                out += value[i + 1:i + 2]
                i += 2
            elif c == b'"':
                return bytes(out)
            else:
                if c not in (b"\r", b"\n"):
                    out += c
                i += 1
        return None
    m = re.match(rb"[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]+", value[i:])
    return m.group() if m else None


def strip_forged(headers: bytes, authserv_id: str) -> bytes:
    """Drop every Authentication-Results claiming to come from us (RFC 8601 5).

    Everything else is kept byte for byte; never raises on hostile input.
    """
    ours = authserv_id.strip().lower().encode("utf-8", "replace")
    kept = []
    for f in split_fields(headers):
        if field_name(f) == b"authentication-results":
            found = _authserv_id(f.partition(b":")[2])
            if found is not None and found.lower() == ours:
                continue
        kept.append(f)
    return b"".join(kept)
