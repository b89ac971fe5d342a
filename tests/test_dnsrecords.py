"""``mailstack dns DOMAIN [--check]`` against a real authoritative DNS server (tests/dns_server.py).

The printed records are parsed as a zone, published as they are, checked,
then broken one at a time: each break must show on its own line and in the
exit code.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import run_cli

D = "ac-normandie.test"
HOST = f"mail.{D}"


def make_home(home: Path, keys: bool = True, hostname: str | None = HOST) -> Path:
    args = ["init", "--home", str(home), "--domain", D, "--dev"]
    if hostname:
        args += ["--hostname", hostname]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    if keys:
        for alg, selector in (("rsa", "rsa1"), ("ed25519", "ed1")):
            r = cli(home, "dkim", "keygen", D, "--algorithm", alg, "--selector", selector)
            assert r.returncode == 0, r.stderr
    return home


def use_dns(home: Path, dns_server) -> Path:
    """Point the home's resolver at the test server (a new port for each test)."""
    with open(home / "mailstack.toml", "a") as f:
        f.write(f'\n[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_server.port}\ntimeout = 5\n')
    return home


def cli(home: Path, *args: str):
    return run_cli(*args, config=home / "mailstack.toml")


def zone_lines(printed: str) -> str:
    return "\n".join(line for line in printed.splitlines() if line.strip() and not line.startswith(";"))


def publish(dns_server, printed: str) -> dns.zone.Zone:
    """Publish exactly the printed (non-comment) records."""
    zone = dns.zone.from_text(zone_lines(printed), origin=D + ".", relativize=False, check_origin=False)
    for name, rdataset in zone.iterate_rdatasets():
        dns_server.add(name.to_text(), dns.rdatatype.to_text(rdataset.rdtype), *(rd.to_text() for rd in rdataset))
    return zone


def lines_of(out: str) -> dict[tuple[str, str], str]:
    """(name, rtype) -> the whole --check line."""
    found = {}
    for line in out.splitlines()[:-1]:
        m = re.match(r"^(\S+)\s+(\S+)\s+(\S+) (\S+): ", line)
        assert m, line
        found[(m.group(3), m.group(4))] = line
    return found


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One home with an RSA and an Ed25519 key, copied by each test (keygen and init are slow)."""
    return make_home(tmp_path_factory.mktemp("dns") / "home")


@pytest.fixture
def home(template: Path, tmp_path: Path, dns_server) -> Path:
    dns_server.add(HOST, "A", "127.0.0.1")
    dns_server.add("1.0.0.127.in-addr.arpa", "PTR", HOST + ".")
    return use_dns(Path(shutil.copytree(template, tmp_path / "home")), dns_server)


@pytest.fixture
def published(home: Path, dns_server) -> Path:
    r = cli(home, "dns", D)
    assert r.returncode == 0, r.stderr
    publish(dns_server, r.stdout)
    return home


def test_print_lists_every_record_as_zone_file_text(home: Path) -> None:
    r = cli(home, "dns", D)
    assert r.returncode == 0, r.stderr
    zone = dns.zone.from_text(zone_lines(r.stdout), origin=D + ".", relativize=False, check_origin=False)
    got = {(n.to_text(), dns.rdatatype.to_text(rds.rdtype)): sorted(rd.to_text() for rd in rds) for n, rds in zone.iterate_rdatasets()}
    H = HOST + "."
    assert got[(D + ".", "MX")] == [f"10 {H}"]
    assert got[(H, "A")] == ["127.0.0.1"]
    assert got[(D + ".", "TXT")] == ['"v=spf1 mx -all"']
    for selector, alg in (("rsa1", "rsa"), ("ed1", "ed25519")):
        (txt,) = got[(f"{selector}._domainkey.{D}.", "TXT")]
        assert txt.startswith(f'"v=DKIM1; k={alg}; p=')
    assert got[(f"_dmarc.{D}.", "TXT")] == [f'"v=DMARC1; p=quarantine; rua=mailto:postmaster@{D}; adkim=r; aspf=r"']
    (sts,) = got[(f"_mta-sts.{D}.", "TXT")]
    assert re.fullmatch(r'"v=STSv1; id=\d{14}"', sts)
    assert got[(f"mta-sts.{D}.", "CNAME")] == [H]
    assert got[(f"_smtp._tls.{D}.", "TXT")] == [f'"v=TLSRPTv1; rua=mailto:tls-reports@{D}"']
    # production ports, not the dev home's 10000+ ones; implicit TLS preferred (RFC 8314)
    assert got[(f"_submissions._tcp.{D}.", "SRV")] == [f"0 1 465 {H}"]
    assert got[(f"_submission._tcp.{D}.", "SRV")] == [f"10 1 587 {H}"]
    assert got[(f"_imaps._tcp.{D}.", "SRV")] == [f"0 1 993 {H}"]
    assert got[(f"_imap._tcp.{D}.", "SRV")] == [f"10 1 143 {H}"]
    assert got[(f"_pop3._tcp.{D}.", "SRV")] == ["0 0 0 ."]
    assert got[(f"_pop3s._tcp.{D}.", "SRV")] == ["0 0 0 ."]
    assert got[(f"autoconfig.{D}.", "CNAME")] == [H]
    assert got[(f"autodiscover.{D}.", "CNAME")] == [H]
    assert got[(f"_autodiscover._tcp.{D}.", "SRV")] == [f"0 0 443 {H}"]
    assert got[(H, "TXT")] == ['"v=spf1 a -all"']  # the HELO name, for bounces
    assert len(got) == 19
    comments = "\n".join(line for line in r.stdout.splitlines() if line.startswith(";"))
    for text in ("p=reject", "PTR", "1.0.0.127.in-addr.arpa", f"https://mta-sts.{D}/.well-known/mta-sts.txt",
                 ";   version: STSv1", ";   mode: testing", f";   mx: {HOST}", ";   max_age: 604800"):
        assert text in comments, text


def test_print_without_address_or_dkim_key_says_what_to_do(tmp_path: Path, dns_server) -> None:
    home = use_dns(make_home(tmp_path / "home", keys=False), dns_server)
    r = cli(home, "dns", D)
    assert r.returncode == 0, r.stderr
    assert f"mailstack dkim keygen {D}" in r.stdout
    assert f"; {HOST}. 3600 IN A <IPv4 address of {HOST}>" in r.stdout
    assert "_domainkey" not in zone_lines(r.stdout)
    assert f"{HOST}. 3600 IN A" not in zone_lines(r.stdout)


def test_check_of_the_published_records_is_all_ok(published: Path) -> None:
    r = cli(published, "dns", "--check", D)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert all(line.startswith("ok ") for line in lines[:-1]), r.stdout
    assert len(lines) == 21  # 19 printed records, the PTR, the summary
    assert lines[-1] == f"{D}: 20 records, 20 ok, 0 warn, 0 missing, 0 wrong, 0 error: ready"


def other_rsa_txt() -> str:
    key = rsa.generate_private_key(65537, 2048).public_key()
    p = base64.b64encode(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    text = f"v=DKIM1; k=rsa; p={p}"
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


BREAKS = {
    # id: (how to break it, (name, rtype) of the line, expected status, text in the line, exit code)
    "no MX": (lambda s: s.remove(D, "MX"), (D + ".", "MX"), "missing", "expected 10 mail.", 1),
    "null MX": (lambda s: s.set(D, "MX", "0 ."), (D + ".", "MX"), "wrong", "null MX", 1),
    "MX elsewhere": (lambda s: s.set(D, "MX", "10 mx.example.net."), (D + ".", "MX"), "wrong", "found 10 mx.example.net.", 1),
    "SPF fails": (lambda s: s.set(D, "TXT", '"v=spf1 -all"'), (D + ".", "TXT"), "wrong", "fail for 127.0.0.1", 1),
    "SPF softfails": (lambda s: s.set(D, "TXT", '"v=spf1 ip4:192.0.2.1 ~all"'), (D + ".", "TXT"), "wrong", "softfail for 127.0.0.1", 1),
    "two SPF": (lambda s: s.set(D, "TXT", '"v=spf1 mx -all"', '"v=spf1 a -all"'), (D + ".", "TXT"), "wrong", "2 v=spf1 records", 1),
    "SPF gone": (lambda s: s.remove(D, "TXT"), (D + ".", "TXT"), "missing", "no v=spf1", 1),
    "DKIM other key": (lambda s: s.set(f"rsa1._domainkey.{D}", "TXT", other_rsa_txt()),
                       (f"rsa1._domainkey.{D}.", "TXT"), "wrong", "another key", 1),
    "DKIM gone": (lambda s: s.remove(f"ed1._domainkey.{D}"), (f"ed1._domainkey.{D}.", "TXT"), "missing", "no DKIM key record", 1),
    "no DMARC": (lambda s: s.remove(f"_dmarc.{D}"), (f"_dmarc.{D}.", "TXT"), "missing", "no v=DMARC1", 1),
    "bad DMARC p": (lambda s: s.set(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=maybe"'), (f"_dmarc.{D}.", "TXT"), "wrong", "p= must be", 1),
    "SRV port": (lambda s: s.set(f"_imaps._tcp.{D}", "SRV", f"0 1 10993 {HOST}."), (f"_imaps._tcp.{D}.", "SRV"),
                 "wrong", f"found 0 1 10993 {HOST}.; expected 0 1 993 {HOST}.", 1),
    "SERVFAIL": (lambda s: s.fail(f"_dmarc.{D}"), (f"_dmarc.{D}.", "TXT"), "error", "SERVFAIL", 1),
    "no host address": (lambda s: s.remove(HOST, "A"), (HOST + ".", "A"), "missing", "has no A or AAAA record", 1),
    "autoconfig elsewhere": (lambda s: s.set(f"autoconfig.{D}", "CNAME", "web.example.net."), (f"autoconfig.{D}.", "CNAME"),
                             "wrong", "found CNAME web.example.net.", 1),
    # warn-only: reported, but the exit code stays 0
    "no MTA-STS": (lambda s: s.remove(f"_mta-sts.{D}"), (f"_mta-sts.{D}.", "TXT"), "warn", "missing", 0),
    "bad TLS-RPT": (lambda s: s.set(f"_smtp._tls.{D}", "TXT", '"v=TLSRPTv2; rua=mailto:x@y"'), (f"_smtp._tls.{D}.", "TXT"), "warn", "missing", 0),
    "no PTR": (lambda s: s.remove("1.0.0.127.in-addr.arpa"), ("1.0.0.127.in-addr.arpa.", "PTR"), "warn", "no reverse record", 0),
    "POP3 SRV absent": (lambda s: s.remove(f"_pop3._tcp.{D}"), (f"_pop3._tcp.{D}.", "SRV"), "warn", "missing", 0),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_check_reports_each_broken_record(published: Path, dns_server, name: str) -> None:
    breaker, key, status, text, code = BREAKS[name]
    breaker(dns_server)
    r = cli(published, "dns", "--check", D)
    assert r.returncode == code, r.stdout + r.stderr
    lines = lines_of(r.stdout)
    assert lines[key].split()[0] == status, lines[key]
    assert text in lines[key], lines[key]
    others = [line for k, line in lines.items() if k != key and not line.startswith("ok ")]
    summary = r.stdout.splitlines()[-1]
    if "MX" in name:  # "v=spf1 mx -all" follows the MX records: it no longer passes either
        assert [line.split()[:2] for line in others] == [["wrong", "SPF"]], others
        assert "this one would, with the MX pointing to" in others[0]
    elif name != "no host address":  # which feeds the SPF evaluation and the PTR records
        assert others == [], others
        assert summary.startswith(f"{D}: 20 records, ")
    assert summary.endswith(": ready") == (code == 0), summary


def test_cname_may_be_replaced_by_the_same_addresses(published: Path, dns_server) -> None:
    dns_server.remove(f"autodiscover.{D}")
    dns_server.add(f"autodiscover.{D}", "A", "127.0.0.1")
    r = cli(published, "dns", "--check", D)
    assert r.returncode == 0, r.stdout
    assert lines_of(r.stdout)[(f"autodiscover.{D}.", "CNAME")].startswith("ok ")


def test_domain_not_served_is_a_one_line_error(home: Path) -> None:
    for args in (("dns", "example.org"), ("dns", "--check", "example.org")):
        r = cli(home, *args)
        assert r.returncode == 1
        assert r.stdout == ""
        assert r.stderr.strip().splitlines() == [f"mailstack: example.org is not one of server.domains ({D})"]


def test_localhost_is_not_a_mail_host_name(tmp_path: Path, dns_server) -> None:
    home = use_dns(make_home(tmp_path / "home", keys=False, hostname=None), dns_server)  # a dev home: localhost
    r = cli(home, "dns", D)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert "not a public host name" in line and "Traceback" not in r.stderr
