"""Real IMAP clients driven against an IMAP server, for mailstack's IMAP tests.

Why: mailstack's IMAP server must work with the clients people actually run,
not with a client we wrote to agree with it. This module drives five of them
over real sockets (and real TLS) on loopback:

* ``imaplib`` (stdlib) and ``imapclient`` (PyPI): in process, see
  :func:`imaplib_connect` and :func:`imapclient_connect`;
* Twisted's ``IMAP4Client``: in a subprocess (a reactor cannot be restarted
  inside pytest), scripted with a list of actions, see
  :func:`twisted_client_session`;
* ``mbsync`` (Debian ``isync``) and ``offlineimap`` (Debian ``offlineimap``,
  i.e. offlineimap3 on Debian's own Python 3): whole synchronisations between
  the server and a local Maildir, see :func:`mbsync_sync` and
  :func:`offlineimap_sync`; the local Maildir is described after each run
  (:func:`read_maildir`) and can be changed between runs
  (:func:`set_local_flags`, :func:`add_local_message`).

It was proven against Dovecot 2.3.19 (``tests/test_imap_clients_harness.py``).
Versions seen there: isync (mbsync) 1.4.4 and offlineimap 8.0.0 (Debian
``offlineimap3``, imaplib2 3.05, running on Debian's ``/usr/bin/python3``, not
on the venv), imapclient 4.1.0, Twisted 26.10, Python 3.11.

What the clients sent (read from their protocol traces against Dovecot; a
server for them must accept all of it):

* mbsync: reads capabilities from the greeting's ``[CAPABILITY]`` code (and
  from ``LOGIN``'s OK), ``STARTTLS`` then ``CAPABILITY``; ``LOGIN`` (or
  ``AUTHENTICATE PLAIN <initial response>`` with SASL-IR); ``NAMESPACE`` only
  when advertised; ``LIST "" "*"`` (skips ``\\Noselect`` parents, so
  ``Archive/2026`` syncs although ``Archive`` does not exist); ``SELECT``;
  ``UID FETCH 1:<uidnext-1> (UID FLAGS)``; ``UID FETCH n (BODY.PEEK[])``;
  ``UID STORE n +FLAGS.SILENT (...)`` / ``-FLAGS.SILENT``; ``CHECK``;
  ``APPEND "box" (flags) {n+}`` (LITERAL+ when advertised, else a
  synchronizing literal), learning the new UID from ``[APPENDUID v uid]``
  (UIDPLUS; it used that code even when UIDPLUS was not advertised); ``CREATE``; ``CLOSE`` after each folder (that is how it
  *expunges*: local deletions become ``+FLAGS.SILENT (\\Deleted)`` then
  ``CLOSE``; it never sent ``EXPUNGE``); ``LOGOUT``. Up to 3 commands in
  flight (pipelining). It adds an ``X-TUID: <12 chars>`` header to every
  message it uploads, and it is stored. After a UIDVALIDITY change it
  re-matches messages with ``UID FETCH 1:n (UID FLAGS BODY.PEEK[HEADER.FIELDS
  (MESSAGE-ID)])`` and goes on ("Recovered from change of UIDVALIDITY").
* offlineimap: ``CAPABILITY``; ``ID ("name" "OfflineIMAP" ...)`` before
  STARTTLS and login when ``ID`` is advertised; ``STARTTLS`` only if
  advertised (otherwise cleartext, silently); ``AUTHENTICATE PLAIN`` waiting
  for ``+`` (no SASL-IR), ``LOGIN`` as fallback; ``CAPABILITY`` again;
  ``LIST "" ""`` (for the separator) and ``LIST "" "*"``; per folder
  ``SELECT`` *then* ``EXAMINE`` and ``FETCH 1:* (FLAGS UID INTERNALDATE)``
  (sequence numbers, not UID FETCH; skipped when EXISTS is 0); ``UID FETCH n
  (BODY.PEEK[])``; ``SELECT`` again before writing; ``APPEND box (flags)
  "dd-Mon-yyyy hh:mm:ss +0000" {n}`` (synchronizing literal, date from the
  file); ``CHECK``; ``UID STORE n +FLAGS (\\Seen)``, one flag per command,
  non-silent; local deletions as ``UID STORE n +FLAGS (\\Deleted)`` then
  ``EXPUNGE`` (a ``\\Deleted`` flag set locally is only synced, not
  expunged); ``CREATE Drafts``; ``LOGOUT``. Without UIDPLUS (APPENDUID) it
  inserts an ``X-OfflineIMAP: <n>-<n>`` header into the message before
  ``APPEND`` and finds the UID with ``UID SEARCH HEADER X-OfflineIMAP "..."``
  (the header stays on the server copy). A changed UIDVALIDITY makes it skip
  the folder and exit 2 ("UID validity problem").
* Twisted IMAP4Client: tags ``0001`` ... in *hex* (``000A``); ``CAPABILITY``;
  ``LOGIN "user" "pass"``, ``AUTHENTICATE PLAIN`` with a ``+`` round trip;
  ``SELECT INBOX`` (atoms unquoted); ``FETCH 1:* (FLAGS)``, ``FETCH 2
  (RFC822)`` (sets \\Seen), ``FETCH 1 BODY.PEEK[]`` (no parentheses);
  ``STORE 2 +FLAGS (\\Answered)``; ``APPEND INBOX (\\Seen) {n}`` (synchronizing
  literal); ``SEARCH``, ``STATUS``, ``LIST``, ``LOGOUT``.
* imapclient: ``STARTTLS``, ``CAPABILITY``, ``LOGIN``, ``SELECT "INBOX"``,
  ``CAPABILITY``, ``UID SEARCH``, ``UID FETCH``, ``UID STORE n +FLAGS``,
  ``APPEND "INBOX" (flags) {n}``, ``LIST "" "*"``, ``STATUS "INBOX" (MESSAGES
  RECENT UIDNEXT UIDVALIDITY UNSEEN)``, ``LOGOUT``. imaplib: the same basics,
  ``SELECT INBOX`` unquoted.

Neither sync client stores keywords (mbsync 1.4 ignores them; offlineimap
needs a keyword mapping we do not configure), and both keep folder names in
modified UTF-7 on disk (``Archiv&AOk-/...``).

Client quirks the harness deals with (details at each function):

* mbsync keeps its state *in* the Maildir (``SyncState *``: ``.mbsyncstate``
  and ``.uidvalidity`` per folder) and puts the server UID in file names
  (``,U=<uid>``). When the Maildir changed within the current second it
  sleeps about 1 s ("Maildir notice: sleeping due to recent directory
  modification"), so a sync right after local changes takes over a second.
  Its ``AuthMechs *`` picks SASL mechanisms (Cyrus SASL modules), so the
  harness asks for ``LOGIN`` unless told otherwise.
* offlineimap keeps its status cache (SQLite, one file per folder, with the
  UIDVALIDITY) *outside* the Maildir, in ``state_dir``: reuse the same
  ``state_dir`` with the same ``local_dir``. Its local folder separator is
  ``.`` unless told otherwise; the harness sets ``sep = /`` so both sync
  clients lay folders out alike (``local_dir/INBOX``, ``local_dir/Archive/2026``).
  With STARTTLS it checks no certificate, falls back to cleartext when
  STARTTLS is not offered, and hangs now and then under TLS 1.3: the harness
  checks the trace for STARTTLS and caps that client at TLS 1.2. It exits 0
  after per-folder errors: the harness reads its ``ERROR:`` lines.
* Twisted's ``IMAP4Client.login()`` upgrades with STARTTLS whenever the server
  offers it (with an unverified default context if given none): the harness
  gives it a verifying context, and for a ``plain`` target sends ``LOGIN``
  itself.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

if TYPE_CHECKING:  # imported lazily: the harness must load without the optional clients
    import imaplib

    from imapclient import IMAPClient

TlsMode = Literal["implicit", "starttls", "plain"]

MBSYNC = "mbsync"
OFFLINEIMAP = "offlineimap"

#: Maildir info letters (after ``:2,``) and the IMAP system flags they stand for.
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
_LETTER_OF = {flag: letter for letter, flag in MAILDIR_FLAGS.items()}


class ClientError(RuntimeError):
    """A client could not be run, failed, or did not finish in time."""


def missing_clients() -> list[str]:
    """External client programs (mbsync, offlineimap) that are not installed."""
    return [name for name in (MBSYNC, OFFLINEIMAP) if shutil.which(name) is None]


# --- the server to talk to -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ImapTarget:
    """Where and how to reach the IMAP server, and whom to log in as.

    ``tls``: ``"implicit"`` (IMAPS, TLS from the first byte), ``"starttls"``
    (plain connection upgraded with STARTTLS before login) or ``"plain"`` (no
    TLS: loopback only). ``cafile``: the PEM certificate(s) to trust; clients
    trust only it when given, the system store otherwise. The server
    certificate is checked against ``host``, so a self-signed certificate for
    ``127.0.0.1`` (an IP SAN) works with every client here.
    """

    host: str
    port: int
    tls: TlsMode
    cafile: Path | None = None
    user: str
    password: str

    def __post_init__(self) -> None:
        if self.tls not in ("implicit", "starttls", "plain"):
            raise ValueError(f"tls must be implicit, starttls or plain, not {self.tls!r}")

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context (hostname checked) that trusts ``cafile``."""
        ctx = ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def as_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "cafile": str(self.cafile) if self.cafile else None}


# --- in-process clients: imaplib and imapclient ----------------------------------------------


def imaplib_connect(target: ImapTarget, *, login: bool = True, timeout: float = 15,
                    debug: int = 0) -> imaplib.IMAP4:
    """An ``imaplib`` connection, TLS as the target says, logged in unless ``login=False``.

    Use it as a context manager (``with imaplib_connect(t) as c:``) so it logs out.
    ``debug=4`` makes imaplib print the protocol trace on stderr.
    """
    import imaplib

    conn: imaplib.IMAP4
    if target.tls == "implicit":
        conn = imaplib.IMAP4_SSL(target.host, target.port, ssl_context=target.ssl_context(), timeout=timeout)
    else:
        conn = imaplib.IMAP4(target.host, target.port, timeout=timeout)
    conn.debug = debug
    try:
        if target.tls == "starttls":
            conn.starttls(ssl_context=target.ssl_context())
        if login:
            conn.login(target.user, target.password)
    except BaseException:
        _close_quietly(conn.shutdown)
        raise
    return conn


def imapclient_connect(target: ImapTarget, *, login: bool = True, timeout: float = 15) -> IMAPClient:
    """An ``imapclient.IMAPClient``, TLS as the target says, logged in unless ``login=False``.

    Use it as a context manager so it logs out. Its protocol trace goes to the
    ``imapclient`` logger at DEBUG level (pytest's caplog shows it).
    """
    from imapclient import IMAPClient

    implicit = target.tls == "implicit"
    client = IMAPClient(target.host, target.port, ssl=implicit, timeout=timeout,
                        ssl_context=target.ssl_context() if implicit else None)
    try:
        if target.tls == "starttls":
            client.starttls(target.ssl_context())
        if login:
            client.login(target.user, target.password)
    except BaseException:
        _close_quietly(client.shutdown)
        raise
    return client


def _close_quietly(shutdown: Any) -> None:
    """Close a connection that failed half-way (a failed TLS handshake leaves the socket closed)."""
    try:
        shutdown()
    except OSError:
        pass


# --- the local Maildir that the sync clients write ---------------------------------------------


@dataclass(frozen=True)
class LocalMessage:
    """One message file in the local Maildir, as a sync client left it."""

    folder: str
    path: Path
    flags: frozenset[str]  # IMAP system flags, from the letters after ":2,"
    info: str  # the raw letters after ":2," ("" when there are none)
    uid: int | None  # the server UID both clients put in the name (",U=<uid>"), if any

    def data(self) -> bytes:
        return self.path.read_bytes()

    def header(self, name: str) -> str | None:
        """One header of the message (first occurrence), decoded; None when absent."""
        with self.path.open("rb") as f:
            msg = email.parser.BytesHeaderParser(policy=email.policy.default).parse(f)
        value = msg.get(name)
        return None if value is None else str(value)


_INFO = re.compile(r":2,([^:/]*)$")
_UID = re.compile(r",U=(\d+)")


def _parse_name(folder: str, path: Path) -> LocalMessage:
    m = _INFO.search(path.name)
    info = m.group(1) if m else ""
    u = _UID.search(path.name)
    return LocalMessage(folder, path, frozenset(MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS),
                        info, int(u.group(1)) if u else None)


def read_maildir(root: Path) -> dict[str, list[LocalMessage]]:
    """Every folder under ``root`` (a directory with ``cur/``), by ``/``-separated name.

    Both sync clients are configured to lay folders out verbatim
    (``root/INBOX``, ``root/Archive/2026``), so the folder name is the path
    relative to ``root``. Messages are sorted by server UID, then file name.
    """
    folders: dict[str, list[LocalMessage]] = {}
    if not root.is_dir():
        return folders
    for cur in sorted(root.rglob("cur")):
        box = cur.parent
        if not cur.is_dir() or not (box / "new").is_dir():
            continue
        name = box.relative_to(root).as_posix()
        msgs = [_parse_name(name, p) for sub in ("new", "cur") for p in (box / sub).iterdir() if p.is_file()]
        folders[name] = sorted(msgs, key=lambda m: (m.uid is None, m.uid or 0, m.path.name))
    return folders


def set_local_flags(msg: LocalMessage, flags: Iterable[str]) -> LocalMessage:
    """Give a local message exactly these system flags, as a Maildir MUA does (rename into cur/).

    Letters that are not system flags (keywords, ``P``) are kept.
    """
    flags = set(flags)
    unknown = flags - set(_LETTER_OF)
    if unknown:
        raise ValueError(f"not Maildir system flags: {sorted(unknown)}")
    other = "".join(c for c in msg.info if c not in MAILDIR_FLAGS)
    info = "".join(sorted(_LETTER_OF[f] for f in flags)) + other
    base = _INFO.sub("", msg.path.name)
    target = msg.path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(info))}"
    msg.path.rename(target)
    return _parse_name(msg.folder, target)


_counter = 0


def add_local_message(root: Path, folder: str, data: bytes, flags: Iterable[str] = ()) -> Path:
    """Write a new message into a local folder (tmp/ then rename), as a Maildir MUA does.

    Without flags it goes to ``new/``; with flags to ``cur/`` with ``:2,<letters>``.
    The folder's ``cur/new/tmp`` are created when missing.
    """
    global _counter
    _counter += 1
    flags = set(flags)
    box = root / folder
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    now = time.time()
    base = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{_counter}.{socket.gethostname()}"
    tmp = box / "tmp" / base
    tmp.write_bytes(data)
    if flags:
        final = box / "cur" / f"{base}:2,{''.join(sorted(_LETTER_OF[f] for f in flags))}"
    else:
        final = box / "new" / base
    tmp.rename(final)
    return final


# --- the sync clients -------------------------------------------------------------------------


@dataclass
class SyncResult:
    """What one run of a sync client did: status, output, and the local Maildir after it."""

    client: str
    argv: list[str]
    returncode: int
    output: str  # stdout and stderr, interleaved
    seconds: float
    config: str  # the configuration file it ran with (password included: test accounts only)
    local_dir: Path
    folders: dict[str, list[LocalMessage]]

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> SyncResult:
        """Return self, or raise ClientError with the output when the client failed."""
        if not self.ok:
            raise ClientError(f"{self.client} exited with {self.returncode}:\n{self.output}\n"
                              f"--- configuration ---\n{self.config}")
        return self

    def messages(self, folder: str = "INBOX") -> list[LocalMessage]:
        return self.folders.get(folder, [])


def _run_client(client: str, argv: list[str], config: str, local_dir: Path, timeout: float,
                env: dict[str, str]) -> SyncResult:
    start = time.monotonic()
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode("utf-8", errors="replace")
        raise ClientError(f"{client} did not finish within {timeout} s:\n{out}\n--- configuration ---\n{config}")
    return SyncResult(client, argv, r.returncode, r.stdout.decode("utf-8", errors="replace"),
                      time.monotonic() - start, config, local_dir, read_maildir(local_dir))


def _client_env(home: Path) -> dict[str, str]:
    """A minimal environment: no user configuration (HOME is a scratch directory), no venv leaking."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home), "LANG": "C.UTF-8"}


def _mbsync_quote(value: str) -> str:
    """A double-quoted mbsync configuration string (backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mbsync_config(target: ImapTarget, local_dir: Path, folders: Sequence[str] | None = None, *,
                  expunge: bool = True, auth_mechs: str = "LOGIN", timeout: float = 20) -> str:
    """The mbsync (isync 1.4) configuration for one channel server <-> ``local_dir``.

    Why each choice:

    * ``SSLType`` IMAPS / STARTTLS / None; ``CertificateFile`` adds the CA and
      ``SystemCertificates no`` makes it the only trust anchor.
    * ``AuthMechs LOGIN`` by default: mbsync's ``*`` means "mechanisms secure
      enough for this SSLType", which excludes LOGIN/PLAIN without TLS, and
      any SASL mechanism (PLAIN included) needs Cyrus SASL modules
      (``libsasl2-modules``) that isync does not depend on. Pass
      ``auth_mechs="PLAIN"`` to exercise ``AUTHENTICATE PLAIN``.
    * ``SubFolders Verbatim``: ``local_dir/Archive/2026``; INBOX at ``local_dir/INBOX``.
    * ``Patterns *`` (INBOX included, as it lives under Path) or the given folders.
    * ``Sync All``, ``Create Both``, ``Expunge Both`` (or None), ``SyncState *``
      (state inside the Maildir, so no other directory must be kept).
    """
    lines = [
        "IMAPAccount remote",
        f"Host {target.host}",
        f"Port {target.port}",
        f"User {_mbsync_quote(target.user)}",
        f"Pass {_mbsync_quote(target.password)}",
        f"SSLType {({'implicit': 'IMAPS', 'starttls': 'STARTTLS', 'plain': 'None'})[target.tls]}",
        f"AuthMechs {auth_mechs}",
        f"Timeout {int(timeout)}",
    ]
    if target.cafile and target.tls != "plain":
        lines += [f"CertificateFile {_mbsync_quote(str(Path(target.cafile).absolute()))}", "SystemCertificates no"]
    patterns = " ".join(_mbsync_quote(f) for f in folders) if folders else "*"
    lines += [
        "",
        "IMAPStore remote",
        "Account remote",
        "",
        "MaildirStore local",
        f"Path {_mbsync_quote(str(local_dir.absolute()) + '/')}",
        f"Inbox {_mbsync_quote(str(local_dir.absolute() / 'INBOX'))}",
        "SubFolders Verbatim",
        "",
        "Channel sync",
        "Far :remote:",
        "Near :local:",
        f"Patterns {patterns}",
        "Sync All",
        "Create Both",
        f"Expunge {'Both' if expunge else 'None'}",
        "SyncState *",
        "",
    ]
    return "\n".join(lines)


def mbsync_sync(target: ImapTarget, local_dir: Path, folders: Sequence[str] | None = None, *,
                expunge: bool = True, auth_mechs: str = "LOGIN", debug: bool = False,
                timeout: float = 60) -> SyncResult:
    """Run ``mbsync -c CONF -a`` once (full two-way sync) and describe ``local_dir`` after it.

    The configuration (:func:`mbsync_config`) lives in a temporary directory;
    the sync state lives in the Maildir itself, so calling this again with the
    same ``local_dir`` is an incremental sync. ``debug=True`` adds ``-Dn``:
    the IMAP protocol trace (without message bodies) in ``output``.
    Does not raise when mbsync fails: call ``.check()``.
    """
    if shutil.which(MBSYNC) is None:
        raise ClientError("mbsync is not installed (Debian package isync)")
    local_dir.mkdir(parents=True, exist_ok=True)
    config = mbsync_config(target, local_dir, folders, expunge=expunge, auth_mechs=auth_mechs)
    with tempfile.TemporaryDirectory(prefix="mbsync-") as tmp:
        conf = Path(tmp) / "mbsyncrc"
        conf.write_text(config)
        conf.chmod(0o600)
        argv = [MBSYNC, *(["-Dn"] if debug else ["-q"]), "-c", str(conf), "-a"]
        return _run_client("mbsync", argv, config, local_dir, timeout, _client_env(Path(tmp)))


def _ini_value(value: str) -> str:
    """A value for offlineimap's ConfigParser: ``%`` doubled (interpolation), one line only."""
    if "\n" in value or "\r" in value:
        raise ValueError("offlineimap configuration values cannot contain line breaks")
    return value.replace("%", "%%")


def offlineimap_config(target: ImapTarget, local_dir: Path, state_dir: Path,
                       folders: Sequence[str] | None = None, *, expunge: bool = True,
                       auth_mechanisms: str = "PLAIN, LOGIN", maxconnections: int = 1) -> str:
    """The offlineimap (offlineimap3) configuration for one account server <-> ``local_dir``.

    Why each choice:

    * TLS: ``ssl = yes`` is implicit TLS, verified against ``sslcacertfile``
      and the host name (with ``ssl = yes`` and neither it nor
      ``cert_fingerprint`` offlineimap refuses to connect). STARTTLS is
      ``ssl = no`` with ``starttls = yes``, and there offlineimap 8.0.0 is
      weak: it verifies *no* certificate at all, and when the server does not
      advertise STARTTLS it silently goes on in cleartext (see
      :func:`offlineimap_sync`). ``plain`` is both off.
    * ``sep = /`` on the local Maildir: folders laid out like mbsync's
      (``local_dir/Archive/2026``); the default ``.`` would give ``Archive.2026``.
    * ``metadata = state_dir``: the status cache (SQLite, one database per
      folder; offlineimap3 rejects the old ``status_backend`` option), holding the UIDVALIDITY and every known UID
      with its flags) must survive between runs over the same ``local_dir``.
    * ``maxconnections``: offlineimap syncs several folders at once on as many
      connections (threads) and keeps one per folder; 1 makes traces readable.
    * ``folderfilter`` keeps only the given folders (server names).
    * ``expunge`` (remote repository): EXPUNGE after syncing deletions.
    """
    remote = [
        "type = IMAP",
        f"remotehost = {target.host}",
        f"remoteport = {target.port}",
        f"remoteuser = {_ini_value(target.user)}",
        f"remotepass = {_ini_value(target.password)}",
        f"ssl = {'yes' if target.tls == 'implicit' else 'no'}",
        f"starttls = {'yes' if target.tls == 'starttls' else 'no'}",
        f"auth_mechanisms = {auth_mechanisms}",
        f"maxconnections = {maxconnections}",
        "holdconnectionopen = no",
        f"expunge = {'yes' if expunge else 'no'}",
        "createfolders = True",
        "timeout = 30",
    ]
    if target.cafile and target.tls != "plain":
        remote.append(f"sslcacertfile = {_ini_value(str(Path(target.cafile).absolute()))}")
    if folders:
        remote.append(f"folderfilter = lambda name: name in {list(folders)!r}")
    return "\n".join([
        "[general]",
        "accounts = main",
        f"metadata = {_ini_value(str(state_dir.absolute()))}",
        "maxsyncaccounts = 1",
        "",
        "[Account main]",
        "localrepository = local",
        "remoterepository = remote",
        "",
        "[Repository local]",
        "type = Maildir",
        f"localfolders = {_ini_value(str(local_dir.absolute()))}",
        "sep = /",
        "",
        "[Repository remote]",
        *remote,
        "",
    ])


def _write_tls12_openssl_conf(directory: Path) -> Path:
    """An OpenSSL configuration that caps every TLS connection of a process at TLS 1.2."""
    path = directory / "openssl-tls12.cnf"
    path.write_text("openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = tls\n"
                    "[tls]\nMaxProtocol = TLSv1.2\n")
    return path


def offlineimap_sync(target: ImapTarget, local_dir: Path, folders: Sequence[str] | None = None, *,
                     state_dir: Path | None = None, expunge: bool = True,
                     auth_mechanisms: str = "PLAIN, LOGIN", maxconnections: int = 1,
                     debug: bool = False, check_starttls: bool = True,
                     starttls_tls12: bool = True, timeout: float = 60) -> SyncResult:
    """Run ``offlineimap -c CONF -o -u basic`` once and describe ``local_dir`` after it.

    ``state_dir`` (default: ``<local_dir>.offlineimap`` beside it) holds
    offlineimap's status cache; keep it with the Maildir across runs (see
    :func:`offlineimap_config`). ``debug=True`` adds ``-d imap``: the protocol
    trace in ``output`` (message bodies and the base64 AUTHENTICATE PLAIN
    response included; it also makes offlineimap single-threaded).

    STARTTLS: offlineimap falls back to cleartext when STARTTLS is not
    offered, so with a ``starttls`` target and ``check_starttls`` (the
    default) the run is traced (as with ``debug``) and counts as failed
    unless the trace shows ``STARTTLS`` answered OK. Pass
    ``check_starttls=False`` for very large messages (the trace holds them).
    And offlineimap's STARTTLS is racy under TLS 1.3: its imaplib2 (3.05)
    restarts a reader thread on the socket just wrapped, which meets the
    server's post-handshake messages (session tickets) while the main thread
    writes; about one run in four then hangs after STARTTLS or fails with
    ``SSLEOFError`` (seen with Dovecot; implicit TLS ran 30 of 30). So with
    ``starttls_tls12`` (the default) the run gets an OpenSSL configuration
    (``OPENSSL_CONF``) capping it at TLS 1.2, which ran 25 of 25.

    Does not raise when offlineimap fails: call ``.check()``. offlineimap
    exits 0 even after some per-folder errors (it logs them as ``ERROR:``);
    those count as failures here too.
    """
    if shutil.which(OFFLINEIMAP) is None:
        raise ClientError("offlineimap is not installed (Debian package offlineimap)")
    local_dir.mkdir(parents=True, exist_ok=True)
    state_dir = state_dir or local_dir.with_name(local_dir.name + ".offlineimap")
    state_dir.mkdir(parents=True, exist_ok=True)
    config = offlineimap_config(target, local_dir, state_dir, folders, expunge=expunge,
                                auth_mechanisms=auth_mechanisms, maxconnections=maxconnections)
    with tempfile.TemporaryDirectory(prefix="offlineimap-") as tmp:
        conf = Path(tmp) / "offlineimaprc"
        conf.write_text(config)
        conf.chmod(0o600)
        verify_tls = check_starttls and target.tls == "starttls"
        argv = [OFFLINEIMAP, "-c", str(conf), "-o", "-u", "basic", *(["-d", "imap"] if debug or verify_tls else [])]
        env = _client_env(Path(tmp))
        if starttls_tls12 and target.tls == "starttls":
            env["OPENSSL_CONF"] = str(_write_tls12_openssl_conf(Path(tmp)))
        result = _run_client("offlineimap", argv, config, local_dir, timeout, env)
    if result.returncode == 0 and re.search(r"^ *ERROR:", result.output, re.M):
        result.returncode = 1  # offlineimap logs per-folder errors but still exits 0
    # imaplib2 logs from several threads: a reply may be logged before its command.
    tags = re.findall(r"> b'(\w+) STARTTLS\\r\\n'", result.output)
    if result.returncode == 0 and verify_tls and not any(f"_put_response(b'{t} OK " in result.output for t in tags):
        result.returncode = 1
        result.output += "\nharness: offlineimap did not complete STARTTLS (it silently continues in cleartext)\n"
    return result


# --- Twisted's IMAP4Client, in a subprocess ------------------------------------------------------

Action = tuple[str, list[Any]] | tuple[str] | list[Any]

#: The actions a Twisted session understands, and the IMAP4Client method each one calls.
TWISTED_ACTIONS = {
    "capabilities": "getCapabilities(useCache=0)",
    "starttls": "startTLS(ctx) (done before the actions when the target is starttls)",
    "login": "login(user, password) ([]: the target's); LOGIN sent directly for a plain target (see below)",
    "authenticate": "authenticate(password) with PLAIN and LOGIN authenticators for the target user",
    "namespace": "namespace()",
    "list": "list(reference, pattern)",
    "lsub": "lsub(reference, pattern)",
    "status": "status(mailbox, *names)",
    "select": "select(mailbox)",
    "examine": "examine(mailbox)",
    "create": "create(mailbox)",
    "delete": "delete(mailbox)",
    "rename": "rename(old, new)",
    "subscribe": "subscribe(mailbox)",
    "unsubscribe": "unsubscribe(mailbox)",
    "fetch_flags": "fetchFlags(set, uid=False)",
    "fetch_uid": "fetchUID(set, uid=False)",
    "fetch_size": "fetchSize(set, uid=False)",
    "fetch_envelope": "fetchEnvelope(set, uid=False)",
    "fetch_message": "fetchMessage(set, uid=False) (RFC822)",
    "fetch_body_peek": "fetchSpecific(set, uid=False, peek=True) (BODY.PEEK[])",
    "search": "search(*queries, uid=False)",
    "add_flags": "addFlags(set, flags, silent=False, uid=False)",
    "remove_flags": "removeFlags(set, flags, silent=False, uid=False)",
    "set_flags": "setFlags(set, flags, silent=False, uid=False)",
    "append": "append(mailbox, BytesIO(message), flags=(), date=None)",
    "copy": "copy(set, mailbox, uid=False)",
    "expunge": "expunge()",
    "check": "check()",
    "close": "close()",
    "noop": "noop()",
    "logout": "logout()",
}


def twisted_client_session(target: ImapTarget, actions: Sequence[Action], *, timeout: float = 30,
                           trace: bool = False, stop_on_error: bool = True) -> list[dict[str, Any]]:
    """Run Twisted's ``IMAP4Client`` through ``actions`` in a subprocess; one result per action.

    Why a subprocess: Twisted's reactor cannot be restarted, and pytest may
    already run one (mailstack's own server under test) in this process.

    ``actions``: ``(command, args)`` pairs, commands from
    :data:`TWISTED_ACTIONS`, e.g. ``[("login", []), ("select", ["INBOX"]),
    ("fetch_flags", ["1:*"]), ("append", ["INBOX", "From: ...\\r\\n...", ["\\\\Seen"]]),
    ("logout", [])]``. Message arguments are str (UTF-8 encoded on the wire).

    Each result is ``{"command", "args", "ok", "result" | "error"}``; results are
    made JSON-friendly (bytes decoded as UTF-8, tuples as lists, dict keys as
    str). After the first failure the rest are ``{"ok": False, "error":
    "skipped"}`` unless ``stop_on_error=False``. A failure outside the actions
    (connecting, the TLS handshake, STARTTLS, the overall ``timeout``) is one
    more entry, ``{"command": "session", "ok": False, "error"}``, possibly
    the only one. TLS verifies the server
    against ``cafile`` and ``host`` (``optionsForClientTLS``).
    With ``trace=True`` a last entry ``{"command": "trace", "result": [lines]}``
    holds the protocol exchange as the client saw it ("C: ..."/"S: ...", after
    TLS; passwords included). Raises ClientError when the subprocess dies or
    is still running 15 s after ``timeout``.
    """
    request = {
        "target": target.as_json(),
        "actions": [[a[0], list(a[1]) if len(a) > 1 else []] for a in actions],
        "timeout": timeout,
        "trace": trace,
        "stop_on_error": stop_on_error,
    }
    unknown = [a[0] for a in request["actions"] if a[0] not in TWISTED_ACTIONS]
    if unknown:
        raise ValueError(f"unknown Twisted actions: {unknown}")
    try:
        r = subprocess.run([sys.executable, str(Path(__file__).absolute()), "twisted-session"],
                           input=json.dumps(request).encode(), capture_output=True, timeout=timeout + 15)
    except subprocess.TimeoutExpired as e:
        raise ClientError(f"the Twisted client did not finish within {timeout + 15} s: "
                          f"{(e.stderr or b'').decode(errors='replace')}")
    if r.returncode != 0 or not r.stdout.strip():
        raise ClientError(f"the Twisted client exited with {r.returncode}:\n{r.stderr.decode(errors='replace')}")
    return json.loads(r.stdout)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _imap_quote(value: bytes) -> bytes:
    """An IMAP quoted string."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _twisted_main() -> int:  # pragma: no cover - runs in the subprocess
    """The subprocess side of :func:`twisted_client_session`: JSON request on stdin, results on stdout."""
    import io

    from twisted.internet import defer, endpoints, protocol, ssl as tssl, task
    from twisted.mail import imap4
    from twisted.protocols import policies

    req = json.load(sys.stdin)
    t = req["target"]
    lines: list[str] = []
    results: list[dict[str, Any]] = []

    class Tracer(policies.ProtocolWrapper):
        """Records the cleartext exchange (it sits above TLS, also after STARTTLS)."""

        def write(self, data: bytes) -> None:
            lines.append("C: " + data.decode("utf-8", "replace").rstrip("\r\n")[:300])
            super().write(data)

        def writeSequence(self, seq: list[bytes]) -> None:
            self.write(b"".join(seq))

        def dataReceived(self, data: bytes) -> None:
            lines.append("S: " + data.decode("utf-8", "replace").rstrip("\r\n")[:2000])
            super().dataReceived(data)

    class Client(imap4.IMAP4Client):
        greeted: defer.Deferred[Client]

        def serverGreeting(self, caps: dict[bytes, Any]) -> None:
            self.greeted.callback(self)

        def connectionLost(self, reason: Any = None) -> None:
            if not self.greeted.called:  # e.g. the implicit TLS handshake failed
                self.greeted.errback(reason)
            super().connectionLost(reason)

    trust = None
    if t["cafile"]:
        with open(t["cafile"], "rb") as f:
            trust = tssl.Certificate.loadPEM(f.read())
    tls_options = tssl.optionsForClientTLS(t["host"], trustRoot=trust)

    async def session(reactor: Any) -> None:
        greeted: defer.Deferred[Client] = defer.Deferred()

        class Factory(protocol.ClientFactory):
            def buildProtocol(self, addr: Any) -> Client:
                p = Client(contextFactory=tls_options)
                p.greeted = greeted
                return p

        factory: protocol.Factory = Factory()
        if req["trace"]:
            factory = policies.WrappingFactory(factory)
            factory.protocol = Tracer
        endpoint = endpoints.TCP4ClientEndpoint(reactor, t["host"], t["port"], timeout=10)
        if t["tls"] == "implicit":
            endpoint = endpoints.wrapClientTLS(tls_options, endpoint)
        await endpoint.connect(factory)
        client = await greeted
        if t["tls"] == "starttls":
            await client.startTLS(tls_options)
        failed = False
        for command, args in req["actions"]:
            if failed and req["stop_on_error"]:
                results.append({"command": command, "args": args, "ok": False, "error": "skipped"})
                continue
            try:
                value = await _call(client, command, args)
                results.append({"command": command, "args": args, "ok": True, "result": _jsonable(value)})
            except Exception as e:  # noqa: BLE001 - reported to the caller
                failed = True
                results.append({"command": command, "args": args, "ok": False,
                                "error": f"{type(e).__name__}: {e}"})
        if client.transport is not None and client.transport.connected:
            client.transport.loseConnection()

    async def _call(c: Client, command: str, a: list[Any]) -> Any:
        uid = bool(a[1]) if command.startswith("fetch_") and len(a) > 1 else False
        if command == "capabilities":
            return await c.getCapabilities(useCache=0)
        if command == "starttls":
            return await c.startTLS(tls_options)
        if command == "login":
            user, password = (a[0], a[1]) if a else (t["user"], t["password"])
            if t["tls"] != "plain":
                return await c.login(user.encode(), password.encode())
            # IMAP4Client.login() always upgrades with STARTTLS when the server
            # offers it; a "plain" target means no TLS, so send LOGIN ourselves.
            args = b" ".join(_imap_quote(x.encode()) for x in (user, password))
            return await c.sendCommand(imap4.Command(b"LOGIN", args))
        if command == "authenticate":
            c.registerAuthenticator(imap4.PLAINAuthenticator(t["user"].encode()))
            c.registerAuthenticator(imap4.LOGINAuthenticator(t["user"].encode()))
            return await c.authenticate(t["password"].encode())
        if command in ("namespace", "expunge", "check", "close", "noop", "logout"):
            return await getattr(c, command)()
        if command in ("list", "lsub", "rename"):
            return await getattr(c, command)(a[0], a[1])
        if command in ("select", "examine", "create", "delete", "subscribe", "unsubscribe"):
            return await getattr(c, command)(a[0])
        if command == "status":
            return await c.status(a[0], *a[1:])
        if command == "fetch_flags":
            return await c.fetchFlags(a[0], uid=uid)
        if command == "fetch_uid":
            return await c.fetchUID(a[0], uid=uid)
        if command == "fetch_size":
            return await c.fetchSize(a[0], uid=uid)
        if command == "fetch_envelope":
            return await c.fetchEnvelope(a[0], uid=uid)
        if command == "fetch_message":
            return await c.fetchMessage(a[0], uid=uid)
        if command == "fetch_body_peek":
            return await c.fetchSpecific(a[0], uid=uid, peek=True)
        if command == "search":
            return await c.search(*a)
        if command in ("add_flags", "remove_flags", "set_flags"):
            method = {"add_flags": c.addFlags, "remove_flags": c.removeFlags, "set_flags": c.setFlags}[command]
            return await method(a[0], a[1], silent=False, uid=bool(a[2]) if len(a) > 2 else False)
        if command == "append":
            flags = a[2] if len(a) > 2 else ()
            date = a[3] if len(a) > 3 else None
            return await c.append(a[0], io.BytesIO(a[1].encode()), flags=flags, date=date)
        if command == "copy":
            return await c.copy(a[0], a[1], uid=bool(a[2]) if len(a) > 2 else False)
        raise ValueError(f"unknown action {command!r}")

    def run(reactor: Any) -> defer.Deferred[None]:
        d = defer.ensureDeferred(session(reactor))
        d.addTimeout(req["timeout"], reactor)
        return d

    error = None
    try:
        task.react(lambda reactor: run(reactor).addErrback(lambda f: results.append(
            {"command": "session", "ok": False, "error": f"{f.type.__name__}: {f.getErrorMessage()}"})))
    except SystemExit as e:
        error = e.code
    if req["trace"]:
        results.append({"command": "trace", "ok": True, "result": lines})
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0 if not error else int(error)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["twisted-session"]:
        sys.exit(_twisted_main())
    sys.exit(f"usage: {sys.argv[0]} twisted-session < request.json")
