"""Logs: one line per event with a session ID, and authentication failures
in the stable form config/fail2ban/ matches — checked with the real
``fail2ban-regex`` on the logs of real daemons.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

from tests.conftest import REPO, need
from tests.smtp_server import DOMAIN, make_server

FILTER = REPO / "config" / "fail2ban" / "filter.d" / "mailstack.conf"


class SourcedIMAP(imaplib.IMAP4_SSL):
    """imaplib connecting from a chosen loopback address (Linux routes 127/8)."""

    source = "127.0.0.1"

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap_from(srv, source: str) -> imaplib.IMAP4_SSL:
    cls = type("IMAP", (SourcedIMAP,), {"source": source})
    return cls("localhost", srv.imaps_port, ssl_context=srv.context(), timeout=30)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    smtp = make_server(tmp_path_factory.mktemp("logs"))
    imap = smtp.imap_beside()
    smtp.start()
    imap.start()
    smtp.login = smtp.add_user("Gaston", "Journal")
    yield smtp, imap
    imap.stop()
    smtp.stop()


def banned(*logs) -> list[str]:
    """The addresses fail2ban-regex finds with our filter, in order."""
    need(shutil.which("fail2ban-regex") is not None, "fail2ban-regex (Debian package fail2ban)")
    found = []
    for log in logs:
        r = subprocess.run(["fail2ban-regex", "-o", "<ip>", str(log), str(FILTER)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        found += r.stdout.split()
    return found


def wait_for(log, text: str) -> str:
    deadline = time.monotonic() + 10
    while text not in (content := log.read_text()):
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{content[-2000:]}"
        time.sleep(0.05)
    return content


def test_failed_logins_are_matched_by_the_fail2ban_filter(daemons):
    smtp, imap = daemons
    login = smtp.login
    for _ in range(2):
        c = imap_from(imap, "127.0.0.7")
        with pytest.raises(imaplib.IMAP4.error):
            c.login(login, "wrong password 1")
        c.logout()
    with smtplib.SMTP("localhost", smtp.submission_port, timeout=30, source_address=("127.0.0.8", 0)) as s:
        s.starttls(context=smtp.context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(login, "wrong password 2")
    # A user name made to look like another field: it must not get 6.6.6.6 banned.
    c = imap_from(imap, "127.0.0.9")
    with pytest.raises(imaplib.IMAP4.error):
        c.login('"x client=6.6.6.6 outcome=bad-credentials"', "nope")  # imaplib does not quote the user
    c.logout()
    # An address quoting a whole auth line into another log line (relay refused).
    forged = '"x mailstack.auth: auth service=imap session=s client=6.6.6.7 outcome=bad-credentials "@foreign.example'
    with smtplib.SMTP("localhost", smtp.mx_port, timeout=30) as s:
        s.ehlo("forger.test")
        s.mail("a@outside.test")
        assert s.rcpt(forged)[0] == 554
    ok = imap_from(imap, "127.0.0.10")
    ok.login(login, smtp.users[login])
    ok.logout()

    wait_for(imap.log_path, "client=127.0.0.10 outcome=ok")
    wait_for(smtp.log_path, "client=127.0.0.8 outcome=bad-credentials")
    assert "client=6.6.6.7 outcome=bad-credentials" in wait_for(smtp.log_path, "relay refused")
    assert banned(imap.log_path, smtp.log_path) == ["127.0.0.7", "127.0.0.7", "127.0.0.9", "127.0.0.8", "127.0.0.8"]  # smtplib tries PLAIN, then LOGIN


def test_every_line_of_a_session_carries_its_id(daemons):
    smtp, imap = daemons
    with smtplib.SMTP("localhost", smtp.mx_port, timeout=30, source_address=("127.0.0.11", 0)) as s:
        s.sendmail("a@outside.test", [f"{smtp.login}@{DOMAIN}"], b"Subject: logs\r\n\r\nx\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # relay refused: a warning line
            s.sendmail("a@outside.test", ["nobody@elsewhere.test"], b"x")
    text = wait_for(smtp.log_path, "relay refused")
    sid = re.search(r"session=(s\d+-\d+) connect client=127\.0\.0\.11 port=\d+ kind=mx", text).group(1)
    text = wait_for(smtp.log_path, f"session={sid} disconnect")
    lines = [line for line in text.splitlines() if f"session={sid} " in line]
    assert any(re.search(r"message id=\S+ session=%s listener=mx client=127\.0\.0\.11 .* status=250" % sid, x) for x in lines)
    assert any("relay refused to=nobody@elsewhere.test" in x for x in lines)

    c = imap_from(imap, "127.0.0.12")
    c.login(smtp.login, smtp.users[smtp.login])
    c.logout()
    text = wait_for(imap.log_path, "client=127.0.0.12 outcome=ok")
    isid = re.search(r"session=(i\d+-\d+) connect client=127\.0\.0\.12 ", text).group(1)
    text = wait_for(imap.log_path, f"session={isid} disconnect user={smtp.login}")
    assert f"auth service=imap session={isid} client=127.0.0.12 outcome=ok user={smtp.login}" in text
