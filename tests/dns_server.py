"""A small real authoritative DNS server on loopback, for the outbound-delivery tests.

The queue runner resolves MX, A, AAAA and TXT records with dnspython; these
tests point it at this server instead of mocking the resolver, so the real
wire format, NXDOMAIN/NODATA distinction, CNAME chains and the UDP->TCP retry
on truncation are all exercised.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Iterator

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.tokenizer
from dns.rdtypes.ANY.TXT import TXT
import pytest

__all__ = ["DnsServer", "dns_server"]

_IN = dns.rdataclass.IN
_MAX_CHAIN = 16  # CNAME hops followed before giving up (loops in test data)


def _key(name: str) -> str:
    """Names compare case-insensitively, absolute or not."""
    return name.lower().rstrip(".")


def _zone(key: str) -> str:
    """The registered zone apex: the last two labels ("mx1.example.test" -> "example.test")."""
    return ".".join(key.split(".")[-2:]) if key else ""


def _rdata(rdtype: int, text: str) -> dns.rdata.Rdata:
    """Parse zone-file rdata; TXT strings longer than 255 bytes are split, as a zone signer would."""
    if rdtype == dns.rdatatype.TXT:
        pieces: list[bytes] = []
        for token in dns.tokenizer.Tokenizer(text).get_remaining():
            value = token.unescape_to_bytes().value
            pieces += [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
        return TXT(_IN, rdtype, pieces)
    return dns.rdata.from_text(_IN, rdtype, text, origin=dns.name.root, relativize=False)


class DnsServer:
    """Authoritative for every name it holds; answers over UDP and TCP on one port."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._records: dict[tuple[str, int], dns.rrset.RRset] = {}
        self._failures: dict[tuple[str, int | None], int] = {}
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    # --- data ---------------------------------------------------------------------

    def add(self, name: str, rtype: str, *rdatas: str, ttl: int = 60) -> None:
        """Add records; adding to an existing (name, type) appends."""
        rdtype = dns.rdatatype.from_text(rtype)
        parsed = [_rdata(rdtype, text) for text in rdatas]
        key = _key(name)
        with self._lock:
            rrset = self._records.get((key, rdtype))
            if rrset is None:
                rrset = self._records[(key, rdtype)] = dns.rrset.RRset(dns.name.from_text(key), _IN, rdtype)
            for rd in parsed:
                rrset.add(rd, ttl)

    def set(self, name: str, rtype: str, *rdatas: str, ttl: int = 60) -> None:
        """Replace the records of (name, type) (and lift a fail() on it)."""
        self.remove(name, rtype)
        self.add(name, rtype, *rdatas, ttl=ttl)

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Forget the name's records (of one type, or all) and any fail() on them."""
        key = _key(name)
        rdtype = dns.rdatatype.from_text(rtype) if rtype else None
        with self._lock:
            for k in [k for k in self._records if k[0] == key and rdtype in (None, k[1])]:
                del self._records[k]
            for f in [f for f in self._failures if f[0] == key and rdtype in (None, f[1])]:
                del self._failures[f]

    def fail(self, name: str, rtype: str | None = None, rcode: str = "SERVFAIL") -> None:
        """Answer ``rcode`` for this name (and type) until remove()/set()."""
        with self._lock:
            self._failures[(_key(name), dns.rdatatype.from_text(rtype) if rtype else None)] = dns.rcode.from_text(rcode)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._failures.clear()
            self.queries.clear()

    def resolver(self) -> dns.resolver.Resolver:
        """A resolver that asks only this server, without a cache."""
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.host]
        r.port = self.port
        r.timeout = r.lifetime = 5.0
        return r

    # --- answering ------------------------------------------------------------------

    def _exists(self, key: str) -> bool:
        """The name holds records or has descendants (an empty non-terminal)."""
        if not key:
            return bool(self._records)
        return any(k == key or k.endswith("." + key) for k, _ in self._records)

    def _soa(self, key: str) -> dns.rrset.RRset:
        zone = _zone(key)
        apex = f"{zone}." if zone else "."
        text = f"ns.{apex} hostmaster.{apex} 1 3600 600 86400 60"
        return dns.rrset.from_text(apex, 60, _IN, dns.rdatatype.SOA, text)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The authoritative response to ``query`` (logs the question)."""
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        key, rdtype = _key(question.name.to_text()), question.rdtype
        with self._lock:
            self.queries.append((key, dns.rdatatype.to_text(rdtype)))
            response.flags |= dns.flags.AA
            for _ in range(_MAX_CHAIN):
                failure = self._failures.get((key, rdtype), self._failures.get((key, None)))
                if failure is not None:
                    response.answer = []
                    response.set_rcode(failure)
                    return response
                rrset = self._records.get((key, rdtype))
                if rrset is None and rdtype == dns.rdatatype.SOA and key == _zone(key) and self._exists(key):
                    rrset = self._soa(key)
                if rrset is not None:
                    response.answer.append(rrset.copy())  # copies: sent outside the lock
                    return response
                cname = self._records.get((key, dns.rdatatype.CNAME))
                if cname is None:
                    break
                response.answer.append(cname.copy())
                key = _key(cname[0].target.to_text())
            else:  # a CNAME loop
                response.answer = []
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            if not self._exists(key):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa(key))
        return response

    def _wire(self, data: bytes, max_size: int | None) -> bytes | None:
        """The response bytes for one packet, or None to ignore a malformed one.

        Over UDP (``max_size`` None) the limit is the query's EDNS payload, else
        512; an answer that does not fit is sent empty with TC so the client
        retries over TCP.
        """
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        if query.flags & dns.flags.QR:
            return None
        response = self.answer(query)
        limit = max_size or (max(query.payload, 512) if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.flags |= dns.flags.TC
            response.answer, response.authority, response.additional = [], [], []
            return response.to_wire(max_size=limit)

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Bind UDP and TCP on one free port and serve both in background threads."""
        owner = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                try:
                    wire = owner._wire(data, None)
                    if wire is not None:
                        sock.sendto(wire, self.client_address)
                except Exception:  # the server must never die on a bad packet
                    pass

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                conn.settimeout(10)
                try:
                    while True:
                        head = _recv_exact(conn, 2)
                        if head is None:
                            return
                        data = _recv_exact(conn, struct.unpack("!H", head)[0])
                        if data is None:
                            return
                        wire = owner._wire(data, 65535)
                        if wire is None:
                            return
                        conn.sendall(struct.pack("!H", len(wire)) + wire)
                except Exception:
                    pass

        for _ in range(50):
            tcp = _Threading(socketserver.TCPServer)((self.host, 0), Tcp)
            port = tcp.server_address[1]
            try:
                udp = _Threading(socketserver.UDPServer)((self.host, port), Udp)
            except OSError:
                tcp.server_close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self.port = port
        self._servers = [udp, tcp]
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in self._servers]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _Threading(base: type[socketserver.BaseServer]) -> type[socketserver.BaseServer]:
    """A thread per request, daemonic so stop() never waits on an idle client."""
    return type(f"Threading{base.__name__}", (socketserver.ThreadingMixIn, base), {"daemon_threads": True})


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A started DnsServer with no records, stopped after the test."""
    with DnsServer() as server:
        yield server
