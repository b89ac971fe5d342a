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
import heapq
import logging
import os
import time
from typing import TYPE_CHECKING

from ..resolver import make_async_resolver
from ..store.folder import OverQuota
from . import dsn
from .outbound import Delivery, Outcome, client_tls_context
from .queue import Entry, Recipient
from .spool import new_id

if TYPE_CHECKING:
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
        self._slots = asyncio.Semaphore(self.cfg.queue.concurrency)
        self._domains: dict[str, tuple[asyncio.Semaphore, int]] = {}  # per destination: limit, users
        self._stopping = False

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
                self._active.add(entry_id)
                task = asyncio.create_task(self._attempt(entry_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
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
        try:
            fd = await self.server.run(self.queue.try_lock, entry_id)
            if fd is None:
                return  # another worker has it, or it is gone
            entry = await self.server.run(self.queue.load, entry_id)
            if entry is None or entry.held:
                return
            if entry.next_attempt > time.time() + 0.5:  # deferred by another worker meanwhile
                self.schedule(entry_id, entry.next_attempt)
                return
            save_lock = asyncio.Lock()
            if any(r.local for r in entry.pending):
                await self.server.run(self._deliver_local, entry)
            by_domain: dict[str, list[Recipient]] = {}
            for r in entry.pending:
                if not r.local:
                    by_domain.setdefault(r.address.rpartition("@")[2].lower(), []).append(r)
            if by_domain:
                await asyncio.gather(*(self._domain(entry, d, rs, save_lock) for d, rs in by_domain.items()))
            when = await self.server.run(self._finish, entry)
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
        sem, users = self._domains.get(domain) or (asyncio.Semaphore(self.cfg.queue.per_destination), 0)
        self._domains[domain] = (sem, users + 1)
        try:
            async with sem:
                outcomes = await self.outbound.deliver(
                    domain, entry.sender, [r.address for r in rcpts], self.queue.message_path(entry.id),
                    body8=entry.body == "8BITMIME", smtputf8=entry.smtputf8,
                )
        finally:
            sem, users = self._domains[domain]
            if users <= 1:
                del self._domains[domain]  # idle destinations are forgotten
            else:
                self._domains[domain] = (sem, users - 1)
        for r in rcpts:
            self._apply(entry, r, outcomes.get(r.address, Outcome("pending", "451 4.3.0 no outcome")))
        if any(o.status != "pending" for o in outcomes.values()):
            async with save_lock:  # a confirmed delivery is on disk before anything else
                text = entry.to_json()
                await self.server.run(self.queue.save_text, entry.id, text)

    def _apply(self, entry: Entry, r: Recipient, o: Outcome) -> None:
        r.status, r.reason, r.remote_mta = o.status, o.reason, o.remote_mta
        word = {"delivered": "sent", "failed": "bounced", "pending": "deferred"}[o.status]
        log.info(
            "queue id=%s to=<%s> relay=%s attempt=%d status=%s reply=%s",
            entry.id, r.address[:200], o.remote_mta or "-", entry.attempts + 1, word, o.reason[:300],
        )

    # -- blocking parts (thread pool) ------------------------------------------------

    def _deliver_local(self, entry: Entry) -> None:
        path = self.queue.message_path(entry.id)
        for r in entry.pending:
            if not r.local:
                continue
            reached = self.server.directory.expand_local(r.address)
            if reached is None or not reached[0]:
                self._apply(entry, r, Outcome("failed", "550 5.1.1 Recipient address unknown"))
                continue
            try:
                for info in reached[0]:
                    self.server.delivery.deliver_file(info, path)
                self._apply(entry, r, Outcome("delivered", "250 2.0.0 delivered to the mailbox"))
            except OverQuota:
                self._apply(entry, r, Outcome("pending", "452 4.2.2 Mailbox full"))
            except OSError as e:
                self._apply(entry, r, Outcome("pending", f"451 4.3.0 Local delivery failed: {e.strerror or e}"))
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
        bounce = Entry(new_id(), "", rcpts, smtputf8=not entry.sender.isascii())
        self.queue.add_bytes(message, bounce)
        log.info("queue id=%s %s to=<%s> dsn=%s", entry.id, "delay-warning" if delay else "bounce", entry.sender[:200], bounce.id)
        self.submit(bounce.id)
