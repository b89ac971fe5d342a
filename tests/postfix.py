"""A real, private Postfix for mailstack's benchmarks.

A benchmark of mailstack's SMTP server means little without a reference, so
``Postfix(workdir, port)`` runs a stock Postfix 3.x (the Debian package) with
its default durability (queue files and Maildir files are fsynced), and
``smtp_source`` drives Postfix's own load generator against it or against any
other SMTP server: both are measured as "messages per second until all are on
disk" (``wait_delivered``).

Configuration. Everything is the instance's own, under one root: ``main.cf``,
``master.cf`` and the mailbox map in ``ROOT/etc`` (the ``config_directory``,
given as ``postfix -c``), the queue in ``ROOT/queue``, ``data_directory`` in
``ROOT/data``; the log is ``workdir/postfix.log`` (``maillog_file``, written by
postlogd, no syslog). ``/etc/postfix`` is never the configuration (the
package's ``postfix-files`` there is only read, as ``meta_directory``, by
``post-install create-missing``, which makes the queue directories with their
owners on the first start: that start takes about 2 s, later ones 0.2 s), and
the system ``/var/spool/postfix`` is never touched. master.cf is written here:
the usual services, none chrooted, the SMTP server on ``127.0.0.1:PORT``
only. Performance settings are Postfix's defaults (``in_flow_delay``, process
limits, fsync); ``mynetworks = 127.0.0.0/8`` only exempts the load client
from anvil's per-client limits.

Delivery. The domain (``bench.test``) is a virtual(8) mailbox domain, not a
local one: ``mydestination``, aliases and local(8) are not used, so no
``/etc/passwd`` homes or ``/etc/aliases`` are involved. Each user
``name@domain`` listed in a ``texthash`` map is delivered to
``vmail/DOMAIN/NAME/Maildir/`` (trailing slash: Maildir, the layout of
tests/dovecot.py) as the unprivileged ``mailstack-test`` user. Mail for any
other domain is refused at RCPT (``reject_unauth_destination``, with no
``permit_mynetworks`` even from loopback: the instance never relays), and the
outbound transports are ``error``, so even a bounce is never sent off. The map
is read when a daemon starts, so ``add_user`` on a running instance reloads
it (the next message then waits 1 to 2 s): add benchmark users beforehand.

Paths. Postfix's daemons open the mailbox map and ``data_directory`` as the
``postfix`` user, and virtual(8) writes the Maildir as ``mailstack-test``;
neither can traverse pytest's private (0700) ``/tmp/pytest-of-root``. So ROOT
is ``workdir`` when both users can reach it, else (as in tests/dovecot.py) a
private ``mkdtemp`` directory under ``/tmp``; then ``workdir/vmail`` is a
symlink to the mail, which ``close()`` moves back, and the rest is removed.
Postfix's daemons reach their sockets with paths relative to the queue
directory, so its depth does not matter.

Processes. ``start()`` runs ``postfix -c CONF start-fg`` as a child of the
harness (postfix-script, whose child is the master) and waits for the SMTP
greeting; ``stop()`` sends SIGTERM to the master named in this instance's
``queue/pid/master.pid``, after checking that it is that child's child (the
master takes its own processes down with it), then waits for the child.
Nothing else is ever signalled.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.dovecot import TEST_USER, _reachable, ensure_user

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
SMTP_SOURCE = "/usr/sbin/smtp-source"
BINARIES = (POSTFIX, POSTCONF, SMTP_SOURCE)

MASTER_CF = """\
# Private Postfix written by mailstack's tests/postfix.py; do not edit.
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{port} inet n  -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""



def _group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) of a process group."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out

class PostfixError(RuntimeError):
    """A Postfix command failed or the server did not start."""


def missing_binaries() -> list[str]:
    """Postfix programs this harness needs that are not installed."""
    return [b for b in BINARIES if not os.access(b, os.X_OK)]


def _compatibility_level() -> str:
    out = subprocess.run([POSTCONF, "-dh", "mail_version"], capture_output=True, text=True, check=True).stdout
    major, minor = (int(x) for x in out.strip().split(".")[:2])
    return "3.6" if (major, minor) >= (3, 6) else "2"


def _smtp_greets(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


class Postfix:
    """A private Postfix instance in ``workdir`` accepting mail for ``domain`` on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path, port: int, *, domain: str = "bench.test",
                 users: Iterable[str] = ("user",), mail_user: str = TEST_USER) -> None:
        """Write the configuration and the mailbox map; nothing runs until ``start()`` (or ``with``)."""
        if os.geteuid() != 0:
            raise PostfixError("the Postfix harness must run as root (Postfix's master runs as root)")
        absent = missing_binaries()
        if absent:
            raise PostfixError(f"Postfix is not installed: missing {', '.join(absent)}")
        self.pw = ensure_user(mail_user)
        self.workdir = Path(workdir).absolute()
        self.port = port
        self.domain = domain
        self.log = self.workdir / "postfix.log"
        self.mail_root = self.workdir / "vmail"
        self.runtime: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._users: list[str] = []
        atexit.register(self.close)  # never leave a master behind, even without close()
        try:
            self._setup()
            for name in users:
                self.add_user(name)
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Postfix's daemons open the mailbox map and data_directory as ``postfix``, and
        # virtual(8) writes the mail as the mail user: both must reach the instance's files.
        root = self.workdir
        if not all(_reachable(root / "etc", pw) for pw in (self.pw, pwd.getpwnam("postfix"))):
            self.runtime = root = Path(tempfile.mkdtemp(prefix="postfix-", dir="/tmp"))
            root.chmod(0o755)
        self.conf_dir, self.queue_dir, self.data_dir = root / "etc", root / "queue", root / "data"
        self.mailbox_map = self.conf_dir / "vmailbox"
        self.real_mail_root = root / "vmail"
        if self.runtime is not None:  # keep mail from an earlier run in this workdir
            if self.mail_root.is_symlink():
                self.mail_root.unlink()
            elif self.mail_root.is_dir():
                shutil.move(str(self.mail_root), str(self.real_mail_root))
            self.mail_root.symlink_to(self.real_mail_root, target_is_directory=True)
        for d in (self.conf_dir, self.queue_dir, self.real_mail_root):
            d.mkdir(exist_ok=True)
            d.chmod(0o755)  # postfix-script wants its directories root-owned, not group or other writable
        os.chown(self.real_mail_root, self.pw.pw_uid, self.pw.pw_gid)
        self.mailbox_map.touch()
        (self.conf_dir / "master.cf").write_text(MASTER_CF.format(port=self.port))
        (self.conf_dir / "main.cf").write_text(f"""\
# Private Postfix written by mailstack's tests/postfix.py; do not edit.
compatibility_level = {_compatibility_level()}
config_directory = {self.conf_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
maillog_file = {self.log}
maillog_file_prefixes = {self.workdir}
syslog_name = postfix-bench
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mx.{self.domain}
mydomain = {self.domain}
mydestination =
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unlisted_recipient
virtual_mailbox_domains = {self.domain}
virtual_mailbox_base = {self.real_mail_root}
virtual_mailbox_maps = texthash:{self.mailbox_map}
virtual_uid_maps = static:{self.pw.pw_uid}
virtual_gid_maps = static:{self.pw.pw_gid}
default_transport = error:this benchmark instance does not send mail out
relay_transport = error:this benchmark instance does not send mail out
""")

    # --- users and mail ----------------------------------------------------------------

    def add_user(self, local_part: str) -> None:
        """Accept mail for ``local_part@domain`` (reloads a running instance)."""
        if not local_part or any(c in local_part for c in "@/: \t\n") or local_part.startswith("."):
            raise ValueError(f"unsupported local part: {local_part!r}")
        if local_part in self._users:
            return
        self._users.append(local_part)
        self.mailbox_map.write_text("".join(
            f"{u}@{self.domain} {self.domain}/{u}/Maildir/\n" for u in self._users))
        if self.running:
            self._postfix("reload")

    def maildir(self, local_part: str) -> Path:
        """The user's Maildir, as seen through ``workdir/vmail`` (it exists after the first delivery)."""
        return self.mail_root / self.domain / local_part / "Maildir"

    def count_delivered(self, local_part: str) -> int:
        """Messages in the user's Maildir (``new/`` and ``cur/``)."""
        n = 0
        for sub in ("new", "cur"):
            try:
                with os.scandir(self.maildir(local_part) / sub) as it:
                    n += sum(1 for _ in it)
            except FileNotFoundError:
                pass
        return n

    # --- processes ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether this instance's ``postfix start-fg`` (hence its master) is running."""
        return self._proc is not None and self._proc.poll() is None

    def _postfix(self, *args: str) -> str:
        r = subprocess.run([POSTFIX, "-c", str(self.conf_dir), *args], check=False, capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise PostfixError(f"postfix {' '.join(args)} exited with {r.returncode}: {r.stderr.strip()}\n"
                               f"{self._diagnostics()}")
        return r.stdout

    def _diagnostics(self) -> str:
        parts = []
        for f in (self.workdir / "postfix.stderr", self.log):
            if f.exists():
                parts.append(f"--- {f.name} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def start(self, timeout: float = 30) -> None:
        """Start the master and wait until 127.0.0.1:port answers 220."""
        if self.running:
            return
        with (self.workdir / "postfix.stderr").open("ab") as err:
            self._proc = subprocess.Popen([POSTFIX, "-c", str(self.conf_dir), "start-fg"],
                                          stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PostfixError(f"postfix exited with status {self._proc.returncode}:\n{self._diagnostics()}")
            if self._master_pid() is not None and _smtp_greets(self.port):  # ours, not another server
                return
            time.sleep(0.05)
        self.stop()
        raise PostfixError(f"postfix did not answer on port {self.port} within {timeout} s:\n{self._diagnostics()}")

    def _master_pid(self) -> int | None:
        """The PID in this instance's master.pid if that process is our child's child."""
        assert self._proc is not None
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError, IndexError):
            return None
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        return pid if ppid == self._proc.pid else None

    def stop(self, timeout: float = 20) -> None:
        """Stop the master this harness started and wait until it has exited."""
        if not self.running:
            self._proc = None
            return
        proc = self._proc
        assert proc is not None
        master = self._master_pid()
        if master is None:  # not started yet, or already gone: the script is all there is
            proc.terminate()
        else:
            os.kill(master, signal.SIGTERM)  # the master terminates its process group, then exits
        try:
            proc.wait(timeout=timeout)
            # The master is gone; its children (smtpd...) exit on their own a
            # little later and hold the listening socket until then: a port
            # that still answers would be ours.
            deadline = time.monotonic() + timeout
            while master is not None and _group_members(master) and time.monotonic() < deadline:
                time.sleep(0.05)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if master is not None and _group_members(master):
            os.killpg(master, signal.SIGKILL)  # master is a session leader: the group is this instance
        self._proc = None

    def close(self) -> None:
        """Stop Postfix and move the mail back to ``workdir/vmail`` if it was relocated."""
        atexit.unregister(self.close)
        self.stop()
        if self.runtime is not None:
            if self.mail_root.is_symlink():
                self.mail_root.unlink()
                shutil.move(str(self.real_mail_root), str(self.mail_root))
                self.real_mail_root = self.mail_root
            shutil.rmtree(self.runtime, ignore_errors=True)
            self.runtime = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --- load ------------------------------------------------------------------------------


def smtp_source(port: int, *, sessions: int, messages: int, size: int, sender: str, recipient: str,
                host: str = "127.0.0.1", reuse_connections: bool = False, timeout: float = 600) -> float:
    """Send ``messages`` messages of ``size`` body bytes over ``sessions`` parallel SMTP sessions.

    Runs Postfix's ``smtp-source`` against any SMTP server and returns the wall-clock
    seconds until the last message was accepted (250 after DATA). By default each
    message has a connection of its own (connect, HELO, MAIL, RCPT, DATA, QUIT), the
    most common real-world case; ``reuse_connections`` (``-d``) sends the next message
    over the same connection instead. smtp-source does not pipeline and stops at the
    first reply that is not positive, which raises ``PostfixError``.
    """
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", sender, "-t", recipient, *(["-d"] if reuse_connections else []), f"{host}:{port}"]
    start = time.monotonic()
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - start
    if r.returncode != 0:
        raise PostfixError(f"smtp-source exited with {r.returncode}: {(r.stderr or r.stdout).strip()}")
    return elapsed


def wait_delivered(count_fn: Callable[[], int], expected: int, timeout: float = 120,
                   interval: float = 0.01) -> float:
    """Poll ``count_fn`` until it reports ``expected`` messages; return the seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    while (count := count_fn()) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} of {expected} messages delivered after {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start
