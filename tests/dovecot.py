"""A real, private Dovecot for mailstack's tests and benchmarks.

``Dovecot(mail_root, workdir)`` configures a Dovecot 2.3 instance of its own:
its ``dovecot.conf`` and ``dovecot.log`` live in ``workdir``, every command is
run as ``doveadm -c CONF`` / ``dovecot -c CONF`` so the system configuration
(``/etc/dovecot``) is never read, and no system Dovecot service is needed.
Mail is stored as ``maildir:<mail_root>/%d/%n/Maildir`` (Maildir++ layout,
``/`` as the IMAP hierarchy separator, like mailstack's store), users come
from a passwd-file, authentication is PLAIN/LOGIN without TLS (loopback only).

Privileges. The harness must run as root (as CI does): Dovecot refuses to run
mail processes as root, so mail is owned by a dedicated unprivileged system
user, ``mailstack-test``, created on demand with ``useradd --system`` when it
is absent. The harness chowns the mail root to that user when it starts and,
while ``auto_chown`` is true (the default), again before each Dovecot command,
so files that mailstack wrote as root are readable and writable by Dovecot.
Dovecot's own internal users (``dovecot``, ``dovenull``) come with the Debian
package.

Paths. Dovecot's unprivileged processes must be able to reach its sockets,
its passwd-file and the mail, and a Unix socket path is limited to 108
bytes, but pytest's ``tmp_path`` is deep and lives under a private (0700)
``/tmp/pytest-of-root``. So sockets (``base_dir``), ``state_dir`` and the
passwd-file go to a short private directory made with ``mkdtemp`` under
``/tmp``; and when ``mail_root`` is not reachable by ``mailstack-test``, the
mail is kept in that directory too and ``mail_root`` is made a symlink to it
(``close()`` moves the mail back to ``mail_root``, so it survives the test
for inspection). Reading and writing through ``mail_root`` works either way;
``real_mail_root`` is the path Dovecot sees.

Processes. The master is started in the foreground (``dovecot -F``) as a
child of the harness, on first use (``doveadm`` and ``dovecot-lda`` need its
auth service for user lookups); ``stop()`` signals only that child (the PID in this
instance's ``base_dir/master.pid``), and the master stops its own children.
``start_imap(port)`` restarts it listening for IMAP on ``127.0.0.1:port``.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Iterable

TEST_USER = "mailstack-test"
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
LDA = "/usr/lib/dovecot/dovecot-lda"
IMAP = "/usr/lib/dovecot/imap"  # from dovecot-imapd
BINARIES = (DOVECOT, DOVEADM, LDA, IMAP)
SYSTEM_FLAGS = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"}


class DovecotError(RuntimeError):
    """A Dovecot command failed or the server did not start."""


def missing_binaries() -> list[str]:
    """Dovecot programs this harness needs that are not installed."""
    return [b for b in BINARIES if not os.access(b, os.X_OK)]


def ensure_user(name: str = TEST_USER) -> pwd.struct_passwd:
    """Return the unprivileged mail user, creating it as a system user if absent."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        check=False, capture_output=True,
    )  # may race with another process creating it: look it up again
    return pwd.getpwnam(name)


def _reachable(path: Path, pw: pwd.struct_passwd) -> bool:
    """Whether ``pw`` can traverse every existing ancestor of ``path`` (mode bits only)."""
    groups = {pw.pw_gid, *(g for g in os.getgrouplist(pw.pw_name, pw.pw_gid))}
    for d in [*reversed(path.parents)]:
        st = d.stat()
        if st.st_uid == pw.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class Dovecot:
    """A private Dovecot instance over ``mail_root``, configured in ``workdir``."""

    def __init__(self, mail_root: Path, workdir: Path, *, user: str = TEST_USER, extra_config: str = "") -> None:
        """Write the configuration; nothing runs until the first command."""
        if os.geteuid() != 0:
            raise DovecotError("the Dovecot harness must run as root (it drops mail processes to an unprivileged user)")
        absent = missing_binaries()
        if absent:
            raise DovecotError(f"Dovecot is not installed: missing {', '.join(absent)}")
        self.pw = ensure_user(user)
        self.mail_root = Path(mail_root).absolute()
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "dovecot.conf"
        self.log = self.workdir / "dovecot.log"
        self.extra_config = extra_config
        self.auto_chown = True
        self.imap_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._users: dict[str, str] = {}

        self._moved = False
        self.real_mail_root = self.mail_root
        self.runtime = Path(tempfile.mkdtemp(prefix="dovecot-", dir="/tmp"))
        atexit.register(self.close)  # never leave a master behind, even without close()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        self.runtime.chmod(0o755)
        self.base_dir = self.runtime / "run"
        self.state_dir = self.runtime / "state"
        self.passwd_file = self.runtime / "users"
        self.state_dir.mkdir()
        self.passwd_file.touch(0o640)
        shutil.chown(self.passwd_file, group="dovecot")
        self.mail_root.parent.mkdir(parents=True, exist_ok=True)
        if _reachable(self.mail_root, self.pw):
            self.mail_root.mkdir(exist_ok=True)
        else:
            self.real_mail_root = self.runtime / "mail"
            if self.mail_root.is_dir() and not self.mail_root.is_symlink():
                shutil.move(str(self.mail_root), str(self.real_mail_root))
            else:
                self.real_mail_root.mkdir()
            self.mail_root.symlink_to(self.real_mail_root, target_is_directory=True)
            self._moved = True
        self.chown_mail_root()
        self._write_config()

    # --- configuration and processes -------------------------------------------------

    def _write_config(self) -> None:
        uid, gid = self.pw.pw_uid, self.pw.pw_gid
        port = self.imap_port or 0
        self.conf.write_text(f"""\
# Private Dovecot written by mailstack's tests/dovecot.py; do not edit.
base_dir = {self.base_dir}
state_dir = {self.state_dir}
instance_name = {self.runtime.name}
log_path = {self.log}
info_log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:{self.real_mail_root}/%d/%n/Maildir
namespace inbox {{
  inbox = yes
  separator = /
  prefix =
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_file}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_file}
  default_fields = uid={uid} gid={gid} home={self.real_mail_root}/%d/%n
}}
lda_mailbox_autocreate = yes
lda_mailbox_autosubscribe = yes
protocol imap {{
  mail_max_userip_connections = 1000
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{self.extra_config}
""")

    @property
    def running(self) -> bool:
        """Whether this instance's master process is running."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the master (auth, and IMAP when a port was given) and wait until it serves."""
        if self.running:
            return
        self._write_config()
        err = (self.workdir / "dovecot.stderr").open("ab")
        try:
            self._proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)], stdout=err, stderr=err,
                                          stdin=subprocess.DEVNULL)
        finally:
            err.close()
        self._wait_ready()

    def _imap_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.imap_port or 0), timeout=2) as s:
                return s.recv(100).startswith(b"* OK")
        except OSError:
            return False

    def _diagnostics(self) -> str:
        parts = []
        for f in (self.workdir / "dovecot.stderr", self.log):
            if f.exists():
                parts.append(f"--- {f.name} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def start_imap(self, port: int) -> None:
        """Run the real IMAP server on 127.0.0.1:port (plaintext LOGIN allowed, no TLS)."""
        self.imap_port = port
        if not self.running:
            self.start()
            return
        # Reload (SIGHUP) rather than restart: Dovecot's shutdown always takes about one second.
        self._write_config()
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DovecotError(f"dovecot exited with status {self._proc.returncode}:\n{self._diagnostics()}")
            if (self.base_dir / "auth-userdb").exists() and (self.imap_port is None or self._imap_ready()):
                return
            time.sleep(0.02)
        self.stop()
        raise DovecotError(f"dovecot did not become ready within {timeout} s:\n{self._diagnostics()}")

    def stop(self) -> None:
        """Stop the master this harness started (its child, whose PID is in base_dir/master.pid).

        The IMAP listener goes with it; a later command restarts Dovecot without it.
        """
        proc, self._proc = self._proc, None
        self.imap_port = None
        if proc is None or proc.poll() is not None:
            return
        # We signal only our own child: with -F it is the master, the PID in master.pid.
        proc.send_signal(signal.SIGTERM)
        # The master stops its services, then sleeps a fixed second before exiting.
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        """Stop Dovecot, move the mail back to ``mail_root`` if it was relocated, remove runtime files."""
        atexit.unregister(self.close)
        self.stop()
        if self._moved and self.mail_root.is_symlink():
            self.mail_root.unlink()
            shutil.move(str(self.real_mail_root), str(self.mail_root))
            self._moved = False
            self.real_mail_root = self.mail_root
        shutil.rmtree(self.runtime, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- users and paths -------------------------------------------------------------------

    def add_user(self, address: str, password: str) -> None:
        """Add (or replace) a virtual user ``login@domain`` with a plain-text password."""
        if address.count("@") != 1 or any(c in address for c in ":/\n\t ") or any(c in password for c in ":\n"):
            raise ValueError(f"unsupported address or password for a passwd-file: {address!r}")
        self._users[address] = password
        self.passwd_file.write_text("".join(f"{a}:{{PLAIN}}{p}::::::\n" for a, p in self._users.items()))

    def maildir(self, address: str) -> Path:
        """The account's Maildir (INBOX), as seen through ``mail_root``."""
        login, domain = address.split("@")
        return self.mail_root / domain / login / "Maildir"

    def chown_mail_root(self) -> None:
        """Give the whole mail tree to the unprivileged mail user."""
        uid, gid = self.pw.pw_uid, self.pw.pw_gid
        root = self.real_mail_root
        os.chown(root, uid, gid)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                if st.st_uid != uid or st.st_gid != gid:
                    os.lchown(p, uid, gid)

    # --- running Dovecot's tools -------------------------------------------------------------

    def _prepare(self) -> None:
        if self.auto_chown:
            self.chown_mail_root()
        self.start()

    def _run(self, argv: list[str], stdin: bytes | None = None) -> bytes:
        self._prepare()
        r = subprocess.run(argv, input=stdin, capture_output=True, timeout=60,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if r.returncode != 0:
            raise DovecotError(f"{' '.join(argv)} exited with {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()}")
        return r.stdout

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        """Run ``doveadm -c CONF ARGS`` and return its standard output."""
        return self._run([DOVEADM, "-c", str(self.conf), *args], stdin).decode("utf-8", errors="replace")

    def _table(self, *args: str) -> list[dict[str, str]]:
        """Run a doveadm command with the tab formatter; rows as header-keyed dicts."""
        lines = [line for line in self.doveadm("-f", "tab", *args).split("\n") if line.strip()]
        if not lines:
            return []
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"))) for line in lines[1:]]

    # --- mail ------------------------------------------------------------------------------

    def deliver(self, address: str, message: bytes, folder: str = "INBOX",
                flags: Iterable[str] = (), keywords: Iterable[str] = ()) -> int:
        """Store ``message`` with ``doveadm save`` (CRLF stored as LF), set flags; return its UID.

        A missing folder is created and subscribed first, as Dovecot's LDA does
        with ``lda_mailbox_autocreate``/``lda_mailbox_autosubscribe``.
        """
        flags, keywords = list(flags), list(keywords)
        bad = [f for f in flags if f not in SYSTEM_FLAGS] + [k for k in keywords if k.startswith("\\") or not k]
        if bad:
            raise ValueError(f"not a system flag / keyword: {bad}")
        if folder != "INBOX" and folder not in self.folders(address):
            self.create_folder(address, folder, subscribe=True)
        before = self.uidnext(address, folder)
        self.doveadm("save", "-u", address, "-m", folder, stdin=message)
        after = self.uidnext(address, folder)
        if after != before + 1:
            raise DovecotError(f"expected one new message in {folder!r}: UIDNEXT went {before} -> {after}")
        if flags or keywords:
            self.set_flags(address, folder, before, flags + keywords)
        return before

    def deliver_lda(self, address: str, message: bytes, folder: str = "INBOX", sender: str = "") -> int:
        """Deliver through ``dovecot-lda -d ADDRESS -m FOLDER`` (the MDA path); return the UID."""
        before = self.uidnext(address, folder) if folder == "INBOX" or folder in self.folders(address) else 1
        argv = [LDA, "-c", str(self.conf), "-e", "-d", address, "-m", folder]
        if sender:
            argv += ["-f", sender]
        self._run(argv, stdin=message)
        after = self.uidnext(address, folder)
        if after != before + 1:  # the LDA falls back to INBOX when it cannot save to FOLDER
            raise DovecotError(f"dovecot-lda did not save into {folder!r}: UIDNEXT went {before} -> {after}")
        return before

    def messages(self, address: str, folder: str = "INBOX") -> list[tuple[int, set[str], int]]:
        """(uid, system flags and keywords, physical size) of every message, by UID.

        ``\\Recent`` is left out: it belongs to an IMAP session, not to the store.
        """
        out = []
        for row in self._table("fetch", "-u", address, "uid flags size.physical", "mailbox", folder, "all"):
            flags = {f for f in row.get("flags", "").split() if f != "\\Recent"}
            out.append((int(row["uid"]), flags, int(row["size.physical"])))
        return sorted(out)

    def body(self, address: str, folder: str, uid: int) -> bytes:
        """The message bytes as Dovecot stored them (``doveadm fetch text``: LF line ends)."""
        out = self._run([DOVEADM, "-c", str(self.conf), "-f", "pager", "fetch", "-u", address, "text",
                         "mailbox", folder, "uid", str(uid)])
        if not out.startswith(b"text:\n"):  # one record: "text:\n" then the bytes, nothing after
            raise DovecotError(f"no message with UID {uid} in {folder!r}")
        return out[len(b"text:\n"):]

    def _status(self, address: str, folder: str) -> dict[str, str]:
        rows = self._table("mailbox", "status", "-u", address, "uidvalidity uidnext messages", folder)
        if len(rows) != 1:
            raise DovecotError(f"unexpected doveadm mailbox status output for {folder!r}: {rows}")
        return rows[0]

    def uidvalidity(self, address: str, folder: str = "INBOX") -> int:
        """The folder's UIDVALIDITY."""
        return int(self._status(address, folder)["uidvalidity"])

    def uidnext(self, address: str, folder: str = "INBOX") -> int:
        """The folder's UIDNEXT."""
        return int(self._status(address, folder)["uidnext"])

    def create_folder(self, address: str, name: str, subscribe: bool = False) -> None:
        """Create a folder (``/`` separates levels; missing parents are created too)."""
        self.doveadm("mailbox", "create", "-u", address, *(["-s"] if subscribe else []), name)

    def folders(self, address: str) -> list[str]:
        """All folder names (UTF-8, ``/``-separated), INBOX included."""
        return [line for line in self.doveadm("mailbox", "list", "-u", address).split("\n") if line]

    def subscriptions(self, address: str) -> list[str]:
        """Subscribed folder names."""
        return [line for line in self.doveadm("mailbox", "list", "-s", "-u", address).split("\n") if line]

    def set_flags(self, address: str, folder: str, uid: int, flags: Iterable[str], add: bool = True) -> None:
        """Add (or, with ``add=False``, remove) system flags and keywords on one message."""
        flags = list(flags)
        if flags:
            self.doveadm("flags", "add" if add else "remove", "-u", address, " ".join(flags),
                         "mailbox", folder, "uid", str(uid))

    def expunge(self, address: str, folder: str, uid: int) -> None:
        """Expunge one message."""
        self.doveadm("expunge", "-u", address, "mailbox", folder, "uid", str(uid))
