"""Sieve at local delivery: the account's active script decides where a
message goes (folders and flags), which copies leave (redirect), whether it
is refused, and whether its sender gets a vacation reply.

Blocking (files, the directory): called from delivery's threads.  A script
that does not compile, or fails on this message, never loses it: the
message goes to INBOX and the error is logged (RFC 5228 §2.10.6).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from ..accounts.directory import AccountInfo
from ..config import Config
from ..mailauth.signing import sign_for_domain
from ..mailboxes import mailbox_for, scripts_for
from ..sieve import Discard, Ereject, FileInto, Keep, Message, Redirect, Reject, SieveError, SieveRuntimeError, Vacation, run
from ..sieve.address import addr_specs
from ..sieve.vacation import Answered, refusal, reply
from .queue import Entry, Queue, Recipient

log = logging.getLogger("mailstack.sieve")

LOOP_HEADER = "X-Sieve-Redirected-From"
MAX_REDIRECT_HOPS = 5  # copies of LOOP_HEADER a message may carry before redirects stop


@dataclass
class Decision:
    stores: list[tuple[str, tuple[str, ...], bool]] = field(default_factory=list)  # folder, flags, :create
    redirects: list[str] = field(default_factory=list)
    reject: str | None = None
    vacation: Vacation | None = None
    view: Message | None = None


def keep_in(folder: str) -> Decision:
    return Decision(stores=[(folder, (), False)])


def decide(cfg: Config, info: AccountInfo, opener: Callable[[], BinaryIO], size: int, sender: str,
           folder: str, queue_id: str, rcpt: str = "") -> Decision:
    """What the account's script does with this message (``folder``: the
    implicit keep's, "Junk" for spam; ``rcpt``: the address it came to).
    Never raises: a script that cannot run keeps the message in ``folder``."""
    if not cfg.sieve.enabled:
        return keep_in(folder)
    try:
        return _decide(cfg, info, opener, size, sender, folder, queue_id, rcpt or info.address)
    except Exception as e:  # noqa: BLE001 (a script that does not load or fails: RFC 5228 2.10.6, implicit keep)
        log.error("sieve id=%s login=%s failed: %s; kept in %s", queue_id, info.login, e, folder)
        return keep_in(folder)


def _decide(cfg: Config, info: AccountInfo, opener: Callable[[], BinaryIO], size: int, sender: str,
            folder: str, queue_id: str, rcpt: str) -> Decision:
    scripts = scripts_for(cfg, info)
    try:
        script = scripts.active_script()
    except (SieveError, OSError, UnicodeDecodeError) as e:
        log.error("sieve id=%s login=%s script=%s does not load: %s; kept in %s",
                  queue_id, info.login, scripts.active(), e, folder)
        return keep_in(folder)
    if script is None:
        return keep_in(folder)
    view = Message.from_stream(opener, size=size, envelope_from=sender, envelope_to=rcpt,
                               mailboxes=lambda name: mailbox_for(cfg, info).exists(name))  # only for mailboxexists
    try:
        actions = run(script, view, limits=scripts.limits, loader=scripts.load_included, name=scripts.active())
    except (SieveRuntimeError, SieveError) as e:
        log.error("sieve id=%s login=%s failed: %s; kept in %s", queue_id, info.login, e, folder)
        return keep_in(folder)
    d = Decision(view=view)
    quarantined = folder != "INBOX"  # spam, a DMARC quarantine: nothing leaves on its behalf
    refused_redirect = False
    for a in actions:
        if isinstance(a, Keep):
            d.stores.append((folder, a.flags, False))
        elif isinstance(a, FileInto):
            d.stores.append((a.mailbox, a.flags, a.create))
        elif isinstance(a, Redirect):
            why = "quarantined mail" if quarantined else redirect_problem(view, info, a.address)
            if why is None:
                d.redirects.append(a.address)
            else:
                log.warning("sieve id=%s login=%s redirect to=<%s> refused: %s", queue_id, info.login, a.address[:200], why)
                refused_redirect = True
        elif isinstance(a, (Reject, Ereject)):
            d.reject = a.reason
        elif isinstance(a, Vacation):
            if quarantined:
                log.info("sieve id=%s login=%s vacation not sent: quarantined mail", queue_id, info.login)
            else:
                d.vacation = a
        elif not isinstance(a, Discard):
            log.error("sieve id=%s login=%s unknown action %r ignored", queue_id, info.login, a)
    if refused_redirect and not d.stores and d.reject is None and not d.redirects:
        d.stores.append((folder, (), False))  # the redirect cancelled the keep, and did not happen: keep
    log.info("sieve id=%s login=%s actions=%s", queue_id, info.login,
             ",".join(type(a).__name__.lower() for a in actions) or "none")
    return d


def redirect_problem(view: Message, info: AccountInfo, address: str) -> str | None:
    """Why a redirect must not happen: a loop, or an address no SMTP server takes."""
    if any(ord(c) <= 32 or ord(c) == 127 for c in address) or address.count("@") < 1:
        return "not a usable address"
    seen = [v.strip().lower() for v in view.raw_header(LOOP_HEADER)]
    if info.address.lower() in seen or len(seen) >= MAX_REDIRECT_HOPS or address.lower() == info.address.lower():
        return "it would loop"
    return None


def reject_reply(reason: str) -> str:
    """The SMTP refusal for a Sieve reject: one ASCII line."""
    text = re.sub(r"[^\x20-\x7e]", " ", " ".join(reason.split()))[:200] or "Rejected by the recipient's filter"
    return f"550 5.7.1 {text}"


def spawned_id(queue_id: str, login: str, what: str) -> str:
    """The queue ID of a copy Sieve makes: the same on a retry of the same
    message, so a retry finds it queued and never sends it twice."""
    return hashlib.sha256(f"{queue_id}/{login}/{what}".encode()).hexdigest()[:20]


def redirect(queue: Queue, opener: Callable[[], BinaryIO], info: AccountInfo, sender: str, address: str,
             queue_id: str, local_domains: list[str], body8: bool = False, smtputf8: bool = False) -> str | None:
    """Queue a copy for ``address`` (decide() checked it); the new entry's ID,
    None when an earlier attempt queued it.  The envelope sender stays."""
    entry_id = spawned_id(queue_id, info.login, f"redirect/{address.lower()}")
    if queue.load(entry_id) is not None:
        return None
    local = address.rpartition("@")[2].lower() in local_domains
    entry = Entry(entry_id, sender, [Recipient(address, local)], body="8BITMIME" if body8 else "", smtputf8=smtputf8)
    with opener() as f:
        queue.add_copy(f"{LOOP_HEADER}: {info.address}\r\n".encode(), f, entry)
    log.info("sieve id=%s login=%s redirect to=<%s> queued=%s", queue_id, info.login, address[:200], entry.id)
    return entry.id


def vacation(cfg: Config, queue: Queue, action: Vacation, view: Message, info: AccountInfo, sender: str,
             own: list[str], queue_id: str) -> str | None:
    """Queue the vacation reply when RFC 3834 and the once-per-period rule allow; its queue ID."""
    why = refusal(view, sender, [info.address, *own, *action.addresses])
    if why is not None:
        log.info("sieve id=%s login=%s vacation not sent: %s", queue_id, info.login, why)
        return None
    period = min(max(action.seconds, cfg.sieve.vacation_min_period), cfg.sieve.vacation_max_period)
    answered = Answered(scripts_for(cfg, info).dir)
    if not answered.claim(sender, action.handle or action.reason, period):
        log.info("sieve id=%s login=%s vacation not sent: already answered <%s>", queue_id, info.login, sender[:200])
        return None
    mine = {a.lower() for a in (info.address, *own)}
    if action.from_ is not None and (addr_specs(action.from_) or [""])[0].lower() not in mine:
        log.warning("sieve id=%s login=%s vacation :from %r is not the user's: their address is used",
                    queue_id, info.login, action.from_[:200])
        action = dataclasses.replace(action, from_=None)
    message = reply(action, view, info.address, cfg.hostname)
    signature = sign_for_domain(lambda: io.BytesIO(message), cfg, lambda author: author.lower() in mine)
    local = sender.rpartition("@")[2].lower() in cfg.server.domains
    entry = Entry(spawned_id(queue_id, info.login, "vacation"), "", [Recipient(sender, local)],  # null sender: RFC 3834
                  body="8BITMIME", smtputf8=not sender.isascii())
    queue.add_bytes(signature + message, entry)
    log.info("sieve id=%s login=%s vacation to=<%s> queued=%s", queue_id, info.login, sender[:200], entry.id)
    return entry.id
