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

UNITS = ["mailstack-imapd.service", "mailstack-smtpd.service", "mailstack.target"]


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
    for name in UNITS[:2]:
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
