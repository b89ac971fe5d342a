"""One IMAP session: the protocol state machine and the command handlers.

The session never touches a socket.  The server hands it bytes
(``data_received``) and gives it an ``Io`` to write, stream files, start
TLS, run blocking store work in a thread and wait.  Commands run one at a
time, in order; what a pipelining client sends meanwhile is parsed and
queued (up to a bound, then reading pauses).
"""

from __future__ import annotations

import base64
import binascii
import logging
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, BinaryIO, Callable, Protocol

from ..accounts.auth import Authenticator, AuthResult, Outcome
from .. import metrics
from ..config import Config
from ..mailboxes import mailbox_for
from ..store.folder import KeywordLimit, OverQuota
from ..store.mailbox import FolderExists, Mailbox, NoSuchFolder
from ..store.maildir import MessageTooLarge
from ..store.names import INBOX, FolderNameError, decode_mutf7, normalize
from . import format as fmt
from . import parser as p
from .errors import Bad, No
from .view import Update, View

log = logging.getLogger("mailstack.imap")

MAX_QUEUED = 64
CAP_BASE = [
    "IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT",
    "CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "CONDSTORE", "QRESYNC",
    "ESEARCH", "SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "QUOTA",
    "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE", "UTF8=ACCEPT", "BINARY",
]
SYSTEM_FLAGS = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]


class Io(Protocol):
    """What the network layer offers the session."""

    tls: bool
    peer: str

    def write(self, data: bytes) -> None: ...
    def stream(self, f: BinaryIO, length: int) -> Awaitable[None]: ...
    def start_tls(self) -> None: ...
    def close(self) -> None: ...
    def blocking(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...
    def sleep(self, seconds: float) -> Awaitable[None]: ...
    def pause_reading(self) -> None: ...
    def drain(self) -> Awaitable[None]: ...
    def resume_reading(self) -> None: ...
    def run(self, coro: Awaitable[None]) -> None: ...


@dataclass
class _Append:
    tag: str
    folder_name: str
    flags: list[str]
    date: datetime | None
    size: int
    spool: BinaryIO


class Session:
    def __init__(
        self,
        cfg: Config,
        authenticator: Authenticator,
        io: Io,
        session_id: str,
        users: dict[str, int] | None = None,
    ):
        self.cfg = cfg
        self.auth = authenticator
        self.io = io
        self.id = session_id
        self.reader = p.Reader()
        self.state = "nonauth"
        self.user: AuthResult | None = None
        self.mailbox: Mailbox | None = None
        self.view: View | None = None
        self.queue: deque[p.CommandLine | tuple] = deque()
        self.busy = False
        self.mode = "command"  # command | idle
        self.continuation: Callable[[bytes], Awaitable[None]] | None = None
        self.append: _Append | None = None
        self.enabled: set[str] = set()
        self.closed = False
        self.idle_done = None
        self.current_append: _Append | None = None
        self.limit = cfg.limits.max_message_size
        self.users = users if users is not None else {}

    # -- greeting and capabilities ------------------------------------------------------------

    def start(self) -> None:
        self.io.write(f"* OK [CAPABILITY {' '.join(self.capabilities())}] mailstack ready\r\n".encode())

    def capabilities(self) -> list[str]:
        caps = list(CAP_BASE) + [f"APPENDLIMIT={self.limit}"]
        if self.state == "nonauth":
            if not self.io.tls:
                caps += ["STARTTLS", "LOGINDISABLED"]
            else:
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
        return caps

    # -- input -------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        events = self.reader.feed(data)
        while events:
            for ev in events:
                self._event(ev)
            events = self.reader.resume() if self.reader._mode != "pending" and self.reader._buf else []
        self._pump()

    def _event(self, ev: p.Event) -> None:
        if isinstance(ev, p.LiteralPending):
            self._literal_pending(ev)
            for e in self.reader.resume():
                self._event(e)
        elif isinstance(ev, p.LiteralData):
            if self.append is not None:
                self.append.spool.write(ev.data)
        elif isinstance(ev, p.LiteralEnd):
            pass
        elif isinstance(ev, p.LineTooLong):
            self._discard_append()
            self._enqueue(("toolong", ev.tag))
        elif self.mode == "idle":
            # Only DONE is expected while idling; it ends the IDLE command.
            if ev.raw().strip().upper() == b"DONE":
                self.mode = "command"
                if self.idle_done is not None and not self.idle_done.called:
                    self.idle_done.callback(None)
            else:
                self.io.write(b"* BAD expected DONE\r\n")
        elif self.continuation is not None:
            cont, self.continuation = self.continuation, None
            cont(ev.raw())
        elif self.append is not None and ev.tag.decode("ascii", "replace") == self.append.tag:
            self._enqueue(("append", ev, self.append))
            self.append = None
        else:
            self._discard_append()
            self._enqueue(ev)

    def _enqueue(self, item) -> None:
        self.queue.append(item)
        if len(self.queue) > MAX_QUEUED:
            self.io.pause_reading()

    def _pump(self) -> None:
        if self.busy or self.closed or not self.queue:
            return
        self.busy = True
        self.io.run(self._drain())

    async def _drain(self) -> None:
        try:
            while self.queue and not self.closed:
                item = self.queue.popleft()
                if len(self.queue) == MAX_QUEUED // 2:
                    self.io.resume_reading()
                await self._handle(item)
        finally:
            self.busy = False

    def _literal_pending(self, ev: p.LiteralPending) -> None:
        """Decide what to do with an announced literal before its bytes arrive."""
        prefix = ev.prefix
        if prefix.rstrip().upper().endswith(b"UTF8 ("):  # RFC 6855: APPEND ... UTF8 (~{n})
            prefix = prefix.rstrip()[:-1]
        try:
            head = p.tokenize([prefix])
        except p.ParseError:
            head = []
        is_append = len(head) >= 3 and isinstance(head[1], p.Atom) and head[1].upper() == "APPEND"
        if self.mode != "command" or self.continuation is not None:
            self.reader.refuse()
            return
        if self.append is not None:  # cannot happen: a command ends before the next begins
            self._discard_append()
        if not is_append:
            if ev.size > self.reader.max_buffered_literal:
                self.reader.refuse()
                self._enqueue(("bad", ev.tag, "literal too large"))
                return
            self.reader.buffer()
            if ev.synchronizing:
                self.io.write(b"+ Ready\r\n")
            return
        tag = ev.tag.decode("ascii", "replace")
        checked = self._append_check(head, ev.size)
        if isinstance(checked, No):
            self.reader.refuse()
            self._enqueue(("no", tag, str(checked), checked.code))
            return
        name, flags, date = checked
        spool = tempfile.TemporaryFile(dir=self.cfg.storage.spool if self.cfg.storage.spool.is_dir() else None)
        self.append = _Append(tag, name, flags, date, ev.size, spool)
        self.reader.stream()
        if ev.synchronizing:
            self.io.write(b"+ Ready for literal data\r\n")

    def _append_args(self, head: list) -> tuple[str, list[str], datetime | None]:
        args = head[2:]
        name = self._mailbox_arg(args[0])
        flags: list[str] = []
        date = None
        for a in args[1:]:
            if isinstance(a, list):
                flags = p.flags(a)
            elif isinstance(a, bytes):
                date = _parse_date_time(a.decode("ascii", "replace"))
            elif isinstance(a, p.Atom) and a.upper() == "UTF8":
                continue
            else:
                raise p.ParseError("unexpected APPEND argument")
        return name, flags, date

    def _append_check(self, head: list, size: int) -> tuple[str, list[str], datetime | None] | No:
        """The APPEND's (folder, flags, date), or the refusal to send before the literal."""
        if self.state not in ("auth", "selected"):
            return No("not logged in")
        if size > self.limit:
            return No(f"message larger than {self.limit} bytes", "TOOBIG")
        try:
            args = self._append_args(head)
        except (p.ParseError, FolderNameError) as e:
            return No(f"bad APPEND arguments: {e}")
        assert self.mailbox is not None
        if not self.mailbox.exists(args[0]):
            return No("no such folder", "TRYCREATE")
        try:
            self.mailbox.quota.check(size, 1)
        except Exception:
            return No("over quota", "OVERQUOTA")
        return args

    # -- dispatch -----------------------------------------------------------------------------------

    async def _handle(self, item) -> None:
        ap = None
        if isinstance(item, tuple):
            kind = item[0]
            if kind == "toolong":
                self.io.write(f"{_tag(item[1])} BAD line too long\r\n".encode())
                return
            if kind == "bad":
                self.io.write(f"{_tag(item[1])} BAD {item[2]}\r\n".encode())
                return
            if kind == "no":
                code = f"[{item[3]}] " if item[3] else ""
                self.io.write(f"{item[1]} NO {code}{item[2]}\r\n".encode())
                return
            _, line, ap = item
        else:
            line = item
        self.current_append = ap
        try:
            cmd = p.parse_command(line)
        except p.ParseError as e:
            self._close_current_append()
            self.io.write(f"{_tag(line.tag)} BAD {e}\r\n".encode())
            return
        handler = getattr(self, "cmd_" + cmd.name.replace(" ", "_").replace("-", "_"), None)
        started = time.monotonic()
        try:
            if handler is None:
                raise Bad(f"unknown command {cmd.name[:30]}")
            self._check_state(cmd.name)
            result = await handler(cmd)
            if result is not False:
                text = result if isinstance(result, str) else f"{cmd.name} completed"
                self.io.write(f"{cmd.tag} OK {text}\r\n".encode())
        except No as e:
            code = f"[{e.code}] " if e.code else ""
            self.io.write(f"{cmd.tag} NO {code}{e}\r\n".encode())
        except (Bad, p.ParseError, FolderNameError) as e:
            self.io.write(f"{cmd.tag} BAD {e}\r\n".encode())
        except (NoSuchFolder,) as e:
            self.io.write(f"{cmd.tag} NO [NONEXISTENT] {e}\r\n".encode())
        except OverQuota as e:
            self.io.write(f"{cmd.tag} NO [OVERQUOTA] {e}\r\n".encode())
        except Exception:
            log.exception("session=%s command %s failed", self.id, cmd.name)
            self.io.write(f"{cmd.tag} NO [SERVERBUG] internal error, the session goes on\r\n".encode())
        finally:
            self._close_current_append()
            took = time.monotonic() - started
            metrics.COMMAND_SECONDS.labels(metrics.command_label(cmd.name)).observe(took)
            log.debug("session=%s %s %.1f ms", self.id, cmd.name, took * 1000)

    def _discard_append(self) -> None:
        if self.append is not None:
            self.append.spool.close()
            self.append = None

    def _close_current_append(self) -> None:
        if self.current_append is not None:
            self.current_append.spool.close()
            self.current_append = None

    _STATES = {
        "nonauth": {"CAPABILITY", "NOOP", "LOGOUT", "ID", "STARTTLS", "LOGIN", "AUTHENTICATE"},
        "auth": {
            "CAPABILITY", "NOOP", "LOGOUT", "ID", "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME",
            "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE", "IDLE",
            "GETQUOTA", "GETQUOTAROOT",
        },
    }

    def _check_state(self, name: str) -> None:
        if self.state == "selected":
            if name in ("STARTTLS", "LOGIN", "AUTHENTICATE"):
                raise Bad("already logged in")
            return
        allowed = self._STATES[self.state]
        if name not in allowed:
            if self.state == "nonauth":
                raise Bad(f"{name} needs a login first")
            if name in ("LOGIN", "AUTHENTICATE", "STARTTLS"):
                raise Bad("already logged in")
            raise Bad(f"{name} needs a selected folder")

    # -- updates ------------------------------------------------------------------------------------

    async def announce(self, allow_expunge: bool) -> None:
        if self.view is None:
            return
        up: Update = await self.io.blocking(self.view.refresh, allow_expunge)
        self._write_update(up)

    def _write_update(self, up: Update) -> None:
        out = []
        if up.expunged:
            if "QRESYNC" in self.enabled:
                out.append(b"* VANISHED " + fmt.sequence_set(up.expunged) + b"\r\n")
            else:
                out += [f"* {s} EXPUNGE\r\n".encode() for s in up.expunged_seqs]
        if up.exists is not None:
            out.append(f"* {up.exists} EXISTS\r\n".encode())
        out.append(self._flag_changes(up.changed))
        if any(out):
            self.io.write(b"".join(out))

    def _flag_changes(self, messages) -> bytes:
        """Untagged FETCH (UID FLAGS [MODSEQ]) for flag changes to announce."""
        assert self.view is not None
        out = []
        for m in messages:
            seq = self.view.seq_of(m.uid)
            if seq is None:
                continue
            items = [(b"UID", str(m.uid).encode()), (b"FLAGS", fmt.flag_list(self._flags(m)))]
            if "CONDSTORE" in self.enabled:
                items.append((b"MODSEQ", f"({m.modseq})".encode()))
            out.append(fmt.fetch_response(seq, items))
        return b"".join(out)

    def _flags(self, m) -> list[str]:
        return sorted(m.flags) + (["\\Recent"] if self.view and m.uid in self.view.recent else [])

    # -- any state ------------------------------------------------------------------------------------

    async def cmd_CAPABILITY(self, cmd: p.Command):
        self.io.write(f"* CAPABILITY {' '.join(self.capabilities())}\r\n".encode())

    async def cmd_NOOP(self, cmd: p.Command):
        await self.announce(allow_expunge=True)

    async def cmd_CHECK(self, cmd: p.Command):
        await self.announce(allow_expunge=True)

    async def cmd_LOGOUT(self, cmd: p.Command):
        self.io.write(b"* BYE mailstack logging out\r\n")
        self.io.write(f"{cmd.tag} OK LOGOUT completed\r\n".encode())
        self.close()
        return False

    async def cmd_ID(self, cmd: p.Command):
        self.io.write(b'* ID ("name" "mailstack" "vendor" "mailstack")\r\n')

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.user is not None and self.user.login:
                n = self.users.get(self.user.login, 1) - 1
                if n > 0:
                    self.users[self.user.login] = n
                else:
                    self.users.pop(self.user.login, None)
            self._discard_append()
            if self.view is not None:
                self.view.folder.close()
                self.view = None
            self.io.close()

    # -- not authenticated -------------------------------------------------------------------------------

    async def cmd_STARTTLS(self, cmd: p.Command):
        if self.io.tls:
            raise Bad("TLS is already active")
        self.io.write(f"{cmd.tag} OK begin TLS negotiation now\r\n".encode())
        # Everything the client sent after STARTTLS in clear is thrown away
        # (the CVE-2011-0411 class of injection).
        self.queue.clear()
        self.reader = p.Reader()
        self.io.start_tls()
        return False

    async def cmd_LOGIN(self, cmd: p.Command):
        if not self.io.tls:
            raise No("plaintext login is disabled: use STARTTLS first", "PRIVACYREQUIRED")
        if len(cmd.args) != 2:
            raise Bad("LOGIN needs a user name and a password")
        user, password = p.text(cmd.args[0], "user name"), p.text(cmd.args[1], "password")
        return await self._login(user, password)

    async def cmd_AUTHENTICATE(self, cmd: p.Command):
        if not self.io.tls:
            raise No("authentication needs TLS: use STARTTLS first", "PRIVACYREQUIRED")
        if not cmd.args or not isinstance(cmd.args[0], p.Atom):
            raise Bad("AUTHENTICATE needs a mechanism")
        mech = cmd.args[0].upper()
        initial = p.text(cmd.args[1]) if len(cmd.args) > 1 else None
        if mech == "PLAIN":
            data = await self._sasl_step(cmd, "", initial)
            if data is None:
                return False
            parts = data.split(b"\0")
            if len(parts) != 3:
                raise Bad("malformed PLAIN response")
            authzid, user, password = (x.decode("utf-8", "replace") for x in parts)
            if authzid and authzid.lower() != user.lower():
                raise No("authorization identity must be the user", "AUTHORIZATIONFAILED")
            return await self._login(user, password)
        if mech == "LOGIN":
            user_b = await self._sasl_step(cmd, base64.b64encode(b"Username:").decode(), initial)
            if user_b is None:
                return False
            pw_b = await self._sasl_step(cmd, base64.b64encode(b"Password:").decode(), None)
            if pw_b is None:
                return False
            return await self._login(user_b.decode("utf-8", "replace"), pw_b.decode("utf-8", "replace"))
        raise No(f"unsupported mechanism {mech[:20]}")

    async def _sasl_step(self, cmd: p.Command, challenge: str, initial: str | None) -> bytes | None:
        """One SASL exchange; None if the client cancelled (already answered)."""
        if initial is not None:
            raw = initial.encode()
        else:
            self.io.write(f"+ {challenge}\r\n".encode())
            raw = await self._next_line()
        if raw.strip() == b"*":
            self.io.write(f"{cmd.tag} BAD authentication cancelled\r\n".encode())
            return None
        if raw.strip() == b"=":
            return b""
        try:
            return base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise Bad("invalid base64") from None

    def _next_line(self) -> Awaitable[bytes]:
        """The client's next line, raw (a SASL response): taken by _event
        before it reaches the command queue."""
        from twisted.internet.defer import Deferred

        d: Deferred = Deferred()
        self.continuation = d.callback
        return d

    async def _login(self, user: str, password: str):
        result: AuthResult = await self.io.blocking(self.auth.authenticate, user, password, self.io.peer, "imap", self.id)
        if result.delay:
            await self.io.sleep(result.delay)
        if result.outcome is Outcome.OK:
            assert result.login is not None
            if self.users.get(result.login, 0) >= self.cfg.imap.max_per_user:
                raise No(f"too many sessions for {result.login}: close some", "LIMIT")
            self.users[result.login] = self.users.get(result.login, 0) + 1
            self.user = result  # from here close() gives the slot back
            info = await self.io.blocking(self.auth.directory.get, result.login)
            self.mailbox = await self.io.blocking(mailbox_for, self.cfg, info)
            self.state = "auth"
            log.info("session=%s login user=%s client=%s", self.id, result.login, self.io.peer)
            return f"[CAPABILITY {' '.join(self.capabilities())}] logged in"
        raise No(*_AUTH_REFUSALS.get(result.outcome, ("authentication failed", "AUTHENTICATIONFAILED")))

    # -- authenticated -----------------------------------------------------------------------------------

    async def cmd_ENABLE(self, cmd: p.Command):
        done = []
        for a in cmd.args:
            name = str(a).upper()
            if name in ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT") and name not in self.enabled:
                self.enabled.add(name)
                if name == "QRESYNC":
                    self.enabled.add("CONDSTORE")
                done.append(name)
        self.io.write(("* ENABLED" + "".join(" " + d for d in done) + "\r\n").encode())

    async def cmd_NAMESPACE(self, cmd: p.Command):
        self.io.write(b'* NAMESPACE (("" "/")) NIL NIL\r\n')

    def _mailbox_arg(self, token) -> str:
        raw = p.text(token, "folder name")
        if "UTF8=ACCEPT" not in self.enabled:
            try:
                raw = "/".join(decode_mutf7(part) for part in raw.split("/"))
            except FolderNameError:
                raise Bad("folder name is not valid modified UTF-7") from None
        return normalize(raw)

    def _name(self, name: str) -> bytes:
        return fmt.mailbox(name, utf8="UTF8=ACCEPT" in self.enabled)

    async def cmd_SELECT(self, cmd: p.Command, readonly: bool = False):
        if not cmd.args:
            raise Bad("SELECT needs a folder")
        name = self._mailbox_arg(cmd.args[0])
        qresync = None
        condstore = False
        if len(cmd.args) > 1:
            params = cmd.args[1]
            if not isinstance(params, list):
                raise Bad("invalid SELECT parameters")
            i = 0
            while i < len(params):
                key = str(params[i]).upper()
                if key == "CONDSTORE":
                    condstore = True
                elif key == "QRESYNC" and i + 1 < len(params) and isinstance(params[i + 1], list):
                    if "QRESYNC" not in self.enabled:
                        raise Bad("QRESYNC must be enabled first")
                    qresync = params[i + 1]
                    i += 1
                else:
                    raise Bad(f"unknown SELECT parameter {key[:20]}")
                i += 1
        if condstore:
            self.enabled.add("CONDSTORE")
        if self.view is not None:
            old = self.view
            self.view = None
            self.state = "auth"
            old.folder.close()
            self.io.write(b"* OK [CLOSED] previous folder closed\r\n")
        assert self.mailbox is not None
        mb = self.mailbox
        try:
            view = await self.io.blocking(lambda: View(mb.folder(name, max_age=1.0), readonly))
        except NoSuchFolder:
            raise No(f"no folder {name}", "NONEXISTENT") from None
        self.view = view
        self.state = "selected"
        f = view.folder
        unseen = next((i + 1 for i, u in enumerate(view.uids) if "\\Seen" not in view.messages[u].flags), None)
        keywords = sorted({k for m in view.messages.values() for k in m.flags if not k.startswith("\\")})
        out = [
            f"* FLAGS ({' '.join(SYSTEM_FLAGS + keywords)})\r\n",
            f"* OK [PERMANENTFLAGS ({' '.join(SYSTEM_FLAGS + keywords)} \\*)] flags permitted\r\n"
            if not readonly
            else "* OK [PERMANENTFLAGS ()] read-only\r\n",
            f"* {len(view)} EXISTS\r\n",
            "* 0 RECENT\r\n",
        ]
        if unseen:
            out.append(f"* OK [UNSEEN {unseen}] first unseen\r\n")
        out += [
            f"* OK [UIDVALIDITY {f.uidvalidity}] UIDs valid\r\n",
            f"* OK [UIDNEXT {f.uidnext}] predicted next UID\r\n",
            f"* OK [HIGHESTMODSEQ {view.modseq}] highest\r\n",
        ]
        self.io.write("".join(out).encode())
        if qresync is not None:
            await self._qresync(qresync)
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return f"[{mode}] {'EXAMINE' if readonly else 'SELECT'} completed"

    async def cmd_EXAMINE(self, cmd: p.Command):
        return await self.cmd_SELECT(cmd, readonly=True)

    async def _qresync(self, params: list) -> None:
        """SELECT ... (QRESYNC (uidvalidity modseq [known-uids])): tell what vanished and changed."""
        assert self.view is not None
        if len(params) < 2:
            raise Bad("QRESYNC needs a UIDVALIDITY and a MODSEQ")
        validity, since = p.number(params[0]), p.number(params[1])
        view = self.view
        if validity != view.folder.uidvalidity:
            return
        known = p.sequence_set(params[2], view.largest(True)) if len(params) > 2 and isinstance(params[2], p.Atom) else None

        def work():
            gone, complete = view.folder.expunged_since(since)
            if not complete:
                # The record does not reach back that far: every UID the
                # client may know that is not here any more has vanished.
                top = known[-1][1] if known else view.largest(True)
                present = set(view.uids)
                ranges = known or [(1, top)]
                gone = [u for lo, hi in ranges for u in range(lo, min(hi, top) + 1) if u not in present][:100000]
            elif known:
                gone = [u for u in gone if p.in_ranges(u, known)]
            changed = [m for m in view.folder.changed_since(since) if m.uid in view.messages]
            return gone, changed

        gone, changed = await self.io.blocking(work)
        if gone:
            self.io.write(b"* VANISHED (EARLIER) " + fmt.sequence_set(gone) + b"\r\n")
        self.io.write(self._flag_changes(changed))  # QRESYNC implies CONDSTORE: with MODSEQ

    async def cmd_CREATE(self, cmd: p.Command):
        if not cmd.args:
            raise Bad("CREATE needs a folder name")
        raw = p.text(cmd.args[0]).rstrip("/")
        name = self._mailbox_arg(p.Atom(raw) if isinstance(cmd.args[0], p.Atom) else raw.encode())
        use = None
        if len(cmd.args) > 1:
            opts = cmd.args[1]
            if isinstance(opts, list) and len(opts) == 2 and str(opts[0]).upper() == "USE" and isinstance(opts[1], list):
                uses = [str(u) for u in opts[1]]
                if len(uses) != 1:
                    raise No("one special use at a time", "USEATTR")
                use = uses[0]
            else:
                raise Bad("invalid CREATE parameters")
        assert self.mailbox is not None
        try:
            await self.io.blocking(self.mailbox.create, name, use)
        except FolderExists:
            raise No(f"{name} already exists", "ALREADYEXISTS") from None
        except FolderNameError as e:
            if use is not None and "special use" in str(e):
                raise No(str(e), "USEATTR") from None
            raise No(str(e), "CANNOT") from None

    async def cmd_DELETE(self, cmd: p.Command):
        name = self._mailbox_arg(cmd.args[0]) if cmd.args else ""
        if not name:
            raise Bad("DELETE needs a folder")
        if self.view is not None and self.view.folder.name == name:
            raise No("cannot delete the selected folder", "INUSE")
        assert self.mailbox is not None
        try:
            await self.io.blocking(self.mailbox.delete, name)
        except NoSuchFolder:
            raise No(f"no folder {name}", "NONEXISTENT") from None
        except FolderNameError as e:
            raise No(str(e), "CANNOT") from None

    async def cmd_RENAME(self, cmd: p.Command):
        if len(cmd.args) != 2:
            raise Bad("RENAME needs two folder names")
        old, new = self._mailbox_arg(cmd.args[0]), self._mailbox_arg(cmd.args[1])
        assert self.mailbox is not None
        try:
            await self.io.blocking(self.mailbox.rename, old, new)
        except NoSuchFolder:
            raise No(f"no folder {old}", "NONEXISTENT") from None
        except FolderExists:
            raise No(f"{new} already exists", "ALREADYEXISTS") from None
        except FolderNameError as e:
            raise No(str(e), "CANNOT") from None

    async def cmd_SUBSCRIBE(self, cmd: p.Command):
        assert self.mailbox is not None
        name = self._mailbox_arg(cmd.args[0]) if cmd.args else ""
        await self.io.blocking(self.mailbox.subscribe, name)

    async def cmd_UNSUBSCRIBE(self, cmd: p.Command):
        assert self.mailbox is not None
        name = self._mailbox_arg(cmd.args[0]) if cmd.args else ""
        await self.io.blocking(self.mailbox.unsubscribe, name)

    async def cmd_LSUB(self, cmd: p.Command):
        return await self._list(cmd, lsub=True)

    async def cmd_LIST(self, cmd: p.Command):
        return await self._list(cmd, lsub=False)

    async def _list(self, cmd: p.Command, lsub: bool):
        args = list(cmd.args)
        select_opts: list[str] = []
        if args and isinstance(args[0], list):
            select_opts = [str(a).upper() for a in args.pop(0)]
        if len(args) < 2:
            raise Bad("LIST needs a reference and a pattern")
        ref = p.text(args[0], "reference")
        patterns_tok = args[1]
        patterns = [p.text(x) for x in patterns_tok] if isinstance(patterns_tok, list) else [p.text(patterns_tok)]
        return_opts: list = []
        if len(args) > 2:
            if len(args) != 4 or str(args[2]).upper() != "RETURN" or not isinstance(args[3], list):
                raise Bad("invalid LIST options")
            return_opts = args[3]
        want_status = None
        returns = {str(x).upper() for x in return_opts if isinstance(x, p.Atom)}
        want_special = "SPECIAL-USE" in returns or not return_opts
        for i, x in enumerate(return_opts):
            if isinstance(x, p.Atom) and x.upper() == "STATUS" and i + 1 < len(return_opts):
                want_status = [str(s).upper() for s in return_opts[i + 1]]
        subscribed_only = lsub or "SUBSCRIBED" in select_opts
        special_only = "SPECIAL-USE" in select_opts
        utf8 = "UTF8=ACCEPT" in self.enabled
        if patterns == [""] and not lsub:
            self.io.write(b'* LIST (\\Noselect) "/" ""\r\n')
            return
        assert self.mailbox is not None
        infos = await self.io.blocking(self.mailbox.list)
        out = []
        regexes = []
        for pat in patterns:
            if not utf8:
                try:
                    pat = "/".join(decode_mutf7(x) for x in pat.split("/"))
                except FolderNameError:
                    pass
            regexes.append(_pattern(ref + pat))
        for info in infos:
            if not any(r.match(info.name) for r in regexes):
                continue
            if subscribed_only and not info.subscribed:
                continue
            if special_only and not info.special_use:
                continue
            attrs = []
            if not info.selectable:
                attrs.append("\\Noselect" if lsub else "\\NonExistent" if "SUBSCRIBED" in select_opts else "\\Noselect")
            attrs.append("\\HasChildren" if info.has_children else "\\HasNoChildren")
            if info.subscribed and ("SUBSCRIBED" in select_opts or "SUBSCRIBED" in returns):
                attrs.append("\\Subscribed")
            if info.special_use and (want_special or special_only):
                attrs.append(info.special_use)
            kind = "LSUB" if lsub else "LIST"
            out.append(f"* {kind} ({' '.join(attrs)}) \"/\" ".encode() + self._name(info.name) + b"\r\n")
            if want_status and info.selectable:
                out.append(await self._status_line(info.name, want_status))
        self.io.write(b"".join(out))

    async def cmd_STATUS(self, cmd: p.Command):
        if len(cmd.args) != 2 or not isinstance(cmd.args[1], list):
            raise Bad("STATUS needs a folder and a list of items")
        name = self._mailbox_arg(cmd.args[0])
        items = [str(x).upper() for x in cmd.args[1]]
        self.io.write(await self._status_line(name, items))

    async def _status_line(self, name: str, items: list[str]) -> bytes:
        assert self.mailbox is not None
        mb = self.mailbox

        def work():
            f = mb.folder(name)
            try:
                return f.status()
            finally:
                f.close()

        try:
            st = await self.io.blocking(work)
        except NoSuchFolder:
            raise No(f"no folder {name}", "NONEXISTENT") from None
        values = {
            "MESSAGES": st.messages, "RECENT": 0, "UIDNEXT": st.uidnext, "UIDVALIDITY": st.uidvalidity,
            "UNSEEN": st.unseen, "HIGHESTMODSEQ": st.highestmodseq, "SIZE": st.size, "DELETED": st.deleted,
        }
        parts = []
        for it in items:
            if it not in values:
                raise Bad(f"unknown STATUS item {it[:20]}")
            parts.append(f"{it} {values[it]}")
        return b"* STATUS " + self._name(name) + f" ({' '.join(parts)})\r\n".encode()

    async def cmd_APPEND(self, cmd: p.Command):
        ap = self.current_append
        if ap is None:
            raise Bad("APPEND needs a message literal")
        self.current_append = None
        assert self.mailbox is not None
        mb = self.mailbox
        spool = ap.spool
        limit = self.limit

        def work():
            spool.seek(0)
            f = mb.folder(ap.folder_name)
            try:
                uid = f.deliver(spool, ap.flags, internal_date=ap.date, limit=limit)
                return f.uidvalidity, uid
            finally:
                f.close()

        try:
            validity, uid = await self.io.blocking(work)
        except NoSuchFolder:
            raise No("no such folder", "TRYCREATE") from None
        except MessageTooLarge:
            raise No(f"message larger than {limit} bytes", "TOOBIG") from None
        except KeywordLimit as e:
            raise No(str(e), "LIMIT") from None
        finally:
            spool.close()
        if self.view is not None:
            await self.announce(allow_expunge=False)
        return f"[APPENDUID {validity} {uid}] APPEND completed"

    async def cmd_IDLE(self, cmd: p.Command):
        """Push changes until DONE; the folder watcher is polled four times a second."""
        from twisted.internet.defer import Deferred

        from ..store.notify import FolderWatcher

        self.idle_done = done = Deferred()
        self.mode = "idle"
        self.io.write(b"+ idling\r\n")
        view = self.view
        # inotify sees only this machine's changes: a shared mail root is polled.
        watcher = FolderWatcher(view.folder.path, use_inotify=not view.folder.shared) if view is not None else None
        try:
            if view is not None:
                await self.announce(allow_expunge=True)
                view.folder.index.release()  # an idle session should cost little memory
            # Polling (a shared mail root) stats the folder on a network file
            # system: in a pool thread, and less often than inotify is read.
            polled = watcher is not None and not watcher.uses_inotify
            while not done.called and not self.closed:
                await self.io.sleep(2.0 if polled else 0.25)
                if watcher is None or done.called:
                    continue
                if await self.io.blocking(watcher.drain) if polled else watcher.drain():
                    await self.announce(allow_expunge=True)
                    if view is not None:
                        view.folder.index.release()
        finally:
            if watcher is not None:
                watcher.close()
            self.mode = "command"
            self.idle_done = None
        return "IDLE terminated"

    async def cmd_GETQUOTAROOT(self, cmd: p.Command):
        name = self._mailbox_arg(cmd.args[0]) if cmd.args else INBOX
        self.io.write(b"* QUOTAROOT " + self._name(name) + b' ""\r\n')
        await self._quota_line()

    async def cmd_GETQUOTA(self, cmd: p.Command):
        if not cmd.args or p.text(cmd.args[0]) != "":
            raise No("no such quota root", "NONEXISTENT")
        await self._quota_line()

    async def _quota_line(self) -> None:
        assert self.mailbox is not None
        u = await self.io.blocking(self.mailbox.usage)
        res = []
        if u.bytes_limit:
            res.append(f"STORAGE {u.bytes // 1024} {u.bytes_limit // 1024}")
        if u.messages_limit:
            res.append(f"MESSAGE {u.messages} {u.messages_limit}")
        self.io.write(f'* QUOTA "" ({" ".join(res)})\r\n'.encode())

    # -- selected --------------------------------------------------------------------------------------

    async def cmd_CLOSE(self, cmd: p.Command):
        assert self.view is not None
        view = self.view
        if not view.readonly:
            await self.io.blocking(view.folder.expunge)
        self.view = None
        self.state = "auth"
        view.folder.close()

    async def cmd_UNSELECT(self, cmd: p.Command):
        assert self.view is not None
        self.view.folder.close()
        self.view = None
        self.state = "auth"

    async def cmd_EXPUNGE(self, cmd: p.Command, uids: list[int] | None = None):
        view = self._writable()
        removed = await self.io.blocking(view.folder.expunge, uids)
        self._announce_removed(removed)
        await self.announce(allow_expunge=True)

    async def cmd_UID_EXPUNGE(self, cmd: p.Command):
        view = self._writable()
        if not cmd.args:
            raise Bad("UID EXPUNGE needs a UID set")
        uids = view.uids_in(p.sequence_set(cmd.args[0], view.largest(True)), by_uid=True)
        return await self.cmd_EXPUNGE(cmd, uids)

    def _announce_removed(self, uids: list[int]) -> None:
        assert self.view is not None
        if "QRESYNC" in self.enabled:
            self.view.remove_local(uids)
            if uids:
                self.io.write(b"* VANISHED " + fmt.sequence_set(uids) + b"\r\n")
        else:
            seqs = self.view.remove_local(uids)
            self.io.write(b"".join(f"* {s} EXPUNGE\r\n".encode() for s in seqs))

    def _writable(self) -> View:
        assert self.view is not None
        if self.view.readonly:
            raise No("the folder is read-only (EXAMINE)", "READ-ONLY")
        return self.view

    # FETCH, STORE, SEARCH, COPY, MOVE, SORT, THREAD live in commands.py
    from .commands import (  # noqa: E402
        cmd_COPY,
        cmd_FETCH,
        cmd_MOVE,
        cmd_SEARCH,
        cmd_SORT,
        cmd_STORE,
        cmd_THREAD,
        cmd_UID_COPY,
        cmd_UID_FETCH,
        cmd_UID_MOVE,
        cmd_UID_SEARCH,
        cmd_UID_SORT,
        cmd_UID_STORE,
        cmd_UID_THREAD,
    )


_AUTH_REFUSALS = {
    Outcome.BAD_CREDENTIALS: ("authentication failed", "AUTHENTICATIONFAILED"),
    Outcome.LOCKED: ("too many failures: try again later", "AUTHENTICATIONFAILED"),
    Outcome.DISABLED: ("account disabled: contact your administrator", "CONTACTADMIN"),
    Outcome.PENDING: ("account not activated yet", "CONTACTADMIN"),
    Outcome.UNAVAILABLE: ("authentication temporarily unavailable", "UNAVAILABLE"),
}


def _tag(raw: bytes) -> str:
    t = raw.decode("ascii", "replace")
    return t if t and p._TAG.match(raw) else "*"


def _pattern(pattern: str):
    """LIST pattern: * matches anything, % anything but the separator."""
    import re

    out = []
    for c in pattern:
        out.append(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c))
    rx = "".join(out)
    if pattern.upper().startswith("INBOX"):
        rx = "(?i:INBOX)" + "".join(out[5:])
    return re.compile("^" + rx + "$")




def _parse_date_time(s: str) -> datetime:
    """IMAP date-time: "25-Nov-2026 01:47:28 +0100"."""
    try:
        return datetime.strptime(s.strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        raise p.ParseError("invalid date-time") from None


