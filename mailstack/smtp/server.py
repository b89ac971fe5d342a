"""The SMTP daemon (`mailstack smtpd`): listeners, per-process limits, signals.

Sockets are bound once, then ``smtp.workers`` processes each run an asyncio
loop accepting on all of them (like the IMAP daemon).  SIGHUP reloads the
certificate for new connections; SIGTERM stops accepting, lets transfers in
flight finish for a few seconds, then closes the rest.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from ..accounts.auth import Authenticator
from ..accounts.directory import AccountInfo, Directory
from ..config import Config, SmtpListener
from .. import metrics
from ..daemon import Connections, notify, reload_daemon
from ..filters import FilterError
from ..filters.pipeline import Pipeline
from ..proxyproto import Trusted
from ..filters.pipeline import load as load_filters
from ..tls import reload_chain, server_context
from .delivery import LocalDelivery
from .policy import Policy
from .protocol import SmtpSession
from .quarantine import Quarantine
from .queue import Queue
from .runner import QueueRunner
from .spool import clear_incoming
from .proxied import listen
from .srs import Rewriter

log = logging.getLogger("mailstack.smtp")
T = TypeVar("T")

# asyncio's TLS transport reads the socket into a 256 KiB buffer it allocates
# (and zeroes) per connection: about 290 KB for every idle TLS session.  The
# buffer only batches socket reads (OpenSSL reassembles records across them),
# so one TLS record's worth costs a few more reads on a 100 MB upload and
# nothing else.  It is SSLProtocol's class attribute, set in our process only.
TLS_READ_BUFFER = 16 * 1024
TRANSFER_WAIT = 10.0  # seconds a DATA/BDAT waits for a transfer slot
STOP_GRACE = 10.0  # seconds transfers may take to finish on SIGTERM
POOL_THREADS = 8  # delivery and directory lookups (fsync-bound, not CPU-bound)
LOOKUP_TTL = 10.0  # seconds a recipient lookup is reused (a new alias works within this delay)
LOOKUP_CACHE = 10000


class Server:
    """What the sessions of one worker process share."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.directory = Directory(cfg)
        self.auth = Authenticator(self.directory)
        self.incoming = cfg.storage.spool / "incoming"
        self.queue = Queue(cfg.storage.spool / "queue")
        self.delivery = LocalDelivery(cfg, self.queue)
        self.tls_context = server_context(cfg.tls)
        self.executor = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="smtp")
        self.connections = Connections("smtp")
        self.transfers = 0
        self._slots = asyncio.Semaphore(cfg.smtp.max_transfers)
        self._transfers_by: dict[str, int] = {}
        self._lookups: dict[str, tuple[float, tuple[list[AccountInfo], list[str]] | None]] = {}
        self.runner: QueueRunner | None = None  # set once the loop runs (_serve)
        self.filters = Pipeline(load_filters(cfg))
        self.quarantine = Quarantine(cfg.storage.spool)
        self.srs = Rewriter(cfg) if cfg.srs.enabled else None  # restart-only, like the secret it uses
        self.policies: list[Policy] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def expand_local(self, address: str) -> tuple[list[AccountInfo], list[str]] | None:
        """Directory.expand_local, remembered for LOOKUP_TTL seconds: a busy MX
        asks for the same few thousand addresses all day."""
        key = address.lower()
        now = time.monotonic()
        hit = self._lookups.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        result = await self.run(self.directory.expand_local, key)
        if len(self._lookups) >= LOOKUP_CACHE:
            self._lookups.clear()
        self._lookups[key] = (now + LOOKUP_TTL, result)
        return result

    def factory(self, listener: SmtpListener) -> Callable[..., SmtpSession]:
        """Sessions of one listener; ``peer`` is the client a PROXY header named."""
        policy = Policy(self, listener)
        self.policies.append(policy)
        implicit = listener.tls == "implicit"
        loop = asyncio.get_running_loop()
        return lambda peer=None: SmtpSession(policy, tls_context=self.tls_context, implicit_tls=implicit, loop=loop, peer=peer)

    # -- limits ----------------------------------------------------------------------

    def open_connection(self, session: SmtpSession, address: str) -> str | None:
        """None to accept a connection, else the 421 reply that refuses it."""
        if len(self.connections) >= self.cfg.smtp.max_connections:
            metrics.CONNECTIONS_REFUSED.labels("smtp", "max_connections").inc()
            return "421 4.3.2 Too many connections; try again later"
        if not self.connections.admit(session, address, self.cfg.smtp.max_per_address):
            return "421 4.7.0 Too many connections from your address; try again later"
        return None

    def close_connection(self, session: SmtpSession, address: str) -> None:
        self.connections.release(session, address)

    async def acquire_transfer(self, address: str) -> bool:
        """A slot for one DATA/BDAT transfer; one client address holds at most
        a quarter of them, so a few slow senders cannot stall everyone."""
        if self._transfers_by.get(address, 0) >= max(1, self.cfg.smtp.max_transfers // 4):
            return False
        try:
            if self._slots.locked():
                await asyncio.wait_for(self._slots.acquire(), TRANSFER_WAIT)
            else:
                await self._slots.acquire()  # free: no timer needed
        except TimeoutError:
            return False
        self.transfers += 1
        self._transfers_by[address] = self._transfers_by.get(address, 0) + 1
        return True

    def release_transfer(self, address: str) -> None:
        self.transfers -= 1
        n = self._transfers_by.get(address, 1) - 1
        if n > 0:
            self._transfers_by[address] = n
        else:
            self._transfers_by.pop(address, None)
        self._slots.release()

    async def run_to_the_end(self, fn: Callable[..., T], *args: Any) -> T:
        """``run``, but a cancelled caller (the client went away, the timer
        fired) still waits for the thread: what it works on must outlive it."""
        fut = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            raise

    # -- signals ---------------------------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        """SIGHUP with a configuration that loaded (restart-only keys already
        kept): new sessions, deliveries and queue attempts use it; those in
        progress finish with what they started with."""
        import dataclasses

        from ..resolver import install

        old = self.cfg
        # First what can fail (nothing is swapped yet), then the swap.
        filters = None
        if cfg.filters != old.filters:
            try:
                filters = Pipeline(load_filters(cfg))
            except FilterError as e:
                log.error("reload: %s; keeping the running filters", e)
                cfg = dataclasses.replace(cfg, filters=old.filters)  # the next reload tries again
        if cfg.dns != old.dns:
            install(cfg.dns)
        if self.runner is not None:
            self.runner.reconfigure(cfg)
        self.cfg = cfg
        self.auth.reconfigure(cfg)
        self.delivery.cfg = cfg
        for policy in self.policies:
            policy.cfg = cfg
        if filters is not None:
            # Messages in the middle of the old pipeline finish with it; its
            # threads end once it is no longer referenced.
            self.filters = filters
            log.info("reload: filters %s", ", ".join(f.name for f in cfg.filters) or "none")
        self._lookups.clear()

    async def stop(self) -> None:
        deadline = asyncio.get_running_loop().time() + STOP_GRACE
        while self.transfers and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        for s in list(self.connections.open):
            if s.transport is not None:
                s.transport.close()
        self.executor.shutdown(wait=True)
        self.filters.close()
        self.delivery.close()
        self.directory.engine.dispose()


def prepare_spool(cfg: Config) -> None:
    """Spool directories exist; transfers a crash interrupted (never acknowledged) go."""
    incoming, queue = cfg.storage.spool / "incoming", cfg.storage.spool / "queue"
    for d in (incoming, queue):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    n = clear_incoming(incoming) + Queue(queue).clean_orphans() + Quarantine(cfg.storage.spool).clean_orphans()
    if n:
        log.info("spool: removed %d unacknowledged partial messages", n)


def _worker(cfg: Config, socks) -> int:
    from ..resolver import install

    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    install(cfg.dns)  # SPF, DKIM and DMARC libraries resolve through dnspython's default
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd: every command at INFO, deprecations at WARNING; we log our own
    return asyncio.run(_serve(cfg, socks))


def _reload(server: Server) -> None:
    reload_daemon(server.cfg, server.reconfigure, lambda cfg: reload_chain(server.tls_context, cfg.tls))


async def _serve(cfg: Config, socks) -> int:
    loop = asyncio.get_running_loop()
    server = Server(cfg)
    server.runner = QueueRunner(server)
    runner = asyncio.create_task(server.runner.run())
    listening = []
    for sock, listener in socks:
        ctx = server.tls_context if listener.tls == "implicit" else None
        trusted = Trusted(cfg.server.proxy_trusted) if listener.proxy else None
        listening.append(await listen(sock, server.factory(listener), ctx, trusted, "smtp"))
        log.info("listening kind=%s address=%s port=%d tls=%s", listener.kind, listener.address, listener.port, listener.tls)
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
    await server.runner.stop(STOP_GRACE)
    await runner
    await server.stop()
    return 0


def run(cfg: Config) -> int:
    """Listen on every [[smtp.listeners]] and serve until SIGTERM/SIGINT."""
    from ..daemon import bind_listeners, start_metrics, supervise

    Directory(cfg).check_schema()
    server_context(cfg.tls)  # fail now, with one clear line (TlsError), on a bad certificate
    load_filters(cfg)  # and on a filter that cannot be set up (FilterError)
    if cfg.srs.enabled:
        Rewriter(cfg)  # and on a secret key SRS cannot read (DirectoryError)
    prepare_spool(cfg)
    socks = bind_listeners(cfg.smtp.listeners)
    if socks is None:
        return 1
    start_metrics(cfg, "smtpd", cfg.metrics.smtp_port)
    return supervise(cfg.smtp.workers, lambda: _worker(cfg, socks))
