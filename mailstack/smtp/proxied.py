"""PROXY protocol listeners under asyncio: the header is read before TLS and before the greeting.

asyncio's ``create_server`` starts TLS (port 465) or the protocol as soon
as a connection is accepted, and a buffering protocol would swallow the
start of the ClientHello with the header.  So a proxy listener accepts its
connections itself: a peer outside ``server.proxy_trusted`` is closed at
once; from a trusted one the header is peeked at and exactly its bytes are
consumed (what follows stays in the kernel for the TLS layer), within
``HEADER_TIMEOUT`` seconds; then ``loop.connect_accepted_socket`` hands the
socket to an ``SmtpSession`` built with the client the header names.
aiosmtpd's own PROXY support runs after TLS, which is why it is not used.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any, Callable

from .. import metrics
from ..proxyproto import HEADER_TIMEOUT, NEED_MORE, V2_MAX_LENGTH, Address, Header, ProxyError, Trusted, parse

PEEK = 16 + V2_MAX_LENGTH  # the largest header we accept (a v1 line is shorter)
ACCEPT_PAUSE = 1.0  # seconds to wait when accept() fails (out of file descriptors)
HANDSHAKE_TIMEOUT = 30  # seconds for the TLS handshake, as on the other listeners


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def read_header(sock: socket.socket) -> Header:
    """Consume exactly the PROXY header from a non-blocking socket (ProxyError, EOFError, OSError)."""
    loop = asyncio.get_running_loop()
    taken = b""  # header bytes already consumed (a header split across segments)
    while True:
        await _readable(loop, sock)
        try:
            peeked = sock.recv(PEEK - len(taken), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peeked:
            raise EOFError
        result = parse(taken + peeked)
        if result is NEED_MORE:
            # All of it belongs to the header: consume it, so the next wait
            # is for new bytes rather than for those already here.
            taken += sock.recv(len(peeked))
            continue
        assert isinstance(result, Header)
        want = result.length - len(taken)
        while want:  # peeked, so already in the kernel: one recv normally takes it all
            got = sock.recv(want)
            if not got:
                raise EOFError
            want -= len(got)
        return result


class ProxyListener:
    """Accepts on one proxy listener's socket; ``close()`` stops it, like an asyncio Server."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[Address | None], asyncio.Protocol],
        trusted: Trusted,
        ssl_context: ssl.SSLContext | None,
        service: str = "smtp",
    ):
        self.sock, self.factory, self.trusted, self.ssl_context = sock, factory, trusted, ssl_context
        self.service = service  # its logs and metrics: the daemon's ("smtp", "managesieve")
        self.log = logging.getLogger(f"mailstack.{service}")
        self._pending: set[asyncio.Task] = set()
        sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept())

    def close(self) -> None:
        self._task.cancel()
        for t in list(self._pending):
            t.cancel()
        self.sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS: let connections end, then go on
                self.log.error("accept failed: %s", e)
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            task = loop.create_task(self._open(conn, addr[0]))
            # Cancelled (a stop) before it ran: nobody else closes the connection.
            task.add_done_callback(lambda t, c=conn: c.close() if t.cancelled() else None)
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _open(self, conn: socket.socket, host: str) -> None:
        conn.setblocking(False)
        if host not in self.trusted:
            self.log.warning("client=%s refused: not a trusted proxy", host)
            metrics.CONNECTIONS_REFUSED.labels(self.service, "untrusted_proxy").inc()
            conn.close()
            return
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                header = await read_header(conn)
        except TimeoutError:
            self.log.warning("client=%s closed: no PROXY header within %g s", host, HEADER_TIMEOUT)
            metrics.CONNECTIONS_REFUSED.labels(self.service, "proxy_header").inc()
            conn.close()
            return
        except ProxyError as e:
            self.log.warning("client=%s closed: bad PROXY header: %s", host, e)
            metrics.CONNECTIONS_REFUSED.labels(self.service, "proxy_header").inc()
            conn.close()
            return
        except (EOFError, OSError) as e:  # the proxy went away (a bare TCP health check, a reset)
            why = f": {e.strerror or e}" if isinstance(e, OSError) else ""
            self.log.info("client=%s closed before its PROXY header%s", host, why)
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        tls: dict[str, Any] = {}
        if self.ssl_context is not None:
            tls = {"ssl": self.ssl_context, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: self.factory(header.source), conn, **tls)
        except (OSError, ssl.SSLError, TimeoutError) as e:  # asyncio has closed the socket
            client = header.source[0] if header.source else host
            self.log.info("client=%s TLS handshake failed: %s", client, e)
        except BaseException:  # the session could not be made, or we are stopping
            conn.close()
            raise


async def listen(sock: socket.socket, factory: Callable[..., asyncio.Protocol], ssl_context: ssl.SSLContext | None,
                 trusted: Trusted | None, service: str):
    """One listening socket of an asyncio daemon (smtpd, managesieved):
    with ``trusted``, a PROXY listener that accepts itself (the header comes
    before TLS and the greeting); else asyncio's own server.  ``close()`` stops either."""
    if trusted is not None:
        return ProxyListener(sock, factory, trusted, ssl_context, service)
    tls: dict[str, Any] = {"ssl": ssl_context, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT} if ssl_context else {}
    return await asyncio.get_running_loop().create_server(factory, sock=sock, **tls)
