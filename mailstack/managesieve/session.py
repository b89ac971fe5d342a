"""One ManageSieve session: the states (not authenticated, authenticated) and every command.

The session never touches a socket: the daemon (server.py) hands it an
``Io`` that reads, writes, starts TLS and closes, and ``Services`` that
authenticate and run blocking work (the script store, the directory) in a
thread.  Commands run one at a time, in order; what a client sends
meanwhile waits in the parser.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any, Callable, Protocol, TypeVar

from ..accounts.auth import Authenticator, Outcome
from ..accounts.directory import DirectoryError
from ..config import Config
from ..mailboxes import scripts_for
from ..sieve import SUPPORTED_EXTENSIONS, SieveError
from ..sieve.scripts import ScriptError, ScriptStore
from .protocol import (
    MAX_LINE, NEED_DATA, Atom, BadLine, Command, Event, LiteralTooLarge, Parser, Reply, String,
    capability_lines, literal, response, string, tag_code,
)

log = logging.getLogger("mailstack.managesieve")
T = TypeVar("T")

MAX_ERRORS = 20  # error responses in one session before BYE (as smtp.max_errors' default)
DISCARD_MAX = 1 << 20  # a literal over the bound but under this is dropped (NO); a bigger one gets BYE
SERVICE = "managesieve"  # in the auth log line and the login metrics

USAGE = {
    "AUTHENTICATE": 'AUTHENTICATE "PLAIN" ["initial response"]',
    "NOOP": 'NOOP ["tag"]',
    "HAVESPACE": 'HAVESPACE "name" size',
    "PUTSCRIPT": 'PUTSCRIPT "name" {size+} script',
    "SETACTIVE": 'SETACTIVE "name" (or "" to deactivate)',
    "GETSCRIPT": 'GETSCRIPT "name"',
    "DELETESCRIPT": 'DELETESCRIPT "name"',
    "RENAMESCRIPT": 'RENAMESCRIPT "old name" "new name"',
    "CHECKSCRIPT": "CHECKSCRIPT {size+} script",
}
ANY_STATE = frozenset({"CAPABILITY", "LOGOUT", "NOOP"})
NOT_AUTHENTICATED = frozenset({"STARTTLS", "AUTHENTICATE"})
AUTHENTICATED = frozenset({
    "HAVESPACE", "PUTSCRIPT", "LISTSCRIPTS", "SETACTIVE", "GETSCRIPT", "DELETESCRIPT", "RENAMESCRIPT",
    "CHECKSCRIPT", "UNAUTHENTICATE",
})
_REFUSALS = {
    Outcome.BAD_CREDENTIALS: ("authentication failed", ""),
    Outcome.LOCKED: ("too many failures: try again later", ""),
    Outcome.DISABLED: ("account disabled: contact your administrator", ""),
    Outcome.PENDING: ("account not activated yet", ""),
    Outcome.UNAVAILABLE: ("authentication temporarily unavailable", "TRYLATER"),
}


class Io(Protocol):
    """What the network layer offers the session."""

    peer: str  # the client's address (the one a PROXY header named)
    tls_active: bool
    can_starttls: bool  # a STARTTLS listener, TLS not started yet

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...  # TimeoutError when the client stops reading
    async def read(self) -> bytes: ...  # b"" at the end; TimeoutError after the idle timeout
    async def start_tls(self) -> bool: ...  # False (connection closed) if the handshake failed
    def close(self) -> None: ...


class Services(Protocol):
    """What the sessions of one process share."""

    cfg: Config
    auth: Authenticator

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...


class No(Exception):
    """A NO response; ``error`` counts toward MAX_ERRORS (protocol misuse, failed logins)."""

    def __init__(self, text: str, code: str = "", error: bool = False):
        super().__init__(text)
        self.text, self.code, self.error = text, code, error


class Session:
    def __init__(self, services: Services, io: Io, sid: str):
        self.services = services
        self.io = io
        self.id = sid
        self.parser = Parser(MAX_LINE, MAX_LINE)  # small literals until a login
        self.user: str | None = None
        self.store: ScriptStore | None = None
        self.errors = 0
        self.closed = False

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Greet, then serve commands until LOGOUT, the end of the connection, or a BYE."""
        try:
            self.io.write(self._capabilities() + response("OK", "mailstack ManageSieve ready"))
            while not self.closed:
                event = await self._next_event()
                if event is None:
                    return
                await self._handle(event)
                if not self.closed:
                    await self.io.drain()
        except TimeoutError:
            log.info("session=%s client=%s idle for too long; disconnecting", self.id, self.io.peer)
            self._bye("idle for too long, disconnecting")

    async def _next_event(self) -> Event | None:
        while True:
            event = self.parser.next_event()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            data = await self.io.read()
            if not data:
                self.closed = True
                return None
            self.parser.feed(data)

    async def _handle(self, event: Event) -> None:
        try:
            if isinstance(event, Command):
                await self._command(event)
            elif isinstance(event, BadLine):
                raise No(f"syntax error: {event.message}", error=True)
            elif isinstance(event, LiteralTooLarge):
                self._too_large(event)
            # a Reply comes only inside AUTHENTICATE (_sasl_reply)
        except No as e:
            self._no(e)

    def _no(self, e: No) -> None:
        self.io.write(response("NO", e.text, e.code))
        if e.error:
            self.errors += 1
            if self.errors >= MAX_ERRORS:
                log.warning("session=%s client=%s too many errors; disconnecting", self.id, self.io.peer)
                self._bye("too many errors")

    def _bye(self, text: str, code: str = "") -> None:
        self.io.write(response("BYE", text, code))
        self.io.close()
        self.closed = True

    def _too_large(self, event: LiteralTooLarge) -> None:
        """A literal over the bound; the parser drops it as it comes.  A huge
        one is not worth receiving: BYE (RFC 5804 §1.3 lets the server close
        at any time) rather than a long wait for a NO."""
        script = event.command in ("PUTSCRIPT", "CHECKSCRIPT") and self.user is not None
        code = "QUOTA/MAXSIZE" if script else ""
        what = f"a script has at most {event.limit} bytes" if script else f"a string has at most {event.limit} bytes here"
        if event.size > DISCARD_MAX:
            log.warning("session=%s client=%s literal of %d bytes; disconnecting", self.id, self.io.peer, event.size)
            self._bye(what, code)
            return
        raise No(what, code, error=not script)

    def _capabilities(self) -> bytes:
        caps: list[tuple[str, str | None]] = [
            ("IMPLEMENTATION", "mailstack"),
            ("SASL", "PLAIN" if self.io.tls_active else ""),  # no password before TLS
            ("SIEVE", " ".join(sorted(SUPPORTED_EXTENSIONS))),
        ]
        if self.io.can_starttls and not self.io.tls_active:
            caps.append(("STARTTLS", None))
        caps += [
            ("MAXREDIRECTS", str(self._max_redirects())),
            ("VERSION", "1.0"),
            ("UNAUTHENTICATE", None),
        ]
        return capability_lines(caps)

    def _max_redirects(self) -> int:
        """The logged-in account's limit, else the configured one ([sieve])."""
        if self.store is not None:
            return self.store.limits.max_redirects
        return self.services.cfg.sieve.max_redirects

    # -- dispatch ---------------------------------------------------------------------

    async def _command(self, cmd: Command) -> None:
        name = cmd.name
        if name in AUTHENTICATED and self.user is None:
            raise No(f"{name}: authenticate first", error=True)
        if name in NOT_AUTHENTICATED and self.user is not None:
            raise No(f"{name}: already authenticated", error=True)
        if name not in ANY_STATE | NOT_AUTHENTICATED | AUTHENTICATED:
            raise No(f"unknown command {name[:40]}", error=True)
        await getattr(self, "cmd_" + name.lower())(cmd)

    @staticmethod
    def _strings(cmd: Command, least: int, most: int) -> list[String]:
        if not least <= len(cmd.args) <= most or not all(isinstance(a, String) for a in cmd.args):
            raise No(f"syntax: {USAGE.get(cmd.name, cmd.name)}", error=True)
        return list(cmd.args)  # type: ignore[arg-type]

    @staticmethod
    def _text(arg: String, what: str = "a script name") -> str:
        try:
            return arg.text()
        except UnicodeDecodeError:
            raise No(f"{what} must be UTF-8", error=True) from None

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking store operation in a thread; its refusals as NO."""
        try:
            return await self.services.run(fn, *args)
        except ScriptError as e:
            raise No(str(e), e.code) from None
        except SieveError as e:
            raise No(str(e)) from None
        except OSError as e:
            log.error("session=%s user=%s script store: %s", self.id, self.user, e)
            raise No("the script store is unavailable: try again later", "TRYLATER") from None

    # -- any state --------------------------------------------------------------------

    async def cmd_capability(self, cmd: Command) -> None:
        self.io.write(self._capabilities() + response("OK", "capability completed"))

    async def cmd_logout(self, cmd: Command) -> None:
        self.io.write(response("OK", "logout completed"))
        try:
            await self.io.drain()
        finally:
            self.io.close()
            self.closed = True

    async def cmd_noop(self, cmd: Command) -> None:
        args = self._strings(cmd, 0, 1)
        self.io.write(response("OK", "done", tag_code(args[0].data) if args else ""))

    # -- not authenticated ------------------------------------------------------------

    async def cmd_starttls(self, cmd: Command) -> None:
        if cmd.args:
            raise No("syntax: STARTTLS", error=True)
        if self.io.tls_active:
            raise No("TLS is already active", error=True)
        if not self.io.can_starttls:
            raise No("STARTTLS is not offered on this port", error=True)
        self.io.write(response("OK", "begin TLS negotiation now"))
        # Anything the client sent after STARTTLS came in clear: never taken as
        # if it had come through TLS (the Io drops its own buffer too).
        self.parser.reset()
        if not await self.io.start_tls():
            self.closed = True
            return
        log.info("session=%s client=%s starttls", self.id, self.io.peer)
        # RFC 5804 §2.2: the capabilities again, unasked, once TLS is up.
        self.io.write(self._capabilities() + response("OK", "TLS negotiation successful"))

    async def cmd_authenticate(self, cmd: Command) -> None:
        args = self._strings(cmd, 1, 2)
        mechanism = self._text(args[0], "a SASL mechanism").upper()
        if not self.io.tls_active:
            raise No("start TLS first (STARTTLS)", "ENCRYPT-NEEDED", error=True)
        if mechanism != "PLAIN":
            raise No(f"unsupported SASL mechanism {mechanism[:40]}: use PLAIN", error=True)
        if len(args) == 2:
            data = args[1].data
        else:
            self.io.write(b'""\r\n')  # an empty challenge: PLAIN has none
            await self.io.drain()
            got = await self._sasl_reply()
            if got is None:
                return
            data = got
        if data.strip() == b"*":
            raise No("authentication cancelled", error=True)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise No("invalid base64 in the SASL response", error=True) from None
        parts = raw.split(b"\0")
        if len(parts) != 3:
            raise No("invalid PLAIN response (authzid NUL authcid NUL password)", error=True)
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise No("the user name and password must be UTF-8", error=True) from None
        if authzid and authzid.lower() != authcid.lower():
            raise No("authorization identity must be empty or your own", error=True)
        await self._login(authcid, password)

    async def _sasl_reply(self) -> bytes | None:
        """The client's answer to our challenge; None if the connection ended."""
        self.parser.expect_reply()
        event = await self._next_event()
        if event is None:
            return None
        if isinstance(event, Reply):
            return event.value.data
        if isinstance(event, LiteralTooLarge):
            self._too_large(event)
        raise No("invalid SASL response: expected one string", error=True)

    async def _login(self, user: str, password: str) -> None:
        auth = self.services.auth
        result = await auth.authenticate_async(user, password, self.io.peer, SERVICE, self.id)
        if not result.ok:
            text, code = _REFUSALS.get(result.outcome, ("authentication failed", ""))
            raise No(text, code, error=result.outcome is not Outcome.UNAVAILABLE)
        assert result.login is not None
        try:
            info = await self.services.run(auth.directory.get, result.login)
        except DirectoryError:  # deleted meanwhile
            raise No("authentication failed", error=True) from None
        self.store = scripts_for(self.services.cfg, info)
        self.user = result.login
        self.parser.max_literal = max(MAX_LINE, self.store.limits.max_script_size)
        log.info("session=%s login user=%s client=%s", self.id, result.login, self.io.peer)
        self.io.write(response("OK", "logged in"))

    # -- authenticated ----------------------------------------------------------------

    async def cmd_unauthenticate(self, cmd: Command) -> None:
        if cmd.args:
            raise No("syntax: UNAUTHENTICATE", error=True)
        log.info("session=%s unauthenticate user=%s", self.id, self.user)
        self.user, self.store = None, None
        self.parser.max_literal = MAX_LINE
        self.io.write(response("OK", "unauthenticated"))

    async def cmd_havespace(self, cmd: Command) -> None:
        args = cmd.args
        if len(args) != 2 or not isinstance(args[0], String) or not isinstance(args[1], Atom) \
                or not args[1].value.isdigit() or len(args[1].value) > 10:
            raise No(f"syntax: {USAGE['HAVESPACE']}", error=True)
        assert self.store is not None
        await self._store(self.store.have_space, self._text(args[0]), int(args[1].value))
        self.io.write(response("OK", "putscript would succeed"))

    async def cmd_putscript(self, cmd: Command) -> None:
        name_arg, script_arg = self._strings(cmd, 2, 2)
        name, text = self._text(name_arg), self._text(script_arg, "a script")
        assert self.store is not None
        await self._store(self.store.put, name, text)
        log.info("session=%s putscript user=%s name=%s bytes=%d", self.id, self.user, ascii(name), len(script_arg.data))
        self.io.write(response("OK", "script stored"))

    async def cmd_checkscript(self, cmd: Command) -> None:
        (script_arg,) = self._strings(cmd, 1, 1)
        text = self._text(script_arg, "a script")
        assert self.store is not None
        await self._store(self.store.check, text)
        self.io.write(response("OK", "script is valid"))

    async def cmd_listscripts(self, cmd: Command) -> None:
        if cmd.args:
            raise No("syntax: LISTSCRIPTS", error=True)
        assert self.store is not None
        scripts = await self._store(self.store.list)
        lines = b"".join(string(n) + (b" ACTIVE" if active else b"") + b"\r\n" for n, active in scripts)
        self.io.write(lines + response("OK", "listscripts completed"))

    async def cmd_setactive(self, cmd: Command) -> None:
        (name_arg,) = self._strings(cmd, 1, 1)
        name = self._text(name_arg)
        assert self.store is not None
        await self._store(self.store.activate, name or None)
        log.info("session=%s setactive user=%s name=%s", self.id, self.user, ascii(name) if name else "-")
        self.io.write(response("OK", "script activated" if name else "no script active"))

    async def cmd_getscript(self, cmd: Command) -> None:
        (name_arg,) = self._strings(cmd, 1, 1)
        assert self.store is not None
        text = await self._store(self.store.get, self._text(name_arg))
        self.io.write(literal(text.encode("utf-8")) + b"\r\n" + response("OK", "getscript completed"))

    async def cmd_deletescript(self, cmd: Command) -> None:
        (name_arg,) = self._strings(cmd, 1, 1)
        name = self._text(name_arg)
        assert self.store is not None
        await self._store(self.store.delete, name)
        log.info("session=%s deletescript user=%s name=%s", self.id, self.user, ascii(name))
        self.io.write(response("OK", "script deleted"))

    async def cmd_renamescript(self, cmd: Command) -> None:
        old_arg, new_arg = self._strings(cmd, 2, 2)
        old, new = self._text(old_arg), self._text(new_arg)
        assert self.store is not None
        await self._store(self.store.rename, old, new)
        log.info("session=%s renamescript user=%s name=%s new=%s", self.id, self.user, ascii(old), ascii(new))
        self.io.write(response("OK", "script renamed"))


__all__ = ["Io", "MAX_ERRORS", "No", "Services", "Session"]
