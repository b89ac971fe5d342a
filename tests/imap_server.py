"""A real ``mailstack imapd`` process for the IMAP tests, on free loopback ports."""

from __future__ import annotations

import imaplib
import os
from pathlib import Path

from tests.conftest import free_port, run_cli
from tests.daemon_process import PASSWORD, DaemonProcess

DOMAIN = "ac-normandie.test"
__all__ = ["DOMAIN", "PASSWORD", "ImapServer", "make_server"]


class ImapServer(DaemonProcess):
    command = "imapd"

    def __init__(self, home: Path, imaps_port: int, imap_port: int):
        super().__init__(home, [imaps_port, imap_port])
        self.imaps_port, self.imap_port = imaps_port, imap_port

    def connect(self, login: str | None = None) -> imaplib.IMAP4_SSL:
        c = imaplib.IMAP4_SSL("localhost", self.imaps_port, ssl_context=self.context(), timeout=30)
        if login:
            c.login(login, self.users[login])
        return c

    def mailbox(self, login: str):
        from mailstack.store.mailbox import Store

        return Store(self.home / "mail").mailbox(DOMAIN, login)


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
