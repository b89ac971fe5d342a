"""One SMTP session: aiosmtpd's command loop with our DATA, BDAT, AUTH and policy.

aiosmtpd (given) keeps the parts it does well: the command loop, STARTTLS
(with the pre-TLS buffer flushed), HELO/EHLO state, MAIL/RCPT syntax and
parameters, RSET, NOOP, QUIT, VRFY.  We replace what it cannot do for a
production MTA:

- DATA and BDAT stream into a spool file as they arrive (aiosmtpd holds the
  whole message in memory), through ``dotdata`` (no SMTP smuggling), with
  the inactivity timeout reset per chunk rather than per command;
- AUTH PLAIN/LOGIN verify through the accounts module, off the event loop,
  with its throttling (aiosmtpd's authenticator hook is synchronous);
- every reply carries an enhanced status code (``replies``), and the EHLO
  answer advertises PIPELINING, ENHANCEDSTATUSCODES and CHUNKING;
- errors are counted per session, connections per client address.

What is accepted and where it goes is ``policy``'s business; this module
moves bytes.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
from base64 import b64decode
from typing import TYPE_CHECKING

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope

from .. import metrics
from ..daemon import session_id
from ..accounts.auth import Outcome
from .address import parse_path
from .dotdata import DataDecoder
from .replies import code_of, enhance
from .spool import SpoolFile

if TYPE_CHECKING:
    from .policy import Policy

log = logging.getLogger("mailstack.smtp")

CHUNK = 64 * 1024
_BDAT = re.compile(r"^(\d{1,15})(?: +(LAST))?$", re.IGNORECASE)


@functools.cache
def _command_names(cls: type) -> list[str]:
    return sorted(n for n in dir(cls) if n.startswith(("smtp_", "auth_")))


class MailEnvelope(Envelope):
    """aiosmtpd's envelope plus what the policy learnt and the transfer in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.declared_size = 0
        self.accounts: dict = {}  # login -> AccountInfo, local recipients after expansion
        self.reached_by: dict[str, list[str]] = {}  # login -> the RCPT addresses that reached it
        self.remote: list[str] = []
        self.spool: SpoolFile | None = None  # BDAT in progress
        self.msg_id = ""


class SmtpSession(SMTP):
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(self, policy: Policy, *, tls_context, implicit_tls: bool, loop: asyncio.AbstractEventLoop,
                 peer: tuple[str, int] | None = None):
        cfg = policy.cfg
        submission = policy.submission
        super().__init__(
            policy,
            data_size_limit=cfg.limits.max_message_size,
            enable_SMTPUTF8=True,
            hostname=cfg.hostname,
            ident="ESMTP mailstack",
            tls_context=None if implicit_tls else tls_context,
            require_starttls=submission and not implicit_tls,
            timeout=cfg.smtp.timeout,
            auth_required=submission,
            auth_require_tls=True,
            auth_exclude_mechanism=None if submission else ["PLAIN", "LOGIN"],
            loop=loop,
        )
        # aiosmtpd keeps these in a class-level dict that every EHLO grows: keep ours.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        # On 465 the whole connection is TLS: AUTH needs no STARTTLS there.
        self._auth_require_tls = not implicit_tls
        self.policy = policy
        self.implicit_tls = implicit_tls
        self.errors = 0
        self.client_ip = ""
        self._proxied_peer = peer  # the client a PROXY header named (smtp/proxied.py), else None
        self._refused = False
        self.id = session_id("s")  # in every log line of this session

    def __dir__(self) -> list[str]:
        """aiosmtpd finds its commands and AUTH mechanisms with dir() and
        inspect.getmembers() on every new connection; answering from a list
        made once per class saves about 100 µs per connection."""
        return _command_names(type(self))

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        if self._original_transport is None and self.transport is None:  # not the STARTTLS re-entry
            peer = self._proxied_peer or transport.get_extra_info("peername")
            self.client_ip = peer[0] if peer else ""
            refusal = self.policy.server.open_connection(self, self.client_ip)
            if refusal:
                self._refused = True
                transport.write(refusal.encode() + b"\r\n")
                transport.close()
                return
            listener = self.policy.listener
            metrics.CONNECTIONS.labels("smtp", str(listener.port)).inc()
            log.info("session=%s connect client=%s port=%d kind=%s tls=%s",
                     self.id, self.client_ip, listener.port, listener.kind, listener.tls)
        super().connection_made(transport)
        if self._proxied_peer is not None:  # aiosmtpd's session.peer is the socket's peer
            self.session.peer = self._proxied_peer

    def connection_lost(self, error) -> None:
        if self._refused:
            return
        if self in self.policy.server.connections.open:
            log.info("session=%s disconnect user=%s", self.id, getattr(self.session, "auth_data", None) or "-")
        self.policy.server.close_connection(self, self.client_ip)
        self._drop_bdat()
        super().connection_lost(error)

    def _create_envelope(self) -> MailEnvelope:
        self._drop_bdat()  # RSET, HELO or STARTTLS during BDAT
        return MailEnvelope()

    def _drop_bdat(self) -> None:
        env = getattr(self, "envelope", None)
        if isinstance(env, MailEnvelope) and env.spool is not None:
            env.spool.discard()
            env.spool = None
            self.policy.server.release_transfer(self.client_ip)

    @property
    def tls_active(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def tls_description(self) -> str | None:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is None:
            return None
        return f"using {ssl_object.version()} with cipher {ssl_object.cipher()[0]}"

    # -- replies ---------------------------------------------------------------------

    async def push(self, status) -> None:
        if isinstance(status, bytes):  # AUTH challenges
            await super().push(status)
            return
        line = enhance(status)
        await super().push(line)
        code = code_of(line)
        if code >= 400 and code != 421:
            self.errors += 1
            if self.errors > self.policy.cfg.smtp.max_errors:
                log.warning("session=%s client=%s too many errors; disconnecting", self.id, self.client_ip)
                await super().push("421 4.7.0 Too many errors; closing connection")
                self.transport.close()

    async def _push_raw(self, line: str) -> None:
        await super().push(line)

    async def handle_exception(self, error: Exception) -> str:
        log.exception("session=%s client=%s session error", self.id, self.client_ip)
        return "451 4.3.0 Internal error; try again later"

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return parse_path(arg)

    # -- greetings -------------------------------------------------------------------

    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self._set_rset_state()
        self.session.extended_smtp = False
        self.session.host_name = hostname
        await self._push_raw(f"250 {self.hostname}")

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname, f"SIZE {self.data_size_limit}", "8BITMIME", "SMTPUTF8", "PIPELINING", "CHUNKING",
                 "ENHANCEDSTATUSCODES"]
        if self.tls_context and not self._tls_protocol:
            lines.append("STARTTLS")
        if self._auth_methods and (self.tls_active or not self._auth_require_tls):
            lines.append("AUTH " + " ".join(sorted(self._auth_methods)))
        for line in lines[:-1]:
            self._writer.write(f"250-{line}\r\n".encode())
        await self._push_raw(f"250 {lines[-1]}")

    # -- AUTH ------------------------------------------------------------------------

    async def auth_PLAIN(self, _, args: list[str]) -> AuthResult:  # noqa: N802 (aiosmtpd's name)
        blob = await self._auth_value(args[1] if len(args) > 1 else None, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            await self.push("501 5.5.2 Cannot decode AUTH PLAIN value")
            return AuthResult(success=False, handled=True)
        return await self._verify(parts[1], parts[2])

    async def auth_LOGIN(self, _, args: list[str]) -> AuthResult:  # noqa: N802
        user = await self._auth_value(args[1] if len(args) > 1 else None, self.AuthLoginUsernameChallenge)
        if user is None:
            return AuthResult(success=False, handled=True)
        password = await self._auth_value(None, self.AuthLoginPasswordChallenge)
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._verify(user, password)

    async def _auth_value(self, initial: str | None, challenge: str) -> bytes | None:
        """The initial response, or the answer to a 334 challenge; None once an error is sent."""
        if initial is not None:
            if initial == "=":  # RFC 4954: an empty initial response
                return b""
            try:
                return b64decode(initial.encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Cannot decode base64")
                return None
        value = await self.challenge_auth(challenge)
        return None if value is MISSING else value

    async def _verify(self, user: bytes, password: bytes) -> AuthResult:
        result = await self.policy.auth.authenticate_async(
            user.decode("utf-8", "replace"), password.decode("utf-8", "replace"), self.client_ip, "smtp", self.id
        )
        if result.ok:
            return AuthResult(success=True, auth_data=result.login, message=f"235 2.7.0 Authenticated as {result.login}")
        if result.outcome is Outcome.UNAVAILABLE:
            return AuthResult(success=False, handled=False, message="454 4.7.0 Temporary authentication failure")
        if result.outcome in (Outcome.DISABLED, Outcome.PENDING):
            return AuthResult(success=False, handled=False, message="535 5.7.8 Account not usable: contact your administrator")
        return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")

    # -- message transfer ------------------------------------------------------------

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        env = self.envelope
        if not env.rcpt_tos:
            await self.push("503 5.5.1 Need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if env.spool is not None:
            await self.push("503 5.5.1 BDAT in progress; DATA not allowed")
            return
        server = self.policy.server
        if not await server.acquire_transfer(self.client_ip):
            await self.push("451 4.3.2 Too many messages in transit; try again later")
            return
        try:
            spool = self.policy.open_spool(self)
            try:
                await self._push_raw("354 End data with <CR><LF>.<CR><LF>")
                decoder = DataDecoder()
                while True:
                    chunk = await self._reader.read(CHUNK)
                    if not chunk:
                        raise ConnectionResetError("connection closed during DATA")
                    self._reset_timeout()
                    fed = decoder.feed(chunk)
                    spool.write(fed.data)
                    if fed.done:
                        if fed.rest:  # pipelined commands: give them back to the command loop
                            self._reader._buffer[0:0] = fed.rest
                        break
            except BaseException:
                spool.discard()
                raise
            status = await self._finish(spool, bare_newline=decoder.bare_newline)
        finally:
            server.release_transfer(self.client_ip)
        await self.push(status)

    async def smtp_BDAT(self, arg: str) -> None:
        m = _BDAT.match(arg or "")
        if not m:
            # The chunk's length is unknown: the session cannot stay in step.
            await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
            await self._push_raw("421 4.7.0 Closing connection")
            self.transport.close()
            return
        size, last = int(m.group(1)), bool(m.group(2))
        env = self.envelope
        refusal = None
        if not self.session.host_name:
            refusal = "503 5.5.1 Send EHLO first"
        elif self._auth_required and not self.session.authenticated:
            refusal = "530 5.7.0 Authentication required"
        elif not env.rcpt_tos:
            refusal = "503 5.5.1 Need RCPT command"
        if refusal:
            await self._skip(size)  # RFC 3030: the chunk is read even when refused
            await self.push(refusal)
            return
        server = self.policy.server
        if env.spool is None:
            if not await server.acquire_transfer(self.client_ip):
                await self._skip(size)
                await self.push("451 4.3.2 Too many messages in transit; try again later")
                self._set_rset_state()
                return
            try:
                env.spool = self.policy.open_spool(self)  # the slot goes with it (see _drop_bdat)
            except Exception:
                server.release_transfer(self.client_ip)
                log.exception("session=%s client=%s cannot open a spool", self.id, self.client_ip)
                await self._skip(size)
                await self.push("451 4.3.0 Cannot store the message now; try again later")
                self._set_rset_state()
                return
        spool = env.spool
        remaining = size
        while remaining:
            chunk = await self._reader.read(min(remaining, CHUNK))
            if not chunk:
                raise ConnectionResetError("connection closed during BDAT")
            self._reset_timeout()
            spool.write(chunk)
            remaining -= len(chunk)
        if spool.error is not None:  # the chunk was read to its end: still in step
            log.error("session=%s client=%s spool write failed: %s", self.id, self.client_ip, spool.error)
            self._set_rset_state()  # drops the BDAT transfer and its slot
            await self.push("451 4.3.0 Cannot store the message now; try again later")
            return
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        env.spool = None  # delivery owns it now
        try:
            status = await self._finish(spool, bare_newline=False, is_data=False)
        finally:
            server.release_transfer(self.client_ip)
        await self.push(status)

    async def _skip(self, size: int) -> None:
        while size:
            chunk = await self._reader.read(min(size, CHUNK))
            if not chunk:
                raise ConnectionResetError("connection closed during BDAT")
            self._reset_timeout()
            size -= len(chunk)

    async def _finish(self, spool: SpoolFile, bare_newline: bool, is_data: bool = True) -> str:
        """End of a transfer: refuse, or hand the message to the policy; the envelope is reset."""
        try:
            if bare_newline:
                spool.discard()
                return "554 5.5.2 Bare CR or LF in message: lines must end with CRLF"
            if spool.too_large:
                spool.discard()
                return f"552 5.3.4 Message exceeds the limit of {spool.limit} bytes"
            if spool.error is not None:
                log.error("session=%s client=%s spool write failed: %s", self.id, self.client_ip, spool.error)
                spool.discard()
                return "451 4.3.0 Cannot store the message now; try again later"
            spool.crlf_only = is_data
            return await self.policy.accept(self, spool)
        finally:
            self._set_post_data_state()
