"""The ManageSieve daemon (`mailstack managesieved`): listeners, limits, signals.

Sockets are bound once, then ``managesieve.workers`` processes each run an
asyncio loop accepting on all of them (like smtpd).  Each connection is a
``Channel`` (an asyncio protocol: bytes in and out, STARTTLS, the idle
timeout) driving one ``Session`` task.  SIGHUP reloads the configuration
and the certificate for new connections; SIGTERM stops accepting, tells
the open sessions BYE and closes them once their command is done.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import os
import signal
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from .. import metrics
from ..accounts.auth import Authenticator
from ..accounts.directory import Directory
from ..config import Config, ManageSieveListener
from ..daemon import Connections, notify, reload_daemon, session_id
from ..proxyproto import Trusted
from ..smtp.proxied import listen
from ..tls import reload_chain, server_context
from .protocol import response
from .session import Session

log = logging.getLogger("mailstack.managesieve")
LOGIN_TIMEOUT = 60.0  # seconds of silence allowed before a successful login
T = TypeVar("T")

# asyncio's TLS transport reads into a 256 KiB buffer per connection; scripts
# are small, so 16 KiB costs nothing here (see smtp/server.py).
TLS_READ_BUFFER = 16 * 1024
HANDSHAKE_TIMEOUT = 30  # seconds for a TLS handshake (implicit or after STARTTLS)
READ_LIMIT = 256 * 1024  # bytes received and not yet parsed before reading pauses
STOP_GRACE = 10.0  # seconds the sessions' commands may take to finish on SIGTERM
POOL_THREADS = 4  # script store and directory work (small files, fsync)


class Server:
    """What the sessions of one worker process share."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.directory = Directory(cfg)
        self.auth = Authenticator(self.directory)
        self.tls_context = server_context(cfg.tls)
        self.executor = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="managesieve")
        self.connections = Connections("managesieve")
        self.stopping = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def factory(self, listener: ManageSieveListener) -> Callable[..., Channel]:
        """Channels of one listener; ``peer`` is the client a PROXY header named."""
        return lambda peer=None: Channel(self, listener, peer)

    # -- limits ----------------------------------------------------------------------

    def open_connection(self, channel: Channel) -> bytes | None:
        """None to accept a connection, else the BYE that refuses it."""
        address = channel.peer
        if self.stopping:
            return response("BYE", "server shutting down", "TRYLATER")
        if not self.connections.admit(channel, address, self.cfg.managesieve.max_per_address):
            return response("BYE", "too many connections from your address", "TRYLATER")
        return None

    def close_connection(self, channel: Channel) -> None:
        self.connections.release(channel, channel.peer)

    # -- signals ---------------------------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        """SIGHUP with a configuration that loaded (restart-only keys kept):
        new sessions and logins use it, and the idle timeout applies at once."""
        self.cfg = cfg
        self.auth.reconfigure(cfg)

    async def stop(self) -> None:
        """BYE to every session once its command is done (STOP_GRACE at most), then close."""
        self.stopping = True
        tasks = []
        for ch in list(self.connections.open):
            ch.shutting_down = True
            if ch.task is not None:
                if ch.idle:
                    ch.bye_and_close()
                tasks.append(ch.task)
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        for ch in list(self.connections.open):
            ch.close()
        self.executor.shutdown(wait=True)
        self.directory.engine.dispose()


class Channel(asyncio.Protocol):
    """One connection: bytes in (bounded, with the idle timeout), bytes out
    (with back-pressure), STARTTLS.  The ``Io`` of its session."""

    def __init__(self, server: Server, listener: ManageSieveListener, peer: tuple[str, int] | None = None):
        self.server = server
        self.listener = listener
        self._proxied = peer
        self.peer = ""
        self.tls_active = listener.tls == "implicit"
        self.can_starttls = listener.tls == "starttls"
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None
        self.session: Session | None = None
        self.idle = True  # waiting for the client (not inside a command)
        self.shutting_down = False
        self._buf = bytearray()
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._refused = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = self._proxied or transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        refusal = self.server.open_connection(self)
        if refusal:
            self._refused = True
            transport.write(refusal)
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # small responses must not wait for Nagle and delayed ACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        sid = session_id("m")
        metrics.CONNECTIONS.labels("managesieve", str(self.listener.port)).inc()
        log.info("session=%s connect client=%s port=%d tls=%s", sid, self.peer, self.listener.port, self.listener.tls)
        self.session = Session(self.server, self, sid)
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > READ_LIMIT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        self._writable.set()
        if not self._refused:
            self.server.close_connection(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the session's Io --------------------------------------------------------------

    async def read(self) -> bytes:
        timeout = self.server.cfg.managesieve.timeout
        if self.session is None or self.session.user is None:  # not logged in: a slot is not held for long
            timeout = min(timeout, LOGIN_TIMEOUT)
        self.idle = True
        try:
            while not self._buf and not self._eof:
                if self.shutting_down:
                    self.bye_and_close()
                    return b""
                self._waiter = asyncio.get_running_loop().create_future()
                async with asyncio.timeout(timeout):
                    await self._waiter
        finally:
            self.idle = False
        data = bytes(self._buf)
        self._buf.clear()
        if self._paused and self.transport is not None and not self._eof:
            self._paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if not self._writable.is_set():
            async with asyncio.timeout(self.server.cfg.managesieve.timeout):
                await self._writable.wait()

    async def start_tls(self) -> bool:
        assert self.transport is not None
        # Bytes the client sent after STARTTLS, in clear, go: only what comes
        # through TLS may be taken for commands.  Nothing awaits between the
        # OK the session wrote and the switch below, so no byte of the
        # ClientHello can land in this buffer.
        self._buf.clear()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(self.transport, self, self.server.tls_context, server_side=True,
                                       ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            log.info("session=%s client=%s TLS handshake failed: %s", self.session.id if self.session else "-", self.peer, e)
            self.close()
            return False
        if tls is None:  # the connection went away during the handshake
            return False
        self.transport = tls
        self.tls_active, self.can_starttls = True, False
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def bye_and_close(self) -> None:
        self.write(response("BYE", "server shutting down", "TRYLATER"))
        self.close()

    # -- the session task --------------------------------------------------------------

    async def _serve(self) -> None:
        assert self.session is not None
        try:
            await self.session.run()
        except Exception:
            log.exception("session=%s client=%s session error", self.session.id, self.peer)
            self.write(response("BYE", "internal error", "TRYLATER"))
        finally:
            self.close()
            log.info("session=%s disconnect user=%s", self.session.id, self.session.user or "-")


def _worker(cfg: Config, socks) -> int:
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    return asyncio.run(_serve(cfg, socks))


def _reload(server: Server) -> None:
    reload_daemon(server.cfg, server.reconfigure, lambda cfg: reload_chain(server.tls_context, cfg.tls))


async def _serve(cfg: Config, socks) -> int:
    loop = asyncio.get_running_loop()
    server = Server(cfg)
    listening = []
    for sock, listener in socks:
        ctx = server.tls_context if listener.tls == "implicit" else None
        trusted = Trusted(cfg.server.proxy_trusted) if listener.proxy else None
        listening.append(await listen(sock, server.factory(listener), ctx, trusted, "managesieve"))
        log.info("listening address=%s port=%d tls=%s proxy=%s", listener.address, listener.port, listener.tls,
                 str(listener.proxy).lower())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(server))
    log.info("ready pid=%d", os.getpid())
    await stop.wait()
    log.info("stopping pid=%d", os.getpid())
    notify("STOPPING=1\nSTATUS=stopping")
    for srv in listening:
        srv.close()
    await server.stop()
    return 0


def run(cfg: Config) -> int:
    """Listen on every [[managesieve.listeners]] and serve until SIGTERM/SIGINT."""
    from ..daemon import bind_listeners, start_metrics, supervise

    Directory(cfg).check_schema()
    server_context(cfg.tls)  # fail now, with one clear line (TlsError), on a bad certificate
    socks = bind_listeners(cfg.managesieve.listeners)
    if socks is None:
        return 1
    start_metrics(cfg, "managesieved", cfg.metrics.managesieve_port)
    return supervise(cfg.managesieve.workers, lambda: _worker(cfg, socks))
