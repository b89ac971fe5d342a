"""mailstack imapd driven by real clients: mbsync, offlineimap, Twisted's
IMAP4Client and imapclient, over implicit TLS and STARTTLS on loopback."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from tests import imap_clients as ic
from tests.conftest import need
from tests.imap_server import PASSWORD, ImapServer, make_server


def message(n: int | str) -> bytes:
    return (f"From: bob@ac-normandie.test\r\nTo: alice@ac-normandie.test\r\nSubject: message {n}\r\n"
            f"Message-ID: <m{n}@ac-normandie.test>\r\nDate: Mon, 5 Jan 2026 10:00:00 +0100\r\n\r\nbody {n}\r\n").encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ImapServer:
    s = make_server(tmp_path_factory.mktemp("clients"))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def account(server: ImapServer, request) -> str:
    login = server.add_user("Client", request.node.name.split("[")[0][-20:].replace("_", "") + request.node.name[-12:].replace("[", "").replace("]", "").replace("-", ""))
    mb = server.mailbox(login)
    inbox = mb.folder("INBOX")
    inbox.deliver(io.BytesIO(message(1)), flags=["\\Seen"])
    inbox.deliver(io.BytesIO(message(2)))
    inbox.deliver(io.BytesIO(message(3)), flags=["\\Flagged"])
    mb.create("Archive/2026")
    mb.subscribe("Archive/2026")
    mb.folder("Archive/2026").deliver(io.BytesIO(message("a")), flags=["\\Seen"])
    return login


def target(server: ImapServer, login: str, tls: str) -> ic.ImapTarget:
    port = server.imaps_port if tls == "implicit" else server.imap_port
    return ic.ImapTarget(host="localhost", port=port, tls=tls, cafile=server.cafile, user=login, password=PASSWORD)


def server_messages(server: ImapServer, login: str, folder: str) -> dict[str, set[str]]:
    f = server.mailbox(login).folder(folder)
    out = {}
    for m in f.messages():
        out[f.info(m.uid).headers["message-id"]] = set(m.flags)
    f.close()
    return out


def describe(result: ic.SyncResult) -> dict[str, dict[str, set[str]]]:
    return {folder: {m.header("Message-ID"): set(m.flags) for m in msgs} for folder, msgs in result.folders.items() if msgs}


SYNCS = {"mbsync": ic.mbsync_sync, "offlineimap": ic.offlineimap_sync}


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
@pytest.mark.parametrize("client", ["mbsync", "offlineimap"])
def test_sync_round_trip(server: ImapServer, account: str, tmp_path: Path, client: str, tls: str) -> None:
    """First sync, flag changes both ways, deletion, a new message, a new folder, a quiet third sync."""
    need(shutil.which(client) is not None, f"{client} (Debian package {'isync' if client == 'mbsync' else 'offlineimap'})")
    sync, t, local = SYNCS[client], target(server, account, tls), tmp_path / client
    first = sync(t, local).check()
    got = describe(first)
    assert got["INBOX"] == {"<m1@ac-normandie.test>": {"\\Seen"}, "<m2@ac-normandie.test>": set(),
                            "<m3@ac-normandie.test>": {"\\Flagged"}}
    assert got["Archive/2026"] == {"<ma@ac-normandie.test>": {"\\Seen"}}
    assert [m.uid for m in first.messages("INBOX")] == [1, 2, 3]

    m1, m2, m3 = first.messages("INBOX")
    ic.set_local_flags(m1, set())
    ic.set_local_flags(m2, {"\\Seen", "\\Answered"})
    m3.path.unlink()
    ic.add_local_message(local, "INBOX", message(4), flags={"\\Seen"})
    ic.add_local_message(local, "Drafts", message(5), flags={"\\Draft"})
    arch = server.mailbox(account).folder("Archive/2026")
    arch.store([1], ["\\Flagged"])  # changed on the server meanwhile
    arch.close()

    second = sync(t, local).check()
    assert server_messages(server, account, "INBOX") == {
        "<m1@ac-normandie.test>": set(), "<m2@ac-normandie.test>": {"\\Seen", "\\Answered"},
        "<m4@ac-normandie.test>": {"\\Seen"},
    }
    assert server_messages(server, account, "Drafts") == {"<m5@ac-normandie.test>": {"\\Draft"}}
    assert describe(second)["Archive/2026"] == {"<ma@ac-normandie.test>": {"\\Seen", "\\Flagged"}}
    assert {m.uid for m in second.messages("INBOX")} == {1, 2, 4}

    third = sync(t, local).check()
    assert describe(third) == describe(second)


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_twisted_imap4client(server: ImapServer, account: str, tls: str) -> None:
    results = ic.twisted_client_session(
        target(server, account, tls),
        [
            ("login", []),
            ("select", ["INBOX"]),
            ("fetch_flags", ["1:*"]),
            ("append", ["Sent", message(9).decode(), ["\\Seen"]]),
            ("logout", []),
        ],
    )
    assert all(r["ok"] for r in results), results
    flags = results[2]["result"]
    assert sorted(flags) == ["1", "2", "3"] and "\\Seen" in flags["1"]["FLAGS"]
    assert server_messages(server, account, "Sent") == {"<m9@ac-normandie.test>": {"\\Seen"}}


def test_imapclient_session(server: ImapServer, account: str) -> None:
    try:
        import imapclient  # noqa: F401
    except ImportError:
        need(False, "imapclient (pip install -e '.[test]')")
    with ic.imapclient_connect(target(server, account, "starttls")) as c:
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 3 and b"UIDVALIDITY" in info
        data = c.fetch([1, 2, 3], ["FLAGS", "ENVELOPE", "RFC822.SIZE"])
        assert data[1][b"ENVELOPE"].subject == b"message 1"
        c.add_flags([2], ["$Label1"])
        assert b"$Label1" in c.get_flags([2])[2]
        c.move([3], "Archive")
        assert c.search(["ALL"]) == [1, 2]
        uid = c.append("Drafts", message(7), flags=["\\Draft"])
        assert b"APPENDUID" in uid
        assert c.folder_status("Drafts", ["MESSAGES"])[b"MESSAGES"] == 1
        assert [f[2] for f in c.list_folders()][:1] == ["INBOX"]
