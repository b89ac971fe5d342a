"""Delivery status notifications (RFC 3464): the bounce and the delay warning.

Pure functions: the runner gives what happened, this returns the message.
Written by hand rather than with ``email.mime``: the format is part of our
core, it is a few fixed lines, and the stdlib's generator would re-fold and
re-encode the original headers we quote.  Only the original's header block
is returned (text/rfc822-headers), never its body: a bounce of a 100 MB
message stays small, and we do not send content back to a forged sender.
"""

from __future__ import annotations

import os
import re
import time
from email.utils import format_datetime, formatdate
from datetime import datetime, timezone
from typing import BinaryIO

from .queue import Entry, Recipient

HEADERS_LIMIT = 64 * 1024  # bytes of the original's headers quoted in a bounce
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def _date(t: float) -> str:
    return format_datetime(datetime.fromtimestamp(t, timezone.utc))


def status_of(r: Recipient, default: str) -> str:
    """The RFC 3463 code of a recipient's last reply, else ``default``."""
    m = _ENHANCED.search(r.reason)
    return m.group(0) if m else default


def original_headers(f: BinaryIO) -> bytes:
    """The header block of a queued message, bounded, CRLF line ends."""
    data = f.read(HEADERS_LIMIT)
    end = data.find(b"\r\n\r\n")
    head = data[: end + 2] if end >= 0 else data[: data.rfind(b"\n") + 1]
    return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _line(text: str) -> str:
    """No line break from anything quoted in a header (addresses are checked
    at the SMTP door already; this is the second lock)."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", text)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")


def build(
    entry: Entry,
    recipients: list[Recipient],
    *,
    hostname: str,
    postmaster: str,
    headers: bytes,
    delay: bool = False,
    retry_until: float | None = None,
    now: float | None = None,
) -> bytes:
    """A multipart/report to ``entry.sender`` about ``recipients`` (failed, or
    delayed when ``delay``)."""
    now = now or time.time()
    boundary = f"=_{os.urandom(12).hex()}"
    action = "delayed" if delay else "failed"
    if delay:
        subject = "Delayed Mail (still being retried)"
        intro = (
            f"This is the mail system at {hostname}.\r\n\r\n"
            "Your message could not be delivered to the recipients below yet.\r\n"
            "It is still in the queue and will be tried again"
            + (f" until {_date(retry_until)}" if retry_until else "")
            + ".\r\nYou do not need to send it again.\r\n"
        )
    else:
        subject = "Undelivered Mail Returned to Sender"
        intro = (
            f"This is the mail system at {hostname}.\r\n\r\n"
            "Your message could not be delivered to the recipients below.\r\n"
            "The original headers are attached.\r\n"
        )
    lines = "".join(f"\r\n<{_ascii(r.address)}>: {_ascii(r.reason) or action}\r\n" for r in recipients)
    per_message = (
        f"Reporting-MTA: dns; {hostname}\r\n"
        f"X-Mailstack-Queue-ID: {entry.id}\r\n"
        f"Arrival-Date: {_date(entry.created)}\r\n"
    )
    per_rcpt = []
    for r in recipients:
        fields = [
            f"Final-Recipient: rfc822; {_ascii(r.address)}",
            f"Action: {action}",
            f"Status: {status_of(r, '4.0.0' if delay else '5.0.0')}",
        ]
        if r.remote_mta:
            fields.append(f"Remote-MTA: dns; {_ascii(r.remote_mta)}")
        if r.reason:
            kind = "smtp" if re.match(r"^[245]\d\d[ -]", r.reason) else "x-mailstack"
            fields.append(f"Diagnostic-Code: {kind}; {_ascii(r.reason)[:900]}")
        fields.append(f"Last-Attempt-Date: {_date(now)}")
        if delay and retry_until:
            fields.append(f"Will-Retry-Until: {_date(retry_until)}")
        per_rcpt.append("\r\n".join(fields) + "\r\n")
    status = per_message + "".join("\r\n" + p for p in per_rcpt)
    msg_id = f"<{entry.id}.{int(now)}.{os.urandom(4).hex()}@{hostname}>"
    head = (
        f"From: Mail Delivery System <{postmaster}>\r\n"
        f"To: <{_line(entry.sender)}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate(now, localtime=False, usegmt=True)}\r\n"
        f"Message-ID: {msg_id}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
    )
    body = (
        f"\r\n--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "Content-Description: Notification\r\n\r\n"
        f"{intro}{lines}"
        f"\r\n--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n"
        "Content-Description: Delivery report\r\n\r\n"
        f"{status}"
        f"\r\n--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "Content-Description: Undelivered Message Headers\r\n\r\n"
    )
    # UTF-8 appears only in To: of an SMTPUTF8 sender.
    return (head + body).encode("utf-8") + headers + f"\r\n--{boundary}--\r\n".encode("ascii")
