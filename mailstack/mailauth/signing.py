"""Which key signs a message we send: every key of its From: domain.

DMARC judges a message by the domain in its From: header, so that is the
domain whose keys sign (d=), never the envelope sender's.  Mail whose From:
is not one of our domains, or whose domain has no key yet, goes unsigned.
"""

from __future__ import annotations

import logging
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import BinaryIO, Callable

from ..config import Config
from .keys import domain_keys

log = logging.getLogger("mailstack.dkim")

HEAD_LIMIT = 256 * 1024


def from_domain(f: BinaryIO) -> str | None:
    """The domain of the single author address in From:, lowercased; None
    when there is none or more than one (RFC 7489 6.6.1: no single author)."""
    head = f.read(HEAD_LIMIT)
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[: end + 2]
    msg = BytesHeaderParser(policy=compat32).parsebytes(head)
    values = msg.get_all("From") or []
    if len(values) != 1:
        return None
    addresses = [a for _, a in getaddresses([str(values[0])]) if "@" in a]
    if len(addresses) != 1:
        return None
    return addresses[0].rpartition("@")[2].strip().lower() or None


def sign_for_domain(open_message: Callable[[], BinaryIO], cfg: Config) -> bytes:
    """DKIM-Signature header lines for the message, or b"" when it is not ours to sign."""
    with open_message() as f:
        domain = from_domain(f)
    if domain is None or domain not in cfg.server.domains:
        return b""
    keys = domain_keys(cfg.dkim.keys, domain)
    if not keys:
        return b""
    from . import dkim  # dkimpy and its crypto only for domains with keys

    try:
        with open_message() as f:
            return dkim.sign(f, keys)
    except Exception as e:  # noqa: BLE001 (unsigned mail is better than no mail)
        log.error("dkim: cannot sign for %s: %s", domain, e)
        return b""
