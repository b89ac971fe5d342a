"""The systemd units verify, and the daemons speak sd_notify on a real socket."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, need
from tests.smtp_server import make_server

UNITS = ["mailstack-imapd.service", "mailstack-smtpd.service", "mailstack-httpd.service", "mailstack-managesieved.service",
         "mailstack.target"]


def test_units_verify(tmp_path):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian package systemd)")
    mailstack = Path(sys.executable).parent / "mailstack"
    for name in UNITS:  # ExecStart must name a program that exists here
        text = (REPO / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/mailstack", str(mailstack)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in UNITS)],
                       capture_output=True, text=True, timeout=120)
    ours = [line for line in r.stderr.splitlines() if "mailstack" in line]
    assert r.returncode == 0 and not ours, r.stderr[-3000:]
    for name in [n for n in UNITS if n.endswith(".service")]:
        text = (tmp_path / name).read_text()
        for line in ("Type=notify", "User=mailstack", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                     "ProtectSystem=strict", "NoNewPrivileges=yes", "SystemCallFilter=@system-service"):
            assert line in text, (name, line)


def receive(sock: socket.socket, until: str, timeout: float = 20) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} among {got}")


@pytest.mark.parametrize("workers", [1, 2])
def test_smtpd_notifies_ready_watchdog_and_stopping(tmp_path, monkeypatch, workers):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        srv = make_server(tmp_path, workers=workers)
        srv.start()
        try:
            ready = receive(sock, "READY=1")[-1]
            assert f"MAINPID={srv.proc.pid}" in ready and "STATUS=accepting connections" in ready
            pings = [m for m in receive(sock, "WATCHDOG=1") if m == "WATCHDOG=1"]
            assert pings and receive(sock, "WATCHDOG=1")  # again, 0.1 s later
            srv.proc.send_signal(signal.SIGTERM)
            assert any("STOPPING=1" in m for m in receive(sock, "STOPPING=1"))
        finally:
            srv.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_imapd_reload_swaps_the_certificate_and_keeps_sessions(tmp_path, workers):
    """systemctl reload (SIGHUP): new connections get the new certificate,
    an open session goes on; a broken certificate leaves the old one."""
    import ssl

    from mailstack.tls import make_self_signed
    from tests.imap_server import make_server as make_imap

    def served_cert(port: int) -> bytes:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)

    srv = make_imap(tmp_path, workers=workers)
    srv.start()
    try:
        login = srv.add_user("Rene", "Charge")
        session = srv.connect(login)
        before = served_cert(srv.imaps_port)
        tls_dir = srv.home / "tls"
        make_self_signed("localhost", tls_dir / "new-cert.pem", tls_dir / "new-key.pem")
        (tls_dir / "new-cert.pem").replace(tls_dir / "cert.pem")
        (tls_dir / "new-key.pem").replace(tls_dir / "key.pem")
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served_cert(srv.imaps_port) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        after = served_cert(srv.imaps_port)
        assert after != before
        assert session.noop()[0] == "OK"  # the open session was not disturbed
        (tls_dir / "cert.pem").write_text("not a certificate")
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert served_cert(srv.imaps_port) == after  # the old one stays
        assert "keeping the old certificate" in srv.log_path.read_text()
        session.logout()
    finally:
        srv.stop()
