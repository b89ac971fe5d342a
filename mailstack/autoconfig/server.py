"""``mailstack httpd``: the autoconfiguration documents over HTTPS (twisted.web).

This module only moves bytes; documents.py builds every answer.  Paths:

- GET  /mail/config-v1.1.xml[?emailaddress=A]                  Thunderbird (autoconfig.DOMAIN)
- GET  /.well-known/autoconfig/mail/config-v1.1.xml[?emailaddress=A]   Thunderbird (DOMAIN)
- POST /autodiscover/autodiscover.xml (any case)               Outlook POX
- GET  /apple/mail.mobileconfig?emailaddress=A                 Apple configuration profile

Anything else is 404, another method 405.  Every byte is hostile: request
bodies stop at 16 KiB (413, connection closed, nothing more is read), headers
at Twisted's 16 KiB, a connection silent for IDLE_TIMEOUT seconds (TLS
handshake included) is closed.  One log line per request, with the domain but
never the address (personal data) nor the query string.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Callable

from twisted.web import resource, server

from ..config import Config, HttpListener
from ..daemon import notify, reload_daemon
from ..tls import OpenSSLServerContext
from ..twisted_tls import TlsCreator
from .documents import (
    MAX_REQUEST_BODY,
    BadRequest,
    Settings,
    autodiscover_response,
    domain_from_host,
    mobileconfig,
    mobileconfig_filename,
    nothing_to_serve,
    parse_address,
    parse_autodiscover_request,
    settings_from_config,
    thunderbird_config,
)

log = logging.getLogger("mailstack.http")
IDLE_TIMEOUT = 30  # seconds; clients fetch one small document and go

THUNDERBIRD_PATHS = (b"/mail/config-v1.1.xml", b"/.well-known/autoconfig/mail/config-v1.1.xml")
OUTLOOK_PATH = b"/autodiscover/autodiscover.xml"  # compared lowercased: Outlook writes /Autodiscover/Autodiscover.xml
APPLE_PATH = b"/apple/mail.mobileconfig"

Answer = tuple[int, bytes, bytes, dict[bytes, bytes]]  # status, content type, body, more headers


def _shown(raw: bytes, limit: int = 120) -> str:
    """A request path for the log: printable ASCII, bounded (it comes from the network)."""
    text = raw.split(b"?", 1)[0].decode("ascii", "replace")
    text = "".join(c if c.isprintable() and not c.isspace() else "?" for c in text)
    return text[:limit] + ("..." if len(text) > limit else "")


class _Request(server.Request):
    """twisted.web's request with a bounded body, no Server header, and the
    mail domain of the answer for the log line."""

    domain = "-"
    _refused = False

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted's name)
        if length is not None and length > MAX_REQUEST_BODY:
            self._too_large()
            self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the 413
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self._refused:
            return
        if self.content.tell() + len(data) > MAX_REQUEST_BODY:  # chunked, or longer than announced
            self._too_large()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        if not self._refused:
            super().requestReceived(command, path, version)

    def _too_large(self) -> None:
        """413 before the body is read, then close: Twisted's Request cannot answer
        until the whole body has arrived, so the response is written raw (as
        Twisted itself does for a malformed request)."""
        self._refused = True
        text = f"request body larger than {MAX_REQUEST_BODY} bytes\n".encode()
        self.channel.transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(text), text)
        )
        self.channel.transport.loseConnection()
        log.info(
            "http client=%s method=%s path=%s status=413 domain=-",
            getattr(self.getClientAddress(), "host", "-"),
            _shown(getattr(self.channel, "_command", b"-") or b"-", 16),
            _shown(getattr(self.channel, "_path", b"-") or b"-"),
        )

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.responseHeaders.removeHeader(b"server")  # no version for scanners
        super().write(data)


class _Site(server.Site):
    def log(self, request: server.Request) -> None:
        """One line per request (twisted.web's access log, our format)."""
        log.info(
            "http client=%s method=%s path=%s status=%d domain=%s",
            getattr(request.getClientAddress(), "host", "-"),
            _shown(request.method or b"-", 16),
            _shown(request.path or b"-"),
            request.code,
            getattr(request, "domain", "-"),
        )


class Autoconfig:
    """What the resources share: the configured services and the domains served."""

    def __init__(self, cfg: Config):
        self.base = settings_from_config(cfg)
        self.domains = frozenset(cfg.server.domains)

    def settings(self, domain: str, address: str | None = None) -> Settings | None:
        """None for a domain that is not ours."""
        return self.base.for_request(domain, address) if domain in self.domains else None


def _plain(status: int, text: str, headers: dict[bytes, bytes] | None = None) -> Answer:
    return status, b"text/plain; charset=utf-8", text.encode() + b"\n", headers or {}


NOT_FOUND = _plain(404, "not found")


class _Document(resource.Resource):
    """One autoconfiguration document; subclasses say how to answer."""

    isLeaf = True
    methods: tuple[bytes, ...] | None = (b"GET", b"HEAD")  # None: any

    def __init__(self, app: Autoconfig):
        super().__init__()
        self.app = app

    def answer(self, request: _Request) -> Answer:
        raise NotImplementedError

    def render(self, request: _Request) -> bytes:
        if self.methods is not None and request.method not in self.methods:
            status, ctype, body, headers = _plain(405, "method not allowed", {b"Allow": b", ".join(self.methods)})
        else:
            try:
                status, ctype, body, headers = self.answer(request)
            except BadRequest as e:
                status, ctype, body, headers = _plain(400, str(e))
            except Exception:  # a bug: this request fails, the daemon goes on
                log.exception("http %s %s failed", _shown(request.method, 16), _shown(request.path))
                status, ctype, body, headers = _plain(500, "internal error")
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", ctype)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        for name, value in headers.items():
            request.setHeader(name, value)
        return body

    @staticmethod
    def email_address(request: _Request, required: bool) -> str | None:
        """The ?emailaddress= of the query, checked; None when absent and not required."""
        values = request.args.get(b"emailaddress", [])
        if not values:
            if required:
                raise BadRequest("give the address: ?emailaddress=local@domain")
            return None
        if len(values) > 1:
            raise BadRequest("emailaddress is given more than once")
        try:
            return parse_address(values[0].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest("the address is not UTF-8") from None


class ThunderbirdConfig(_Document):
    """config-v1.1.xml; the domain from ?emailaddress=, else from the Host header."""

    def answer(self, request: _Request) -> Answer:
        address = self.email_address(request, required=False)
        if address is not None:
            domain: str | None = address.rsplit("@", 1)[1]
        else:
            host = request.getHeader(b"host") or b""
            domain = domain_from_host(host.decode("ascii", "replace"))
            if domain is None:
                raise BadRequest("no emailaddress and no domain name in the Host header")
        request.domain = domain
        s = self.app.settings(domain)
        if s is None:
            return NOT_FOUND
        return 200, b"application/xml; charset=utf-8", thunderbird_config(s), {}


class OutlookAutodiscover(_Document):
    """POX autodiscover.  An address of a domain we do not serve gets 404, not
    an autodiscover Error document: Outlook then goes on to its next discovery
    method (the next URL, SRV, its guesses), whereas a 200 Error would claim
    authority over a domain that is not ours."""

    methods = (b"POST",)

    def answer(self, request: _Request) -> Answer:
        address = parse_autodiscover_request(request.content.read(MAX_REQUEST_BODY + 1))
        domain = address.rsplit("@", 1)[1]
        request.domain = domain
        s = self.app.settings(domain, address)
        if s is None:
            return NOT_FOUND
        return 200, b"application/xml; charset=utf-8", autodiscover_response(s), {}


class AppleProfile(_Document):
    """An unsigned .mobileconfig for ?emailaddress= (to open on the device)."""

    def answer(self, request: _Request) -> Answer:
        address = self.email_address(request, required=True)
        assert address is not None
        domain = address.rsplit("@", 1)[1]
        request.domain = domain
        s = self.app.settings(domain, address)
        if s is None:
            return NOT_FOUND
        disposition = f'attachment; filename="{mobileconfig_filename(s)}"'.encode()
        return 200, b"application/x-apple-aspen-config", mobileconfig(s), {b"Content-Disposition": disposition}


class NotFound(_Document):
    methods = None

    def answer(self, request: _Request) -> Answer:
        return NOT_FOUND


class Root(resource.Resource):
    """Routes on the whole path at once (no directory listings, no partial paths)."""

    def __init__(self, app: Autoconfig):
        super().__init__()
        thunderbird = ThunderbirdConfig(app)
        self.routes: dict[bytes, resource.Resource] = {p: thunderbird for p in THUNDERBIRD_PATHS}
        self.routes[APPLE_PATH] = AppleProfile(app)
        self.outlook = OutlookAutodiscover(app)
        self.not_found = NotFound(app)

    def getChildWithDefault(self, name: bytes, request: _Request) -> resource.Resource:  # noqa: N802
        path = request.path
        if path.lower() == OUTLOOK_PATH:
            return self.outlook
        return self.routes.get(path, self.not_found)

    def render(self, request: _Request) -> bytes:
        return self.not_found.render(request)


def build_site(cfg: Config) -> server.Site:
    site = _Site(Root(Autoconfig(cfg)), requestFactory=_Request, timeout=IDLE_TIMEOUT)
    site.noisy = False
    return site


def _worker(cfg: Config, socks: list[tuple[socket.socket, HttpListener]]) -> int:
    from twisted.internet import reactor
    from twisted.protocols.tls import TLSMemoryBIOFactory

    tls: TlsCreator | None = None
    if any(listener.tls == "implicit" for _, listener in socks):
        tls = TlsCreator(OpenSSLServerContext(cfg.tls))

    def reload() -> None:
        """SIGHUP (systemctl reload), as imapd does: the configuration (only its
        live keys, e.g. log_level: what this daemon serves is restart-only),
        then the certificate for new connections."""
        nonlocal cfg
        cfg = reload_daemon(cfg, lambda new: None, lambda c: tls.reload(c.tls) if tls is not None else None)

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
    site = build_site(cfg)
    for sock, listener in socks:
        factory = TLSMemoryBIOFactory(tls, False, site) if listener.tls == "implicit" else site
        reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        sock.close()  # the reactor holds its own copy of the descriptor
        log.info("listening address=%s port=%d tls=%s", listener.address, listener.port, listener.tls)
    reactor.callWhenRunning(lambda: log.info("ready pid=%d", os.getpid()))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: notify("STOPPING=1\nSTATUS=stopping"))
    reactor.run()
    return 0


def run(cfg: Config) -> int:
    """Listen on every [[http.listeners]] and serve until SIGTERM/SIGINT (one
    process: a few requests per account setup need no more)."""
    from ..cli import Failure
    from ..daemon import bind_listeners, supervise

    problem = nothing_to_serve(settings_from_config(cfg))
    if problem:
        raise Failure(f"httpd: {problem}; or set http.enabled = false")
    if not cfg.http.listeners:
        raise Failure("httpd: http.listeners is empty")
    if any(listener.tls == "implicit" for listener in cfg.http.listeners):
        OpenSSLServerContext(cfg.tls)  # fail now, with one clear line, on a bad certificate
    socks = bind_listeners(cfg.http.listeners)
    if socks is None:
        return 1
    worker: Callable[[], int] = lambda: _worker(cfg, socks)  # noqa: E731
    return supervise(1, worker)
