"""A real mailstack daemon (``imapd``, ``smtpd``) run as a child process on loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, run_cli

PASSWORD = "Correct#horse9"


class DaemonProcess:
    command = ""  # the mailstack subcommand

    def __init__(self, home: Path, ports: list[int]):
        self.home = home
        self.ports = ports
        self.proc: subprocess.Popen | None = None
        self.users: dict[str, str] = {}

    @property
    def config(self) -> Path:
        return self.home / "mailstack.toml"

    @property
    def cafile(self) -> Path:
        return self.home / "tls" / "cert.pem"

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.command}.log"

    def start(self) -> None:
        """Start the daemon; return once every port accepts connections."""
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailstack", "-c", str(self.config), self.command],
            stdout=self.log, stderr=self.log, cwd=REPO, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                for port in self.ports:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"{self.command} did not start:\n" + self.log_path.read_text())

    def stop(self) -> None:
        """SIGTERM, then (after 20 s) SIGKILL to the daemon's process group."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def cli(self, *args: str, stdin: str | None = None) -> str:
        r = run_cli(*args, stdin=stdin, config=self.config)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def add_user(self, prenom: str, nom: str) -> str:
        login = self.cli("user", "add", prenom, nom, "--password-stdin", stdin=PASSWORD).splitlines()[0]
        self.users[login] = PASSWORD
        return login

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0
