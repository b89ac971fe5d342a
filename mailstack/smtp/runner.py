"""The queue runner: every smtpd worker delivers what waits in SPOOL/queue.

Each worker keeps a schedule (a heap of due times) in memory: a full scan of
the queue directory at start, every RESCAN seconds and whenever
``mailstack queue flush|release`` touches the wake file; entries this
worker accepts are scheduled at once.  Two workers may schedule the same
entry: the flock on its message decides who works on it, the other skips.

An attempt: queued local recipients are put in their mailbox, remote ones
are grouped by domain and handed to outbound.Delivery, one connection per
domain, domains in parallel.  Every confirmed delivery is written to the
entry (fsynced) before anything else.  Then: permanent failures and expiry
bounce to the sender (never for the null sender), a delay warning goes out
once after ``queue.warn_after``, and what is left waits with a doubling
backoff between ``retry_min`` and ``retry_max``, never past the lifetime.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import io
import logging
import os
import time
from typing import TYPE_CHECKING

from .. import metrics
from ..mailauth.signing import sign_for_domain
from ..resolver import make_async_resolver
from ..store.folder import OverQuota
from . import dsn
from .outbound import Delivery, Outcome, client_tls_context
from .queue import Entry, Recipient

if TYPE_CHECKING:
    from ..config import Config
    from .server import Server

log = logging.getLogger("mailstack.queue")

RESCAN = 300.0  # seconds between full scans of the queue directory
POLL = 1.0  # seconds between looks at the wake file


def backoff(cfg_retry_min: int, cfg_retry_max: int, attempts: int) -> float:
    return float(min(cfg_retry_max, cfg_retry_min * 2 ** max(0, min(attempts - 1, 30))))


class QueueRunner:
    def __init__(self, server: Server):
        self.server = server
        self.cfg = server.cfg
        self.queue = server.queue
        self.outbound = Delivery(self.cfg, make_async_resolver(self.cfg.dns), client_tls_context())
        self.loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.cfg.queue.concurrency)  # entries being worked on
        self._connections = asyncio.Semaphore(self.cfg.queue.concurrency)  # remote sessions open
        self._domains: dict[str, tuple[asyncio.Semaphore, int]] = {}  # per destination: limit, users
        self._stopping = False

    def reconfigure(self, cfg: Config) -> None:
        """Attempts started from now on use ``cfg`` (its resolvers, timeouts, TLS rule)."""
        self.cfg = cfg
        self.outbound = Delivery(cfg, make_async_resolver(cfg.dns), self.outbound.tls)

    # -- the schedule ------------------------------------------------------------

    def schedule(self, entry_id: str, when: float = 0.0) -> None:
        prev = self._due.get(entry_id)
        if prev is not None and prev <= when:
            return
        self._due[entry_id] = when
        heapq.heappush(self._heap, (when, entry_id))
        self._wake.set()

    def submit(self, entry_id: str) -> None:
        """From any thread: this entry is new, try it now."""
        self.loop.call_soon_threadsafe(self.schedule, entry_id, 0.0)

    def _scan(self) -> list[tuple[str, float]]:
        out = []
        for entry_id in self.queue.ids():
            e = self.queue.load(entry_id)
            if e is not None and not e.held:
                out.append((entry_id, e.next_attempt))
        return out

    async def run(self) -> None:
        last_scan = float("-inf")
        wake_mtime = self.queue.wake_mtime()
        while not self._stopping:
            now = time.time()
            mtime = self.queue.wake_mtime()
            if mtime != wake_mtime or time.monotonic() - last_scan >= RESCAN:
                wake_mtime, last_scan = mtime, time.monotonic()
                try:
                    found = await self.server.run(self._scan)
                except OSError as e:
                    log.error("queue scan failed: %s", e)
                    found = []
                log.info("queue scan: %d entries in %.3f s", len(found), time.monotonic() - last_scan)
                for entry_id, when in found:
                    if entry_id not in self._active:
                        self.schedule(entry_id, when)
            while self._heap and self._heap[0][0] <= now and not self._stopping:
                when, entry_id = heapq.heappop(self._heap)
                if self._due.get(entry_id) != when or entry_id in self._active:
                    continue
                del self._due[entry_id]
                await self._slots.acquire()
                if self._stopping:
                    self._slots.release()
                    break
                self._active.add(entry_id)
                task = asyncio.create_task(self._attempt(entry_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            metrics.QUEUE_SIZE.labels("scheduled").set(len(self._due))
            metrics.QUEUE_SIZE.labels("active").set(len(self._active))
            delay = POLL if not self._heap else max(0.0, min(POLL, self._heap[0][0] - time.time()))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for t in pending:
                t.cancel()  # unconfirmed: retried after the restart
            if pending:
                await asyncio.wait(pending)

    # -- one attempt --------------------------------------------------------------

    async def _attempt(self, entry_id: str) -> None:
        fd = None
        run = self.server.run_to_the_end  # the lock is held until every thread's work is done
        try:
            fd = await run(self.queue.try_lock, entry_id)
            if fd is None:
                return  # another worker has it, or it is gone
            entry = await run(self.queue.load, entry_id)
            if entry is None or entry.held:
                return
            if entry.next_attempt > time.time() + 0.5:  # deferred by another worker meanwhile
                self.schedule(entry_id, entry.next_attempt)
                return
            if any(r.local for r in entry.pending):
                await run(self._deliver_local, entry)
            by_domain: dict[str, list[Recipient]] = {}
            for r in entry.pending:
                if not r.local:
                    by_domain.setdefault(r.address.rpartition("@")[2].lower(), []).append(r)
            if by_domain:
                save_lock = asyncio.Lock()
                results = await asyncio.gather(
                    *(self._domain(entry, d, rs, save_lock) for d, rs in by_domain.items()), return_exceptions=True,
                )
                for e in results:  # deliver() never raises; this is a bug, logged, and the entry goes on
                    if isinstance(e, BaseException) and not isinstance(e, asyncio.CancelledError):
                        log.error("queue id=%s domain delivery failed: %r", entry_id, e)
            when = await run(self._finish, entry)
            if when is not None:
                self.schedule(entry_id, when)
        except Exception:
            log.exception("queue id=%s attempt failed", entry_id)
            self.schedule(entry_id, time.time() + self.cfg.queue.retry_min)
        finally:
            if fd is not None:
                os.close(fd)
            self._active.discard(entry_id)
            self._slots.release()

    async def _domain(self, entry: Entry, domain: str, rcpts: list[Recipient], save_lock: asyncio.Lock) -> None:
        by_address = {r.address: r for r in rcpts}

        async def record(outcomes: dict[str, Outcome]) -> None:
            """A remote host's answers: on disk before the session goes on."""
            for address, o in outcomes.items():
                self._apply(entry, by_address[address], o)
            if any(o.status != "pending" for o in outcomes.values()):
                async with save_lock:
                    text = entry.to_json()
                    await self.server.run_to_the_end(self.queue.save_text, entry.id, text)

        sem, users = self._domains.get(domain) or (asyncio.Semaphore(self.cfg.queue.per_destination), 0)
        self._domains[domain] = (sem, users + 1)
        try:
            async with sem, self._connections:
                start = time.monotonic()
                srs = self.server.srs
                outcomes = await self.outbound.deliver(
                    domain, srs.forward(entry.sender) if srs else entry.sender, list(by_address),
                    self.queue.message_path(entry.id),
                    body8=entry.body == "8BITMIME", smtputf8=entry.smtputf8, record=record,
                )
                statuses = {o.status for o in outcomes.values()}
                result = "deferred" if "pending" in statuses else "bounced" if "failed" in statuses else "delivered"
                metrics.DELIVERY_SECONDS.labels(result).observe(time.monotonic() - start)
        finally:
            sem, users = self._domains[domain]
            if users <= 1:
                del self._domains[domain]  # idle destinations are forgotten
            else:
                self._domains[domain] = (sem, users - 1)
        left = {a: o for a, o in outcomes.items() if by_address[a].status == "pending" and o.status == "pending"}
        for address, o in left.items():  # never recorded: temporary answers, kept in memory until _finish saves
            self._apply(entry, by_address[address], o)

    def _apply(self, entry: Entry, r: Recipient, o: Outcome) -> None:
        r.status, r.reason, r.remote_mta = o.status, o.reason, o.remote_mta
        word = {"delivered": "sent", "failed": "bounced", "pending": "deferred"}[o.status]
        metrics.MESSAGES.labels("queue", {"sent": "delivered"}.get(word, word)).inc()
        log.info(
            "queue id=%s to=<%s> relay=%s attempt=%d status=%s reply=%s",
            entry.id, r.address[:200], o.remote_mta or "-", entry.attempts + 1, word, o.reason[:300],
        )

    # -- blocking parts (thread pool) ------------------------------------------------

    def _deliver_local(self, entry: Entry) -> None:
        """Each delivered recipient, and each member of a list, is saved
        before the next one is tried: a failure part-way never puts a second
        copy in a mailbox."""
        path = self.queue.message_path(entry.id)
        for r in entry.pending:
            if not r.local:
                continue
            try:
                reached = self.server.directory.expand_local(r.address)
            except Exception as e:  # noqa: BLE001 (database down: try again later)
                log.error("queue id=%s local delivery to=<%s> failed: %r", entry.id, r.address[:200], e)
                self._apply(entry, r, Outcome("pending", "451 4.3.0 Local delivery failed; will retry"))
                continue
            if reached is None or not reached[0]:
                self._apply(entry, r, Outcome("failed", "550 5.1.1 Recipient address unknown"))
                self.queue.save(entry)
                continue
            members = reached[0]
            refusal = trouble = None
            for info in members:
                if info.login in r.accounts_done:  # stored by an earlier attempt
                    continue
                try:
                    result, spawned = self.server.delivery.deliver_file(info, path, entry, r.address)
                except OverQuota:
                    trouble = trouble or Outcome("pending", "452 4.2.2 Mailbox full")
                    continue
                except Exception as e:  # noqa: BLE001 (disk error: try again later)
                    log.error("queue id=%s local delivery to=<%s> failed: %r", entry.id, info.address[:200], e)
                    trouble = Outcome("pending", "451 4.3.0 Local delivery failed; will retry")
                    continue
                for new_id in spawned:
                    self.submit(new_id)
                if result != "stored":
                    refusal = result  # a Sieve reject: bounced like a remote 5xx
                if len(members) > 1:  # a list: this member is done, whatever the others do
                    r.accounts_done.append(info.login)
                    self.queue.save(entry)
            if trouble is not None:
                self._apply(entry, r, trouble)
            elif refusal is not None:
                self._apply(entry, r, Outcome("failed", refusal))
                self.queue.save(entry)
            else:
                self._apply(entry, r, Outcome("delivered", "250 2.0.0 Delivered to the mailbox"))
                self.queue.save(entry)

    def _finish(self, entry: Entry) -> float | None:
        """Bounces, warning, next attempt; None when the entry is done and removed."""
        now = time.time()
        q = self.cfg.queue
        entry.attempts += 1
        pending = entry.pending
        if pending and now >= entry.created + q.lifetime:
            days = q.lifetime / 86400
            for r in pending:
                r.status = "failed"
                r.reason = f"4.4.7 Message expired after {days:g} days in the queue; last error: {r.reason}"
            pending = []
        fresh = [r for r in entry.recipients if r.status == "failed" and not r.notified]
        if fresh:
            if entry.sender:
                self._notify(entry, fresh, delay=False)
            for r in fresh:
                r.notified = True
        if pending and not entry.warned and q.warn_after and now >= entry.created + q.warn_after:
            if entry.sender:
                self._notify(entry, pending, delay=True)
            entry.warned = True
        if not pending:
            self.queue.remove(entry.id)
            log.info("queue id=%s done attempts=%d", entry.id, entry.attempts)
            return None
        entry.next_attempt = min(now + backoff(q.retry_min, q.retry_max, entry.attempts), entry.created + q.lifetime)
        self.queue.save(entry)
        return entry.next_attempt

    def _notify(self, entry: Entry, recipients: list[Recipient], delay: bool) -> None:
        """Queue a DSN to the sender (durably, before the entry records it)."""
        with open(self.queue.message_path(entry.id), "rb") as f:
            headers = dsn.original_headers(f)
        message = dsn.build(
            entry, recipients, hostname=self.cfg.hostname, postmaster=f"MAILER-DAEMON@{self.cfg.default_domain}",
            headers=headers, delay=delay, retry_until=entry.created + self.cfg.queue.lifetime,
        )
        signature = sign_for_domain(lambda: io.BytesIO(message), self.cfg, lambda _: True)  # our own address
        rcpts: list[Recipient]
        domain = entry.sender.rpartition("@")[2].lower()
        if domain in self.cfg.server.domains:
            reached = self.server.directory.expand_local(entry.sender)
            if reached is None:
                log.warning("queue id=%s no bounce: sender <%s> is unknown here", entry.id, entry.sender[:200])
                return
            rcpts = [Recipient(a.address, True) for a in reached[0]] + [Recipient(x, False) for x in reached[1]]
        else:
            rcpts = [Recipient(entry.sender, False)]
        # One ID per (entry, kind, attempt): a crash between queueing the DSN
        # and saving the entry makes the retry find it, not send it twice.
        seed = f"{entry.id}/{'delay' if delay else 'failure'}/{entry.attempts}".encode()
        bounce = Entry(hashlib.sha256(seed).hexdigest()[:20], "", rcpts, smtputf8=not entry.sender.isascii())
        if self.queue.load(bounce.id) is not None:
            return
        self.queue.message_path(bounce.id).unlink(missing_ok=True)  # a half-queued one from before a crash
        self.queue.add_bytes(signature + message, bounce)
        log.info("queue id=%s %s to=<%s> dsn=%s", entry.id, "delay-warning" if delay else "bounce", entry.sender[:200], bounce.id)
        self.submit(bounce.id)
