"""``mailstack dns DOMAIN [--check]``: the DNS records a domain needs, and whether they are there.

Integrators publish the zone, not us: this prints what to paste (zone-file
lines, grouped and commented) and, with ``--check``, resolves each record
through the configured resolvers and says which are missing or wrong.  Both
modes walk the same list of :class:`Record`, so what is printed is exactly
what is checked.
"""

from __future__ import annotations

import ipaddress
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Sequence

import dns.exception
import dns.resolver
import dns.reversename

from .mailauth.keys import DkimKeyError, domain_keys, txt_chunks

if TYPE_CHECKING:
    import argparse

    from .config import Config

TTL = 3600
STS_MAX_AGE = 604800

# Groups in printing order: purpose -> the comment line that says what they are for.
GROUPS: dict[str, str] = {
    "MX": "Mail exchanger: other servers deliver mail for {domain} to {host}",
    "HOST": "Addresses of the mail host {host} (MX, SPF and every service point to it)",
    "SPF": "SPF (RFC 7208): only the MX host sends mail as @{domain}; the second record covers its HELO name (bounces)",
    "DKIM": "DKIM (RFC 6376, RFC 8463): public keys of the signing keys, one record per selector",
    "DMARC": "DMARC (RFC 7489): what receivers do with mail failing SPF and DKIM alignment",
    "MTA-STS": "MTA-STS (RFC 8461): senders must use TLS with a valid certificate to reach {host}",
    "TLS-RPT": "TLS-RPT (RFC 8460): where senders report TLS failures",
    "SRV": "Mail client discovery (RFC 6186, RFC 8314): implicit TLS first; '0 0 0 .' = not offered",
    "AUTOCONFIG": "Client autoconfiguration: Thunderbird (autoconfig), Outlook (autodiscover)",
}

STATUSES = ("ok", "warn", "missing", "wrong", "error")
_PARALLEL = 16  # lookups at once in --check


@dataclass(frozen=True)
class Record:
    """One record to publish.  ``value`` is the rdata in zone-file syntax,
    except for TXT where it is the unquoted text; "" means the value is not
    known here (no address for the host, no DKIM key) and only a comment is
    printed.  A record that is not ``required`` only warns when it is wrong."""

    name: str  # absolute, with the trailing dot
    rtype: str
    value: str
    purpose: str  # a key of GROUPS
    required: bool = True

    def zone_line(self) -> str:
        rdata = txt_chunks(self.value) if self.rtype == "TXT" else self.value
        return f"{self.name} {TTL} IN {self.rtype} {rdata}"


def _host_name_problem(host: str) -> str | None:
    """MX and SRV targets must be public host names: a dev home's localhost is not."""
    try:
        ipaddress.ip_address(host)
        return f"server.hostname {host!r} is an IP address; MX and SRV records need a host name"
    except ValueError:
        pass
    if "." not in host or host == "localhost" or host.endswith(".localhost"):
        return f"server.hostname {host!r} is not a public host name (set it, e.g. mailstack init --hostname mail.DOMAIN)"
    return None


def _services(cfg: Config) -> dict[str, bool]:
    """Which RFC 6186 services the configured listeners offer (by kind and TLS mode, not port:
    the dev ports and a load balancer's translation are not what clients should see)."""
    smtp = [(lst.kind, lst.tls) for lst in cfg.smtp.listeners] if cfg.smtp.enabled else []
    imap = [lst.tls for lst in cfg.imap.listeners] if cfg.imap.enabled else []
    return {
        "submissions": ("submission", "implicit") in smtp,
        "submission": ("submission", "starttls") in smtp,
        "imaps": "implicit" in imap,
        "imap": "starttls" in imap,
    }


# service, priority, production port
_SRV = (("submissions", 0, 465), ("submission", 10, 587), ("imaps", 0, 993), ("imap", 10, 143))


def records(cfg: Config, domain: str, addresses: Sequence[str] = (), now: datetime | None = None) -> list[Record]:
    """The records ``domain`` needs, in printing order.  ``addresses`` are those the
    host name resolves to now (the caller looks them up: this function does no I/O
    apart from reading the DKIM keys)."""
    host = cfg.hostname.lower().rstrip(".")
    d = domain.lower().rstrip(".")
    H, D = host + ".", d + "."
    now = now or datetime.now(timezone.utc)
    out = [Record(D, "MX", f"10 {H}", "MX")]

    if addresses:
        for a in addresses:
            out.append(Record(H, "AAAA" if ":" in a else "A", a, "HOST"))
        for a in addresses:  # in the provider's reverse zone: checked, printed as a reminder
            out.append(Record(dns.reversename.from_address(a).to_text(), "PTR", H, "HOST", required=False))
    else:
        out.append(Record(H, "A", "", "HOST"))

    out.append(Record(D, "TXT", "v=spf1 mx -all", "SPF"))
    # Bounces (null sender) are judged on the HELO name (RFC 7208 2.3).
    out.append(Record(H, "TXT", "v=spf1 a -all", "SPF", required=False))

    keys = domain_keys(cfg.dkim.keys, d)  # a key that cannot be read raises DkimKeyError or OSError
    for k in keys:
        out.append(Record(k.dns_name + ".", "TXT", k.txt_record(), "DKIM"))
    if not keys:
        out.append(Record(f"_domainkey.{D}", "TXT", "", "DKIM", required=False))

    out.append(Record(f"_dmarc.{D}", "TXT", f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{d}; adkim=r; aspf=r", "DMARC"))

    out.append(Record(f"_mta-sts.{D}", "TXT", f"v=STSv1; id={now:%Y%m%d%H%M%S}", "MTA-STS", required=False))
    out.append(Record(f"mta-sts.{D}", "CNAME", H, "MTA-STS", required=False))
    out.append(Record(f"_smtp._tls.{D}", "TXT", f"v=TLSRPTv1; rua=mailto:tls-reports@{d}", "TLS-RPT", required=False))

    offered = _services(cfg)
    for service, priority, port in _SRV:
        if offered[service]:
            out.append(Record(f"_{service}._tcp.{D}", "SRV", f"{priority} 1 {port} {H}", "SRV"))
        else:
            out.append(Record(f"_{service}._tcp.{D}", "SRV", "0 0 0 .", "SRV", required=False))
    for service in ("pop3", "pop3s"):
        out.append(Record(f"_{service}._tcp.{D}", "SRV", "0 0 0 .", "SRV", required=False))

    # Served by `mailstack httpd` on the host (production port 443, whatever the
    # listener: a load balancer may translate).  Clients connect to these names
    # with TLS, so the certificate of [tls] must cover autoconfig.DOMAIN and
    # autodiscover.DOMAIN as well as the host name (README: Client autoconfiguration).
    out.append(Record(f"autoconfig.{D}", "CNAME", H, "AUTOCONFIG"))
    out.append(Record(f"autodiscover.{D}", "CNAME", H, "AUTOCONFIG"))
    out.append(Record(f"_autodiscover._tcp.{D}", "SRV", f"0 0 443 {H}", "AUTOCONFIG"))
    return out


def _in_zone(name: str, domain: str) -> bool:
    n, d = name.lower().rstrip("."), domain.lower().rstrip(".")
    return n == d or n.endswith("." + d)


def render(cfg: Config, domain: str, recs: Sequence[Record]) -> str:
    """Zone-file text to paste into the zone of ``domain``; what belongs elsewhere is commented."""
    host, d = cfg.hostname.lower().rstrip("."), domain.lower().rstrip(".")
    lines = [
        f"; DNS records for {d} (mailstack dns {d}); check them with: mailstack dns --check {d}",
        f"; Paste the uncommented lines into the zone of {d}. Names are absolute.",
    ]
    for purpose, heading in GROUPS.items():
        group = [r for r in recs if r.purpose == purpose]
        if not group:
            continue
        lines += ["", "; " + heading.format(domain=d, host=host)]
        lines += _notes_before(purpose, cfg, d, group)
        for r in group:
            if r.rtype == "PTR":
                continue  # a reminder in the notes: it lives in the address owner's zone
            if not r.value:
                lines.append(_placeholder(r, d))
            elif _in_zone(r.name, d):
                lines.append(r.zone_line())
            else:
                lines.append(f"; in the zone of {r.name.rstrip('.').split('.', 1)[-1]}: {r.zone_line()}")
        lines += _notes_after(purpose, cfg, d, group)
    return "\n".join(lines) + "\n"


def _placeholder(r: Record, domain: str) -> str:
    if r.purpose == "DKIM":
        return (
            f"; no DKIM key for {domain} yet: run `mailstack dkim keygen {domain}` (and again with "
            "--algorithm ed25519), then publish the records it prints (or run this command again)"
        )
    host = r.name.rstrip(".")
    return f"; {r.name} {TTL} IN A <IPv4 address of {host}>   (and AAAA <IPv6 address>): no address found for {host}"


def _notes_before(purpose: str, cfg: Config, domain: str, group: Sequence[Record]) -> list[str]:
    if purpose == "DMARC":
        return [f"; Starts at p=quarantine; the goal is p=reject once the reports sent to postmaster@{domain} show all legitimate mail passes."]
    return []


def _notes_after(purpose: str, cfg: Config, domain: str, group: Sequence[Record]) -> list[str]:
    host = cfg.hostname.lower().rstrip(".")
    if purpose == "HOST":
        ptrs = [r for r in group if r.rtype == "PTR"]
        if ptrs:
            return ["; PTR: ask the owner of each address for its reverse record (receivers refuse mail without it):"] + [
                f";   {r.name} {TTL} IN PTR {r.value}" for r in ptrs
            ]
        return [f"; PTR: the reverse record of each address of {host} must name {host}. (ask the owner of the address)"]
    if purpose == "MTA-STS":
        return [
            f"; Serve this policy at https://mta-sts.{domain}/.well-known/mta-sts.txt over HTTPS with a valid",
            f"; certificate for mta-sts.{domain} (the CNAME points that name at {host}):",
            ";   version: STSv1",
            ";   mode: testing",
            f";   mx: {host}",
            f";   max_age: {STS_MAX_AGE}",
            "; Change the id whenever the policy changes; switch to mode: enforce once TLS reports show no failures.",
        ]
    if purpose == "TLS-RPT":
        return [f"; Make tls-reports@{domain} reach someone: mailstack alias add tls-reports@{domain} LOGIN"]
    if purpose == "AUTOCONFIG":
        return [
            f"; {host} must answer these names over HTTPS (mailstack httpd: autoconfig XML, autodiscover) for clients to use them;",
            f"; its certificate must name autoconfig.{domain} and autodiscover.{domain} too.",
        ]
    return []


# --- checking -------------------------------------------------------------------------


class Unresolvable(Exception):
    """The lookup itself failed (timeout, SERVFAIL): we cannot say whether the record is there."""


@dataclass(frozen=True)
class Finding:
    record: Record
    status: str  # one of STATUSES
    detail: str

    def line(self) -> str:
        return f"{self.status:<8}{self.record.purpose:<11}{self.record.name} {self.record.rtype}: {self.detail}"


class Lookup:
    """Answers as lists (empty for NXDOMAIN or no data); failures as :class:`Unresolvable`."""

    def __init__(self, resolver: dns.resolver.Resolver):
        self.resolver = resolver

    def __call__(self, name: str, rtype: str) -> list[Any]:
        try:
            ans = self.resolver.resolve(name, rtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.resolver.NoNameservers as e:
            text = str(e)
            why = next((rc for rc in ("SERVFAIL", "REFUSED", "NOTIMP", "FORMERR") if rc in text), "no nameserver answered")
            raise Unresolvable(f"lookup failed: {why}") from None
        except dns.exception.Timeout:
            raise Unresolvable(f"lookup timed out ({self.resolver.lifetime:g} s)") from None
        except dns.exception.DNSException as e:
            raise Unresolvable(f"lookup failed: {e}") from None
        return list(ans.rrset) if ans.rrset is not None else []

    def txt(self, name: str) -> list[str]:
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self(name, "TXT")]

    def addresses(self, name: str) -> list[str]:
        return [r.address for t in ("A", "AAAA") for r in self(name, t)]


@dataclass
class _Ctx:
    lookup: Lookup
    host: str  # with the trailing dot
    domain: str  # without
    addresses: list[str]


Result = tuple[str, str]  # (ok | missing | wrong | warn, detail)


def _short(text: str, n: int = 72) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _tail(key: str) -> str:
    """The end of a base64 key: RSA keys all start alike (the SubjectPublicKeyInfo header)."""
    return key if len(key) <= 24 else "..." + key[-20:]


def _q(text: str) -> str:
    return '"' + _short(text) + '"'


def _tags(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            out.setdefault(k.strip().lower(), v.strip())
    return out


def _name(n: Any) -> str:
    return n.to_text().lower()


def _check_mx(r: Record, c: _Ctx) -> Result:
    found = [(x.preference, _name(x.exchange)) for x in c.lookup(r.name, "MX")]
    if not found:
        return "missing", f"no MX record; expected {r.value}"
    shown = ", ".join(f"{p} {t}" for p, t in sorted(found))
    if any(t == "." for _, t in found):
        return "wrong", f"found {shown} (a null MX: the domain refuses all mail); expected {r.value}"
    if c.host not in {t for _, t in found}:
        return "wrong", f"found {shown}; expected {r.value}"
    return "ok", shown


def _check_host(r: Record, c: _Ctx) -> Result:
    if not r.value:
        found = c.lookup.addresses(r.name)
        if not found:
            return "missing", f"{r.name} has no A or AAAA record; expected the addresses of this server"
        return "ok", " ".join(found)
    found = [x.address for x in c.lookup(r.name, r.rtype)]
    if r.value in found:
        return "ok", r.value
    if not found:
        return "missing", f"expected {r.value}"
    return "wrong", f"found {' '.join(found)}; expected {r.value}"


def _check_ptr(r: Record, c: _Ctx) -> Result:
    found = [_name(x.target) for x in c.lookup(r.name, "PTR")]
    if c.host in found:
        return "ok", r.value
    if not found:
        return "missing", f"no reverse record; expected {r.value} (ask the owner of the address)"
    return "wrong", f"found {' '.join(found)}; expected {r.value} (ask the owner of the address)"


def _check_spf(r: Record, c: _Ctx) -> Result:
    import spf

    found = [t for t in c.lookup.txt(r.name) if re.match(r"v=spf1(\s|$)", t, re.I)]
    if not found:
        return "missing", f"no v=spf1 TXT record; expected {_q(r.value)}"
    if len(found) > 1:
        return "wrong", f"found {len(found)} v=spf1 records (RFC 7208 allows one: receivers see a permerror); expected {_q(r.value)}"
    if not c.addresses:
        return "warn", f"found {_q(found[0])}; not evaluated: {c.host.rstrip('.')} has no address"
    for a in c.addresses:
        result, explanation = spf.check2(
            i=a, s=f"postmaster@{r.name.rstrip('.')}", h=c.host.rstrip("."), timeout=c.lookup.resolver.lifetime, querytime=0
        )
        if result == "temperror":
            raise Unresolvable(f"SPF evaluation for {a}: {explanation}")
        if result != "pass":
            why = f"{result} for {a}" + (f": {explanation}" if explanation else "")
            host = c.host.rstrip(".")
            hint = f"this one would, with the MX pointing to {host}" if found[0] == r.value else f"e.g. {_q(r.value)}"
            return "wrong", f"found {_q(found[0])} ({why}); expected a policy passing the addresses of {host} ({hint})"
    return "ok", f"{_q(found[0])} (pass for {' '.join(c.addresses)})"


def _check_dkim(r: Record, c: _Ctx) -> Result:
    if not r.value:
        return "warn", f"no DKIM key for {c.domain}: run `mailstack dkim keygen {c.domain}`"
    ours = _tags(r.value)["p"]
    keys = [_tags(t) for t in c.lookup.txt(r.name)]
    keys = [k for k in keys if "p" in k]
    if not keys:
        return "missing", f"no DKIM key record; expected {_q(r.value)}"
    found = ["".join(k["p"].split()) for k in keys]
    if ours in found:
        return "ok", f"p={_tail(ours)} matches {r.name.split('.', 1)[0]}.pem"
    shown = ", ".join(f"p={_tail(p)}" if p else "p= (revoked)" for p in found)
    return "wrong", f"found {shown} (another key); expected p={_tail(ours)}"


def _check_dmarc(r: Record, c: _Ctx) -> Result:
    found = [t for t in c.lookup.txt(r.name) if re.match(r"v\s*=\s*DMARC1\s*(;|$)", t)]
    if not found:
        return "missing", f"no v=DMARC1 TXT record; expected {_q(r.value)}"
    if len(found) > 1:
        return "wrong", f"found {len(found)} v=DMARC1 records (receivers ignore them all); expected one: {_q(r.value)}"
    p = _tags(found[0]).get("p", "").lower()
    if p not in ("none", "quarantine", "reject"):
        return "wrong", f"found {_q(found[0])} (p= must be none, quarantine or reject); expected {_q(r.value)}"
    return "ok", _q(found[0]) + (" (p=none only monitors; aim for quarantine, then reject)" if p == "none" else "")


def _version_tag_check(pattern: str, required_tag: str) -> Callable[[Record, _Ctx], Result]:
    """MTA-STS and TLS-RPT: one record with the right version tag (the id/rua values are ours to choose)."""

    def check(r: Record, c: _Ctx) -> Result:
        found = [t for t in c.lookup.txt(r.name) if re.match(pattern, t)]
        if not found:
            return "missing", f"expected {_q(r.value)}"
        if len(found) > 1:
            return "wrong", f"found {len(found)} records (senders then ignore them); expected one: {_q(r.value)}"
        if required_tag not in _tags(found[0]):
            return "wrong", f"found {_q(found[0])} without {required_tag}=; expected {_q(r.value)}"
        return "ok", _q(found[0])

    return check


def _check_srv(r: Record, c: _Ctx) -> Result:
    _, _, port, target = r.value.split()
    found = [(x.priority, x.weight, x.port, _name(x.target)) for x in c.lookup(r.name, "SRV")]
    if not found:
        return "missing", f"expected {r.value}"
    if any(p == int(port) and t == target.lower() for _, _, p, t in found):
        return "ok", ", ".join(f"{a} {b} {p} {t}" for a, b, p, t in found)
    shown = ", ".join(f"{a} {b} {p} {t}" for a, b, p, t in found)
    return "wrong", f"found {shown}; expected {r.value}"


def _check_cname(r: Record, c: _Ctx) -> Result:
    targets = [_name(x.target) for x in c.lookup(r.name, "CNAME")]
    if c.host in targets:
        return "ok", r.value
    found = c.lookup.addresses(r.name)
    if found and c.addresses and set(found) == set(c.addresses):
        return "ok", f"{' '.join(found)} (the addresses of {c.host.rstrip('.')})"
    if not targets and not found:
        return "missing", f"expected CNAME {r.value}"
    shown = ("CNAME " + " ".join(targets) + " ") if targets else ""
    return "wrong", f"found {shown}{' '.join(found) or '(no address)'}; expected CNAME {r.value} (or the addresses of {c.host.rstrip('.')})"


def _checker(r: Record) -> Callable[[Record, _Ctx], Result]:
    if r.rtype == "MX":
        return _check_mx
    if r.rtype in ("A", "AAAA"):
        return _check_host
    if r.rtype == "PTR":
        return _check_ptr
    if r.rtype == "SRV":
        return _check_srv
    if r.rtype == "CNAME":
        return _check_cname
    return {
        "SPF": _check_spf,
        "DKIM": _check_dkim,
        "DMARC": _check_dmarc,
        "MTA-STS": _version_tag_check(r"v=STSv1\s*(;|$)", "id"),
        "TLS-RPT": _version_tag_check(r"v=TLSRPTv1\s*(;|$)", "rua"),
    }[r.purpose]


def check(recs: Sequence[Record], lookup: Lookup, host: str, domain: str, addresses: Sequence[str]) -> list[Finding]:
    """One finding per record; a record that is not required turns every problem into a warning."""
    c = _Ctx(lookup, host.lower().rstrip(".") + ".", domain.lower().rstrip("."), list(addresses))

    def one(r: Record) -> Finding:
        try:
            status, detail = _checker(r)(r, c)
        except Unresolvable as e:
            status, detail = "error", str(e)
        if status != "ok" and not r.required:
            detail = detail if status == "warn" else f"{status}: {detail}"
            status = "warn"
        return Finding(r, status, detail)

    # In parallel: a dead resolver then costs one timeout, not one per record.
    with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
        return list(pool.map(one, recs))


def summary(domain: str, findings: Sequence[Finding]) -> str:
    counts = {s: sum(f.status == s for f in findings) for s in STATUSES}
    text = ", ".join(f"{n} {s}" for s, n in counts.items())
    bad = len(findings) - counts["ok"] - counts["warn"]
    verdict = "ready" if not bad else f"{bad} required record{'s' if bad > 1 else ''} to fix"
    return f"{domain}: {len(findings)} records, {text}: {verdict}"


# --- the command ------------------------------------------------------------------------


def host_addresses(lookup: Lookup, host: str) -> list[str]:
    """What the host name resolves to now; a failed lookup counts as none (--check reports it)."""
    def get(rtype: str) -> list[str]:
        try:
            return [r.address for r in lookup(host + ".", rtype)]
        except Unresolvable:
            return []

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [a for found in pool.map(get, ("A", "AAAA")) for a in found]


def run_dns_command(args: argparse.Namespace, cfg: Config) -> int:
    from .cli import Failure
    from .resolver import install

    domain = args.domain.lower().rstrip(".")
    if domain not in cfg.server.domains:
        raise Failure(f"{domain} is not one of server.domains ({', '.join(cfg.server.domains)})")
    host = cfg.hostname.lower().rstrip(".")
    problem = _host_name_problem(host)
    if problem:
        raise Failure(problem)
    lookup = Lookup(install(cfg.dns))  # pyspf resolves through dnspython's default resolver
    addresses = host_addresses(lookup, host)
    try:
        recs = records(cfg, domain, addresses)
    except (DkimKeyError, OSError, ValueError) as e:
        raise Failure(f"DKIM keys of {domain}: {e}") from None
    if not args.check:
        print(render(cfg, domain, recs), end="")
        return 0
    findings = check(recs, lookup, host, domain, addresses)
    for f in findings:
        print(f.line())
    print(summary(domain, findings))
    return 0 if all(f.status in ("ok", "warn") for f in findings) else 1
