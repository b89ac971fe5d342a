"""Sieve at delivery, end to end: scripts stored with ``mailstack sieve`` and
``mailstack vacation``, mail sent with swaks and smtplib to a real smtpd,
the result read with imapclient from a real imapd on the same home.

The académie's three rules: rectorate circulars filed into "Institution",
mail from the head of school flagged, an absence reply during holidays.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import date, timedelta

import pytest

from tests.conftest import free_port, need
from tests.managesieve_server import ManageSieveServer
from tests.smtp_server import DOMAIN, make_server

RECTORAT = "circulaires@region-academique-normandie.fr"
RULES = f"""require ["fileinto", "mailbox", "imap4flags"];
# Circulars from the rectorate
if allof (address :is "from" "{RECTORAT}", header :contains "subject" "Circulaire") {{
    fileinto :create "Institution";
    stop;
}}
# The head of school
if address :is "from" "principal.lycee@{DOMAIN}" {{
    addflag "\\\\Flagged";
}}
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    # global_dir relative to the config's directory: HOME/sieve-global (include :global)
    smtp = make_server(tmp_path_factory.mktemp("sieve"), extra='\n[sieve]\nglobal_dir = "sieve-global"\n')
    imap = smtp.imap_beside()
    sieve_port = free_port()
    smtp.config.write_text(smtp.config.read_text().replace("port = 14190", f"port = {sieve_port}"))
    smtp.managesieve = ManageSieveServer(smtp.home, sieve_port)
    smtp.start()
    imap.start()
    smtp.managesieve.start()
    smtp.teacher = smtp.add_user("Camille", "Enseignante")
    smtp.principal = smtp.add_user("Principal", "Lycee")
    assert smtp.principal == "principal.lycee"
    yield smtp, imap
    smtp.managesieve.stop()
    imap.stop()
    smtp.stop()


def swaks(*args: str) -> subprocess.CompletedProcess:
    need(shutil.which("swaks") is not None, "swaks (Debian package swaks)")
    return subprocess.run(["swaks", "--silent", "1", *args], capture_output=True, text=True, timeout=60)


def imap_client(imap, login: str):
    from imapclient import IMAPClient

    c = IMAPClient("127.0.0.1", port=imap.imaps_port, ssl=True, ssl_context=imap.context(), timeout=30)
    c.login(login, imap.users[login])
    return c


def wait(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_academie_rules_end_to_end(home, tmp_path):
    smtp, imap = home
    teacher, principal = smtp.teacher, smtp.principal
    (tmp_path / "rules.sieve").write_text(RULES)
    assert "stored rules (active)" in smtp.cli("sieve", "put", teacher, str(tmp_path / "rules.sieve"), "--activate")
    (tmp_path / "absence.txt").write_text("Je suis en congés.\nRetour le lundi.\n")
    today = date.today()
    out = smtp.cli("vacation", "set", teacher, "--from", str(today - timedelta(days=1)), "--until",
                   str(today + timedelta(days=1)), "--subject", "Absence de Camille", "--message-file",
                   str(tmp_path / "absence.txt"))
    assert "in script rules (active)" in out
    assert smtp.cli("sieve", "list", teacher).split() == ["rules", "(active)"]
    script = smtp.cli("sieve", "get", teacher, "rules")
    assert "vacation :days 7" in script and 'fileinto :create "Institution"' in script

    # 1. A circular from the rectorate, through the MX (swaks): into "Institution", created and subscribed.
    r = swaks("--server", f"127.0.0.1:{smtp.mx_port}", "--from", RECTORAT, "--to", f"{teacher}@{DOMAIN}",
              "--header", f"From: Rectorat <{RECTORAT}>", "--header", "Subject: Circulaire de rentrée n°12",
              "--header", f"To: {teacher}@{DOMAIN}")
    assert r.returncode == 0, r.stdout + r.stderr
    c = imap_client(imap, teacher)
    try:
        assert "Institution" in [f[2] for f in c.list_sub_folders()]
        c.select_folder("Institution")
        assert len(c.search()) == 1
        c.select_folder("INBOX")
        assert c.search() == []

        # 2. The head of school, through submission: INBOX, flagged; a vacation reply to them.
        with smtp.submission(principal) as s:
            s.sendmail(f"{principal}@{DOMAIN}", [f"{teacher}@{DOMAIN}"],
                       f"From: {principal}@{DOMAIN}\r\nTo: {teacher}@{DOMAIN}\r\nSubject: Conseil de classe\r\n"
                       f"Message-ID: <cc1@{DOMAIN}>\r\n\r\nDemain 17h.\r\n".encode())
        c.noop()
        uids = wait(lambda: c.search(), "the principal's mail in INBOX")
        assert b"\\Flagged" in c.get_flags(uids)[uids[0]]
    finally:
        c.logout()

    p = imap_client(imap, principal)
    try:
        p.select_folder("INBOX")
        replies = wait(lambda: p.search(["SUBJECT", "Absence de Camille"]), "the vacation reply")
        raw = p.fetch(replies, ["RFC822"])[replies[0]][b"RFC822"]
        assert b"Auto-Submitted: auto-replied" in raw and b"In-Reply-To: <cc1@" in raw
        assert "Je suis en congés.".encode() in raw
        # 3. Once per period: a second mail from the same sender gets no second reply.
        with smtp.submission(principal) as s:
            s.sendmail(f"{principal}@{DOMAIN}", [f"{teacher}@{DOMAIN}"],
                       f"From: {principal}@{DOMAIN}\r\nTo: {teacher}@{DOMAIN}\r\nSubject: Encore\r\n\r\nx\r\n".encode())
        wait(lambda: "already answered" in smtp.log_path.read_text(), "the once-per-period rule at work")
        p.noop()
        assert len(p.search(["SUBJECT", "Absence de Camille"])) == 1
    finally:
        p.logout()

    # 4. No reply to a mailing list.
    with smtp.mx() as s:
        s.sendmail("liste@lists.example.org", [f"{teacher}@{DOMAIN}"],
                   f"From: liste@lists.example.org\r\nTo: {teacher}@{DOMAIN}\r\nList-Id: <profs.lists.example.org>\r\n"
                   "Subject: digest\r\n\r\nx\r\n".encode())
    wait(lambda: "vacation not sent: mailing list" in smtp.log_path.read_text(), "the list rule")

    # vacation off leaves the other rules
    smtp.cli("vacation", "off", teacher)
    assert "vacation" not in smtp.cli("sieve", "get", teacher, "rules").replace("mailstack vacation", "")
    assert "no vacation reply" in smtp.cli("vacation", "show", teacher)


def test_reject_redirect_and_broken_scripts(home, tmp_path):
    smtp, imap = home
    refuser = smtp.add_user("Refus", "Total")
    forwarder = smtp.add_user("Renvoi", "Ailleurs")
    target = smtp.add_user("Cible", "Finale")
    (tmp_path / "r.sieve").write_text('require "reject";\nreject "Je ne lis plus cette adresse.";\n')
    smtp.cli("sieve", "put", refuser, str(tmp_path / "r.sieve"), "--activate")
    r = swaks("--server", f"127.0.0.1:{smtp.mx_port}", "--from", "x@example.org", "--to", f"{refuser}@{DOMAIN}")
    assert r.returncode != 0 and "550 5.7.1 Je ne lis plus cette adresse." in r.stdout + r.stderr
    assert smtp.messages(refuser) == []

    # Redirect with a loop: forwarder -> target -> forwarder stops at the second hop.
    (tmp_path / "f.sieve").write_text(f'redirect "{target}@{DOMAIN}";\n')
    smtp.cli("sieve", "put", forwarder, str(tmp_path / "f.sieve"), "--activate")
    (tmp_path / "t.sieve").write_text(f'require "copy";\nredirect :copy "{forwarder}@{DOMAIN}";\n')
    smtp.cli("sieve", "put", target, str(tmp_path / "t.sieve"), "--activate")
    with smtp.mx() as s:
        s.sendmail("x@example.org", [f"{forwarder}@{DOMAIN}"], b"Subject: renvoi\r\n\r\nx\r\n")
    got = wait(lambda: smtp.messages(target), "the redirected copy")
    assert f"X-Sieve-Redirected-From: {forwarder}@{DOMAIN}".encode() in got[0]
    wait(lambda: "it would loop" in smtp.log_path.read_text(), "the loop stopped")
    # The copy that came back is not redirected again; its redirect cancelled
    # the keep but did not happen, so it is kept rather than lost.
    back = wait(lambda: smtp.messages(forwarder), "the looped copy kept")
    assert f"X-Sieve-Redirected-From: {target}@{DOMAIN}".encode() in back[0]
    time.sleep(1)
    assert len(smtp.messages(target)) == 1 and len(smtp.messages(forwarder)) == 1

    # A script broken on disk (edited by hand): the message is kept in INBOX, the error logged.
    broken = smtp.home / "mail" / DOMAIN / target / "sieve" / "t.sieve"
    broken.write_text("if true { keep\n")
    with smtp.mx() as s:
        s.sendmail("x@example.org", [f"{target}@{DOMAIN}"], b"Subject: toujours\r\n\r\nx\r\n")
    wait(lambda: any(b"Subject: toujours" in m for m in smtp.messages(target)), "kept despite the broken script")
    assert "does not load" in smtp.log_path.read_text()

    # A multi-recipient message: the refuser's copy bounces (a DSN to the sender), the other is delivered.
    with smtp.submission(target) as s:
        s.sendmail(f"{target}@{DOMAIN}", [f"{refuser}@{DOMAIN}", f"{smtp.teacher}@{DOMAIN}"], b"Subject: deux\r\n\r\nx\r\n")
    dsn = wait(lambda: [m for m in smtp.messages(target) if b"multipart/report" in m], "the bounce for the refuser")
    assert b"Je ne lis plus cette adresse." in dsn[0]


def test_cli_errors_are_one_line(home, tmp_path):
    smtp, _ = home
    from tests.conftest import run_cli

    (tmp_path / "bad.sieve").write_text('require "fileinto";\nfileinto;\n')
    r = run_cli("sieve", "put", smtp.teacher, str(tmp_path / "bad.sieve"), config=smtp.config)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "line 2, column" in r.stderr, r.stderr
    (tmp_path / "keep.sieve").write_text("keep;\n")
    smtp.cli("sieve", "put", smtp.teacher, str(tmp_path / "keep.sieve"), "--name", "rules", "--activate")
    r = run_cli("sieve", "delete", smtp.teacher, "rules", config=smtp.config)
    assert r.returncode == 1 and "'rules' is the active script: deactivate it first" in r.stderr, r.stderr
    r = run_cli("vacation", "set", smtp.teacher, "--from", "2026-13-01", "--until", "2026-12-31", "--subject", "x",
                "--message-file", "-", stdin="x", config=smtp.config)
    assert r.returncode == 1 and "--from '2026-13-01': expected a date" in r.stderr
    r = run_cli("sieve", "list", "nobody.here", config=smtp.config)
    assert r.returncode == 1 and r.stderr.count("\n") == 1


def test_a_script_uploaded_over_managesieve_sorts_mail(home, monkeypatch):
    """The whole path: sievelib uploads and activates over ManageSieve (4190,
    STARTTLS), swaks sends through the MX, imapclient finds the result."""
    from sievelib.managesieve import Client

    smtp, imap = home
    login = smtp.add_user("Sylvie", "Televersement")
    imap.users[login] = smtp.users[login]
    monkeypatch.setenv("SSL_CERT_FILE", str(smtp.cafile))  # sievelib trusts the default store only
    c = Client("localhost", smtp.managesieve.port)
    assert c.connect(login, smtp.users[login], starttls=True)
    assert c.putscript("academie", RULES) and c.setactive("academie")
    c.logout()
    assert (smtp.home / "mail" / DOMAIN / login / ".dovecot.sieve").resolve().name == "academie.sieve"
    r = swaks("--server", f"127.0.0.1:{smtp.mx_port}", "--from", RECTORAT, "--to", f"{login}@{DOMAIN}",
              "--header", f"From: {RECTORAT}", "--header", "Subject: Circulaire n°3 (examens)")
    assert r.returncode == 0, r.stdout + r.stderr
    client = imap_client(imap, login)
    try:
        client.select_folder("Institution")
        assert len(client.search(["SUBJECT", "examens"])) == 1
    finally:
        client.logout()


def test_a_list_member_never_gets_a_second_copy_on_retry(home, tmp_path):
    """A queued copy for a list (here a Sieve redirect): the member that got
    it keeps one copy when another member's failure makes the queue retry."""
    smtp, _ = home
    first, second = smtp.add_user("Membre", "Un"), smtp.add_user("Membre", "Deux")
    redirector = smtp.add_user("Vers", "Liste")
    smtp.cli("alias", "add", f"equipe@{DOMAIN}", f"{first}@{DOMAIN}", f"{second}@{DOMAIN}")
    smtp.cli("user", "quota", second, "--bytes", "100")  # too small: this member's delivery fails for now
    (tmp_path / "l.sieve").write_text(f'redirect "equipe@{DOMAIN}";\n')
    smtp.cli("sieve", "put", redirector, str(tmp_path / "l.sieve"), "--activate")
    with smtp.mx() as s:
        s.sendmail("x@example.org", [f"{redirector}@{DOMAIN}"], b"Subject: pour l'equipe\r\n\r\n" + b"x" * 500 + b"\r\n")
    wait(lambda: smtp.messages(first), "the first member's copy")
    wait(lambda: "Mailbox full" in smtp.log_path.read_text(), "the second member over quota")
    smtp.cli("user", "quota", second, "--default")
    smtp.cli("queue", "flush")
    wait(lambda: smtp.messages(second), "the second member's copy after the retry")
    time.sleep(1)
    assert len(smtp.messages(first)) == 1 and len(smtp.messages(second)) == 1


def test_includes_of_personal_and_global_scripts(home, tmp_path):
    """RFC 6609 at delivery: the active script includes a site script from
    [sieve] global_dir (which sets a global variable) and a personal one
    (stored after it, which files by that variable).  A missing include keeps
    the message in INBOX and says why."""
    smtp, imap = home
    login = smtp.add_user("Ines", "Professeure")
    imap.users[login] = smtp.users[login]
    site = smtp.home / "sieve-global"
    site.mkdir(exist_ok=True)
    (site / "dossiers.sieve").write_text('require ["include", "variables"];\nglobal "prefixe";\nset "prefixe" "Classe";\n')
    (tmp_path / "main.sieve").write_text('require ["include"];\ninclude :global "dossiers";\ninclude "tri";\n')
    # accepted although "tri" does not exist yet (RFC 6609 §3.2): missing includes are a delivery matter
    assert "stored main (active)" in smtp.cli("sieve", "put", login, str(tmp_path / "main.sieve"), "--activate")

    def send(subject: str) -> None:
        with smtp.mx() as s:
            s.sendmail("parent@example.org", [f"{login}@{DOMAIN}"],
                       f"From: parent@example.org\r\nTo: {login}@{DOMAIN}\r\nSubject: {subject}\r\n\r\nx\r\n".encode())

    send("[6eB] avant")
    wait(lambda: any(b"Subject: [6eB] avant" in m for m in smtp.messages(login)), "kept in INBOX: tri is missing")
    assert f'login={login} failed: line 3, column 1: include: no personal script named "tri"' in smtp.log_path.read_text()

    (tmp_path / "tri.sieve").write_text('require ["include", "variables", "fileinto", "mailbox"];\nglobal "prefixe";\n'
                                        'if header :matches "subject" "[*]*" {\n'
                                        '    fileinto :create "${prefixe}-${1}";\n}\n')
    smtp.cli("sieve", "put", login, str(tmp_path / "tri.sieve"))
    send("[6eB] sortie au musée")
    c = imap_client(imap, login)
    try:
        assert "Classe-6eB" in [f[2] for f in c.list_sub_folders()]
        c.select_folder("Classe-6eB")
        assert len(c.search(["SUBJECT", "sortie"])) == 1
        c.select_folder("INBOX")
        assert len(c.search()) == 1  # only the one from before
    finally:
        c.logout()

    # a script the active one includes may be deleted; mail then stays in INBOX
    smtp.cli("sieve", "delete", login, "tri")
    send("[6eB] après")
    wait(lambda: any(b"Subject: [6eB] apr" in m for m in smtp.messages(login)), "kept in INBOX once tri is gone")
