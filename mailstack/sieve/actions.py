"""What a script decided for one message: the list the interpreter returns.

Delivery carries these out in order.  The interpreter has already applied
the implicit keep (RFC 5228 §2.10.2), merged duplicates (one copy per
mailbox, one redirect per address) and refused conflicting combinations, so
the list is final; ``Discard`` only records that the message was dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Keep:
    """File into the user's INBOX, with these IMAP flags."""

    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileInto:
    """File into a mailbox (its name as the script wrote it; delivery checks it)."""

    mailbox: str
    flags: tuple[str, ...] = ()
    create: bool = False   # RFC 5490 :create: make the mailbox if it is missing
    copy: bool = False     # RFC 3894 :copy: did not cancel the implicit keep


@dataclass(frozen=True)
class Redirect:
    """Send the message on, unchanged, to an address (an addr-spec)."""

    address: str
    copy: bool = False


@dataclass(frozen=True)
class Reject:
    """Refuse the message with a bounce (MDN/DSN) carrying the reason (RFC 5429)."""

    reason: str


@dataclass(frozen=True)
class Ereject:
    """Refuse the message at SMTP level when possible, else as Reject (RFC 5429)."""

    reason: str


@dataclass(frozen=True)
class Discard:
    """Drop the message silently."""


@dataclass(frozen=True)
class Vacation:
    """Answer the sender, at most once per ``seconds`` per sender and handle (RFC 5230).

    Delivery decides whether to send: not to lists, bulk mail, ourselves or a
    null sender, only when one of the user's addresses (or ``addresses``) is
    in To/Cc, and not if this sender got this ``handle`` in the last
    ``seconds``.  ``subject`` None means "Auto: " + the original subject;
    ``from_`` None means the user's address; with ``mime`` the reason is a
    MIME entity (headers and body) rather than plain text."""

    reason: str
    subject: str | None = None
    from_: str | None = None
    addresses: tuple[str, ...] = ()
    seconds: int = 7 * 86400
    mime: bool = False
    handle: str = ""


Action = Union[Keep, FileInto, Redirect, Reject, Ereject, Discard, Vacation]
