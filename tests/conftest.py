"""Fixtures: real servers on loopback, homes in temporary directories.

In CI (CI=true) a missing dependency is a failure, never a skip.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from mailstack import config as config_mod
from mailstack.accounts import db
from mailstack.accounts.directory import Directory, write_secret
from tests.dns_server import dns_server  # noqa: F401
from tests.outbound_world import world  # noqa: F401
from tests.smtp_sink import smtp_sink  # noqa: F401

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


def need(condition: bool, what: str) -> None:
    """Skip locally when a real dependency is absent; fail in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing test dependency in CI: {what}")
    pytest.skip(f"missing test dependency: {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- PostgreSQL: a real server per test session -----------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for version in ("17", "16", "15", "14", "13"):
        p = Path(f"/usr/lib/postgresql/{version}/bin/{name}")
        if p.exists():
            return str(p)
    return None


class PostgresServer:
    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        need(bool(self.initdb and self.pg_ctl), "PostgreSQL server binaries (Debian package postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="mailstack-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.run_as: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            need(shutil.which("runuser") is not None, "runuser (util-linux)")
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.dir.chmod(0o700)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self._counter = 0

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.run_as, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        self._counter += 1
        name = f"t{os.getpid()}_{self._counter}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        need(False, "psycopg (pip install 'psycopg[binary]')")
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- configuration and directory ------------------------------------------------------

FAST_ARGON2 = config_mod.Argon2Params(memory_kib=8192, iterations=1, lanes=1)


def make_config(home: Path, db_url: str | None = None, **auth_overrides) -> config_mod.Config:
    """A config whose paths live in ``home``; fast Argon2 unless told otherwise."""
    home.mkdir(parents=True, exist_ok=True)
    text = f"""
[server]
hostname = "mail.ac-normandie.test"
domains = ["ac-normandie.test", "ac-rouen.test"]
[storage]
mail_root = "mail"
spool = "spool"
[database]
url = "{db_url or 'sqlite:///mailstack.db'}"
[tls]
certificate = "tls/cert.pem"
key = "tls/key.pem"
[auth]
secret_file = "secret.key"
"""
    cfg = config_mod.parse(text, "test.toml", home)
    auth = cfg.auth
    auth = dataclasses.replace(auth, argon2=auth_overrides.pop("argon2", FAST_ARGON2))
    throttle = auth_overrides.pop("throttle", None)
    if throttle:
        auth = dataclasses.replace(auth, throttle=dataclasses.replace(auth.throttle, **throttle))
    auth = dataclasses.replace(auth, **auth_overrides)
    if not cfg.auth.secret_file.exists():
        write_secret(cfg.auth.secret_file)
    return dataclasses.replace(cfg, auth=auth)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'accounts.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def directory_factory(tmp_path: Path, db_url: str):
    """Build a Directory on the parametrized backend with config overrides."""
    made: list[Directory] = []
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    engine.dispose()

    def make(**overrides) -> Directory:
        cfg = make_config(tmp_path / "home", db_url, **overrides)
        d = Directory(cfg)
        made.append(d)
        return d

    yield make
    for d in made:
        d.engine.dispose()


@pytest.fixture
def directory(directory_factory) -> Directory:
    return directory_factory()


def run_cli(*args: str, stdin: str | None = None, config: Path | None = None, timeout: float = 60):
    """Run the real ``mailstack`` command in a subprocess."""
    env = dict(os.environ)
    env.pop("MAILSTACK_CONFIG", None)
    env.pop("MAILSTACK_DEBUG", None)
    if config is not None:
        env["MAILSTACK_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "mailstack", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --- Dovecot: a real, private instance per test (tests/dovecot.py) -----------------------


@pytest.fixture
def dovecot(tmp_path: Path):
    """A private Dovecot over ``tmp_path / "mail"``, configured in ``tmp_path / "dovecot"``."""
    from tests.dovecot import Dovecot, missing_binaries

    absent = missing_binaries()
    need(not absent, f"Dovecot ({', '.join(absent)}; Debian packages dovecot-core dovecot-imapd)")
    need(os.geteuid() == 0, "root, to run Dovecot's mail processes as the mailstack-test user")
    with Dovecot(tmp_path / "mail", tmp_path / "dovecot") as server:
        yield server
