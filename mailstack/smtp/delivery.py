"""After the spool: put an accepted message in every local mailbox, queue the rest.

Blocking (file system, fsync); the daemon runs it in a thread pool.  The
answer is the one SMTP reply for the whole transaction, so it follows one
rule: never lose, never duplicate.  If any copy was delivered (or any
recipient is remote), whatever could not be delivered now goes to the durable
queue and the answer is 250; if nothing was, the answer is an error and the
client keeps the message.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import metrics
from ..accounts.directory import AccountInfo
from ..config import Config
from ..mailboxes import limits, mailbox_for
from ..store import FolderNameError
from ..store.folder import Folder, KeywordLimit, OverQuota
from ..store.mailbox import FolderExists
from . import sieving
from .queue import Entry, Queue, Recipient
from .sieving import Decision
from .spool import SpoolFile

log = logging.getLogger(__name__)

INBOX_CACHE = 512  # open INBOX folders kept per process (their descriptors stay open)


@dataclass
class Transaction:
    """An accepted envelope and its spooled message, as filters and delivery see it."""

    id: str
    sender: str  # "" for the null sender
    accounts: dict[str, AccountInfo]  # local recipients after alias expansion, by login
    remote: list[str]
    spool: SpoolFile
    client: str = ""
    helo: str = ""
    login: str | None = None
    listener: str = "mx"
    rcpt_count: int = 0
    body8: bool = False  # BODY=8BITMIME
    smtputf8: bool = False
    queued: bool = False  # some recipients wait in the queue
    folder: str = "INBOX"  # "Junk" for mail a policy quarantines
    spawned: list[str] = field(default_factory=list)  # queue entries Sieve made (redirects, vacation)
    reached_by: dict[str, list[str]] = field(default_factory=dict)  # login -> RCPT addresses that reached it
    results: list[str] = field(default_factory=list)  # for the log line

    def queue_entry(self, recipients: list[Recipient], **extra) -> Entry:
        """This message as a queue (or quarantine) entry, with what delivery needs later."""
        return Entry(self.id, self.sender, recipients, client=self.client, body="8BITMIME" if self.body8 else "",
                     smtputf8=self.smtputf8, folder=self.folder, **extra)


class LocalDelivery:
    def __init__(self, cfg: Config, queue: Queue):
        self.cfg = cfg
        self.queue = queue
        # Idle INBOX Folder objects by account.  A Folder (its index
        # connection) serves one thread at a time, so each delivery checks one
        # out; deliveries to one folder still share fsyncs (group commit).
        self._idle: OrderedDict[tuple[str, str, int, int], list[Folder]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def _checkout(self, info: AccountInfo, folder: str = "INBOX") -> tuple[tuple[str, str, int, int], Folder]:
        key = (info.login, folder, *limits(self.cfg, info))
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                self._count -= 1
                return key, idle.pop()
        try:
            return key, mailbox_for(self.cfg, info).folder(folder, sync=False)  # drop() needs no index
        except FolderNameError:  # missing (Junk deleted by its owner, a Sieve fileinto) or invalid: INBOX
            if folder == "INBOX":
                raise
            return self._checkout(info)

    def _checkin(self, key: tuple[str, str, int, int], folder: Folder) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(folder)
            self._idle.move_to_end(key)
            self._count += 1
            while self._count > INBOX_CACHE:
                _, folders = self._idle.popitem(last=False)
                self._count -= len(folders)
                for f in folders:
                    f.close()

    def _drop(self, folder: Folder, spool: SpoolFile, flags: tuple[str, ...] = ()) -> str:
        """A big message is hard-linked from the spool (no copy, whatever the
        number of recipients) when it is CRLF-clean and on the same file system."""
        if spool.on_disk and spool.crlf_only:
            try:
                return folder.drop_file(spool.path, flags)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
        with spool.open() as f:
            return folder.drop(f, flags=flags)

    def _target(self, info: AccountInfo, name: str, create: bool) -> str:
        """The folder a Sieve fileinto names, made when asked (:create, and
        subscribed); INBOX when it is missing or not a valid name."""
        if name == "INBOX" or not create:
            return name
        mailbox = mailbox_for(self.cfg, info)
        try:
            if not mailbox.exists(name):
                mailbox.create(name)
                mailbox.subscribe(name)
        except FolderExists:
            pass  # another delivery made it meanwhile
        except FolderNameError as e:
            log.warning("sieve: login=%s fileinto %r: %s; kept in INBOX", info.login, name[:100], e)
            return "INBOX"
        return name

    def _store(self, info: AccountInfo, decision: Decision, drop: Callable[[Folder, tuple[str, ...]], str]) -> list[str]:
        """Every copy the decision asks for; the files' base names.  A failure
        before the first copy raises (over quota: the caller retries the
        whole account later; anything else: it counts as failed); after it,
        the rest is logged and dropped, as a retry would duplicate what is
        stored."""
        done: list[str] = []
        for name, flags, create in decision.stores:
            try:
                key, folder = self._checkout(info, self._target(info, name, create))
                try:
                    try:
                        done.append(drop(folder, flags))
                    except KeywordLimit:  # too many keywords in the folder: the message without them
                        done.append(drop(folder, tuple(f for f in flags if f.startswith("\\"))))
                finally:
                    self._checkin(key, folder)
            except Exception as e:
                if not done:
                    raise
                log.error("sieve: login=%s copy in %r not stored: %r", info.login, name[:100], e)
        return done

    def _sieve(self, info: AccountInfo, decision: Decision, opener, sender: str, queue_id: str,
               own: list[str], body8: bool = False, smtputf8: bool = False) -> list[str]:
        """Redirects and the vacation reply, once the copies are stored: queue
        IDs to schedule.  Never raises (a retry would store the copies again)."""
        spawned: list[str] = []
        if decision.view is None:
            return spawned
        for address in decision.redirects:
            try:
                got = sieving.redirect(self.queue, opener, info, sender, address, queue_id, self.cfg.server.domains,
                                       body8, smtputf8)
                spawned += [got] if got else []
            except Exception as e:  # noqa: BLE001 (a full disk...: the copies are stored, the rest is logged)
                log.error("sieve id=%s login=%s redirect to=<%s> not queued: %r", queue_id, info.login, address[:200], e)
        if decision.vacation is not None:
            try:
                got = sieving.vacation(self.cfg, self.queue, decision.vacation, decision.view, info, sender, own, queue_id)
                spawned += [got] if got else []
            except Exception as e:  # noqa: BLE001
                log.error("sieve id=%s login=%s vacation not queued: %r", queue_id, info.login, e)
        return spawned

    def deliver_file(self, info: AccountInfo, path: Path, entry: Entry, rcpt: str) -> tuple[str, list[str]]:
        """A queued message (a retry, a bounce, a redirect) into an account
        (``rcpt``: the address it was queued for): ("stored" or the 550
        reply of a Sieve reject, queue IDs it spawned)."""
        opener = lambda: open(path, "rb")  # noqa: E731
        decision = sieving.decide(self.cfg, info, opener, path.stat().st_size, entry.sender, entry.folder, entry.id, rcpt)
        if decision.reject is not None:
            return sieving.reject_reply(decision.reject), []

        def drop(folder: Folder, flags: tuple[str, ...]) -> str:
            with opener() as f:
                return folder.drop(f, flags=flags)

        self._store(info, decision, drop)
        return "stored", self._sieve(info, decision, opener, entry.sender, entry.id, [rcpt],
                                     entry.body == "8BITMIME", entry.smtputf8)

    def deliver(self, tx: Transaction) -> str:
        delivered: list[str] = []
        over_quota: list[AccountInfo] = []
        failed: list[AccountInfo] = []
        refused: list[tuple[AccountInfo, str]] = []
        alone = len(tx.accounts) == 1 and not tx.remote
        size = tx.spool.length()
        for info in tx.accounts.values():
            reached = tx.reached_by.get(info.login, [])
            try:
                decision = sieving.decide(self.cfg, info, tx.spool.open, size, tx.sender, tx.folder,
                                          tx.id, reached[0] if reached else "")
                if decision.reject is not None:
                    reply = sieving.reject_reply(decision.reject)
                    if alone:  # the one recipient refuses it: say so to the client, nothing is kept
                        tx.results.append(f"{info.address}:rejected")
                        return reply
                    refused.append((info, reply))
                    tx.results.append(f"{info.address}:rejected")
                    continue
                bases = self._store(info, decision, lambda folder, flags: self._drop(folder, tx.spool, flags))
            except OverQuota:
                over_quota.append(info)
                tx.results.append(f"{info.address}:over-quota")
            except Exception as e:  # one recipient's failure must not lose the others
                log.error("delivery id=%s to=%s failed: %r", tx.id, info.address, e)
                failed.append(info)
                tx.results.append(f"{info.address}:failed")
            else:
                delivered.append(info.address)
                metrics.MESSAGES.labels("local", "delivered").inc()
                tx.results.append(f"{info.address}:{bases[0].split(',', 1)[0]}" if bases else f"{info.address}:discarded")
                tx.spawned += self._sieve(info, decision, tx.spool.open, tx.sender, tx.id, reached, tx.body8, tx.smtputf8)

        if not delivered and not tx.remote:
            if refused and not over_quota and not failed:  # every recipient's filter refused it
                return refused[0][1]
            if over_quota and not failed and not refused:
                return "552 5.2.2 Mailbox full" if len(over_quota) == 1 else "552 5.2.2 Mailboxes full"
            if not refused:
                return "451 4.3.0 Local delivery failed; try again later"

        later = [Recipient(i.address, True, reason="over quota" if i in over_quota else "delivery failed")
                 for i in over_quota + failed]
        later += [Recipient(a, False) for a in tx.remote]
        # A Sieve reject among several recipients: the queue runner bounces it (a DSN) at once.
        later += [Recipient(i.address, True, status="failed", reason=reply) for i, reply in refused]
        if later:
            try:
                tx.spool.finish(sync=True)
                self.queue.add(tx.spool.path, tx.queue_entry(later))
                tx.queued = True
            except OSError as e:
                log.error("queue id=%s failed: %s", tx.id, e)
                if not delivered:
                    return "451 4.3.0 Cannot queue the message; try again later"
                # Some copies are on disk: a retry would duplicate them.  Say
                # 250 and leave the operator a loud trace of the others.
                log.critical("id=%s undelivered to %s", tx.id, ", ".join(r.address for r in later))
            tx.results.append(f"queued={len(later)}")
        return f"250 2.0.0 Ok: queued as {tx.id}"

    def close(self) -> None:
        with self._lock:
            for folders in self._idle.values():
                for f in folders:
                    f.close()
            self._idle.clear()
            self._count = 0
