"""``mailstack imapd``: the Twisted side of IMAP.  It only moves bytes.

Each connection gets a ``Session`` (session.py) and this protocol as its
``Io``: writes, file streaming with a pull producer (a 100 MB body never
sits in memory), STARTTLS, the 30-minute idle logout, a thread pool for
blocking store and authentication work, and per-address connection limits.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, BinaryIO, Callable

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import deferLater
from twisted.protocols.policies import TimeoutMixin
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..accounts.auth import Authenticator
from ..accounts.directory import Directory
from ..config import Config, Listener
from .. import metrics
from ..daemon import notify, reload_daemon, session_id
from ..tls import OpenSSLServerContext
from ..twisted_tls import TlsCreator
from .session import Session

log = logging.getLogger("mailstack.imap")
CHUNK = 1 << 16
DRAIN_ABOVE = 1 << 20  # bytes waiting for a slow client before FETCH pauses
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_USERS: dict[str, int] = {}  # logged-in sessions per login, across listeners


def _tcp_socket(transport) -> socket.socket | None:
    """The TCP socket under a transport (under the TLS layer, if any)."""
    t = transport
    for _ in range(4):
        if t is None:
            return None
        handle = getattr(t, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            return handle
        t = getattr(t, "transport", None)
    return None


@implementer(IPullProducer)
class _FileProducer:
    def __init__(self, transport, f: BinaryIO, length: int):
        self.transport, self.f, self.left = transport, f, length
        self.done: defer.Deferred = defer.Deferred()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.left <= 0:
            return self._finish()
        chunk = self.f.read(min(CHUNK, self.left))
        if not chunk:  # the file is shorter than announced: the stream is broken
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            self.done.errback(IOError("message file shorter than announced"))
            return
        self.left -= len(chunk)
        self.transport.write(chunk)
        if self.left <= 0:
            self._finish()

    def _finish(self) -> None:
        self.transport.unregisterProducer()
        if not self.done.called:
            self.done.callback(None)

    def stopProducing(self) -> None:  # noqa: N802
        if not self.done.called:
            self.done.errback(ConnectionError("connection lost while sending"))


class ImapProtocol(protocol.Protocol, TimeoutMixin):
    def __init__(self, factory: ImapFactory, listener: Listener):
        self.factory = factory
        self.listener = listener
        self.tls = listener.tls == "implicit"
        self.peer = ""
        self.session: Session | None = None

    # -- Twisted callbacks -------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", "")
        count = self.factory.per_address.get(self.peer, 0)
        if count >= self.factory.cfg.imap.max_per_address:
            self.transport.write(b"* BYE too many connections from your address\r\n")
            self.transport.loseConnection()
            metrics.CONNECTIONS_REFUSED.labels("imap", "per_address").inc()
            return
        self.factory.per_address[self.peer] = count + 1
        metrics.CONNECTIONS.labels("imap", str(self.listener.port)).inc()
        metrics.ACTIVE.labels("imap").inc()
        # Small responses must not wait for Nagle + delayed ACK (40 ms each);
        # under TLS the TCP transport is the TLS layer's own transport.
        self._sock = _tcp_socket(self.transport)
        try:
            if self._sock is not None:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.setTimeout(self.factory.cfg.imap.idle_timeout)
        sid = session_id("i")
        self.session = Session(self.factory.cfg, self.factory.auth, self, sid, self.factory.users)
        log.info("session=%s connect client=%s port=%d tls=%s", sid, self.peer, self.listener.port, self.listener.tls)
        self.session.start()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.resetTimeout()
        self.factory.bytes_in.inc(len(data))
        if self._sock is not None and _QUICKACK is not None:
            # A client that writes a literal and its final CRLF separately
            # (imaplib, many others) waits for our ACK under Nagle: ACK at
            # once instead of after the 40 ms delayed-ACK timer.
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        if self.session is not None:
            self.session.data_received(data)

    def timeoutConnection(self) -> None:  # noqa: N802
        self.transport.write(b"* BYE idle for too long, logging out\r\n")
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.setTimeout(None)
        if self.session is not None:
            n = self.factory.per_address.get(self.peer, 1) - 1
            if n <= 0:
                self.factory.per_address.pop(self.peer, None)
            else:
                self.factory.per_address[self.peer] = n
            s, self.session = self.session, None
            s.close()
            metrics.ACTIVE.labels("imap").dec()
            log.info("session=%s disconnect user=%s", s.id, s.user.login if s.user is not None else "-")

    # -- Io for the session --------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.factory.bytes_out.inc(len(data))
            self.transport.write(data)

    def _buffered(self) -> int:
        """Bytes written to the TCP transport and not yet sent to the client."""
        t = self.transport
        for _ in range(4):  # under TLS, the TCP transport is below the TLS layer
            if t is None or hasattr(t, "dataBuffer"):
                break
            t = getattr(t, "transport", None)
        if t is None:
            return 0
        return len(getattr(t, "dataBuffer", b"")) - getattr(t, "offset", 0) + getattr(t, "_tempDataLen", 0)

    async def drain(self) -> None:
        """Wait while the client reads slower than we write (bounded buffering)."""
        while self.transport is not None and self.session is not None and self._buffered() > DRAIN_ABOVE:
            await self.sleep(0.01)

    def stream(self, f: BinaryIO, length: int) -> defer.Deferred:
        prod = _FileProducer(self.transport, f, length)
        self.factory.bytes_out.inc(length)
        self.transport.registerProducer(prod, False)
        return prod.done

    def start_tls(self) -> None:
        self.transport.startTLS(self.factory.tls_context)
        self.tls = True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def blocking(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(reactor, self.factory.pool, fn, *args)

    def sleep(self, seconds: float) -> defer.Deferred:
        from twisted.internet import reactor

        return deferLater(reactor, seconds, lambda: None)

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def run(self, coro) -> None:
        d = defer.Deferred.fromCoroutine(coro)
        d.addErrback(self._failed)

    def _failed(self, failure) -> None:
        log.error("session=%s crashed: %s", self.session.id if self.session else "-", failure.getTraceback())
        self.close()


class ImapFactory(protocol.Factory):
    def __init__(self, cfg: Config, auth: Authenticator, listener: Listener, tls_context: TlsCreator, pool: ThreadPool):
        self.cfg, self.auth, self.listener = cfg, auth, listener
        self.tls_context = tls_context
        self.pool = pool
        self.per_address: dict[str, int] = {}
        self.users = _USERS
        # Counted on every read and write: the label children made once (in the
        # worker, after metrics.prepare: they write to the multiprocess files).
        self.bytes_in, self.bytes_out = metrics.BYTES.labels("imap", "in"), metrics.BYTES.labels("imap", "out")

    def buildProtocol(self, addr) -> ImapProtocol:  # noqa: N802
        return ImapProtocol(self, self.listener)


def _worker(cfg: Config, socks: list[tuple[socket.socket, Listener]]) -> int:
    """One serving process: its own reactor, database engine and thread pool."""
    from twisted.internet import reactor
    from twisted.protocols.tls import TLSMemoryBIOFactory

    import signal

    directory = Directory(cfg)
    auth = Authenticator(directory)
    tls_context = TlsCreator(OpenSSLServerContext(cfg.tls))
    factories: list[ImapFactory] = []

    def reload() -> None:
        """SIGHUP: the live part of the configuration, then the certificate;
        open sessions keep what they started with."""
        nonlocal cfg

        def apply(new: Config) -> None:
            auth.reconfigure(new)
            for f in factories:
                f.cfg = new

        cfg = reload_daemon(cfg, apply, lambda c: tls_context.reload(c.tls))

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
    pool = ThreadPool(minthreads=2, maxthreads=16, name="mailstack-imap")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    for sock, listener in socks:
        imap_factory = ImapFactory(cfg, auth, listener, tls_context, pool)
        factories.append(imap_factory)
        factory: protocol.Factory = imap_factory
        if listener.tls == "implicit":
            factory = TLSMemoryBIOFactory(tls_context, False, factory)
        if listener.proxy:  # outermost: the PROXY header comes off the TCP stream before TLS
            from ..proxyproto import Trusted
            from .proxied import ProxyHeaderFactory

            factory = ProxyHeaderFactory(factory, Trusted(cfg.server.proxy_trusted))
        reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        sock.close()  # the reactor holds its own copy of the descriptor
        log.info("listening address=%s port=%d tls=%s", listener.address, listener.port, listener.tls)
    reactor.callWhenRunning(lambda: log.info("ready pid=%d", os.getpid()))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: notify("STOPPING=1\nSTATUS=stopping"))
    reactor.run()
    directory.engine.dispose()
    return 0


def run(cfg: Config) -> int:
    """Listen on every [[imap.listeners]] and serve until SIGTERM/SIGINT,
    with ``imap.workers`` processes accepting on the same sockets."""
    from ..daemon import bind_listeners, start_metrics, supervise

    Directory(cfg).check_schema()
    OpenSSLServerContext(cfg.tls)  # fail now, with one clear line, on a bad certificate
    socks = bind_listeners(cfg.imap.listeners)
    if socks is None:
        return 1
    start_metrics(cfg, "imapd", cfg.metrics.imap_port)
    return supervise(cfg.imap.workers, lambda: _worker(cfg, socks))
