"""PROXY protocol listeners under Twisted: the header is read before anything else.

``ProxyHeaderFactory`` wraps a listener's factory (for IMAPS, the TLS
factory, so the header comes off the raw TCP stream before the TLS layer
sees the ClientHello).  A peer outside ``server.proxy_trusted`` is dropped
at once; a trusted one has ``HEADER_TIMEOUT`` seconds to send a valid
header.  Only then is the wrapped protocol connected, and ``getPeer()``
answers the client named in the header: ``ImapProtocol.peer``, its
per-address limit, its log lines and the authentication throttle all see
the real client.  (Twisted's own ``HAProxyWrappingFactory`` connects the
wrapped protocol at once, before the header, and has no trust rule.)
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import address, protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, providedBy

from .. import metrics
from ..proxyproto import HEADER_TIMEOUT, NEED_MORE, HeaderReader, ProxyError, Trusted

log = logging.getLogger("mailstack.imap")


class ProxyHeaderProtocol(ProtocolWrapper):
    factory: ProxyHeaderFactory

    def __init__(self, factory: ProxyHeaderFactory, wrapped: protocol.Protocol):
        super().__init__(factory, wrapped)
        self._reader: HeaderReader | None = HeaderReader()
        self._peer: Any = None
        self._timer: Any = None
        self._started = False  # the wrapped protocol is connected

    def makeConnection(self, transport) -> None:  # noqa: N802
        # ProtocolWrapper's would connect the wrapped protocol now: we wait for the header.
        directlyProvides(self, providedBy(transport))
        protocol.Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def connectionMade(self) -> None:  # noqa: N802
        from twisted.internet import reactor

        host = getattr(self.transport.getPeer(), "host", "")
        if host not in self.factory.trusted:
            log.warning("client=%s refused: not a trusted proxy", host)
            metrics.CONNECTIONS_REFUSED.labels("imap", "untrusted_proxy").inc()
            self._reader = None
            self.transport.abortConnection()
            return
        self._timer = reactor.callLater(HEADER_TIMEOUT, self._too_slow, host)

    def _too_slow(self, host: str) -> None:
        self._timer = None
        self._reader = None
        log.warning("client=%s closed: no PROXY header within %g s", host, HEADER_TIMEOUT)
        metrics.CONNECTIONS_REFUSED.labels("imap", "proxy_header").inc()
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._reader is None:  # refused or failed: the connection is closing
            return
        try:
            header = self._reader.feed(data)
        except ProxyError as e:
            log.warning("client=%s closed: bad PROXY header: %s", self.transport.getPeer().host, e)
            metrics.CONNECTIONS_REFUSED.labels("imap", "proxy_header").inc()
            self._reader = None
            self._cancel_timer()
            self.transport.abortConnection()
            return
        if header is NEED_MORE:
            return
        self._cancel_timer()
        rest, self._reader = self._reader.rest, None
        if header.source is not None:
            host, port = header.source
            kind = address.IPv6Address if ":" in host else address.IPv4Address
            self._peer = kind("TCP", host, port)
        self._started = True
        self.wrappedProtocol.makeConnection(self)
        if rest and self.wrappedProtocol is not None and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def getPeer(self):  # noqa: N802
        return self._peer if self._peer is not None else self.transport.getPeer()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self._cancel_timer()
        if self._started:
            super().connectionLost(reason)
            return
        if self._reader is not None:  # neither refused nor timed out: the peer left
            log.info("client=%s closed before its PROXY header", self.transport.getPeer().host)
        self.factory.unregisterProtocol(self)
        self.wrappedProtocol = None


class ProxyHeaderFactory(WrappingFactory):
    """Wraps a listener's factory: PROXY header first, from trusted peers only."""

    protocol = ProxyHeaderProtocol

    def __init__(self, wrapped: protocol.Factory, trusted: Trusted):
        super().__init__(wrapped)
        self.trusted = trusted
