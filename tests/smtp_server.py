"""A real ``mailstack smtpd`` process for the SMTP tests, on free loopback ports."""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

from tests.conftest import free_port, run_cli
from tests.daemon_process import PASSWORD, DaemonProcess

DOMAIN = "ac-normandie.test"
__all__ = ["DOMAIN", "PASSWORD", "SmtpServer", "make_server"]


class SmtpServer(DaemonProcess):
    command = "smtpd"

    def __init__(self, home: Path, submission_port: int, submissions_port: int, mx_port: int):
        super().__init__(home, [submission_port, submissions_port, mx_port])
        self.submission_port, self.submissions_port, self.mx_port = submission_port, submissions_port, mx_port

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

    imap_ports: tuple[int, int] = (0, 0)

    def imap_beside(self):
        """An imapd serving the same home (not started)."""
        from tests.imap_server import ImapServer

        imap = ImapServer(self.home, *self.imap_ports)
        imap.users = self.users
        return imap

    def maildir(self, login: str, folder: str = "") -> Path:
        return self.home / "mail" / DOMAIN / login / "Maildir" / folder

    def messages(self, login: str, folder: str = "") -> list[bytes]:
        """Every message file in the folder, oldest first."""
        d = self.maildir(login, folder)
        files = [p for sub in ("new", "cur") if (d / sub).is_dir() for p in (d / sub).iterdir()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]


def make_server(tmp: Path, extra: str = "", **smtp: int) -> SmtpServer:
    """A dev home with its SMTP ports moved to free ones; ``smtp`` sets [smtp] keys,
    ``extra`` is more TOML.  Without a [dns] section in ``extra`` the resolver
    points at a closed loopback port (lookups fail within a second, nothing
    leaves this machine) and the MX does not check SPF/DKIM/DMARC."""
    home = tmp / "home"
    r = run_cli("init", "--home", str(home), "--domain", DOMAIN, "--dev", "--hostname", "localhost")
    assert r.returncode == 0, r.stderr
    distinct: set[int] = set()
    while len(distinct) < 6:  # free_port() may hand out one port twice
        distinct.add(free_port())
    picked = sorted(distinct)
    ports = picked[0], picked[1], picked[2]
    cfg = (home / "mailstack.toml").read_text()
    for old, new in zip((10587, 10465, 10025), ports):
        cfg = cfg.replace(f"port = {old}", f"port = {new}")
    imap_ports = picked[3], picked[4]  # for an imapd on the same home (see imap_beside)
    cfg = cfg.replace("port = 10993", f"port = {imap_ports[0]}").replace("port = 10143", f"port = {imap_ports[1]}")
    settings = {"workers": 1, **smtp}
    cfg += "\n[smtp]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    # Fast Argon2 for tests (the production parameters are tested in test_accounts).
    cfg += "\n[auth.argon2]\nmemory_kib = 8192\niterations = 1\n"
    if "[dns]" not in extra:
        cfg += f"\n[dns]\nnameservers = [\"127.0.0.1\"]\nport = {picked[5]}\ntimeout = 1.0\n"
        if "[mailauth]" not in extra:
            cfg += "\n[mailauth]\nverify = false\n"
    cfg += extra
    (home / "mailstack.toml").write_text(cfg)
    os.environ.pop("MAILSTACK_CONFIG", None)
    srv = SmtpServer(home, *ports)
    srv.imap_ports = imap_ports
    return srv
