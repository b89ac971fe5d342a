"""The real ``mailstack`` command, run as a subprocess, as an operator would."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

PW = "Correct#horse9"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("cli") / "home"
    r = run_cli("init", "--home", str(home), "--domain", "ac-normandie.test", "--dev")
    assert r.returncode == 0, r.stderr
    return home


@pytest.fixture
def fresh_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    r = run_cli("init", "--home", str(home), "--domain", "ac-normandie.test", "--dev")
    assert r.returncode == 0, r.stderr
    return home


def cli(home: Path, *args: str, stdin: str | None = None):
    return run_cli(*args, stdin=stdin, config=home / "mailstack.toml")


def one_line_error(r, code: int, text: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert text in lines[0], lines[0]


def test_init_writes_a_working_dev_home(home: Path) -> None:
    cfg = tomllib.loads((home / "mailstack.toml").read_text())
    ports = sorted(x["port"] for x in cfg["imap"]["listeners"] + cfg["smtp"]["listeners"])
    assert ports == [10025, 10143, 10465, 10587, 10993]
    assert {x["address"] for x in cfg["imap"]["listeners"] + cfg["smtp"]["listeners"]} == {"127.0.0.1"}
    assert (home / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (home / "secret.key").stat().st_mode & 0o777 == 0o600
    assert (home / "mailstack.db").stat().st_mode & 0o777 == 0o600
    assert (home / "mail").is_dir() and (home / "spool").is_dir()
    tables = {r[0] for r in sqlite3.connect(home / "mailstack.db").execute("select name from sqlite_master")}
    assert {"accounts", "aliases", "alias_targets", "auth_failures", "alembic_version"} <= tables
    r = cli(home, "db", "status")
    assert r.returncode == 0 and "needs" in r.stdout


def test_init_production_ports_and_hostname(tmp_path: Path) -> None:
    r = run_cli("init", "--home", str(tmp_path / "h"), "--domain", "ac-normandie.fr")
    assert r.returncode == 0, r.stderr
    cfg = tomllib.loads((tmp_path / "h" / "mailstack.toml").read_text())
    assert sorted(x["port"] for x in cfg["imap"]["listeners"] + cfg["smtp"]["listeners"]) == [25, 143, 465, 587, 993]
    assert cfg["server"]["hostname"] == "mail.ac-normandie.fr"
    assert "names mail.ac-normandie.fr" in r.stdout


def test_init_refuses_existing_home_without_force(fresh_home: Path) -> None:
    assert cli(fresh_home, "user", "add", "Anne", "Martin", "--password-stdin", stdin=PW).returncode == 0
    r = run_cli("init", "--home", str(fresh_home), "--domain", "ac-normandie.test")
    one_line_error(r, 1, "already holds a mailstack home")
    secret = (fresh_home / "secret.key").read_bytes()
    r = run_cli("init", "--home", str(fresh_home), "--domain", "ac-normandie.test", "--hostname", "imap.ac-normandie.test", "--force")
    assert r.returncode == 0, r.stderr
    assert "imap.ac-normandie.test" in (fresh_home / "mailstack.toml").read_text()
    assert (fresh_home / "secret.key").read_bytes() == secret  # NUMEN lookups keep working
    assert cli(fresh_home, "user", "show", "anne.martin").returncode == 0  # accounts kept


def test_init_bad_arguments(tmp_path: Path) -> None:
    one_line_error(run_cli("init", "--home", str(tmp_path / "h"), "--domain", "not a domain"), 1, "--domain")
    assert not (tmp_path / "h").exists()
    one_line_error(run_cli("init", "--domain", "x.fr"), 2, "--home")
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(run_cli("init", "--home", str(blocker), "--domain", "x.fr"), 1, "not a directory")


def test_user_lifecycle(home: Path) -> None:
    r = cli(home, "user", "add", "Hélène", "Lefèvre", "--password-stdin", stdin=PW + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["helene.lefevre", "helene.lefevre@ac-normandie.test"]
    r = cli(home, "user", "add", "HELENE", "LEFEVRE", "--password-stdin", stdin=PW)
    assert r.stdout.splitlines()[0] == "helene.lefevre1"
    r = cli(home, "user", "list")
    assert "helene.lefevre1@ac-normandie.test" in r.stdout and "active" in r.stdout
    r = cli(home, "user", "show", "Helene.Lefevre@AC-NORMANDIE.TEST")
    assert "first name:       Hélène" in r.stdout and "state:            active" in r.stdout
    assert cli(home, "user", "passwd", "helene.lefevre", "--password-stdin", stdin="Autre#motdepasse7").returncode == 0
    one_line_error(cli(home, "user", "passwd", "helene.lefevre", "--password-stdin", stdin="faible"), 1, "too short")
    assert cli(home, "user", "disable", "helene.lefevre").stdout.strip() == "helene.lefevre disabled"
    assert "disabled (disabled by an operator)" in cli(home, "user", "show", "helene.lefevre").stdout
    assert cli(home, "user", "enable", "helene.lefevre").returncode == 0
    assert cli(home, "user", "delete", "helene.lefevre1").returncode == 0
    one_line_error(cli(home, "user", "show", "helene.lefevre1"), 1, "no account 'helene.lefevre1'")


def test_weak_password_names_the_rule_and_creates_nothing(home: Path) -> None:
    for pw, rule in [("Court#1", "too short"), ("sanschiffre#x", "digit"), ("Sanssymbole12", "symbol")]:
        r = cli(home, "user", "add", "Paul", "Weak", "--password-stdin", stdin=pw)
        one_line_error(r, 1, rule)
    assert "paul.weak" not in cli(home, "user", "list").stdout


def test_pending_account_and_activation(home: Path) -> None:
    r = cli(home, "user", "add", "Éloïse", "D'Hérouville", "--numen", "16S0123456ABC", "--birth-date", "1980-02-03",
            "--recovery-email", "eloise@example.com")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "eloise.dherouville"
    assert "pending" in cli(home, "user", "show", "eloise.dherouville").stdout
    refusals = set()
    for numen, birth, name in [
        ("16S0123456ABX", "1980-02-03", "D'Hérouville"),
        ("16S0123456ABC", "1981-02-03", "D'Hérouville"),
        ("16S0123456ABC", "1980-02-03", "Dupont"),
    ]:
        r = cli(home, "activate", "--numen", numen, "--birth-date", birth, "--name", name, "--password-stdin", stdin=PW)
        one_line_error(r, 1, "activation refused")
        refusals.add(r.stderr)
    assert len(refusals) == 1  # no hint which field was wrong
    r = cli(home, "activate", "--numen", "16s0123456abc", "--birth-date", "1980-02-03", "--name", "d'herouville",
            "--password-stdin", stdin=PW)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["eloise.dherouville", "eloise.dherouville@ac-normandie.test"]
    assert "state:            active" in cli(home, "user", "show", "eloise.dherouville").stdout


def test_usage_errors_exit_2_on_one_line(home: Path) -> None:
    one_line_error(cli(home, "user", "add", "Anne", "Martin"), 2, "--password-stdin")
    one_line_error(cli(home, "user", "add", "Anne", "Martin", "--numen", "16S0123456ABC"), 2, "go together")
    one_line_error(cli(home, "frobnicate"), 2, "invalid choice")
    one_line_error(cli(home, "user"), 2, "required")
    one_line_error(cli(home), 2, "required")
    one_line_error(cli(home, "user", "add", "Anne"), 2, "NOM")


def test_failures_exit_1_on_one_line(home: Path, tmp_path: Path) -> None:
    one_line_error(cli(home, "user", "add", "李", "Martin", "--password-stdin", stdin=PW), 1, "first name '李' gives an empty login part")
    one_line_error(cli(home, "user", "add", "Anne", "Martin", "--domain", "example.com", "--password-stdin", stdin=PW), 1, "not a mail domain")
    one_line_error(cli(home, "user", "add", "Anne", "Martin", "--password-stdin", stdin=""), 1, "no password on standard input")
    one_line_error(cli(home, "user", "add", "Anne", "Martin", "--numen", "123", "--birth-date", "1980-01-01"), 1, "NUMEN must be")
    one_line_error(cli(home, "user", "add", "Anne", "Martin", "--numen", "16S0123456ABD", "--birth-date", "1980-13-01"), 1, "birth date")
    one_line_error(run_cli("user", "list", config=tmp_path / "missing.toml"), 1, "configuration file not found")
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\ndomains = ["x.fr"]\n[imap]\nidle = 3\n')
    one_line_error(run_cli("-c", str(bad), "user", "list"), 1, f"{bad}: imap.idle: unknown key")
    nodb = tmp_path / "nodb.toml"
    nodb.write_text(f'[server]\ndomains = ["x.fr"]\n[database]\nurl = "sqlite:///{tmp_path}/empty.db"\n')
    one_line_error(run_cli("-c", str(nodb), "user", "list"), 1, "no mailstack schema")
    pg = tmp_path / "pg.toml"
    pg.write_text('[server]\ndomains = ["x.fr"]\n[database]\nurl = "postgresql+psycopg://u@127.0.0.1:1/x"\n')
    one_line_error(run_cli("-c", str(pg), "user", "list"), 1, "database error")


def test_aliases(home: Path) -> None:
    assert cli(home, "user", "add", "Marc", "Petit", "--password-stdin", stdin=PW).returncode == 0
    r = cli(home, "alias", "add", "direction@ac-normandie.test", "marc.petit", "ext@example.com")
    assert r.returncode == 0, r.stderr
    assert "direction@ac-normandie.test -> marc.petit@ac-normandie.test, ext@example.com" in cli(home, "alias", "list").stdout
    one_line_error(cli(home, "alias", "add", "marc.petit@ac-normandie.test", "ext@example.com"), 1, "collide")
    one_line_error(cli(home, "alias", "add", "x@ac-normandie.test", "nobody"), 1, "no such login")
    assert cli(home, "alias", "remove", "direction@ac-normandie.test", "ext@example.com").returncode == 0
    assert cli(home, "alias", "remove", "direction@ac-normandie.test").returncode == 0
    one_line_error(cli(home, "alias", "remove", "direction@ac-normandie.test"), 1, "no alias or list")


def test_config_from_environment_and_option(home: Path, tmp_path: Path) -> None:
    env_only = run_cli("user", "list", config=home / "mailstack.toml")
    assert env_only.returncode == 0
    opt = run_cli("-c", str(home / "mailstack.toml"), "user", "list")
    assert opt.stdout == env_only.stdout


def test_module_and_script_entry_points(home: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "mailstack", "--version"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("mailstack ")
    script = Path(sys.executable).parent / "mailstack"
    if script.exists():
        r = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "init" in r.stdout


def test_serve_runs_until_sigterm(fresh_home: Path) -> None:
    import socket

    from tests.conftest import free_port

    cfg = fresh_home / "mailstack.toml"
    imaps = free_port()
    cfg.write_text(cfg.read_text().replace("port = 10993", f"port = {imaps}").replace("port = 10143", f"port = {free_port()}"))
    env = dict(os.environ, MAILSTACK_CONFIG=str(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailstack", "serve"], stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        seen = []
        while not any("imapd INFO mailstack.imap: ready" in x for x in seen):
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        assert any("serve INFO mailstack.serve: ready daemons=imapd" in x for x in seen), seen
        socket.create_connection(("127.0.0.1", imaps), timeout=5).close()  # the IMAP daemon listens
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "received SIGTERM" in rest and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text('[server]\ndomains = ["x.fr"]\n[tls]\nmin_version = "1.0"\n')
    one_line_error(run_cli("-c", str(bad), "serve"), 1, "tls.min_version")



def test_user_add_creates_the_maildir_and_quota(fresh_home: Path) -> None:
    r = cli(fresh_home, "user", "add", "Léa", "Moreau", "--password-stdin", stdin=PW)
    assert r.returncode == 0, r.stderr
    maildir = fresh_home / "mail" / "ac-normandie.test" / "lea.moreau" / "Maildir"
    assert {".Sent", ".Drafts", ".Trash", ".Junk", ".Archive", "cur", "new", "tmp"} <= set(os.listdir(maildir))
    r = cli(fresh_home, "user", "quota", "lea.moreau", "--bytes", "1.5G", "--messages", "20000")
    assert r.stdout.strip() == "lea.moreau: 0 B of 1.5 GiB, 0 of 20000 messages"
    assert "quota:            0 B of 1.5 GiB" in cli(fresh_home, "user", "show", "lea.moreau").stdout
    one_line_error(cli(fresh_home, "user", "quota", "lea.moreau", "--bytes", "lots"), 2, "not a size")
    r = cli(fresh_home, "user", "quota", "lea.moreau", "--default")
    assert r.stdout.strip() == "lea.moreau: 0 B of unlimited, 0 of unlimited messages"
    r = cli(fresh_home, "user", "delete", "lea.moreau")
    assert "its mail is kept in" in r.stdout and maildir.exists()
