"""DKIM, SPF, DMARC and Authentication-Results against real parts.

Keys come from ``keygen``, records are served by the real DNS server
(tests/dns_server.py) that dnspython's default resolver is pointed at, and
our signatures are checked by independent verifiers: dkimpy's own
``dkim.verify`` and Perl's Mail::DKIM.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import shutil
import subprocess
import sys

import authres
import dkim as dkimpy
import dns.resolver
import pytest
from dkim.canonicalization import Relaxed, Simple

from mailstack.mailauth.dkim import BodyHasher, CrlfNormalizer, sign, verify
from mailstack.mailauth.inbound import (
    aligned,
    authenticate,
    check_spf,
    org_domain,
    strip_forged,
)
from mailstack.mailauth.keys import DkimKey, keygen, txt_chunks
from tests.conftest import REPO, need

pytestmark = pytest.mark.filterwarnings("ignore:please use dns.resolver.resolve:DeprecationWarning")  # pyspf 2.0.14

D = "ac-normandie.test"  # hyphenated on purpose: authheaders' own DMARC check breaks on it
AUTHSERV = "mx.ac-rouen.test"


# --- BodyHasher against dkimpy ------------------------------------------------------------------

ATOMS = [
    b"a", b"word", b"x y", b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n", b"\r\n\r\n", b"\r", b"\n",
    b"\r\r\n", b"  \r\n", b"\t\r\n", b"\n\n", b"\r\r", b" " * 100, b"\t " * 70, b"\r\n" * 200, b" \r\n" * 50,
]


def dkimpy_body_hash(body: bytes, canon: str, hash_name: str, length: int | None) -> bytes:
    c = (Simple if canon == "simple" else Relaxed).canonicalize_body(body)
    return hashlib.new(hash_name, c if length is None else c[:length]).digest()


def feed(hasher: BodyHasher, body: bytes, rng: random.Random) -> bytes:
    """Feed ``body`` in random pieces: from single bytes to whole kilobytes."""
    most = rng.choice((1, 2, 4, 16, 128, 4096))
    pos = 0
    while pos < len(body):
        n = rng.randint(1, most)
        hasher.update(body[pos:pos + n])
        pos += n
    return hasher.digest()


@pytest.mark.parametrize("seed", range(4))
def test_body_hasher_equals_dkimpy_on_random_bodies_and_chunkings(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(3000):
        body = b"".join(rng.choice(ATOMS) for _ in range(rng.choice((0, 1, 2, 5, 20, 80))))
        canon, hash_name = rng.choice(("simple", "relaxed")), rng.choice(("sha256", "sha1"))
        length = rng.choice((None, None, 0, 1, 5, len(body) // 2, len(body) + 3))
        expected = dkimpy_body_hash(body, canon, hash_name, length)
        for _ in range(3):  # the same body, other chunkings
            assert feed(BodyHasher(canon, hash_name, length), body, rng) == expected, (canon, length, body)


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"\r\n\r\n\r\n", b" ", b"  \r\n", b"\t\r\n \r\n", b"abc", b"abc  ", b"abc \r", b"abc\r\n\r\n",
     b"a\r\n\r\nb\r\n\r\n", b"x\r\r\n\r\n", b"\r", b"\n", b"a\nb\n"],
)
def test_body_hasher_edge_cases_byte_by_byte(body: bytes) -> None:
    for canon in ("simple", "relaxed"):
        h = BodyHasher(canon, "sha256")
        for i in range(len(body)):
            h.update(body[i:i + 1])
        assert h.digest() == dkimpy_body_hash(body, canon, "sha256", None), (canon, body)


def test_body_hasher_long_runs_across_big_chunks() -> None:
    rng = random.Random(7)
    # Runs longer than the hasher's look-back windows (64 and 256 bytes) and than
    # a chunk; kept to a few thousand bytes because dkimpy's own relaxed regex
    # ([\t ]+\r\n) backtracks quadratically on a long run not ending a line.
    body = b"".join(rng.choice((b"text ", b" " * 3000, b"\t " * 1500, b"\r\n" * 40_000, b"\t\r\n", b"ligne\r\n", b" \r")) for _ in range(300))
    for canon in ("simple", "relaxed"):
        expected = dkimpy_body_hash(body, canon, "sha256", None)
        for size in (1 << 16, 1 << 20, 12345, 1000, 4097):
            h = BodyHasher(canon, "sha256")
            for i in range(0, len(body), size):
                h.update(body[i:i + size])
            assert h.digest() == expected


def test_crlf_normalizer_matches_dkimpy_message_parsing() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        body = b"".join(rng.choice((b"a", b"\n", b"\r", b"\r\n", b" ")) for _ in range(rng.randint(0, 40)))
        _, expected = dkimpy.rfc822_parse(b"X: y\r\n\r\n" + body)
        normalize, out, pos = CrlfNormalizer(), [], 0
        while pos < len(body):
            n = rng.randint(1, 5)
            out.append(normalize(body[pos:pos + n]))
            pos += n
        assert b"".join(out) == expected


# --- keys and DNS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyring(tmp_path_factory) -> dict[str, DkimKey]:
    keys_dir = tmp_path_factory.mktemp("dkim-keys")
    return {
        "rsa": keygen(keys_dir, D, "rsa1", "rsa"),
        "ed25519": keygen(keys_dir, D, "ed1", "ed25519"),
    }


@pytest.fixture
def zone(dns_server, keyring, monkeypatch):
    """The test DNS server as dnspython's default resolver, our keys published."""
    monkeypatch.setattr(dns.resolver, "default_resolver", dns_server.resolver())
    for key in keyring.values():
        dns_server.add(key.dns_name, "TXT", txt_chunks(key.txt_record()))
    return dns_server


def message(body: bytes = b"Bonjour,\r\n\r\nLe conseil de classe est d\xc3\xa9plac\xc3\xa9.\r\n", *,
            sender: str = f"prof@{D}", extra: bytes = b"") -> bytes:
    return (
        b"Received: from client by mx.ac-rouen.test; Mon, 2 Nov 2026 10:00:00 +0100\r\n"
        + f"From: Jean Dupont <{sender}>\r\n".encode()
        + b"To: eleve@ac-rouen.test\r\nSubject: Conseil de classe\r\n"
        + b"Date: Mon, 2 Nov 2026 09:59:00 +0100\r\nMessage-ID: <1@ac-normandie.test>\r\n"
        + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + extra
        + b"\r\n"
        + body
    )


def signed(msg: bytes, keys: list[DkimKey]) -> bytes:
    return sign(io.BytesIO(msg), keys) + msg


def dkimpy_dnsfunc(server):
    resolver = server.resolver()

    def get_txt(name: bytes, timeout: float = 5):
        try:
            answer = resolver.resolve(name.decode(), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    return get_txt


# --- sign and verify ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algs", [["rsa"], ["ed25519"], ["rsa", "ed25519"]])
def test_sign_then_verify(zone, keyring, algs) -> None:
    keys = [keyring[a] for a in algs]
    out = signed(message(), keys)
    results = verify(io.BytesIO(out))
    assert [r.result for r in results] == ["pass"] * len(keys)
    assert [r.selector for r in results] == [k.selector for k in keys]
    assert {r.domain for r in results} == {D}
    assert [r.algorithm for r in results] == [{"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[a] for a in algs]


def test_signature_shape(keyring) -> None:
    sig = sign(io.BytesIO(message(extra=b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")), [keyring["rsa"]], now=1_800_000_000)
    assert sig.startswith(b"DKIM-Signature: ") and sig.endswith(b"\r\n")
    assert all(len(line) <= 78 for line in sig.split(b"\r\n"))
    assert re.search(rb"\r\n(?![ \t])", sig[:-2]) is None  # one field, folded
    tags = dkimpy.util.parse_tag_value(sig.partition(b":")[2])
    assert tags[b"c"] == b"relaxed/relaxed" and tags[b"a"] == b"rsa-sha256" and tags[b"t"] == b"1800000000"
    signed_headers = [h.strip() for h in tags[b"h"].split(b":")]
    assert signed_headers.count(b"from") == 2  # oversigned
    for h in (b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type", b"list-unsubscribe-post"):
        assert h in signed_headers
    assert b"received" not in signed_headers


def test_tampered_body_fails(zone, keyring) -> None:
    out = signed(message(), [keyring["rsa"], keyring["ed25519"]]).replace(b"classe est", b"classe n'est pas")
    results = verify(io.BytesIO(out))
    assert [(r.result, r.reason) for r in results] == [("fail", "body hash mismatch")] * 2


def test_tampered_signed_header_fails(zone, keyring) -> None:
    out = signed(message(), [keyring["rsa"], keyring["ed25519"]]).replace(b"Subject: Conseil", b"Subject: Urgent")
    results = verify(io.BytesIO(out))
    assert [r.result for r in results] == ["fail", "fail"]
    assert all("body" not in r.reason for r in results)


def test_added_from_breaks_the_oversigned_signature(zone, keyring) -> None:
    out = signed(message(), [keyring["rsa"]])
    forged = out.replace(b"To: ", b"From: attaquant@evil.test\r\nTo: ", 1)
    assert verify(io.BytesIO(forged))[0].result == "fail"


def test_unsigned_header_changes_and_whitespace_keep_passing(zone, keyring) -> None:
    out = signed(message(body=b"ligne  avec\tespaces \r\n\r\n\r\n"), [keyring["rsa"]])
    relaxed = out.replace(b"avec\tespaces \r\n", b"avec espaces\r\n") + b"\r\n"
    relaxed = b"X-Spam-Score: 0\r\nReceived: by relay\r\n" + relaxed
    assert verify(io.BytesIO(relaxed))[0].result == "pass"


def test_missing_key_is_permerror(zone, keyring) -> None:
    out = signed(message(), [keyring["rsa"]])
    zone.remove(keyring["rsa"].dns_name)
    (r,) = verify(io.BytesIO(out))
    assert r.result == "permerror" and "no key" in r.reason


def test_servfail_is_temperror(zone, keyring) -> None:
    out = signed(message(), [keyring["rsa"], keyring["ed25519"]])
    zone.fail(keyring["ed25519"].dns_name)
    results = verify(io.BytesIO(out))
    assert [r.result for r in results] == ["pass", "temperror"]


def test_bad_key_record_and_bad_tags_are_permerror(zone, keyring) -> None:
    no_from = dkimpy.sign(message(), b"rsa1", D.encode(), keyring["rsa"].signing_key(), include_headers=[b"subject", b"from"])
    no_from, n = re.subn(rb"h=subject\s*:\s*from", b"h=subject", no_from)
    assert n == 1
    (r,) = verify(io.BytesIO(no_from + message()))
    assert (r.result, r.reason) == ("permerror", "From is not signed")
    out = signed(message(), [keyring["rsa"]])
    zone.set(keyring["rsa"].dns_name, "TXT", '"v=DKIM1; k=rsa; p=bm90IGEga2V5"')
    assert verify(io.BytesIO(out))[0].result == "permerror"
    broken = out.replace(b"v=1;", b"v=2;", 1)
    assert verify(io.BytesIO(broken))[0].result == "permerror"
    junk = b"DKIM-Signature: garbage without tags\r\n" + message()
    assert verify(io.BytesIO(junk))[0].result == "permerror"
    same = b"DKIM-Signature: v=1; a=rsa-sha256; d=x.test; i=x.test; s=s; h=from; bh=AAAA; b=AAAA\r\n" + message()
    assert verify(io.BytesIO(same))[0].result == "permerror"  # i= equal to d= (dkimpy IndexError)


def test_unsigned_message_reads_no_body(zone) -> None:
    class NoBody(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            raise AssertionError("body read although unsigned")

    assert verify(NoBody(message())) == []


def test_too_many_headers(keyring) -> None:
    huge = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    msg = message(extra=huge * 1100)
    with pytest.raises(ValueError, match="header block"):
        sign(io.BytesIO(msg), [keyring["rsa"]])
    (r,) = verify(io.BytesIO(msg))
    assert r.result == "permerror"


def test_no_from_cannot_be_signed(keyring) -> None:
    with pytest.raises(ValueError, match="From"):
        sign(io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"), [keyring["rsa"]])


def test_dkimpy_verifies_our_signatures(zone, keyring) -> None:
    dnsfunc = dkimpy_dnsfunc(zone)
    for body in (message(), message(body=b""), message(body=b"a\nbare\nLF\n  \r\n\r\n")):
        for key in keyring.values():
            assert dkimpy.verify(signed(body, [key]), dnsfunc=dnsfunc), key.algorithm


@pytest.mark.parametrize("canon", [(b"relaxed", b"simple"), (b"simple", b"simple"), (b"relaxed", b"relaxed")])
@pytest.mark.parametrize("length", [False, True])
def test_we_verify_dkimpy_signatures(zone, keyring, canon, length) -> None:
    for key in keyring.values():
        alg = b"ed25519-sha256" if key.algorithm == "ed25519" else b"rsa-sha256"
        msg = message(body=b"Texte  avec\t blancs \r\n\r\n")
        sig = dkimpy.sign(msg, key.selector.encode(), D.encode(), key.signing_key(), canonicalize=canon,
                          signature_algorithm=alg, length=length)
        assert [r.result for r in verify(io.BytesIO(sig + msg))] == ["pass"]
        if length:  # l= lets a list append a footer
            assert [r.result for r in verify(io.BytesIO(sig + msg + b"-- \r\nfooter\r\n"))] == ["pass"]


# --- Perl Mail::DKIM, an independent verifier -------------------------------------------------------------

PERL_VERIFIER = r"""
use strict; use warnings;
use Mail::DKIM; use Mail::DKIM::Verifier; use Net::DNS::Resolver;
my $port = shift;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => ["127.0.0.1"], port => $port, recurse => 0));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (<STDIN>) { s/\015?\012\z/\015\012/; $dkim->PRINT($_); }
$dkim->CLOSE;
print join(" ", $_->domain, $_->algorithm, $_->result, $_->result_detail), "\n" for $dkim->signatures;
print "version $Mail::DKIM::VERSION\n";
"""


def perl_dkim_verify(msg: bytes, port: int) -> str:
    """Mail::DKIM's verdict, one line per signature ("domain algorithm result detail"),
    then "version V"; DNS through the test server on ``port``."""
    need(shutil.which("perl") is not None, "perl")
    probe = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-MCrypt::PK::Ed25519", "-e1"], capture_output=True, check=False)
    need(probe.returncode == 0, "Mail::DKIM, Net::DNS, CryptX (Debian libmail-dkim-perl libnet-dns-perl libcryptx-perl)")
    r = subprocess.run(["perl", "-e", PERL_VERIFIER, str(port)], input=msg, capture_output=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def perl_verify(msg: bytes, port: int) -> tuple[list[list[str]], str]:
    lines = perl_dkim_verify(msg, port).splitlines()
    return [line.split(" ", 3) for line in lines[:-1]], lines[-1].split()[1]


def test_perl_mail_dkim_verifies_rsa(zone, keyring) -> None:
    out = signed(message(body=b"Une ligne\r\n\r\n  indent\xc3\xa9e \t \r\n\r\n\r\n"), [keyring["rsa"], keyring["ed25519"]])
    sigs, _ = perl_verify(out, zone.port)
    assert sigs[0][:3] == [D, "rsa-sha256", "pass"], sigs
    tampered, _ = perl_verify(out.replace(b"Une ligne", b"Deux lignes"), zone.port)
    assert tampered[0][2] == "fail"


def test_perl_mail_dkim_on_ed25519(zone, keyring) -> None:
    """Debian 12 ships Mail::DKIM 1.20230212, before its Ed25519 support
    (1.20230630): there it must say so rather than fail the signature; a newer
    one must pass it.  dkimpy's verifier checks Ed25519 in any case (above)."""
    out = signed(message(), [keyring["ed25519"]])
    sigs, version = perl_verify(out, zone.port)
    if tuple(int(x) for x in version.split(".")) < (1, 20230630):
        assert sigs[0][:3] == [D, "ed25519-sha256", "invalid"] and "unsupported algorithm" in sigs[0][3], sigs
    else:
        assert sigs[0][:3] == [D, "ed25519-sha256", "pass"], sigs


# --- a 100 MB message, streamed ---------------------------------------------------------------------------

BIG_SCRIPT = r"""
import io, json, resource, sys, tracemalloc
from pathlib import Path
import dns.resolver
from mailstack.mailauth.dkim import sign, verify
from mailstack.mailauth.keys import DkimKey

path, port = Path(sys.argv[1]), int(sys.argv[2])
keys = [DkimKey(d, s, a, Path(p)) for d, s, a, p in json.loads(sys.argv[3])]
r = dns.resolver.Resolver(configure=False); r.nameservers = ["127.0.0.1"]; r.port = port
dns.resolver.default_resolver = r
line = b"Bonjour a tous,  voici le compte rendu du conseil\t de classe. \r\n"
with open(path, "wb") as f:
    f.write(b"From: prof@%s\r\nTo: x@ac-rouen.test\r\nSubject: gros\r\n\r\n" % keys[0].domain.encode())
    block = line * ((1 << 20) // len(line))
    while f.tell() < 100 * (1 << 20):
        f.write(block)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
with open(path, "rb") as f:
    header = sign(f, keys)
sign_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.reset_peak()
signed = path.with_suffix(".signed")
with open(signed, "wb") as out, open(path, "rb") as f:
    out.write(header)
    while chunk := f.read(1 << 20):
        out.write(chunk)
tracemalloc.reset_peak()
with open(signed, "rb") as f:
    results = [r.result for r in verify(f)]
verify_peak = tracemalloc.get_traced_memory()[1]
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps({"results": results, "sign_peak": sign_peak, "verify_peak": verify_peak, "rss_growth_kib": growth}))
"""


def test_100mb_message_streams(tmp_path, zone, keyring) -> None:
    keys = json.dumps([[k.domain, k.selector, k.algorithm, str(k.path)] for k in keyring.values()])
    r = subprocess.run(
        [sys.executable, "-c", BIG_SCRIPT, str(tmp_path / "big.eml"), str(zone.port), keys],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["results"] == ["pass", "pass"]
    mb = 1 << 20
    assert out["sign_peak"] < 40 * mb and out["verify_peak"] < 40 * mb, out
    assert out["rss_growth_kib"] * 1024 < 40 * mb, out


# --- SPF -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "ip", "expected"),
    [
        ("v=spf1 ip4:127.0.0.1 -all", "127.0.0.1", "pass"),
        ("v=spf1 ip4:127.0.0.1 -all", "192.0.2.7", "fail"),
        ("v=spf1 ip4:127.0.0.1 ~all", "192.0.2.7", "softfail"),
        ("v=spf1 ?all", "192.0.2.7", "neutral"),
        (None, "192.0.2.7", "none"),
    ],
)
def test_spf(zone, record, ip, expected) -> None:
    if record:
        zone.add("spf.ac-rouen.test", "TXT", f'"{record}"')
    r = check_spf(ip, "parent@spf.ac-rouen.test", "client.example.test")
    assert (r.result, r.identity, r.domain) == (expected, "mailfrom", "spf.ac-rouen.test")


def test_spf_null_sender_uses_helo(zone) -> None:
    zone.add("relay.ac-rouen.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    r = check_spf("127.0.0.1", "", "relay.ac-rouen.test")
    assert (r.result, r.identity, r.domain) == ("pass", "helo", "relay.ac-rouen.test")


def test_spf_servfail_is_temperror(zone) -> None:
    zone.fail("spf.ac-rouen.test")
    assert check_spf("127.0.0.1", "x@spf.ac-rouen.test", "h.test").result == "temperror"


# --- DMARC and the verdict --------------------------------------------------------------------------------------


def run(msg: bytes, *, ip: str = "192.0.2.7", mail_from: str = "bounce@elsewhere.test", helo: str = "client.test"):
    return authenticate(io.BytesIO(msg), authserv_id=AUTHSERV, client_ip=ip, helo=helo, mail_from=mail_from)


def test_org_domains_and_alignment() -> None:
    assert org_domain("mail.ac-normandie.test") == "ac-normandie.test"  # unlisted TLD: the "*" rule
    assert org_domain("ac-normandie.test") == "ac-normandie.test"
    assert org_domain("a.b.example.co.uk") == "example.co.uk"
    assert org_domain("x.github.io") == "x.github.io"
    assert aligned("mail.ac-normandie.test", "AC-NORMANDIE.test.", "r")
    assert not aligned("mail.ac-normandie.test", "ac-normandie.test", "s")
    assert not aligned("ac-rouen.test", "ac-normandie.test", "r")


def test_dmarc_pass_with_aligned_dkim(zone, keyring) -> None:
    zone.add(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=reject"')
    v = run(signed(message(), [keyring["rsa"]]))
    assert (v.spf, v.dmarc, v.dmarc_policy, v.from_domain) == ("none", "pass", "none", D)
    assert v.action(True) == "accept"
    text = v.header.decode()
    assert f"dkim=pass header.d={D} header.s=rsa1 header.a=rsa-sha256" in re.sub(r"\r\n\s+", " ", text)
    assert f"dmarc=pass (p=reject sp=reject pct=100 dis=none) header.from={D}" in re.sub(r"\r\n\s+", " ", text)


def test_dmarc_pass_with_aligned_spf_relaxed_but_not_strict(zone) -> None:
    zone.add(f"bounces.{D}", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    zone.add(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=reject"')
    v = run(message(), ip="127.0.0.1", mail_from=f"b@bounces.{D}")
    assert (v.spf, v.dmarc) == ("pass", "pass")
    zone.set(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=reject; aspf=s"')
    v = run(message(), ip="127.0.0.1", mail_from=f"b@bounces.{D}")
    assert (v.spf, v.dmarc, v.action(True)) == ("pass", "fail", "reject")


def test_dmarc_fail_reject(zone, tmp_path) -> None:
    zone.add(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=reject; sp=none"')  # sp= is for subdomains only
    v = run(message())  # unsigned, SPF for someone else's domain
    assert (v.dmarc, v.dmarc_policy) == ("fail", "reject")
    assert v.action(True) == "reject" and v.action(False) == "accept"
    # A signature by another domain does not align.
    other = keygen(tmp_path, "ac-rouen.test", "other", "rsa")
    zone.add(other.dns_name, "TXT", txt_chunks(other.txt_record()))
    v = run(signed(message(), [other]))
    assert [r.result for r in v.dkim] == ["pass"] and v.dmarc == "fail" and v.action(True) == "reject"


def test_dmarc_fail_quarantine(zone) -> None:
    zone.add(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=quarantine; rua=mailto:dmarc@ac-normandie.test"')
    v = run(message())
    assert (v.dmarc, v.dmarc_policy, v.action(True)) == ("fail", "quarantine", "quarantine")


def test_dmarc_subdomain_policy(zone) -> None:
    zone.add(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=reject; sp=quarantine"')
    v = run(message(sender=f"vie-scolaire@college.{D}"))
    assert (v.dmarc, v.dmarc_policy, v.from_domain) == ("fail", "quarantine", f"college.{D}")
    zone.add(f"_dmarc.college.{D}", "TXT", '"v=DMARC1; p=none"')  # its own record wins
    v = run(message(sender=f"vie-scolaire@college.{D}"))
    assert (v.dmarc, v.dmarc_policy, v.action(True)) == ("fail", "none", "accept")


def test_dmarc_pct_zero_steps_down(zone) -> None:
    zone.add(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=reject; pct=0"')
    assert run(message()).dmarc_policy == "quarantine"


def test_dmarc_none_and_errors(zone) -> None:
    v = run(message())
    assert (v.dmarc, v.action(True)) == ("none", "accept")
    zone.fail(f"_dmarc.{D}")
    v = run(message())
    assert (v.dmarc, v.action(True)) == ("temperror", "accept")
    zone.remove(f"_dmarc.{D}")
    zone.add(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=bogus"')
    assert run(message()).dmarc == "permerror"
    assert run(message(sender="pas-une-adresse")).dmarc == "permerror"


def test_dmarc_key_servfail_is_temperror_not_fail(zone, keyring) -> None:
    zone.add(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=reject"')
    out = signed(message(), [keyring["rsa"]])
    zone.fail(keyring["rsa"].dns_name)
    v = run(out)
    assert (v.dmarc, v.action(True)) == ("temperror", "accept")


def test_authentication_results_header(zone, keyring) -> None:
    zone.add(f"_dmarc.{D}", "TXT", '"v=DMARC1; p=reject"')
    zone.add("elsewhere.test", "TXT", '"v=spf1 -all"')
    v = run(signed(message(), [keyring["rsa"], keyring["ed25519"]]))
    assert v.header.startswith(f"Authentication-Results: {AUTHSERV};\r\n".encode())
    assert v.header.endswith(b"\r\n") and b"\n" not in v.header.replace(b"\r\n", b"")
    lines = v.header.decode().split("\r\n")[:-1]
    assert all(len(line) < 78 for line in lines), lines
    assert all(line[0] in " \t" for line in lines[1:])
    parsed = authres.AuthenticationResultsHeader.parse(re.sub(r"\r\n(?=[ \t])", "", v.header.decode()).strip())
    assert parsed.authserv_id == AUTHSERV
    got = [(r.method, r.result, {f"{p.type}.{p.name}": p.value for p in r.properties}) for r in parsed.results]
    assert got == [
        ("spf", "fail", {"smtp.mailfrom": "bounce@elsewhere.test"}),
        ("dkim", "pass", {"header.d": D, "header.s": "rsa1", "header.a": "rsa-sha256", "header.i": f"@{D}"}),
        ("dkim", "pass", {"header.d": D, "header.s": "ed1", "header.a": "ed25519-sha256", "header.i": f"@{D}"}),
        ("dmarc", "pass", {"header.from": D}),
    ]


def test_verdict_for_null_sender_and_garbage(zone) -> None:
    v = run(b"not a header at all\r\n\r\nbody\r\n", mail_from="", helo="client.test")
    assert v.spf == "none" and v.dmarc == "permerror" and v.dkim == []
    assert b"smtp.helo=client.test" in v.header
    v = run(b"X: " + b"y" * (2 << 20) + b"\r\n\r\nbody")
    assert v.dkim[0].result == "permerror"


# --- strip_forged ---------------------------------------------------------------------------------------------


def test_strip_forged_removes_only_ours() -> None:
    headers = (
        b"Received: from a by b\r\n"
        b"Authentication-Results: mx.ac-rouen.test; spf=pass\r\n"
        b"Authentication-Results: MX.AC-ROUEN.TEST;\r\n dkim=pass header.d=evil.test;\r\n\tdmarc=pass\r\n"
        b"Authentication-Results: (forged) \r\n (nested (comment)) mx.ac-rouen.test 1; none\r\n"
        b'Authentication-Results: "mx.ac-rouen.test"; spf=pass\r\n'
        b"authentication-results :mx.ac-rouen.test;spf=pass\r\n"
        b"Authentication-Results: mx.ac-rouen.test.evil; spf=pass\r\n"
        b"Authentication-Results: mx.google.test; dkim=pass\r\n"
        b"X-Authentication-Results: mx.ac-rouen.test; spf=pass\r\n"
        b"ARC-Authentication-Results: i=1; mx.ac-rouen.test; spf=pass\r\n"
        b"Subject: hello\r\n  world\r\n"
    )
    expected = (
        b"Received: from a by b\r\n"
        b"Authentication-Results: mx.ac-rouen.test.evil; spf=pass\r\n"
        b"Authentication-Results: mx.google.test; dkim=pass\r\n"
        b"X-Authentication-Results: mx.ac-rouen.test; spf=pass\r\n"
        b"ARC-Authentication-Results: i=1; mx.ac-rouen.test; spf=pass\r\n"
        b"Subject: hello\r\n  world\r\n"
    )
    assert strip_forged(headers, "mx.ac-rouen.test") == expected
    assert strip_forged(headers, "MX.AC-ROUEN.TEST") == expected


def test_strip_forged_keeps_everything_else_byte_identical() -> None:
    headers = b"From: a\n  folded\r\nno colon line\r\n\tleading continuation\r\nX:\xff\xfe\r\n: empty name\r\nlast without crlf"
    assert strip_forged(headers, "mx.ac-rouen.test") == headers
    assert strip_forged(b"", "mx") == b""


def test_strip_forged_hostile_input_never_raises() -> None:
    rng = random.Random(11)
    alphabet = [b"Authentication-Results:", b"mx", b";", b"(", b")", b"\\", b'"', b"\r\n", b"\n", b" ", b"\t", b":", b"\x00", b"\xff"]
    for _ in range(3000):
        junk = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        out = strip_forged(junk, "mx")
        assert len(out) <= len(junk)
    unclosed = b"Authentication-Results: (" + b" (" * 200_000 + b"\r\n" + b"\tx=y\r\n" * 50_000 + b"Subject: s\r\n"
    assert strip_forged(unclosed, "mx") == unclosed  # no authserv-id found: not ours, kept
    folded = b"Authentication-Results: mx;\r\n" + b"\tspf=pass (x)\r\n" * 100_000 + b"Subject: s\r\n"
    assert strip_forged(folded, "mx") == b"Subject: s\r\n"
