"""DKIM signing and verification that stream the body (RFC 6376, RFC 8463).

dkimpy wants the whole message in memory and hashes its body with regexes
over one big string; a 100 MB message would cost several times its size.
Here the body goes through ``BodyHasher`` chunk by chunk, and dkimpy only
ever sees the header block: it still does what it is good at (tag parsing,
header selection and canonicalization, folding, RSA and Ed25519), so our
signatures are dkimpy's signatures.

Line endings follow dkimpy's ``rfc822_parse``: a bare LF in the body counts as
CRLF (``CrlfNormalizer``). That is what the next hop sees once an MTA has
rewritten the lines, and it keeps our results identical to ``dkim.sign`` and
``dkim.verify`` on any input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import dkim as dkimpy
import dns.exception
import dns.name
import dns.resolver
import nacl.encoding
import nacl.signing
from dkim.canonicalization import (
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
)
from dkim.crypto import HASH_ALGORITHMS, UnparsableKeyError, parse_pem_private_key
from dkim.util import InvalidTagValueList, parse_tag_value

from .keys import DkimKey

HEADER_LIMIT = 1 << 20  # bytes of header block we accept before giving up
CHUNK = 128 << 10  # body read size: per-chunk Python costs vanish, copies stay in the CPU cache

# Headers signed when present (dkimpy's RFC 6376 list plus RFC 8058, which
# requires List-Unsubscribe-Post to be signed); From is signed once more than
# it occurs (dkimpy's FROZEN) so that no From can be added.
EXTRA_SIGNED = (b"list-unsubscribe-post",)
MAX_SIGNED_REPEATS = 16  # occurrences of one header name signed (the bottom ones: what a reader sees last)
MAX_H_TAG = 256  # h= entries we are willing to verify; real signers use a few dozen


# --- body canonicalization ------------------------------------------------------------

_BARE_LF = re.compile(rb"(?<!\r)\n")
_CRLFS = b"\r\n" * 32768
_RUNS = re.compile(rb"  +")  # a literal prefix: sre skips ahead to each double space


def _relax(text: bytes) -> bytes:
    """Relaxed body rules for whole lines: WSP runs become one SP, none ends a line.

    dkimpy strips first and compresses second; compressing first gives the
    same bytes and needs no regex attempt at every space.  Base64 (the bulk
    of big messages) has no white space at all: two ``memchr`` and done.
    """
    if b" " not in text and b"\t" not in text:
        return text
    if b"\t" in text:
        text = text.replace(b"\t", b" ")
    if b"  " in text:
        text = _RUNS.sub(b" ", text)
    return text.replace(b" \r\n", b"\r\n")


def _crlf_pairs_at_end(data: bytes) -> int:
    """How many CRLF pairs end ``data`` (counted from the end, as dkimpy does)."""
    if not data.endswith(b"\r\n"):
        return 0
    window = data[-256:]
    head = window.rstrip(b"\r\n")
    tail = window[len(head):] if head or len(window) == len(data) else data[len(data.rstrip(b"\r\n")):]
    # ``tail`` holds only CR and LF; the pairs are its last alternating run.
    start = max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1
    if tail[start:start + 1] == b"\n":
        start += 1
    return (len(tail) - start) // 2


class BodyHasher:
    """RFC 6376 3.4.3/3.4.4 body canonicalization and hash, fed in chunks.

    Produces exactly ``hash(canonicalize_body(body)[:length])`` as dkimpy
    computes it, for any split of ``body`` into chunks.  Only the unfinished
    end of the current line is carried between chunks (at most two bytes: a
    compressed run of white space and a CR that may start a CRLF), and the
    empty lines seen last are only counted, because trailing empty lines are
    dropped but inner ones are not.
    """

    def __init__(self, canonicalization: str, hash_name: str, length: int | None = None) -> None:
        if canonicalization not in ("simple", "relaxed"):
            raise ValueError(f"unknown body canonicalization {canonicalization!r}")
        if hash_name not in ("sha256", "sha1"):
            raise ValueError(f"unknown hash {hash_name!r}")
        if length is not None and length < 0:
            raise ValueError("negative body length")
        self._relaxed = canonicalization == "relaxed"
        self._hash = hashlib.new(hash_name)
        self._limit = length
        self._fed = 0  # bytes given to the hash
        self._carry = b""  # raw end of the current line, not yet canonical
        self._pending = 0  # CRLFs held back: empty lines at the end so far
        self._content = False  # anything but CRLFs hashed yet (relaxed empty-body rule)
        self._digest: bytes | None = None

    @property
    def full(self) -> bool:
        """True once ``l=`` bytes are hashed: the rest of the body cannot matter."""
        return self._limit is not None and self._fed >= self._limit

    def update(self, chunk: bytes) -> None:
        if self._digest is not None:
            raise ValueError("update() after digest()")
        if not chunk or self.full:
            return
        buf = self._carry + bytes(chunk) if self._carry else bytes(chunk)
        # Cut where nothing to come can change what precedes: not inside a
        # CR LF pair, and (relaxed) not inside a run of white space that may
        # turn out to end its line.
        end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        cut = end
        if self._relaxed:
            win = buf[max(0, end - 64):end]
            stripped = win.rstrip(b" \t")
            cut = end - (len(win) - len(stripped)) if stripped or end <= 64 else len(buf[:end].rstrip(b" \t"))
        if cut:
            self._canon(buf if cut == len(buf) else buf[:cut])
        rest = buf[cut:]
        if self._relaxed and len(rest) > 1:
            rest = (b" " if rest[0] in b" \t" else b"") + (b"\r" if rest.endswith(b"\r") else b"")
        self._carry = rest

    def _canon(self, text: bytes) -> None:
        """Canonicalize a segment that starts and ends on safe boundaries, then hash it."""
        if self._relaxed:
            text = _relax(text)
        pairs = _crlf_pairs_at_end(text)
        head = len(text) - 2 * pairs
        if head == 0:
            self._pending += pairs
            return
        self._content = True
        self._flush_pending()
        self._feed(memoryview(text)[:head] if pairs else text)
        self._pending = pairs

    def _flush_pending(self) -> None:
        """Held-back empty lines turned out to be inside the body: hash them now."""
        while self._pending and not self.full:
            n = min(self._pending, len(_CRLFS) // 2)
            self._feed(_CRLFS if n == len(_CRLFS) // 2 else _CRLFS[:2 * n])
            self._pending -= n
        self._pending = 0

    def _feed(self, data: bytes | memoryview) -> None:
        if self._limit is not None:
            room = self._limit - self._fed
            if room <= 0:
                return
            if len(data) > room:
                data = data[:room]
        self._hash.update(data)
        self._fed += len(data)

    def digest(self) -> bytes:
        if self._digest is None:
            if self._carry:  # an unfinished last line is content ("x \r" keeps its space: dkimpy)
                self._canon(self._carry)
                self._carry = b""
            # Trailing empty lines collapse into the one CRLF that ends the
            # body; a relaxed body with no content hashes as empty.
            if self._content or not self._relaxed:
                self._pending = 0
                self._feed(b"\r\n")
            self._digest = self._hash.digest()
        return self._digest


class CrlfNormalizer:
    """Turn bare LF into CRLF across chunk boundaries, as dkimpy's parser does."""

    def __init__(self) -> None:
        self._prev_cr = False

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        prev_cr, self._prev_cr = self._prev_cr, chunk.endswith(b"\r")
        lfs = chunk.count(b"\n")
        if not lfs:
            return chunk
        joined = 1 if prev_cr and chunk.startswith(b"\n") else 0
        if lfs == chunk.count(b"\r\n") + joined:
            return chunk
        if joined:
            return b"\n" + _BARE_LF.sub(b"\r\n", chunk[1:])
        return _BARE_LF.sub(b"\r\n", chunk)


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    normalize = CrlfNormalizer()
    while chunk := stream.read(CHUNK):
        yield normalize(chunk)


# --- header block ---------------------------------------------------------------------


def read_header_block(stream: BinaryIO, limit: int = HEADER_LIMIT) -> bytes:
    """Read the header fields, consuming the empty line after them (not returned).

    Leaves ``stream`` at the first byte of the body.  Raises ValueError past
    ``limit`` bytes: no legitimate message has a megabyte of headers, and the
    caller must not hold an unbounded amount.
    """
    lines: list[bytes] = []
    size = 0
    while True:
        line = stream.readline(limit - size + 2)  # room for the empty line at the limit
        if not line or line in (b"\r\n", b"\n"):
            return b"".join(lines)
        size += len(line)
        if size > limit:
            raise ValueError(f"header block larger than {limit} bytes")
        lines.append(line)


def split_fields(block: bytes) -> list[bytes]:
    """Raw header fields, each with its continuation lines and line endings.

    Never raises: a line that is neither a field nor a continuation is a
    field of its own, so the pieces always join back to ``block``.  Linear
    in the block size, however many continuation lines it has.
    """
    starts = [0] + [m.end() for m in _FIELD_START.finditer(block)]
    ends = starts[1:] + [len(block)]
    return [block[a:b] for a, b in zip(starts, ends) if b > a]


_FIELD_START = re.compile(rb"\n(?=[^ \t])")
_DKIMPY_NAME = re.compile(rb"([\x21-\x7e]+?):")


def dkimpy_headers(block: bytes) -> list[list[bytes]]:
    """``dkim.rfc822_parse`` of a header block, in linear time.

    Same [name, value] pairs (value: what follows the colon, every line
    CRLF-terminated), same refusals (ValueError), but dkimpy appends each
    continuation line to a growing bytes object: quadratic, seconds of CPU
    for a megabyte of short folded lines.
    """
    headers: list[list] = []
    for line in re.split(rb"\r?\n", block):
        if not line:
            break  # the end of the header block (or of ``block``)
        if line[:1] in (b" ", b"\t"):
            if not headers:
                raise ValueError("header block starts with a continuation line")
            headers[-1][1].append(line + b"\r\n")
        elif m := _DKIMPY_NAME.match(line):
            headers.append([m.group(1), [line[m.end():] + b"\r\n"]])
        elif not line.startswith(b"From "):  # an mbox separator, skipped as dkimpy does
            raise ValueError(f"not a header line: {line[:60]!r}")
    return [[name, b"".join(parts)] for name, parts in headers]


def _dkim_object(block: bytes, **kw) -> dkimpy.DKIM:
    """A dkimpy DKIM object that knows the header block only (no body)."""
    d = dkimpy.DKIM(None, **kw)
    d.headers = dkimpy_headers(block)
    return d


def field_name(field: bytes) -> bytes:
    """The lowercased name of a raw field (b"" when there is no colon)."""
    name, colon, _ = field.partition(b":")
    return name.rstrip(b" \t").lower() if colon and b"\n" not in name else b""


def field_values(head: bytes, name: bytes) -> list[str]:
    """The unfolded values of every ``name`` field (lowercase) of a header block."""
    return [
        f.partition(b":")[2].replace(b"\r", b"").replace(b"\n", b"").decode("utf-8", "replace").strip()
        for f in split_fields(head) if field_name(f) == name
    ]


# --- signing --------------------------------------------------------------------------


def _a_label(domain: str) -> bytes:
    try:
        return domain.encode("ascii")
    except UnicodeEncodeError:
        return domain.encode("idna")


def body_hash(stream: BinaryIO, canonicalization: str = "relaxed", hash_name: str = "sha256") -> bytes:
    """The body hash of what remains in ``stream``, read in chunks."""
    h = BodyHasher(canonicalization, hash_name)
    for chunk in _chunks(stream):
        h.update(chunk)
    return h.digest()


def sign(message: BinaryIO, keys: list[DkimKey], *, now: int | None = None) -> bytes:
    """DKIM-Signature fields (relaxed/relaxed, sha256), one per key, to prepend.

    ``message`` is read once from its current position.  Raises ValueError
    for a header block over 1 MiB, a malformed one, or one without From.
    """
    if not keys:
        return b""
    headers = read_header_block(message)
    bh = base64.b64encode(body_hash(message, "relaxed", "sha256"))
    return b"".join(_sign_one(headers, bh, key, now) for key in keys)


def _capped(names, most: int = MAX_SIGNED_REPEATS) -> tuple[bytes, ...]:
    """Each name at most ``most`` times: a message with thousands of To: fields
    must not make an h= list (and dkimpy's folding, quadratic) that long."""
    seen: dict[bytes, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        if seen[n] <= most:
            out.append(n)
    return tuple(out)


def _sign_one(headers: bytes, bh: bytes, key: DkimKey, now: int | None) -> bytes:
    """What ``dkim.DKIM.sign`` does, minus hashing a body it does not have."""
    algorithm = b"ed25519-sha256" if key.algorithm == "ed25519" else b"rsa-sha256"
    try:
        d = _dkim_object(headers, signature_algorithm=algorithm, linesep=b"\r\n")
    except ValueError as e:
        raise ValueError(f"cannot sign: malformed header block ({e})") from None
    privkey = key.signing_key()
    try:
        if key.algorithm == "ed25519":
            pk = nacl.signing.SigningKey(privkey, encoder=nacl.encoding.Base64Encoder)
        else:
            pk = parse_pem_private_key(privkey)
    except (UnparsableKeyError, ValueError) as e:
        raise ValueError(f"{key.path}: unusable DKIM key ({e})") from None
    d.should_sign.update(EXTRA_SIGNED)
    include = _capped(x.lower() for x in d.default_sign_headers() if x.lower() not in d.should_not_sign)
    if b"from" not in include:
        raise ValueError("cannot sign: the message has no From header")
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    domain = _a_label(key.domain)
    fields = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", policy.to_c_value()),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(int(time.time()) if now is None else int(now)).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", bh),
        (b"b", b"0" * 60),  # placeholder: dkimpy folds b= onto its own line
    ]
    d.hasher = HASH_ALGORITHMS[algorithm]
    d.include_headers = include
    value = d.gen_header(fields, include, policy, b"DKIM-Signature", pk)
    return b"DKIM-Signature: " + value


# --- verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class DkimResult:
    """One signature's outcome, with what RFC 8601 reports about it."""

    result: str  # pass | fail | neutral | temperror | permerror
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    identity: str = ""  # i=
    reason: str = ""


class _TempError(Exception):
    pass


def _key_record(name: str) -> bytes | None:
    """The key TXT record, None when there is none; _TempError when DNS fails.

    dkimpy's own lookup maps SERVFAIL to "no key", which would turn a DNS
    hiccup into a permanent failure.
    """
    try:
        answer = dns.resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN, dns.name.NameTooLong,
            dns.name.LabelTooLong, dns.name.EmptyLabel):
        return None  # no such key (a name too long to exist included): permanent
    except dns.exception.DNSException as e:
        raise _TempError(f"key lookup failed: {type(e).__name__}") from None
    for rdata in answer:
        return b"".join(rdata.strings)
    return None


def _text(v: bytes | None) -> str:
    return (v or b"").decode("ascii", "replace")


def _describe(sig: dict) -> dict:
    return {
        "domain": _text(sig.get(b"d")).lower(),
        "selector": _text(sig.get(b"s")),
        "algorithm": _text(sig.get(b"a")).lower(),
        "identity": _text(sig.get(b"i")),
    }


def verify(message: BinaryIO, *, max_signatures: int = 5) -> list[DkimResult]:
    """Check the first ``max_signatures`` DKIM signatures; [] when unsigned.

    ``message`` is read once; the body is not read at all when unsigned.
    """
    try:
        headers = read_header_block(message)
    except ValueError as e:
        return [DkimResult("permerror", reason=str(e))]
    return verify_parts(headers, message, max_signatures=max_signatures)


def verify_parts(headers: bytes, body: BinaryIO, *, max_signatures: int = 5) -> list[DkimResult]:
    """``verify`` for a caller that has already read the header block."""
    raw = [f for f in split_fields(headers) if field_name(f) == b"dkim-signature"][:max_signatures]
    if not raw:
        return []
    try:
        d = _dkim_object(headers)
    except ValueError as e:
        return [DkimResult("permerror", reason=f"malformed header block: {e}") for _ in raw]
    sigheaders = [(x, y) for x, y in d.headers if x.lower() == b"dkim-signature"][:max_signatures]

    checks: list[_Check] = [_prepare(h) for h in sigheaders]
    hashers: dict[tuple[str, str, int | None], BodyHasher] = {}
    for c in checks:
        if c.result is None:
            c.hasher = hashers.setdefault(c.body_key, BodyHasher(*c.body_key))
    if hashers:
        todo = list(hashers.values())
        for chunk in _chunks(body):
            for h in todo:
                h.update(chunk)
            if all(h.full for h in todo):
                break
    return [_finish(d, c) for c in checks]


@dataclass
class _Check:
    header: tuple[bytes, bytes]
    sig: dict
    result: DkimResult | None = None
    body_key: tuple[str, str, int | None] = ("relaxed", "sha256", None)
    include: list | None = None
    hasher: BodyHasher | None = None


def _prepare(header: tuple[bytes, bytes]) -> _Check:
    """Parse and validate one signature's tags; set a result if it is already decided."""
    try:
        sig = parse_tag_value(header[1])
    except InvalidTagValueList as e:
        return _Check(header, {}, DkimResult("permerror", reason=f"bad tag list: {e}"))
    c = _Check(header, sig)
    try:
        dkimpy.validate_signature_fields(sig)
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as e:
        c.result = DkimResult("permerror", reason=f"invalid c= value: {e}", **_describe(sig))
        return c
    except Exception as e:  # noqa: BLE001 (ValidationError, and IndexError on i= equal to d= in dkimpy 1.1.8)
        c.result = DkimResult("permerror", reason=str(e) or type(e).__name__, **_describe(sig))
        return c
    algorithm = sig[b"a"].lower()
    if algorithm == b"rsa-sha1":
        c.result = DkimResult("permerror", reason="rsa-sha1 is no longer acceptable (RFC 8301)", **_describe(sig))
        return c
    length = int(sig[b"l"]) if sig.get(b"l") else None
    c.body_key = (policy.body_algorithm.name.decode(), algorithm.split(b"-")[1].decode(), length)
    c.include = [x.lower() for x in re.split(rb"\s*:\s*", sig[b"h"])]
    if len(c.include) > MAX_H_TAG:
        c.result = DkimResult("permerror", reason=f"h= lists more than {MAX_H_TAG} fields", **_describe(sig))
    elif b"from" not in c.include:  # RFC 6376 6.1.1: PERMFAIL (From field not signed)
        c.result = DkimResult("permerror", reason="From is not signed", **_describe(sig))
    return c


def _finish(d: dkimpy.DKIM, c: _Check) -> DkimResult:
    if c.result is not None:
        return c.result
    sig = c.sig
    info = _describe(sig)
    assert c.hasher is not None and c.include is not None
    try:
        bh = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]), validate=True)
    except binascii.Error:
        return DkimResult("permerror", reason="bh= is not base64", **info)
    if c.hasher.digest() != bh:
        return DkimResult("fail", reason="body hash mismatch", **info)
    name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
    try:
        record = _key_record(name.decode("ascii"))
    except UnicodeDecodeError:
        return DkimResult("permerror", reason="non-ASCII key name", **info)
    except _TempError as e:
        return DkimResult("temperror", reason=str(e), **info)
    if not record:
        return DkimResult("permerror", reason=f"no key at {name.decode()}", **info)
    try:
        d.pk, d.keysize, d.ktag, d.seqtlsrpt = dkimpy.evaluate_pk(name, record)
    except (dkimpy.DKIMException, binascii.Error, ValueError) as e:
        return DkimResult("permerror", reason=f"bad key record: {e}", **info)
    if not d.ktag or not sig[b"a"].lower().startswith(d.ktag + b"-"):
        return DkimResult("permerror", reason="key type does not match a=", **info)
    # Without bh=, dkimpy skips the body (we checked it) and does the rest:
    # header selection and canonicalization, then the signature itself.
    unbodied = {k: v for k, v in sig.items() if k != b"bh"}
    everything = d.headers
    d.headers = _preselect(everything, c.include)
    try:
        ok = d.verify_sig_process(unbodied, list(c.include), c.header, None)
    except dkimpy.DKIMException as e:
        return DkimResult("permerror", reason=str(e), **info)
    except Exception as e:  # noqa: BLE001 (hostile b= values reach the crypto libraries)
        return DkimResult("fail", reason=f"bad signature ({type(e).__name__})", **info)
    finally:
        d.headers = everything
    if ok:
        return DkimResult("pass", **info)
    return DkimResult("fail", reason="signature did not verify", **info)


def _preselect(headers: list, include: list[bytes]) -> list:
    """The fields dkimpy's ``select_headers`` will pick, in message order.

    Its selection rescans the whole header list for every h= name (h= names
    times fields: seconds for a hostile message); picked from this short
    list it makes the same choice.  The extra From is dkimpy's own rule
    (verify_sig_process adds one so that an unsigned second From fails).
    """
    wanted = include + [b"from"] if b"from" in include else include
    by_name: dict[bytes, list[int]] = {}
    for i, (name, _) in enumerate(headers):
        by_name.setdefault(name.lower(), []).append(i)
    chosen = []
    for name in wanted:
        found = by_name.get(name)
        if found:
            chosen.append(found.pop())
    return [headers[i] for i in sorted(chosen)]
