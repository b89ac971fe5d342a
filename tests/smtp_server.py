"""A real ``mailstack smtpd`` process for the SMTP tests, on free loopback ports."""

from __future__ import annotations

import os
import signal
import smtplib
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
class SmtpServer:
    home: Path
    submission_port: int
    submissions_port: int
    mx_port: int
    proc: subprocess.Popen | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.home / "mailstack.toml"

    @property
    def cafile(self) -> Path:
        return self.home / "tls" / "cert.pem"

    @property
    def log_path(self) -> Path:
        return self.home / "smtpd.log"

    def start(self) -> None:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailstack", "-c", str(self.config), "smtpd"],
            stdout=self.log, stderr=self.log, cwd=REPO, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                for port in (self.submission_port, self.submissions_port, self.mx_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError("smtpd did not start:\n" + self.log_path.read_text())

    def stop(self) -> None:
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

    def mx(self) -> smtplib.SMTP:
        return smtplib.SMTP("localhost", self.mx_port, timeout=60)

    def submission(self, login: str | None = None) -> smtplib.SMTP:
        s = smtplib.SMTP("localhost", self.submission_port, timeout=60)
        s.starttls(context=self.context())
        if login:
            s.login(login, self.users[login])
        return s

    def submissions(self, login: str | None = None) -> smtplib.SMTP_SSL:
        s = smtplib.SMTP_SSL("localhost", self.submissions_port, context=self.context(), timeout=60)
        if login:
            s.login(login, self.users[login])
        return s

    def maildir(self, login: str, folder: str = "") -> Path:
        return self.home / "mail" / DOMAIN / login / "Maildir" / folder

    def messages(self, login: str, folder: str = "") -> list[bytes]:
        """Every message file in the folder, oldest first."""
        d = self.maildir(login, folder)
        files = [p for sub in ("new", "cur") if (d / sub).is_dir() for p in (d / sub).iterdir()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def make_server(tmp: Path, **smtp: int) -> SmtpServer:
    """A dev home with its SMTP ports moved to free ones; ``smtp`` sets [smtp] keys."""
    home = tmp / "home"
    r = run_cli("init", "--home", str(home), "--domain", DOMAIN, "--dev", "--hostname", "localhost")
    assert r.returncode == 0, r.stderr
    ports = free_port(), free_port(), free_port()
    cfg = (home / "mailstack.toml").read_text()
    for old, new in zip((10587, 10465, 10025), ports):
        cfg = cfg.replace(f"port = {old}", f"port = {new}")
    settings = {"workers": 1, **smtp}
    cfg += "\n[smtp]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    # Fast Argon2 for tests (the production parameters are tested in test_accounts).
    cfg += "\n[auth.argon2]\nmemory_kib = 8192\niterations = 1\n"
    (home / "mailstack.toml").write_text(cfg)
    os.environ.pop("MAILSTACK_CONFIG", None)
    return SmtpServer(home, *ports)
