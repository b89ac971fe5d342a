"""Programmable real SMTP servers on loopback, standing in for remote MX hosts.

The outbound queue runner is tested against these (with tests/dns_server.py
pointing MX records at them) so retries, bounces, STARTTLS and IPv4/IPv6
fallback meet a real SMTP dialogue. Each sink runs its own asyncio loop in a
thread; replies are scripted through plain attributes the test may change
at any time.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailstack.tls import make_self_signed

__all__ = ["Received", "SmtpSink", "smtp_sink"]

DATA_SIZE_LIMIT = 200 * 1024 * 1024


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    peer: str
    mail_options: list[str]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket; IPv6 ones are V6ONLY so ::1 and 127.0.0.1 can share a port."""
    family = _family(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def _listen_dual_free(host: str) -> socket.socket:
    """Listen on a port that is also free on the other loopback family, so a twin sink can take it."""
    other = "::1" if _family(host) == socket.AF_INET else "127.0.0.1"
    for _ in range(50):
        sock = _listen(host, 0)
        try:
            _listen(other, sock.getsockname()[1]).close()
        except OSError:
            sock.close()
            continue
        return sock
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


class _Handler:
    """aiosmtpd hooks that read the sink's script."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.sink.ehlo_garbage:  # a reply no SMTP client can parse
            return ["this is not an SMTP reply"]
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        reply = self.sink.rcpt_replies.get(address.lower(), "250 2.1.5 OK")
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.rset_drop:  # a host that goes away between two transactions
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.3.2 Going away"
        return "250 2.0.0 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        sink = self.sink
        with sink._cond:
            reply = sink.data_replies.pop(0) if sink.data_replies else "250 2.0.0 OK"
            message = Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                tls=session.ssl is not None,
                peer=str(session.peer[0]),
                mail_options=list(envelope.mail_options),
            )
            (sink.received if reply.startswith("2") else sink.refused).append(message)
            sink._cond.notify_all()
        return reply


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP, able to refuse the whole session at the greeting."""

    def __init__(self, sink: SmtpSink, **kw: Any) -> None:
        super().__init__(_Handler(sink), **kw)
        self.sink = sink

    async def _handle_client(self) -> None:
        greeting = self.sink.greeting
        if greeting is None:
            return await super()._handle_client()
        # RFC 5321 3.1: after a 554 greeting, answer 503 to everything but QUIT.
        await self.push(greeting)
        while self.transport is not None:
            line = await self._reader.readline()
            if not line or line.strip().upper() == b"QUIT":
                if line:
                    await self.push("221 2.0.0 Bye")
                break
            await self.push("503 5.5.1 no service")
        if self.transport is not None:
            self.transport.close()


class SmtpSink:
    """One SMTP server on ``host:port`` that records what it accepts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, starttls: bool = False, hostname: str = "mx.test") -> None:
        self.host, self.port, self.starttls, self.hostname = host, port, starttls, hostname
        self.received: list[Received] = []
        self.refused: list[Received] = []  # messages answered non-2xx at end of DATA
        self.connections = 0
        self.greeting: str | None = None
        self.rcpt_replies: dict[str, str] = {}
        self.data_replies: list[str] = []
        self.rset_drop = False  # answer RSET with 421 and close
        self.ehlo_garbage = False  # answer EHLO with a line that has no reply code
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._protocols: list[_SinkSMTP] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def _tls_context(self) -> ssl.SSLContext:
        self._tmp = tempfile.TemporaryDirectory(prefix="mailstack-sink-")
        cert, key = Path(self._tmp.name) / "cert.pem", Path(self._tmp.name) / "key.pem"
        make_self_signed(self.hostname, cert, key)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    def _factory(self, tls_context: ssl.SSLContext | None) -> Callable[[], _SinkSMTP]:
        def make() -> _SinkSMTP:
            self.connections += 1  # once per TCP connection (connection_made runs again after STARTTLS)
            protocol = _SinkSMTP(
                self,
                hostname=self.hostname,
                ident="mailstack test sink",
                data_size_limit=DATA_SIZE_LIMIT,
                enable_SMTPUTF8=True,
                tls_context=tls_context,
                timeout=60,
                loop=self._loop,
            )
            self._protocols.append(protocol)
            return protocol

        return make

    def start(self) -> None:
        sock = _listen_dual_free(self.host) if self.port == 0 else _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        tls_context = self._tls_context() if self.starttls else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"smtp-sink-{self.host}:{self.port}", daemon=True)
        self._thread.start()
        create = self._loop.create_server(self._factory(tls_context), sock=sock)
        self._server = asyncio.run_coroutine_threadsafe(create, self._loop).result(timeout=10)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def stop(self) -> None:
        if self._loop is None:
            return
        loop, self._loop = self._loop, None
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            loop.close()
            if self._tmp is not None:
                self._tmp.cleanup()

    def wait(self, n: int, timeout: float = 30) -> list[Received]:
        """Block until ``n`` messages were accepted; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.host}:{self.port}: expected {n} message(s), received {len(self.received)}"
                        f" (refused {len(self.refused)}, connections {self.connections})"
                    )
                self._cond.wait(left)
            return list(self.received)

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., SmtpSink]]:
    """A factory of started sinks: ``make(host="127.0.0.1", port=0, **kw)``; all stopped after the test."""
    sinks: list[SmtpSink] = []

    def make(host: str = "127.0.0.1", port: int = 0, **kw: Any) -> SmtpSink:
        sink = SmtpSink(host, port, **kw)
        sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in reversed(sinks):
        sink.stop()
