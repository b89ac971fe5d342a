"""The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2), parsed without I/O.

A TCP load balancer in front of several mailstack nodes opens each
connection with a header that names the real client; everything after it
is the mail protocol itself (for implicit TLS, the ClientHello).  The
header is read before any TLS layer and before the server says anything,
under Twisted (imapd) and asyncio (smtpd) alike, so the parser is a pure
state machine in the style of h11: feed it bytes, it answers ``NEED_MORE``,
a ``Header`` (with how many bytes the header used), or raises
``ProxyError``.  Hand-written rather than Twisted's
``twisted.protocols.haproxy``: that one is Twisted-only (smtpd is asyncio),
and its wrapper starts the wrapped protocol (greeting, peer lookup) before
the header has arrived.

Every byte here comes from the network: sizes are bounded (107 bytes for a
v1 line, ``MAX_V2_LENGTH`` after the 16-byte v2 preamble), the syntax is the
specification's, strictly (one space, no leading zeros, CRLF only), and
addresses are checked with ``ipaddress``.  Whether a peer may send a header
at all is ``Trusted``'s business; the daemons drop anyone else at once.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Final, Iterable

V1_MAX = 107  # "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n", the spec's worst case
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_LENGTH = 4096  # address block + TLVs; HAProxy sends well under 512 bytes
HEADER_TIMEOUT = 10.0  # seconds a trusted peer has to send its header

_V1_PREFIX = b"PROXY "
_PORT = re.compile(rb"^(0|[1-9][0-9]{0,4})$")
_V1_TEXT = re.compile(rb"^[\x20-\x7e]*$")

Address = tuple[str, int]


class ProxyError(ValueError):
    """The bytes are not a valid PROXY header: the connection must be dropped."""


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()


@dataclass(frozen=True)
class Header:
    """A complete header.  ``source``/``dest`` are None when the connection's own
    addresses stand (v1 UNKNOWN, v2 LOCAL, or a family we do not relay)."""

    version: int
    source: Address | None
    dest: Address | None
    length: int  # bytes of the stream the header used; what follows is the protocol's


def _ip(text: str, version: int) -> str:
    """A canonical IP address of the given version, or ProxyError."""
    if "%" in text:  # ipaddress accepts IPv6 scope ids ("fe80::1%eth0"): not an address on the wire
        raise ProxyError("address with a scope id")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"not an IPv{version} address: {text[:45]!r}") from None
    if ip.version != version:
        raise ProxyError(f"not an IPv{version} address: {text[:45]!r}")
    return _plain(ip)


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    # A balancer listening on "::" reports IPv4 clients as ::ffff:a.b.c.d; the
    # throttle, the limits and SPF must see the IPv4 address a direct client has.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _port(raw: bytes) -> int:
    if not _PORT.match(raw) or int(raw) > 65535:
        raise ProxyError(f"not a port: {raw[:8]!r}")
    return int(raw)


def _parse_v1(buf: bytes) -> Header | _NeedMore:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        head = buf[:V1_MAX]
        if b"\n" in head or b"\r" in head[:-1] or not _V1_TEXT.match(head.rstrip(b"\r")):
            raise ProxyError("v1 line with a control character or a bare CR/LF")
        if len(buf) >= V1_MAX:
            raise ProxyError(f"v1 line without CRLF in its first {V1_MAX} bytes")
        return NEED_MORE
    line = buf[:end]
    if not _V1_TEXT.match(line):
        raise ProxyError("v1 line with a control character or a bare CR/LF")
    parts = line.split(b" ")
    length = end + 2
    if parts[1:2] == [b"UNKNOWN"]:  # the rest of the line is to be ignored (spec 2.1)
        return Header(1, None, None, length)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyError("v1 line is not 'PROXY TCP4|TCP6 src dst sport dport'")
    version = 4 if parts[1] == b"TCP4" else 6
    src, dst = _ip(parts[2].decode("ascii"), version), _ip(parts[3].decode("ascii"), version)
    return Header(1, (src, _port(parts[4])), (dst, _port(parts[5])), length)


def _check_tlvs(block: bytes) -> None:
    """TLVs are skipped, but they must tile the rest of the header exactly."""
    i = 0
    while i < len(block):
        if len(block) - i < 3:
            raise ProxyError("v2 TLV truncated")
        (n,) = struct.unpack_from("!H", block, i + 1)
        i += 3 + n
        if i > len(block):
            raise ProxyError("v2 TLV longer than the header")


def _parse_v2(buf: bytes) -> Header | _NeedMore:
    if len(buf) < 16:
        return NEED_MORE
    ver_cmd, fam, length = struct.unpack_from("!BBH", buf, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyError(f"v2 header with unknown command {command}")
    family, proto = fam >> 4, fam & 0x0F
    if family > 3 or proto > 2:
        raise ProxyError(f"v2 header with unknown family/protocol 0x{fam:02x}")
    if length > V2_MAX_LENGTH:
        raise ProxyError(f"v2 header of {length} bytes (at most {V2_MAX_LENGTH})")
    total = 16 + length
    if len(buf) < total:
        return NEED_MORE
    block = buf[16:total]
    # Sizes of the address block of AF_INET, AF_INET6, AF_UNIX (spec 2.2).
    need = {1: 12, 2: 36, 3: 216}.get(family, 0)
    if len(block) < need:
        raise ProxyError(f"v2 address block of {len(block)} bytes, family {family} needs {need}")
    _check_tlvs(block[need:])
    # LOCAL (a health check), AF_UNSPEC, AF_UNIX or a non-TCP protocol: the
    # spec lets the receiver fall back to the connection's own endpoints.
    if command == 0 or family not in (1, 2) or proto != 1:
        return Header(2, None, None, total)
    if family == 1:
        src, dst = ipaddress.IPv4Address(block[0:4]), ipaddress.IPv4Address(block[4:8])
        sport, dport = struct.unpack_from("!HH", block, 8)
    else:
        src, dst = ipaddress.IPv6Address(block[0:16]), ipaddress.IPv6Address(block[16:32])
        sport, dport = struct.unpack_from("!HH", block, 32)
    return Header(2, (_plain(src), sport), (_plain(dst), dport), total)


def parse(buf: bytes) -> Header | _NeedMore:
    """The header at the start of ``buf``: a ``Header``, ``NEED_MORE``, or ProxyError.

    Anything that cannot become a header fails as soon as it is seen, so a
    client that speaks the mail protocol to a proxy port is dropped at once."""
    n = min(len(buf), len(V2_SIGNATURE))
    if buf[:n] == V2_SIGNATURE[:n]:
        return NEED_MORE if n < len(V2_SIGNATURE) else _parse_v2(buf)
    n = min(len(buf), len(_V1_PREFIX))
    if buf[:n] == _V1_PREFIX[:n]:
        return NEED_MORE if n < len(_V1_PREFIX) else _parse_v1(buf)
    raise ProxyError("no PROXY protocol header")


class HeaderReader:
    """Feeds ``parse`` from a byte stream that may arrive in pieces.

    ``feed`` answers ``NEED_MORE`` or the ``Header``; after the header,
    ``rest`` holds the bytes that followed it in the same reads."""

    def __init__(self) -> None:
        self._buf = b""
        self.header: Header | None = None
        self.rest = b""

    def feed(self, data: bytes) -> Header | _NeedMore:
        if self.header is not None:
            raise RuntimeError("the header is already complete")
        # Never hold more than the largest header plus one read.
        self._buf += data
        result = parse(self._buf)
        if isinstance(result, Header):
            self.header = result
            self.rest = self._buf[result.length:]
            self._buf = b""
        return result

    @property
    def buffered(self) -> int:
        return len(self._buf)


class Trusted:
    """The networks whose peers may send a PROXY header (``server.proxy_trusted``)."""

    def __init__(self, networks: Iterable[str]):
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __contains__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
        return any(ip in net for net in self.networks)


__all__ = ["HEADER_TIMEOUT", "NEED_MORE", "Header", "HeaderReader", "ProxyError", "Trusted", "parse"]
