"""Which key signs a message we send: every key of its From: domain.

DMARC judges a message by the domain in its From: header, so that is the
domain whose keys sign (d=), never the envelope sender's.  Mail whose From:
is not one of our domains, or whose domain has no key yet, goes unsigned;
so does mail whose From: address the sender does not own (``owned``), or
our signature would vouch for a colleague's name on someone else's mail.
"""

from __future__ import annotations

import logging
from email.utils import getaddresses
from typing import BinaryIO, Callable

from ..config import Config
from .keys import domain_keys

log = logging.getLogger("mailstack.dkim")

def from_address(f: BinaryIO) -> str | None:
    """The single author address in From:; None when there is none or more
    than one (RFC 7489 6.6.1: no single author), or the header block is
    over the limit the signer reads: the signer and this check must see the
    same fields, or a second From: could hide behind the first."""
    from .dkim import field_values, read_header_block

    try:
        head = read_header_block(f)
    except ValueError:
        return None
    values = field_values(head, b"from")
    if len(values) != 1:
        return None
    addresses = [a for _, a in getaddresses(values) if "@" in a]
    if len(addresses) != 1:
        return None
    return addresses[0].strip()


def sign_for_domain(open_message: Callable[[], BinaryIO], cfg: Config, owned: Callable[[str], bool]) -> bytes:
    """DKIM-Signature header lines for the message, or b"" when it is not ours to sign."""
    with open_message() as f:
        author = from_address(f)
    if author is None:
        return b""
    domain = author.rpartition("@")[2].lower()
    if domain not in cfg.server.domains:
        return b""
    if not owned(author):
        log.warning("dkim: not signing: From: <%s> is not the sender's", author[:200])
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
