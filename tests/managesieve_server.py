"""A real ``mailstack managesieved`` process for the ManageSieve tests, on free loopback ports."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

from tests.conftest import free_port, run_cli
from tests.daemon_process import PASSWORD, DaemonProcess

DOMAIN = "ac-normandie.test"
__all__ = ["DOMAIN", "PASSWORD", "ManageSieveServer", "make_server"]


class ManageSieveServer(DaemonProcess):
    command = "managesieved"

    def __init__(self, home: Path, port: int, proxy_port: int | None = None):
        super().__init__(home, [port] + ([proxy_port] if proxy_port else []))
        self.port, self.proxy_port = port, proxy_port

    def account_dir(self, login: str) -> Path:
        return self.home / "mail" / DOMAIN / login

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def tls(self, sock: socket.socket) -> ssl.SSLSocket:
        return self.context().wrap_socket(sock, server_hostname="localhost")


def make_server(tmp: Path, proxy: bool = False, **settings: int) -> ManageSieveServer:
    """A dev home whose ManageSieve listener (14190) moved to a free port;
    ``settings`` are [managesieve] keys; ``proxy`` adds a PROXY-protocol
    listener trusting loopback."""
    home = tmp / "home"
    r = run_cli("init", "--home", str(home), "--domain", DOMAIN, "--dev", "--hostname", "localhost")
    assert r.returncode == 0, r.stderr
    port = free_port()
    proxy_port = None
    cfg = (home / "mailstack.toml").read_text()
    assert "port = 14190" in cfg  # mailstack init --dev: ManageSieve on 14190
    cfg = cfg.replace("port = 14190", f"port = {port}")
    if proxy:
        proxy_port = free_port()
        while proxy_port == port:
            proxy_port = free_port()
        cfg = cfg.replace('proxy_trusted = []\n', "")
        cfg = cfg.replace("[server]\n", '[server]\nproxy_trusted = ["127.0.0.0/8"]\n', 1)
        cfg += f'\n[[managesieve.listeners]]\naddress = "127.0.0.1"\nport = {proxy_port}\ntls = "starttls"\nproxy = true\n'
    values = {"workers": 1, **settings}
    cfg += "\n[managesieve]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    # Fast Argon2 for tests (the production parameters are tested in test_accounts).
    cfg += "\n[auth.argon2]\nmemory_kib = 8192\niterations = 1\n"
    (home / "mailstack.toml").write_text(cfg)
    os.environ.pop("MAILSTACK_CONFIG", None)
    return ManageSieveServer(home, port, proxy_port)
