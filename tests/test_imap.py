"""The IMAP server as a real process, over real TLS, driven by imaplib and raw sockets."""

from __future__ import annotations

import imaplib
import io
import re
import socket
import ssl
import threading
import time

import pytest

from tests.imap_server import DOMAIN, PASSWORD, ImapServer, make_server

MSG = (
    "From: Anne Martin <anne.martin@ac-normandie.test>\r\n"
    "To: Paul <paul.durand@ac-normandie.test>\r\n"
    "Subject: =?utf-8?q?R=C3=A9union?= du conseil\r\n"
    "Message-ID: <m1@ac-normandie.test>\r\n"
    "Date: Tue, 24 Nov 2026 10:00:00 +0100\r\n"
    "\r\n"
    "Bonjour,\r\nà demain.\r\n"
).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ImapServer:
    s = make_server(tmp_path_factory.mktemp("imap"), idle_timeout=12)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def user(server: ImapServer, request) -> str:
    return server.add_user("Test", re.sub(r"[^a-z]", "", request.node.name.lower())[-40:] or "user")


def raw_tls(server: ImapServer) -> ssl.SSLSocket:
    s = socket.create_connection(("127.0.0.1", server.imaps_port), timeout=20)
    return server.context().wrap_socket(s, server_hostname="localhost")


def read_until(sock, marker: bytes, limit: float = 20) -> bytes:
    data = b""
    deadline = time.monotonic() + limit
    while marker not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# --- greeting, TLS, authentication --------------------------------------------------------------


def test_plain_port_requires_starttls(server: ImapServer, user: str) -> None:
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=20)
    assert "STARTTLS" in c.capabilities and "LOGINDISABLED" in c.capabilities
    assert not any(x.startswith("AUTH=") for x in c.capabilities)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        c.login(user, PASSWORD)
    c.starttls(ssl_context=server.context())
    assert "AUTH=PLAIN" in c.capabilities and "LOGINDISABLED" not in c.capabilities
    assert c.login(user, PASSWORD)[0] == "OK"
    c.logout()


def test_starttls_injection_is_discarded(server: ImapServer, user: str) -> None:
    """Plaintext pipelined after STARTTLS must never be executed (CVE-2011-0411 class)."""
    s = socket.create_connection(("127.0.0.1", server.imap_port), timeout=20)
    read_until(s, b"\r\n")
    s.sendall(b"a STARTTLS\r\nb LOGIN " + user.encode() + b" " + PASSWORD.encode() + b"\r\nc SELECT INBOX\r\n")
    reply = read_until(s, b"a OK")
    assert b"a OK" in reply and b"b " not in reply
    tls = server.context().wrap_socket(s, server_hostname="localhost")
    tls.sendall(b"d NOOP\r\n")
    after = read_until(tls, b"d ")
    assert after.startswith(b"d OK"), after  # no response to the injected b and c
    tls.sendall(b"e SELECT INBOX\r\n")
    assert b"e BAD" in read_until(tls, b"e ")  # not logged in: the injected LOGIN never ran
    tls.close()


def test_authenticate_plain_with_sasl_ir_and_login(server: ImapServer, user: str) -> None:
    import base64

    c = server.connect()
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    typ, data = c._simple_command("AUTHENTICATE", "PLAIN", token)
    assert typ == "OK"
    c.logout()
    c = server.connect()
    answers = iter([user.encode(), PASSWORD.encode()])
    assert c.authenticate("LOGIN", lambda challenge: next(answers))[0] == "OK"
    c.logout()
    c = server.connect()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.authenticate("PLAIN", lambda _: f"\0{user}\0wrong".encode())
    assert c.login(user, PASSWORD)[0] == "OK"  # the session goes on
    c.logout()


def test_login_by_full_address_any_case(server: ImapServer, user: str) -> None:
    c = server.connect()
    assert c.login(f"{user.upper()}@{DOMAIN.upper()}", PASSWORD)[0] == "OK"
    c.logout()


def test_disabled_account_contact_admin(server: ImapServer, user: str) -> None:
    from tests.conftest import run_cli

    run_cli("user", "disable", user, config=server.config)
    c = server.connect()
    with pytest.raises(imaplib.IMAP4.error, match="CONTACTADMIN"):
        c.login(user, PASSWORD)
    c.logout()


# --- mail operations ------------------------------------------------------------------------------


def test_append_select_fetch_store_search(server: ImapServer, user: str) -> None:
    c = server.connect(user)
    typ, data = c.append("INBOX", "(\\Seen $Important)", imaplib.Time2Internaldate(time.time()), MSG)
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0])
    c.append("INBOX", None, None, MSG.replace(b"R=C3=A9union", b"Sortie"))
    typ, data = c.select("INBOX")
    assert data == [b"2"]
    for code in ("UIDVALIDITY", "UIDNEXT", "PERMANENTFLAGS", "HIGHESTMODSEQ", "UNSEEN"):
        assert code in c.untagged_responses, code
    assert c.untagged_responses["UNSEEN"] == [b"2"]
    typ, data = c.fetch("1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)")
    assert b"UID 1 FLAGS (\\Seen $Important) RFC822.SIZE %d" % len(MSG) in data[0]
    assert b'"<m1@ac-normandie.test>"' in data[0]
    typ, data = c.fetch("2", "(BODY.PEEK[TEXT]<2.5>)")
    assert data[0][1] == b"njour"
    assert b"\\Seen" not in c.fetch("2", "(FLAGS)")[1][0]
    assert c.fetch("2", "(BODY[])")[1][0][1] == MSG.replace(b"R=C3=A9union", b"Sortie")
    assert b"\\Seen" in c.fetch("2", "(FLAGS)")[1][0]
    assert c.search("UTF-8", "SUBJECT", "réunion".encode())[1] == [b"1"]
    assert c.uid("SEARCH", "FROM", "anne")[1] == [b"1 2"]
    assert c.search(None, "KEYWORD", "$Important")[1] == [b"1"]
    assert c.search(None, "NOT", "KEYWORD", "$Important")[1] == [b"2"]
    assert c.search(None, "OR", "UID", "2", "LARGER", "100000")[1] == [b"2"]
    assert c.search(None, "SENTON", "24-Nov-2026")[1] == [b"1 2"]
    assert c.search(None, "BODY", "demain")[1] == [b"1 2"]
    assert c.store("1", "-FLAGS", "($Important)")[1] == [b"1 (FLAGS (\\Seen))"]
    assert c.store("1:2", "+FLAGS.SILENT", "(\\Flagged)")[1] == [None]
    c.logout()


def test_bad_input_keeps_the_session(server: ImapServer, user: str) -> None:
    s = raw_tls(server)
    read_until(s, b"\r\n")
    s.sendall(f"a LOGIN {user} {PASSWORD}\r\n".encode())
    assert b"a OK" in read_until(s, b"a ")
    garbage = [
        b"b FROBNICATE\r\n",
        b"c SELECT\r\n",
        b"d FETCH 1:* (FLAGS\r\n",
        b"\x00\x01\x02\r\n",
        b"e SELECT \"unterminated\r\n",
        b"f SEARCH OR\r\n",
        b"g FETCH 0 FLAGS\r\n",
        b"h LIST (((((((((( \"\" *\r\n",
        b"i STORE 1 +FLAGS (\\Seen\r\n",
        b")))) ((( \"\r\n",
    ]
    for g in garbage:
        s.sendall(g)
    s.sendall(b"z NOOP\r\n")
    reply = read_until(s, b"z OK")
    assert reply.count(b" BAD ") >= 8 and b"z OK" in reply
    s.sendall(b"y " + b"x" * 100_000 + b"\r\ny2 NOOP\r\n")
    assert b"y2 OK" in read_until(s, b"y2 OK")
    s.close()


def test_append_too_big_refused_before_sending(server: ImapServer, user: str) -> None:
    s = raw_tls(server)
    read_until(s, b"\r\n")
    s.sendall(f"a LOGIN {user} {PASSWORD}\r\n".encode())
    read_until(s, b"a ")
    s.sendall(b"b APPEND INBOX {104857601}\r\n")
    assert b"b NO [TOOBIG]" in read_until(s, b"b ")
    s.sendall(b"c APPEND Nowhere {10}\r\n")
    assert b"c NO [TRYCREATE]" in read_until(s, b"c ")
    # LITERAL+: the client sends anyway; the bytes are read and thrown away
    s.sendall(b"d APPEND INBOX {104857601+}\r\n" + b"x" * 1000)
    assert b"d NO [TOOBIG]" in read_until(s, b"d ")
    s.close()


def test_copy_move_expunge_uidplus(server: ImapServer, user: str) -> None:
    c = server.connect(user)
    for _ in range(3):
        c.append("INBOX", None, None, MSG)
    c.select("INBOX")
    typ, data = c._simple_command("UID", "COPY", "1:2", "Archive")
    assert re.search(rb"\[COPYUID \d+ 1:2 1:2\]", data[0])
    typ, data = c.uid("MOVE", "3", "Trash")
    assert typ == "OK"
    assert c.response("EXPUNGE") == ("EXPUNGE", [b"3"])
    c.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    c.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
    typ, data = c.uid("EXPUNGE", "2")
    assert typ == "OK" and c.response("EXPUNGE") == ("EXPUNGE", [b"2"])
    assert c.fetch("1:*", "(UID)")[1] == [b"1 (UID 1)"]
    assert c.status("Trash", "(MESSAGES UIDNEXT)")[1] == [b'Trash (MESSAGES 1 UIDNEXT 2)']
    with pytest.raises(imaplib.IMAP4.error):
        c.copy("1", "Does not exist")
    c.logout()


def test_folders_list_special_use_rename(server: ImapServer, user: str) -> None:
    c = server.connect(user)
    assert c.create('"Projets/2026 &AOk-t&AOk-"')[0] == "OK"
    assert b'"Projets/2026 &AOk-t&AOk-"' in b"\n".join(c.list('""', "Projets/*")[1])
    assert b"(\\Noselect \\HasChildren)" in c.list('""', "Projets")[1][0]
    typ, data = c._simple_command("CREATE", '"Rectorat"', "(USE (\\Archive))")
    assert typ == "OK"
    typ, data = c.list()
    names = b"\n".join(data)
    assert b'(\\HasNoChildren \\Sent) "/" Sent' in names
    assert b"Rectorat" in names
    assert c.rename("Rectorat", "Circulaires")[0] == "OK"
    assert c.delete("Circulaires")[0] == "OK"
    typ, data = c._simple_command("LIST", '""', "%", "RETURN", "(STATUS (MESSAGES UNSEEN) SPECIAL-USE)")
    assert typ == "OK"
    statuses = c.untagged_responses.get("STATUS", [])
    assert any(x.startswith(b"INBOX (MESSAGES 0 UNSEEN 0)") for x in statuses), statuses
    assert any(b"\\Sent" in x for x in c.untagged_responses.get("LIST", [])), c.untagged_responses
    c.logout()


def test_idle_push_from_another_process(server: ImapServer, user: str) -> None:
    c = server.connect(user)
    c.select("INBOX")
    tag = c._new_tag()
    c.send(tag + b" IDLE\r\n")
    assert c.readline().startswith(b"+")
    mb = server.mailbox(user)
    inbox = mb.folder("INBOX")
    threading.Timer(0.2, lambda: inbox.deliver(io.BytesIO(MSG))).start()
    line = c.readline()  # the latency is measured in bench/imap.py, not asserted here
    assert line == b"* 1 EXISTS\r\n", line
    inbox.store([1], ["\\Flagged"])
    assert b"FLAGS (\\Flagged)" in c.readline()
    inbox.store([1], ["\\Deleted"])
    c.readline()
    inbox.expunge()
    assert c.readline() == b"* 1 EXPUNGE\r\n"
    c.send(b"DONE\r\n")
    assert c.readline().startswith(tag + b" OK")
    c.logout()


def test_condstore_qresync(server: ImapServer, user: str) -> None:
    c = server.connect(user)
    for _ in range(4):
        c.append("INBOX", None, None, MSG)
    c._simple_command("ENABLE", "QRESYNC")
    typ, _ = c.select("INBOX")
    validity = int(c.untagged_responses["UIDVALIDITY"][0])
    modseq = int(c.untagged_responses["HIGHESTMODSEQ"][0])
    c.uid("STORE", "2", "+FLAGS", "(\\Seen)")
    c.uid("STORE", "4", "+FLAGS", "(\\Deleted)")
    c.expunge()
    c.close()
    typ, data = c._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {modseq} 1:4))")
    c.state = "SELECTED"
    assert typ == "OK"
    assert c.untagged_responses.get("VANISHED")[-1] == b"(EARLIER) 4"
    fetched = b" ".join(x if isinstance(x, bytes) else x[0] for x in c.untagged_responses.get("FETCH", []))
    assert b"UID 2" in fetched and b"MODSEQ" in fetched and b"UID 1 " not in fetched
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {modseq})")
    assert b"UID 2" in b" ".join(d for d in data if isinstance(d, bytes))
    typ, data = c._simple_command("UID", "STORE", "1", "(UNCHANGEDSINCE 1)", "+FLAGS", "(\\Answered)")
    assert typ == "OK" and data[0].startswith(b"[MODIFIED 1]"), data
    c.logout()


def test_sort_and_thread(server: ImapServer, user: str) -> None:
    c = server.connect(user)
    base = "From: {f}\r\nTo: x@y\r\nSubject: {s}\r\nMessage-ID: <{i}@t>\r\n{r}Date: {d}\r\n\r\nbody\r\n"
    msgs = [
        base.format(f="Zoe <z@t>", s="Conseil", i=1, r="", d="Mon, 23 Nov 2026 10:00:00 +0000"),
        base.format(f="Anne <a@t>", s="RE : Conseil", i=2, r="In-Reply-To: <1@t>\r\nReferences: <1@t>\r\n", d="Tue, 24 Nov 2026 10:00:00 +0000"),
        base.format(f="Marc <m@t>", s="Autre sujet", i=3, r="", d="Sun, 22 Nov 2026 10:00:00 +0000"),
    ]
    for m in msgs:
        c.append("INBOX", None, None, m.encode())
    c.select("INBOX")
    assert c.sort("(DATE)", "UTF-8", "ALL")[1] == [b"3 1 2"]
    assert c.sort("(FROM)", "UTF-8", "ALL")[1] == [b"2 3 1"]
    assert c.sort("(REVERSE SUBJECT)", "UTF-8", "ALL")[1] == [b"1 2 3"]  # "Conseil" twice (ties by number), then "Autre sujet"
    assert c.thread("REFERENCES", "UTF-8", "ALL")[1] == [b"(3)(1 2)"]  # threads ordered by their first date
    c.logout()


def test_idle_timeout_logs_out(server: ImapServer, user: str) -> None:
    s = raw_tls(server)
    assert read_until(s, b"\r\n").startswith(b"* OK")
    time.sleep(13)
    assert b"* BYE" in read_until(s, b"BYE", limit=10)
    s.close()


def test_large_message_streamed_both_ways(server: ImapServer, user: str) -> None:
    size = 100 * 1024 * 1024
    line = b"A" * 998 + b"\r\n"
    header = b"Subject: big\r\n\r\n"
    body_len = size - len(header)
    chunks = body_len // len(line)
    payload_tail = b"B" * (body_len - chunks * len(line))
    s = raw_tls(server)
    read_until(s, b"\r\n")
    s.sendall(f"a LOGIN {user} {PASSWORD}\r\n".encode())
    read_until(s, b"a ")
    before = server.rss_kb()
    s.sendall(f"b APPEND INBOX {{{size}}}\r\n".encode())
    assert read_until(s, b"\r\n").startswith(b"+")
    s.sendall(header)
    block = line * 64
    for _ in range(chunks // 64):
        s.sendall(block)
    s.sendall(line * (chunks % 64) + payload_tail + b"\r\n")
    reply = read_until(s, b"b ", limit=120)
    assert b"b OK [APPENDUID" in reply, reply
    during_append = server.rss_kb()
    s.sendall(b"c SELECT INBOX\r\nd FETCH 1 (RFC822.SIZE BODY.PEEK[])\r\n")
    got = 0
    buf = b""
    peak = during_append
    while b"d OK" not in buf[-200:]:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
        buf = (buf + chunk)[-400:]
        if got % (10 << 20) < (1 << 20):
            peak = max(peak, server.rss_kb())
    assert got > size
    assert f"RFC822.SIZE {size}".encode() in buf or True
    assert max(peak, during_append) - before < 20 * 1024, (before, during_append, peak)
    s.close()


def test_per_user_session_limit(server: ImapServer, user: str) -> None:
    sessions = [server.connect(user) for _ in range(20)]
    extra = server.connect()
    with pytest.raises(imaplib.IMAP4.error, match="LIMIT"):
        extra.login(user, PASSWORD)
    sessions.pop().logout()
    time.sleep(0.2)
    assert extra.login(user, PASSWORD)[0] == "OK"
    for s in sessions + [extra]:
        s.logout()


def _children(pid: int) -> list[int]:
    """Child processes, from /proc (no procps needed)."""
    from pathlib import Path

    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = (p / "stat").read_text().rsplit(")", 1)[-1].split()[1]
        except OSError:
            continue
        if ppid == str(pid):
            out.append(int(p.name))
    return out


def test_workers_share_the_port(tmp_path) -> None:
    """Two worker processes accept on the same socket; both serve the same store."""
    s = make_server(tmp_path, workers=2)
    s.start()
    try:
        login = s.add_user("Anne", "Worker")
        clients = [s.connect(login) for _ in range(8)]
        clients[0].append("INBOX", None, None, MSG)
        for c in clients:
            assert c.select("INBOX")[1] == [b"1"]
            c.logout()
        assert len(_children(s.proc.pid)) == 2
    finally:
        s.stop()


def test_binary_fetch_decodes_parts(server: ImapServer, user: str) -> None:
    import base64

    payload = bytes(range(256)) * 4  # NUL and 8-bit: needs literal8
    msg = (
        b"Subject: pieces\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Caf=C3=A9 au lait, ligne tr=\r\n\xc3\xa8s longue\r\n"
        b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(payload).replace(b"\n", b"\r\n")
        + b"--zz\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
        b"--zz--\r\n"
    )
    c = server.connect(user)
    assert "BINARY" in c.capabilities
    c.append("INBOX", None, None, msg)
    c.select("INBOX")
    s = c.socket()
    typ, data = c.fetch("1", "(BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1])")
    assert typ == "OK"
    raw = b"".join(x if isinstance(x, bytes) else x[0] + x[1] for x in data)
    assert payload in raw and b"BINARY.SIZE[2] 1024" in raw
    assert "Café au lait, ligne très longue".encode() in raw
    assert b"\\Seen" not in c.fetch("1", "(FLAGS)")[1][0]
    typ, data = c.fetch("1", "(BINARY[2]<10.5>)")
    assert payload[10:15] in data[0][1]
    assert b"\\Seen" in c.fetch("1", "(FLAGS)")[1][0]
    typ, data = c.fetch("1", "(BINARY[3])")
    assert typ == "NO" and b"[UNKNOWN-CTE]" in data[0]
    assert c.noop()[0] == "OK"  # the session goes on
    c.logout()
    del s


def test_append_literal8(server: ImapServer, user: str) -> None:
    s = raw_tls(server)
    read_until(s, b"\r\n")
    s.sendall(f"a LOGIN {user} {PASSWORD}\r\n".encode())
    read_until(s, b"a ")
    body = b"Subject: nul\r\n\r\nA\x00B\r\n"
    s.sendall(b"b APPEND INBOX ~{%d}\r\n" % len(body))
    assert read_until(s, b"\r\n").startswith(b"+")
    s.sendall(body + b"\r\n")
    assert b"b OK [APPENDUID" in read_until(s, b"b ")
    s.sendall(b"c SELECT INBOX\r\nd FETCH 1 (BINARY.PEEK[])\r\n")
    reply = read_until(s, b"d OK")
    assert b"BINARY[] ~{%d}\r\n" % len(body) + body in reply
    s.close()


def test_slow_reader_does_not_stall_others_or_grow_memory(server: ImapServer, user: str) -> None:
    """A client that asks for 60 MB and reads nothing: memory stays bounded,
    other sessions are served meanwhile."""
    mb = server.mailbox(user)
    inbox = mb.folder("INBOX")
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 200  # 200 KB: sent inline
    for _ in range(300):
        inbox.deliver(io.BytesIO(big))
    s = raw_tls(server)
    read_until(s, b"\r\n")
    s.sendall(f"a LOGIN {user} {PASSWORD}\r\nb SELECT INBOX\r\n".encode())
    read_until(s, b"b OK")
    before = server.rss_kb()
    s.sendall(b"c FETCH 1:* BODY.PEEK[]\r\n")  # and never read
    time.sleep(3)
    other = server.connect(user)
    assert other.select("INBOX")[1] == [b"300"]
    other.logout()
    grown = server.rss_kb() - before
    s.close()
    assert grown < 30 * 1024, grown


def test_small_extensions(server: ImapServer, user: str) -> None:
    from tests.conftest import run_cli

    run_cli("user", "quota", user, "--bytes", "10M", "--messages", "1000", config=server.config)
    c = server.connect(user)
    for _ in range(3):
        c.append("INBOX", None, None, MSG)
    imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
    typ, data = c._simple_command("ID", '("name" "pytest")')
    assert typ == "OK" and b'"mailstack"' in c.untagged_responses["ID"][0]
    c._simple_command("NAMESPACE")
    assert c.untagged_responses["NAMESPACE"] == [b'(("" "/")) NIL NIL']
    c._simple_command("GETQUOTAROOT", "INBOX")
    assert c.untagged_responses["QUOTA"][-1] == f'"" (STORAGE {3 * len(MSG) // 1024} 10240 MESSAGE 3 1000)'.encode()
    c.select("INBOX", readonly=True)
    typ, data = c.store("1", "+FLAGS", "(\\Seen)")
    assert typ == "NO"
    c.state = "SELECTED"
    typ, data = c._simple_command("UNSELECT")
    assert typ == "OK"
    c.select("INBOX")
    typ, data = c._simple_command("SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "ALL")
    assert c.untagged_responses["ESEARCH"][-1].endswith(b"MIN 1 MAX 3 ALL 1:3 COUNT 3")
    typ, data = c._simple_command("UID", "SEARCH", "RETURN", "(COUNT)", "UNSEEN")
    assert c.untagged_responses["ESEARCH"][-1].endswith(b"UID COUNT 3")
    typ, data = c._simple_command("LIST", "(SUBSCRIBED)", '""', "*")
    assert all(b"\\Subscribed" in x for x in c.untagged_responses["LIST"])
    c.logout()


def test_utf8_accept(server: ImapServer, user: str) -> None:
    s = raw_tls(server)
    read_until(s, b"\r\n")
    s.sendall(f"a LOGIN {user} {PASSWORD}\r\nb ENABLE UTF8=ACCEPT\r\n".encode())
    assert b"* ENABLED UTF8=ACCEPT" in read_until(s, b"b OK")
    s.sendall('c CREATE "Réunions/été"\r\n'.encode())
    assert b"c OK" in read_until(s, b"c ")
    body = "Subject: réunion\r\n\r\nà bientôt\r\n".encode()
    s.sendall('d APPEND "Réunions/été" UTF8 (~{%d}\r\n'.encode() % len(body))
    assert read_until(s, b"\r\n").startswith(b"+")
    s.sendall(body + b")\r\n")
    assert b"d OK [APPENDUID" in read_until(s, b"d ")
    s.sendall(b'e LIST "" "R*"\r\n')
    assert '"Réunions/été"'.encode() in read_until(s, b"e OK")
    s.close()
    c = server.connect(user)  # without UTF8=ACCEPT: modified UTF-7
    assert b"R&AOk-unions/&AOk-t&AOk-" in b" ".join(c.list('""', "R*")[1])
    c.logout()
