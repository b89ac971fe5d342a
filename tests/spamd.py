"""A real, private SpamAssassin ``spamd`` on a free loopback port.

Hermetic on purpose: its site configuration is a temporary directory (the
plugin ``.pre`` files copied from /etc/spamassassin, then our local.cf), so
a machine's own local.cf cannot change the scores; ``--local`` and
``skip_rbl_checks`` keep it off the network; Bayes is off so no test learns
from another.  As root it is told ``-u nobody``, so its children scan as an
unprivileged user as a packaged spamd does (never as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator

import pytest

from tests.conftest import free_port, need

__all__ = ["Spamd", "spamd_binary", "spamd_fixture"]

LOCAL_CF = """\
required_score 5
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
"""


def spamd_binary() -> str | None:
    return shutil.which("spamd") or next((p for p in ("/usr/sbin/spamd",) if os.access(p, os.X_OK)), None)


class Spamd:
    def __init__(self) -> None:
        binary = spamd_binary()
        need(binary is not None, "spamd (Debian packages spamassassin spamd)")
        self.binary: str = binary  # type: ignore[assignment]
        self.dir = Path(tempfile.mkdtemp(prefix="mailstack-spamd-"))
        self.port = free_port()
        self.socket = self.dir / "spamd.sock"
        self.proc: subprocess.Popen | None = None
        self.log: BinaryIO | None = None
        site = self.dir / "site"
        site.mkdir()
        for pre in Path("/etc/spamassassin").glob("*.pre"):  # which plugins load, as installed
            shutil.copy(pre, site / pre.name)
        (site / "local.cf").write_text(LOCAL_CF)
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            for p in (self.dir, site, *site.iterdir()):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self.run_as = ["-u", "nobody"]

    @property
    def log_path(self) -> Path:
        return self.dir / "spamd.log"

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--listen=127.0.0.1:{self.port}", "--allowed-ips=127.0.0.1",
            f"--listen={self.socket}", "--socketmode=0600",
            "--local", "--nouser-config", *self.run_as,
            f"--siteconfigpath={self.dir / 'site'}", f"--helper-home-dir={self.dir}",
            f"--pidfile={self.dir / 'spamd.pid'}", "--syslog=stderr",
            "--max-children=2", "--min-children=1",
        ]

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return s.recv(100).startswith(b"SPAMD/1.5 0 PONG")
        except OSError:
            return False

    def start(self) -> None:
        """Start spamd in the foreground; return once it answers PING."""
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("spamd did not start:\n" + self.log_path.read_text())

    def stop(self) -> None:
        """SIGTERM (spamd ends its children), then SIGKILL to its process group after 20 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log is not None:
            self.log.close()
            self.log = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module", name="spamd")
def spamd_fixture() -> Iterator[Spamd]:
    """One spamd for a test module (it starts in about a second)."""
    server = Spamd()
    try:
        server.start()
        yield server
    finally:
        server.close()
