"""The Prometheus endpoints of real daemons (two SMTP workers, one IMAP),
scraped over HTTP and read with prometheus-client's own parser."""

from __future__ import annotations

import smtplib
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.smtp_server import DOMAIN, make_server


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    smtp = make_server(tmp_path_factory.mktemp("metrics"), workers=2)
    smtp.metrics_port, smtp.imap_metrics_port = free_port(), free_port()
    text = smtp.config.read_text()
    text = text.replace("imap_port = 19425", f"imap_port = {smtp.imap_metrics_port}")
    text = text.replace("smtp_port = 19426", f"smtp_port = {smtp.metrics_port}")
    smtp.config.write_text(text)
    imap = smtp.imap_beside()
    smtp.start()
    imap.start()
    smtp.login = smtp.add_user("Mesure", "Compteur")
    yield smtp, imap
    imap.stop()
    smtp.stop()


def test_smtp_metrics_count_what_happened(daemons):
    smtp, _ = daemons
    rcpt = f"{smtp.login}@{DOMAIN}"
    for i in range(4):  # several connections: both workers take some
        with smtp.mx() as s:
            s.sendmail("a@outside.test", [rcpt], f"Subject: m{i}\r\n\r\nbody\r\n".encode())
    loop = "".join(f"Received: from h{i}\r\n" for i in range(60))
    with smtp.mx() as s, pytest.raises(smtplib.SMTPDataError):
        s.sendmail("a@outside.test", [rcpt], (loop + "Subject: loop\r\n\r\nx\r\n").encode())
    with smtp.submission(smtp.login) as s:  # to a domain that does not resolve here: deferred
        s.sendmail(rcpt, ["x@elsewhere.test"], b"Subject: out\r\n\r\nx\r\n")

    deadline = time.monotonic() + 15
    while True:
        m = scrape(smtp.metrics_port)
        if value(m, "mailstack_messages_total", service="queue", outcome="deferred") >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value(m, "mailstack_messages_total", service="smtp", outcome="received") == 5
    assert value(m, "mailstack_messages_total", service="smtp", outcome="rejected") == 1
    assert value(m, "mailstack_messages_total", service="local", outcome="delivered") == 4
    assert value(m, "mailstack_messages_total", service="queue", outcome="deferred") == 1
    # start() probed each listener once (the probe of 465 never finished
    # its TLS handshake, so no session counted it).
    assert value(m, "mailstack_connections_total", service="smtp", listener=str(smtp.mx_port)) == 1 + 5
    assert value(m, "mailstack_connections_total", service="smtp", listener=str(smtp.submission_port)) == 1 + 1
    assert value(m, "mailstack_connections_total", service="smtp", listener=str(smtp.submissions_port)) == 0
    assert value(m, "mailstack_logins_total", service="smtp", outcome="ok") == 1
    assert value(m, "mailstack_bytes_total", service="smtp", direction="in") > 4 * len("Subject: m0\r\n\r\nbody\r\n")
    assert value(m, "mailstack_smtp_transaction_seconds_count", listener="mx") == 5
    assert value(m, "mailstack_outbound_attempt_seconds_count", result="deferred") == 1
    assert value(m, "mailstack_queue_messages", state="scheduled") == 1


def test_imap_metrics_and_live_connections(daemons):
    smtp, imap = daemons
    c = imap.connect(smtp.login)
    c.select("INBOX")
    c.fetch("1:*", "(BODY.PEEK[])")
    bad = imap.connect()
    with pytest.raises(Exception):
        bad.login(smtp.login, "not the password")
    m = scrape(smtp.imap_metrics_port)
    assert value(m, "mailstack_connections_active", service="imap") == 2
    assert value(m, "mailstack_logins_total", service="imap", outcome="ok") == 1
    assert value(m, "mailstack_logins_total", service="imap", outcome="bad-credentials") == 1
    assert value(m, "mailstack_imap_command_seconds_count", command="FETCH") == 1
    assert value(m, "mailstack_imap_command_seconds_count", command="LOGIN") == 2
    assert value(m, "mailstack_bytes_total", service="imap", direction="out") > 0
    c.logout()
    bad.logout()
    deadline = time.monotonic() + 10
    while value(scrape(smtp.imap_metrics_port), "mailstack_connections_active", service="imap") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
