"""Vacation replies (RFC 5230) under the rules of RFC 3834: whether to
answer, the reply itself, and the per-account record of who was answered.

``refusal`` and ``reply`` are pure functions of the message; ``Answered``
keeps one empty file per (sender, handle) whose mtime is the last reply,
created with O_EXCL so two deliveries at once never both answer.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from email.header import Header
from email.utils import format_datetime
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterable

from .actions import Vacation
from .address import addr_specs
from .message import MessageView

# Senders that are programs, never people (RFC 3834 §2, and what lists use).
_AUTOMATED = re.compile(
    r"^(mailer-daemon|postmaster|listserv|majordomo|mailman|owner-.*|.*-request|.*-owner|"
    r"no-?reply.*|do-?not-?reply.*|bounces?(\+.*)?|.*-bounces(\+.*)?)$"
)
_LIST_HEADERS = ("list-id", "list-post", "list-unsubscribe", "list-help", "list-owner", "list-subscribe", "list-archive")
_RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


def refusal(view: MessageView, sender: str, own: Iterable[str]) -> str | None:
    """Why this message gets no vacation reply (for the log), or None to reply.

    ``own``: the user's addresses (account, aliases, the script's :addresses)."""
    if not sender:
        return "null sender"
    mine = {a.lower() for a in own}
    sender = sender.lower()
    if sender in mine:
        return "sent by the user"
    if _AUTOMATED.match(sender.rpartition("@")[0]):
        return "automated sender"
    if any(v.strip().lower() != "no" for v in view.raw_header("auto-submitted")):
        return "auto-submitted"
    if any(v.strip().lower() in ("bulk", "list", "junk") for v in view.raw_header("precedence")):
        return "bulk precedence"
    if any(view.raw_header(h) for h in _LIST_HEADERS):
        return "mailing list"
    if any(re.search(r"\b(oof|all)\b", v, re.I) for v in view.raw_header("x-auto-response-suppress")):
        return "replies suppressed by the sender"
    named = {a.lower() for h in _RECIPIENT_HEADERS for v in view.raw_header(h) for a in addr_specs(v)}
    if not named & mine:
        return "the user is not in To or Cc"
    return None


def _header(name: str, value: str) -> bytes:
    """One header field, RFC 2047-encoded when not ASCII, folded by the email package."""
    value = re.sub(r"[\x00-\x1f\x7f]", " ", value)
    if value.isascii():
        text = f"{name}: {value}"
        return (text if len(text) <= 998 else text[:998]).encode() + b"\r\n"
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=chr(13) + chr(10))}".encode() + b"\r\n"


def reply(action: Vacation, view: MessageView, user: str, hostname: str, now: float | None = None) -> bytes:
    """The reply to ``view``'s sender, as RFC 5230 §5 describes it."""
    now = time.time() if now is None else now
    subjects = view.header("subject")
    subject = action.subject if action.subject is not None else "Auto: " + (subjects[0] if subjects else "")
    head = [
        _header("From", action.from_ or user),
        b"To: " + re.sub(r"[\x00-\x20\x7f]", "", view.envelope_from).encode("utf-8") + b"\r\n",  # SMTPUTF8 as it is
        _header("Subject", subject[:500]),
        _header("Date", format_datetime(datetime.fromtimestamp(now, timezone.utc))),
        _header("Message-ID", f"<{uuid.uuid4().hex}@{hostname}>"),
        b"Auto-Submitted: auto-replied (vacation)\r\n",
        b"Precedence: bulk\r\n",
        b"MIME-Version: 1.0\r\n",
    ]
    msgid = [m for m in view.raw_header("message-id") if re.fullmatch(r"<[!-;=?-~]{1,900}>", m.strip())]  # ASCII only
    if msgid:
        refs = " ".join(view.raw_header("references")).split()[-10:]  # a bounded thread
        head += [_header("In-Reply-To", msgid[0].strip()), _header("References", " ".join([*refs, msgid[0].strip()]))]
    if action.mime:  # the reason is a MIME entity: its own headers, then its body
        body = action.reason.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        return b"".join(head) + body
    text = action.reason.replace("\r\n", "\n").replace("\n", "\r\n")
    head += [b"Content-Type: text/plain; charset=utf-8\r\n", b"Content-Transfer-Encoding: 8bit\r\n"]
    return b"".join(head) + b"\r\n" + text.encode("utf-8") + (b"" if text.endswith("\r\n") else b"\r\n")


class Answered:
    """Who got a reply, when: ACCOUNT/sieve/.vacation/HASH (empty files)."""

    def __init__(self, sieve_dir: Path):
        self.dir = sieve_dir / ".vacation"

    def _path(self, sender: str, handle: str) -> Path:
        return self.dir / hashlib.sha256(f"{sender.lower()}\0{handle}".encode()).hexdigest()[:32]

    def claim(self, sender: str, handle: str, period: float, now: float | None = None) -> bool:
        """True (and recorded) when ``sender`` got no reply for ``handle`` in
        the last ``period`` seconds; False otherwise.  Atomic across processes."""
        now = time.time() if now is None else now
        path = self._path(sender, handle)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            if now - path.stat().st_mtime < period:
                return False
            # Expired: one process moves it away (rename is atomic: the
            # others find it gone), then the O_EXCL create decides.
            aside = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}.old")
            os.rename(path, aside)
            aside.unlink()
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another delivery claimed it meanwhile
            return False
        os.close(fd)
        os.utime(path, (now, now))
        self._prune(now)
        return True

    def _prune(self, now: float, keep: float = 366 * 86400) -> None:
        """Records older than a year go, now and then (one delivery in 200)."""
        if int(now * 1000) % 200:
            return
        for p in self.dir.iterdir():
            try:
                if now - p.stat().st_mtime > keep:
                    p.unlink()
            except OSError:
                pass


# --- `mailstack vacation set|off`: the rule written into the active script -------

MARK = "# mailstack vacation"
BEGIN, END = f"{MARK}: begin", f"{MARK}: end"
REQUIRE = f'require ["vacation", "date", "relational"];  {MARK}'


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def without_rule(script: str) -> str:
    """The script with our vacation rule (and its require line) taken out;
    unchanged when the markers were edited away (nothing of the user's goes)."""
    lines = [x.strip() for x in script.splitlines()]
    if (BEGIN in lines) != (END in lines) or (BEGIN in lines and lines.index(BEGIN) > lines.index(END)):
        return script
    out, inside = [], False
    for line in script.splitlines(keepends=True):
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
        elif stripped == END:
            inside = False
        elif not inside and stripped != REQUIRE:
            out.append(line)
    return "".join(out)


def rule(start: date, until: date, subject: str, message: str, days: int, addresses: list[str]) -> str:
    """The vacation rule between its markers (the dates are the server's local days, inclusive)."""
    tags = f":days {days} :subject {_quoted(subject)}"
    if addresses:
        tags += " :addresses [" + ", ".join(_quoted(a) for a in addresses) + "]"
    return (
        f"{BEGIN}\n"
        f"if allof (currentdate :value \"ge\" \"date\" \"{start.isoformat()}\",\n"
        f"          currentdate :value \"le\" \"date\" \"{until.isoformat()}\") {{\n"
        f"    vacation {tags}\n"
        f"        {_quoted(message)};\n"
        f"}}\n"
        f"{END}\n"
    )


def with_rule(script: str, vacation_rule: str) -> str:
    """``script`` with the rule placed after its leading require commands
    (a require must come first), replacing a rule written before."""
    from .parser import parse

    base = without_rule(script)
    commands = parse(base) if base.strip() else ()
    first = next((c for c in commands if c.name != "require"), None)
    if first is None:
        head, tail = base, ""
    else:
        lines = base.splitlines(keepends=True)
        start = first.line - 1
        if base[sum(len(x) for x in lines[:start]):][: first.col - 1].strip():  # on a require's line
            offset = sum(len(x) for x in lines[:start]) + first.col - 1
        else:  # the comments and blank lines just above the first rule stay with it
            while start > 0 and (not lines[start - 1].strip() or lines[start - 1].lstrip().startswith("#")):
                start -= 1
            offset = sum(len(x) for x in lines[:start])
        head, tail = base[:offset], base[offset:]
    if head and not head.endswith("\n"):
        head += "\n"
    return f"{REQUIRE}\n{head}{vacation_rule}{tail}"
