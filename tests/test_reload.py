"""systemctl reload (SIGHUP): the live part of the configuration changes in
running daemons without dropping sessions; a configuration that does not
load is logged and the running one stays; restart-only keys wait, named.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from mailstack import config as config_mod
from tests.smtp_server import DOMAIN
from tests.smtp_server import make_server as make_smtp


def _reload(srv, count: int, what: str = "reload: configuration") -> None:
    """SIGHUP, then wait until the daemon logged ``what`` ``count`` times."""
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while srv.log_path.read_text().count(what) < count:
        assert time.monotonic() < deadline, srv.log_path.read_text()[-3000:]
        time.sleep(0.05)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_keep_restart_only_names_what_waits():
    base = config_mod.parse('[server]\ndomains = ["a.test"]\n')
    changed = config_mod.parse(
        '[server]\ndomains = ["a.test", "b.test"]\n[imap]\nmax_per_user = 3\nworkers = 4\n'
        '[queue]\nretry_min = 60\nconcurrency = 7\n[database]\nurl = "sqlite:////tmp/other.db"\n'
    )
    merged, waiting = config_mod.keep_restart_only(base, changed)
    assert sorted(waiting) == ["database", "imap.workers", "queue.concurrency", "server.domains"]
    assert merged.server.domains == ["a.test"] and merged.imap.workers == base.imap.workers
    assert merged.database == base.database and merged.queue.concurrency == base.queue.concurrency
    assert merged.imap.max_per_user == 3 and merged.queue.retry_min == 60  # live keys change


def test_imapd_reload_changes_limits_and_survives_a_broken_file(tmp_path):
    from tests.imap_server import make_server as make_imap

    srv = make_imap(tmp_path)
    _edit(srv.config, "[imap]\n", "[imap]\nmax_per_user = 1\n")
    srv.start()
    try:
        login = srv.add_user("Odile", "Recharge")
        first = srv.connect(login)
        with pytest.raises(Exception, match="too many sessions|limit|LOGIN"):
            srv.connect(login)  # one session per user
        _edit(srv.config, "max_per_user = 1", "max_per_user = 3")
        _reload(srv, 1)
        second = srv.connect(login)  # the new limit, and the first session goes on
        assert first.noop()[0] == "OK" and second.noop()[0] == "OK"
        second.logout()

        good = srv.config.read_text()
        srv.config.write_text(good.replace("max_per_user = 3", "max_per_user = 'many'"))
        _reload(srv, 1, "keeping the running configuration")
        third = srv.connect(login)  # still 3, still serving
        assert third.noop()[0] == "OK"
        third.logout()

        srv.config.write_text(good.replace("workers = 1", "workers = 2"))
        _reload(srv, 2)
        assert "reload: imap.workers changed; this takes effect at the next restart" in srv.log_path.read_text()
        assert first.noop()[0] == "OK"
        first.logout()
    finally:
        srv.stop()


def test_smtpd_reload_changes_live_keys_and_keeps_filters_that_do_not_load(tmp_path):
    srv = make_smtp(tmp_path, max_recipients=2)
    srv.start()
    try:
        login = srv.add_user("Paul", "Relance")
        rcpts = [f"{login}@{DOMAIN}"] * 3
        with srv.mx() as s:
            refused = s.sendmail("a@outside.test", rcpts, b"Subject: before\r\n\r\nx\r\n")
        assert len(refused) == 1  # the third recipient got 452

        open_session = srv.mx()
        open_session.ehlo("open.test")
        _edit(srv.config, "max_recipients = 2", "max_recipients = 5")
        _reload(srv, 1)
        with srv.mx() as s:
            assert s.sendmail("a@outside.test", rcpts, b"Subject: after\r\n\r\nx\r\n") == {}
        assert open_session.noop()[0] == 250  # the session opened before the reload goes on
        open_session.quit()

        # A filter that cannot be loaded: logged, the running (empty) pipeline stays.
        with srv.config.open("a") as f:
            f.write('\n[[filters]]\nname = "no-such-filter"\n')
        _reload(srv, 2)
        assert "keeping the running filters" in srv.log_path.read_text()
        with srv.mx() as s:
            assert s.sendmail("a@outside.test", [f"{login}@{DOMAIN}"], b"Subject: still\r\n\r\nx\r\n") == {}

        # A file that is not TOML: the running configuration stays.
        good = srv.config.read_text()
        srv.config.write_text(good + "\n[[[ broken\n")
        _reload(srv, 1, "keeping the running configuration")
        with srv.submission(login) as s:
            assert s.sendmail(f"{login}@{DOMAIN}", rcpts, b"Subject: sub\r\n\r\nx\r\n") == {}
    finally:
        srv.stop()


def test_smtpd_reload_with_two_workers_reaches_every_worker(tmp_path):
    srv = make_smtp(tmp_path, max_recipients=1, workers=2)
    srv.start()
    try:
        login = srv.add_user("Lise", "Deux")
        _edit(srv.config, "max_recipients = 1", "max_recipients = 4")
        _reload(srv, 2)  # one line per worker
        for _ in range(6):  # connections land on either worker
            with srv.mx() as s:
                assert s.sendmail("a@outside.test", [f"{login}@{DOMAIN}"] * 2, b"Subject: w\r\n\r\nx\r\n") == {}
    finally:
        srv.stop()

