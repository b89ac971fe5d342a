"""The filter hook end to end: a third-party filter package installed with
pip, named in the config, run by a real ``mailstack smtpd`` on every message.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.smtp_server import DOMAIN, make_server

EXAMPLE = Path(__file__).resolve().parent / "filter_example"


@pytest.fixture(scope="module")
def example_package(tmp_path_factory) -> Path:
    """pip-installs tests/filter_example into a directory of its own (as an
    operator installs a package), for the daemon's PYTHONPATH."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True, cwd=build,
    )
    assert r.returncode == 0, r.stderr
    assert list(target.glob("mailstack_example_filter-*.dist-info/entry_points.txt"))
    return target


FILTERS = """
[[filters]]
name = "example"
timeout = 1.0
fail = "tempfail"
options = { crash_word = "CRASH-T", slow_word = "SLOW-T" }

[[filters]]
name = "example"
timeout = 1.0
fail = "accept"
skip_authenticated = true
options = { crash_word = "CRASH-A", slow_word = "SLOW-A", tag = "second" }
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory, example_package):
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(example_package))
    s = make_server(tmp_path_factory.mktemp("filters"), extra=FILTERS)
    s.start()
    s.rcpt = s.add_user("Anne", "Filtre")
    yield s
    s.stop()
    mp.undo()


def mx_send(srv, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=30) as s:
        s.sendmail("someone@outside.test", [f"{srv.rcpt}@{DOMAIN}"], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def find(srv, subject: str, folder: str = "") -> bytes:
    """The message with this subject (file names do not order messages within a second)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for m in srv.messages(srv.rcpt, folder):
            if f"Subject: {subject}\r\n".encode() in m:
                return m
        time.sleep(0.05)
    raise AssertionError(f"no {subject!r} in {folder or 'INBOX'}")


def test_tags_are_added_by_every_filter_in_order(srv):
    mx_send(srv, "hello")
    data = find(srv, "hello")
    assert b"Subject: hello" in data
    first, second = (line for line in data.split(b"\r\n") if line.startswith(b"X-Example-Filter:"))
    assert first.startswith(b"X-Example-Filter: checked; size=") and b"via=mx" in first
    assert second.startswith(b"X-Example-Filter: second; ")
    log = srv.log_path.read_text()
    assert "filter id=" in log and "filter=example result=tag time=" in log


def test_a_forged_verdict_header_is_removed(srv):
    with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=30) as s:
        s.sendmail("someone@outside.test", [f"{srv.rcpt}@{DOMAIN}"],
                   b"X-Example-Filter: forged, all clean\r\nSubject: forged\r\n\r\nbody\r\n")
    data = find(srv, "forged")
    assert b"forged, all clean" not in data and data.count(b"X-Example-Filter:") == 2  # our two filters' own


def test_spam_goes_to_junk(srv):
    before = len(srv.messages(srv.rcpt))
    mx_send(srv, "SPAM-ME please")
    assert find(srv, "SPAM-ME please", ".Junk")
    assert len(srv.messages(srv.rcpt)) == before


@pytest.mark.parametrize("subject, code, text", [
    ("REJECT-ME", 550, b"5.7.1 Refused by the example filter"),
    ("TEMPFAIL-ME", 451, b"4.7.1 Example filter busy"),
    ("CRASH-T now", 451, b"4.7.1 Message could not be scanned"),  # fail = "tempfail"
    ("SLOW-T now", 451, b"4.7.1 Message could not be scanned"),  # over its 1 s
])
def test_refusals(srv, subject, code, text):
    before = len(srv.messages(srv.rcpt))
    with pytest.raises(smtplib.SMTPDataError) as e:
        mx_send(srv, subject)
    assert e.value.smtp_code == code and text in e.value.smtp_error
    assert len(srv.messages(srv.rcpt)) == before


@pytest.mark.parametrize("subject", ["CRASH-A now", "SLOW-A now"])
def test_fail_accept_delivers_unscanned(srv, subject):
    mx_send(srv, subject)
    assert find(srv, subject)
    assert "accepted unscanned" in srv.log_path.read_text()


def test_skip_authenticated(srv):
    sender = f"{srv.rcpt}@{DOMAIN}"
    with srv.submission(srv.rcpt) as s:
        s.sendmail(sender, [sender], b"Subject: CRASH-A from inside\r\n\r\nbody\r\n")  # the second filter would accept it anyway
    data = find(srv, "CRASH-A from inside")
    assert data.count(b"X-Example-Filter:") == 1  # only the first filter ran, with "via=submission"
    assert b"via=submission" in data


def test_quarantine_list_show_release_delete(srv):
    before = len(srv.messages(srv.rcpt))
    mx_send(srv, "QUARANTINE-ME one")
    mx_send(srv, "QUARANTINE-ME two")
    time.sleep(0.3)
    assert len(srv.messages(srv.rcpt)) == before
    out = srv.cli("quarantine", "list")
    assert "2 message(s) in quarantine" in out and "example: asked to" in out and DOMAIN in out
    ids = [line.split()[0] for line in out.splitlines()[1:-1]]
    shown = srv.cli("quarantine", "show", ids[0])
    assert "example: asked to" in shown and "X-Example-Filter: quarantined" in shown
    srv.cli("quarantine", "release", ids[0])
    deadline = time.monotonic() + 20
    while len(srv.messages(srv.rcpt)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert find(srv, "QUARANTINE-ME one")  # IDs sort by time: the first listed is the first sent
    assert not any(b"QUARANTINE-ME two" in m for m in srv.messages(srv.rcpt))
    srv.cli("quarantine", "delete", ids[1])
    assert "0 message(s) in quarantine" in srv.cli("quarantine", "list")
    r = run_cli("quarantine", "release", ids[1], config=srv.config)
    assert r.returncode == 1 and r.stderr.strip() == f"mailstack: no message {ids[1]} in quarantine"


def test_unknown_filter_stops_the_daemon_with_one_line(tmp_path):
    s = make_server(tmp_path, extra='\n[[filters]]\nname = "nowhere"\n')
    r = run_cli("smtpd", config=s.config, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("mailstack: filters[0] (nowhere): unknown filter 'nowhere'")
