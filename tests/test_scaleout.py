"""More than one node: two mailstack nodes (imapd + smtpd each, own homes and
spools) sharing one PostgreSQL database and one mail root, behind the
example HAProxy configuration (config/haproxy/haproxy.cfg, both of its
nodes).  Mail accepted by either node is read, flagged and appended through
either, with one UID sequence.

Both nodes run on this machine, so the shared mail root is a local file
system, used as a network one would be (``[storage] shared = true``: no
SQLite WAL, IDLE polls): what this shows is that nodes agree through the
store's files and locks; README "More than one machine" says what a network
file system adds.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import need, run_cli
from tests.smtp_server import DOMAIN, make_server
from tests.test_proxy import CLIENT, HAPROXY_BIN, HAProxy, behind_proxy


def _node(tmp: Path, name: str, db_url: str, mail_root: Path | None, secret: Path | None):
    smtp = make_server(tmp / name)
    text = behind_proxy(smtp.config.read_text())
    text = re.sub(r'^url = ".*"$', f'url = "{db_url}"', text, count=1, flags=re.M)
    if mail_root is not None:
        text = text.replace('mail_root = "mail"', f'mail_root = "{mail_root}"')
    text = text.replace('spool = "spool"\n', 'spool = "spool"\nshared = true\n')  # as on NFS: no WAL, IDLE polls
    assert "shared = true" in text
    smtp.config.write_text(text)
    if secret is not None:  # one installation: one secret key, one certificate
        shutil.copy(secret, smtp.home / "secret.key")
        for name in ("cert.pem", "key.pem"):
            shutil.copy(secret.parent / "tls" / name, smtp.home / "tls" / name)
    imap = smtp.imap_beside()
    return smtp, imap


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, postgres):
    need(HAPROXY_BIN is not None, "haproxy (Debian package haproxy)")
    tmp = tmp_path_factory.mktemp("scaleout")
    db_url = postgres.new_database()
    smtp1, imap1 = _node(tmp, "node1", db_url, None, None)
    r = run_cli("db", "upgrade", config=smtp1.config)
    assert r.returncode == 0, r.stderr
    smtp2, imap2 = _node(tmp, "node2", db_url, smtp1.home / "mail", smtp1.home / "secret.key")
    started = []
    try:
        for d in (smtp1, imap1, smtp2, imap2):
            d.start()
            started.append(d)
        login = smtp1.add_user("Nadia", "Deuxnoeuds")
        smtp2.users[login] = imap1.users[login] = imap2.users[login] = smtp1.users[login]
        ports = lambda smtp, imap: {  # noqa: E731
            993: imap.imaps_port, 143: imap.imap_port,
            25: smtp.mx_port, 587: smtp.submission_port, 465: smtp.submissions_port,
        }
        proxy = HAProxy(tmp, ports(smtp1, imap1), "send-proxy-v2", node2=ports(smtp2, imap2))
        proxy.start()
        try:
            yield (smtp1, imap1), (smtp2, imap2), proxy, login
        finally:
            proxy.stop()
    finally:
        for d in reversed(started):
            d.stop()


class Imaps(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def _imap(proxy, node, login: str) -> imaplib.IMAP4_SSL:
    c = Imaps("127.0.0.1", proxy.fronts[993], ssl_context=node.context(), timeout=30)
    c.login(login, node.users[login])
    return c


def _uids(c: imaplib.IMAP4_SSL) -> list[int]:
    typ, data = c.uid("SEARCH", "ALL")
    assert typ == "OK"
    return [int(x) for x in data[0].split()]


def test_two_nodes_share_accounts_and_mailboxes(nodes):
    (smtp1, imap1), (smtp2, imap2), proxy, login = nodes
    rcpt = f"{login}@{DOMAIN}"
    for i in range(6):  # roundrobin: both MX nodes take some
        with smtplib.SMTP("127.0.0.1", proxy.fronts[25], timeout=30, source_address=(CLIENT, 0)) as s:
            s.sendmail("a@outside.test", [rcpt], f"Subject: n{i}\r\n\r\nbody {i}\r\n".encode())
    for smtp in (smtp1, smtp2):
        assert re.search(r"message id=\S+ session=\S+ listener=mx client=127\.0\.0\.2 .*status=250", smtp.log_path.read_text())

    # leastconn: with one session open on a node, the next goes to the other.
    a = _imap(proxy, imap1, login)
    b = _imap(proxy, imap1, login)
    for imap in (imap1, imap2):
        assert f"login user={login} client=127.0.0.2" in imap.log_path.read_text()
    a.select("INBOX")
    b.select("INBOX")
    assert len(_uids(a)) == 6 and _uids(a) == _uids(b)

    # A flag set on one node is seen on the other.
    first = _uids(a)[0]
    assert a.uid("STORE", str(first), "+FLAGS", r"(\Flagged)")[0] == "OK"
    deadline = time.monotonic() + 10
    while True:
        b.noop()
        typ, data = b.uid("FETCH", str(first), "(FLAGS)")
        if b"\\Flagged" in data[0]:
            break
        assert time.monotonic() < deadline, data
        time.sleep(0.1)

    # Appends through both nodes, interleaved: one UID sequence, no duplicate.
    for i in range(5):
        for c in (a, b):
            assert c.append("INBOX", None, None, f"Subject: app{i}\r\n\r\nx\r\n".encode())[0] == "OK"
    a.noop()
    b.noop()
    ua, ub = _uids(a), _uids(b)
    assert ua == ub and len(ua) == 16 and len(set(ua)) == 16 and ua == sorted(ua)
    a.logout()
    b.logout()

    # Submission through HAProxy lands on either node and delivers into the shared store.
    with smtplib.SMTP("127.0.0.1", proxy.fronts[587], timeout=30, source_address=(CLIENT, 0)) as s:
        s.starttls(context=smtp1.context())
        s.login(login, smtp1.users[login])
        s.sendmail(rcpt, [rcpt], b"Subject: via submission\r\n\r\nx\r\n")
    c = _imap(proxy, imap1, login)
    c.select("INBOX")
    assert len(_uids(c)) == 17
    c.logout()
