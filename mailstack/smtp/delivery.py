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

from ..accounts.directory import AccountInfo
from ..config import Config
from ..mailboxes import limits, mailbox_for
from ..store import NoSuchFolder
from ..store.folder import Folder, OverQuota
from .queue import Entry, Queue, Recipient
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
        except NoSuchFolder:  # Junk deleted by its owner: the inbox rather than no delivery
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

    def _drop(self, folder: Folder, spool: SpoolFile) -> str:
        """A big message is hard-linked from the spool (no copy, whatever the
        number of recipients) when it is CRLF-clean and on the same file system."""
        if spool.on_disk and spool.crlf_only:
            try:
                return folder.drop_file(spool.path)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
        with spool.open() as f:
            return folder.drop(f)

    def deliver_file(self, info: AccountInfo, path: Path, folder_name: str = "INBOX") -> str:
        """A queued message (a retry, a bounce) into an account's folder."""
        key, folder = self._checkout(info, folder_name)
        try:
            with open(path, "rb") as f:
                return folder.drop(f)
        finally:
            self._checkin(key, folder)

    def deliver(self, tx: Transaction) -> str:
        delivered: list[str] = []
        over_quota: list[AccountInfo] = []
        failed: list[AccountInfo] = []
        for info in tx.accounts.values():
            try:
                key, folder = self._checkout(info, tx.folder)
                try:
                    base = self._drop(folder, tx.spool)  # its UID comes with the next reader's sync
                finally:
                    self._checkin(key, folder)
                delivered.append(info.address)
                tx.results.append(f"{info.address}:{base.split(',', 1)[0]}")
            except OverQuota:
                over_quota.append(info)
                tx.results.append(f"{info.address}:over-quota")
            except Exception as e:  # one recipient's failure must not lose the others
                log.error("delivery id=%s to=%s failed: %r", tx.id, info.address, e)
                failed.append(info)
                tx.results.append(f"{info.address}:failed")

        if not delivered and not tx.remote:
            if over_quota and not failed:
                return "552 5.2.2 Mailbox full" if len(over_quota) == 1 else "552 5.2.2 Mailboxes full"
            return "451 4.3.0 Local delivery failed; try again later"

        later = [Recipient(i.address, True, reason="over quota" if i in over_quota else "delivery failed")
                 for i in over_quota + failed]
        later += [Recipient(a, False) for a in tx.remote]
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
