"""A real ``mailstack imapd`` process for the IMAP tests, on free loopback ports."""

from __future__ import annotations

import imaplib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO, free_port, run_cli

DOMAIN = "ac-normandie.test"
PASSWORD = "Correct#horse9"


@dataclass
class ImapServer:
    home: Path
    imaps_port: int
    imap_port: int
    proc: subprocess.Popen | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.home / "mailstack.toml"

    @property
    def cafile(self) -> Path:
        return self.home / "tls" / "cert.pem"

    def start(self) -> None:
        self.log = open(self.home / "imapd.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailstack", "-c", str(self.config), "imapd"],
            stdout=self.log, stderr=self.log, cwd=REPO,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.imaps_port), timeout=1).close()
                socket.create_connection(("127.0.0.1", self.imap_port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError("imapd did not start:\n" + (self.home / "imapd.log").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def add_user(self, prenom: str, nom: str) -> str:
        r = run_cli("user", "add", prenom, nom, "--password-stdin", stdin=PASSWORD, config=self.config)
        assert r.returncode == 0, r.stderr
        login = r.stdout.splitlines()[0]
        self.users[login] = PASSWORD
        return login

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    def connect(self, login: str | None = None) -> imaplib.IMAP4_SSL:
        c = imaplib.IMAP4_SSL("localhost", self.imaps_port, ssl_context=self.context(), timeout=30)
        if login:
            c.login(login, self.users[login])
        return c

    def mailbox(self, login: str):
        from mailstack.store.mailbox import Store

        return Store(self.home / "mail").mailbox(DOMAIN, login)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def make_server(tmp: Path, idle_timeout: int = 1800, workers: int = 1) -> ImapServer:
    home = tmp / "home"
    r = run_cli("init", "--home", str(home), "--domain", DOMAIN, "--dev", "--hostname", "localhost")
    assert r.returncode == 0, r.stderr
    imaps, imap = free_port(), free_port()
    cfg = (home / "mailstack.toml").read_text()
    cfg = cfg.replace("port = 10993", f"port = {imaps}").replace("port = 10143", f"port = {imap}")
    # One worker: the per-user limit test counts sessions in one process.
    cfg = cfg.replace("idle_timeout = 1800", f"idle_timeout = {idle_timeout}\nworkers = {workers}")
    # Fast Argon2 for tests (the production parameters are tested in test_accounts).
    cfg += "\n[auth.argon2]\nmemory_kib = 8192\niterations = 1\n"
    (home / "mailstack.toml").write_text(cfg)
    os.environ.pop("MAILSTACK_CONFIG", None)
    return ImapServer(home, imaps, imap)
