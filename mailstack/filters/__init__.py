"""The scanning hook: what an antivirus or antispam filter sees and answers.

A filter is an object with a ``name`` and a ``check(message, envelope)``
method (a coroutine, or a plain function that the daemon runs in a thread)
returning a ``Verdict``.  It gets the spooled message as a stream it opens
as often as it needs (``message.open()``) and its size, never the message
in memory, and the envelope.  Built-in filters are named in the config
(``clamav``, ``spamassassin``); others come from packages that declare an
entry point in the ``mailstack.filters`` group: a factory taking the
filter's ``options`` table (a dict) and returning the filter.

A complete third-party filter, in a package ``acme_filter``::

    # acme_filter.py
    from mailstack.filters import Envelope, Message, Verdict

    class NoExe:
        name = "no-exe"
        default_fail = "accept"  # what a crash or timeout means, unless the config says

        def __init__(self, options: dict):
            self.reply = options.get("reply", "550 5.7.1 Executables are not accepted")

        def check(self, message: Message, envelope: Envelope) -> Verdict:
            with message.open() as f:
                while chunk := f.read(65536):
                    if b'filename="' in chunk and b'.exe"' in chunk:
                        return Verdict.reject(self.reply, reason="executable attachment")
            return Verdict.accept()

    # pyproject.toml
    [project.entry-points."mailstack.filters"]
    no-exe = "acme_filter:NoExe"

    # mailstack.toml
    [[filters]]
    name = "no-exe"
    options = { reply = "550 5.7.1 No .exe here" }
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class Envelope:
    queue_id: str
    listener: str  # "mx" or "submission"
    client_ip: str
    helo: str
    login: str | None  # the authenticated user, if any
    sender: str  # "" for the null sender
    recipients: tuple[str, ...]


class Message(Protocol):
    """The spooled message: read it as a stream, as many times as needed."""

    size: int

    def open(self) -> BinaryIO: ...


ACTIONS = ("accept", "tag", "quarantine", "reject", "tempfail")


@dataclass(frozen=True)
class Verdict:
    action: str  # one of ACTIONS
    reply: str = ""  # the SMTP reply for reject / tempfail ("550 5.7.1 ...")
    headers: tuple[tuple[str, str], ...] = ()  # (name, value) to add on top of the message
    spam: bool = False  # deliver into Junk rather than INBOX
    score: float | None = None
    reason: str = ""  # for the log (a virus name, "score 12.3")

    @classmethod
    def accept(cls, reason: str = "") -> Verdict:
        return cls("accept", reason=reason)

    @classmethod
    def tag(cls, headers: list[tuple[str, str]], *, spam: bool = False, score: float | None = None, reason: str = "") -> Verdict:
        return cls("tag", headers=tuple(headers), spam=spam, score=score, reason=reason)

    @classmethod
    def quarantine(cls, reason: str, headers: list[tuple[str, str]] = ()) -> Verdict:  # type: ignore[assignment]
        return cls("quarantine", headers=tuple(headers), reason=reason)

    @classmethod
    def reject(cls, reply: str = "550 5.7.1 Message refused", reason: str = "") -> Verdict:
        return cls("reject", reply=reply, reason=reason)

    @classmethod
    def tempfail(cls, reply: str = "451 4.7.1 Message could not be scanned; try again later", reason: str = "") -> Verdict:
        return cls("tempfail", reply=reply, reason=reason)


class Filter(Protocol):
    name: str
    default_fail: str  # "tempfail" or "accept": when it fails or times out, unless configured
    # Optional: header names this filter writes (X-Spam-Status...).  Copies that
    # arrive with a message are removed whenever the filter is configured, even
    # when it did not run, so a sender cannot forge its verdict.
    owns_headers: tuple[str, ...]

    def check(self, message: Message, envelope: Envelope) -> Verdict: ...


class FilterError(Exception):
    """A filter cannot be set up (unknown name, bad option): one line for the operator."""


__all__ = ["ACTIONS", "Envelope", "Filter", "FilterError", "Message", "Verdict"]
