"""The ``world`` fixture: a real smtpd whose queue delivers to SMTP sinks on
127.0.0.1 and ::1 (one port), found through a real DNS server on loopback."""

from __future__ import annotations

import pytest


def queue_toml(dns_port: int, sink_port: int, **keys) -> str:
    q = {"port": sink_port, "retry_min": 1, "retry_max": 2, **keys}
    return (
        f'\n[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\ntimeout = 2.0\n'
        "\n[queue]\n" + "".join(f"{k} = {v}\n" for k, v in q.items())
    )


@pytest.fixture
def world(tmp_path, dns_server, smtp_sink):
    """A running smtpd whose queue delivers to sinks on 127.0.0.1 and ::1 (one port)."""
    v4 = smtp_sink("127.0.0.1")
    v6 = smtp_sink("::1", v4.port)
    dns_server.add("mx4.remote.test", "A", "127.0.0.1")
    dns_server.add("mx6.remote.test", "AAAA", "::1")

    from tests.smtp_server import make_server  # not at import: conftest imports this module

    def start(port: int, **queue_keys):
        srv = make_server(tmp_path / f"s{len(servers)}", extra=queue_toml(dns_server.port, port, **queue_keys))
        srv.start()
        srv.sender = srv.add_user("Claire", "Martin")
        return srv

    servers = []

    class World:
        dns, sink4, sink6 = dns_server, v4, v6

        def server(self, port: int | None = None, **queue_keys):
            s = start(port or v4.port, **queue_keys)
            servers.append(s)
            return s

    yield World()
    for s in servers:
        s.stop()
