"""TLS for the Twisted daemons (imapd, httpd): our pyOpenSSL context in the
form Twisted wants.  Apart from tls.py so that the CLI and the asyncio
daemons never import Twisted."""

from __future__ import annotations

import logging

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from .config import TlsConfig
from .tls import OpenSSLServerContext, TlsError

log = logging.getLogger("mailstack.tls")


@implementer(IOpenSSLServerConnectionCreator)
class TlsCreator:
    """Our pyOpenSSL context in the form Twisted's TLS wants, swappable on SIGHUP
    (imapd, httpd)."""

    def __init__(self, context: OpenSSLServerContext):
        self.context = context

    def serverConnectionForTLS(self, tls_protocol):  # noqa: N802
        from OpenSSL import SSL

        return SSL.Connection(self.context.getContext(), None)

    def reload(self, cfg: TlsConfig) -> None:
        """SIGHUP: new connections get the certificate on disk now; open ones
        keep theirs.  A certificate that does not load leaves the old one."""
        try:
            self.context = OpenSSLServerContext(cfg)
        except TlsError as e:
            log.error("reload: %s; keeping the old certificate", e)
            return
        log.info("reload: certificate %s loaded", cfg.certificate)
