"""Sender Rewriting Scheme for mail we forward (an alias to an outside
address, a Sieve redirect): sent with the original sender, it would fail
SPF at the receiver, since our host is not allowed to send for that domain.
The envelope sender becomes ``SRS0=HASH=TT=domain=local@OUR.DOMAIN``
(srslib: the libsrs2 scheme, HMAC with a key derived from the installation's
secret, valid ``[srs] days``), and a bounce to such an address is sent back
to the original sender, and only a bounce (null sender): the MX relays
nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import srslib

from ..accounts.directory import load_secret
from ..config import Config

_SRS_LOCAL = re.compile(r"^srs[01][-+=]", re.IGNORECASE)


class Rewriter:
    def __init__(self, cfg: Config):
        key = hmac.new(load_secret(cfg.auth.secret_file), b"mailstack srs", hashlib.sha256).hexdigest()
        self._srs = srslib.SRS(key, validity_days=cfg.srs.days)
        self.domain = (cfg.srs.domain or cfg.default_domain).lower()
        self.ours = {d.lower() for d in cfg.server.domains}

    def forward(self, sender: str) -> str:
        """The envelope sender for a copy we pass on: rewritten unless it is
        empty (a bounce) or one of our own addresses (our users' mail)."""
        if not sender or "@" not in sender:
            return sender
        if sender.rpartition("@")[2].lower() in self.ours and not self.is_srs(sender):
            return sender
        try:
            return self._srs.forward(sender, self.domain)
        except srslib.Error:
            return sender

    def is_srs(self, address: str) -> bool:
        local, _, domain = address.rpartition("@")
        return domain.lower() == self.domain and bool(_SRS_LOCAL.match(local))

    def reverse(self, address: str) -> str | None:
        """The original sender behind one of our SRS addresses; None when
        its hash is wrong or it has expired."""
        try:
            return self._srs.reverse(address)
        except (srslib.Error, ValueError):
            return None
