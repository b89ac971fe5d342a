"""Configuration: validated completely, errors name the file, key and expectation."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path

import pytest

from mailstack import config as config_mod
from mailstack.config import Config, ConfigError, load, parse

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "mailstack.toml"
MINIMAL = '[server]\ndomains = ["ac-normandie.fr"]\n'


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    cfg = parse(MINIMAL, "m.toml", tmp_path)
    assert cfg.limits.max_message_size == 104857600
    assert [(x.port, x.tls) for x in cfg.imap.listeners] == [(993, "implicit"), (143, "starttls")]
    assert [(x.kind, x.port, x.tls) for x in cfg.smtp.listeners] == [
        ("submission", 587, "starttls"),
        ("submission", 465, "implicit"),
        ("mx", 25, "starttls"),
    ]
    assert cfg.imap.idle_timeout == 1800
    assert cfg.tls.min_version == "1.2"
    assert (cfg.auth.argon2.memory_kib, cfg.auth.argon2.iterations, cfg.auth.argon2.lanes) == (19456, 2, 1)
    assert cfg.default_domain == "ac-normandie.fr"


def _leaf_keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "path":
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys |= _leaf_keys(tp, prefix + f.name + ".")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            keys |= _leaf_keys(typing.get_args(tp)[0], prefix + f.name + "[].")
        else:
            keys.add(prefix + f.name)
    return keys


def _doc_keys(doc: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in doc.items():
        if isinstance(v, dict):
            keys |= _doc_keys(v, prefix + k + ".")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                keys |= _doc_keys(item, prefix + k + "[].")
        else:
            keys.add(prefix + k)
    return keys


def test_example_config_documents_every_key_with_its_default() -> None:
    doc = tomllib.loads(EXAMPLE.read_text())
    # [[filters]] is empty by default: its keys are documented in a commented-out example.
    commented = {k for k in _leaf_keys(Config) if k.startswith("filters[].")}
    for key in commented:
        assert re.search(rf"^# {key.rsplit('.', 1)[-1]} = ", EXAMPLE.read_text(), re.M), key
    assert _doc_keys(doc) == _leaf_keys(Config) - commented
    cfg = load(EXAMPLE)
    defaults = parse(MINIMAL, "m.toml", EXAMPLE.parent)
    # Every value in the example is the default (domains is required: no default).
    assert dataclasses.replace(cfg, path=None) == defaults
    text = EXAMPLE.read_text()
    for key in _doc_keys(doc):
        name = key.rsplit(".", 1)[-1]
        line = next(i for i, ln in enumerate(text.splitlines()) if ln.startswith(name + " ="))
        assert text.splitlines()[line - 1].startswith(("#", "[", "address", "port", "kind")), key


@pytest.mark.parametrize(
    "text,message",
    [
        (MINIMAL + "[imap]\nidle_timout = 60\n", "imap.idle_timout: unknown key (expected one of enabled, idle_timeout, listeners, max_per_address, max_per_user, workers)"),
        (MINIMAL + "[bogus]\n", "bogus: unknown key"),
        (MINIMAL + "[imap]\nidle_timeout = '30'\n", "imap.idle_timeout: expected an integer, got '30'"),
        (MINIMAL + "[imap]\nidle_timeout = 5\n", "imap.idle_timeout: expected a number from 10 to 86400, got 5"),
        (MINIMAL + "[imap]\nenabled = 1\n", "imap.enabled: expected true or false, got 1"),
        (MINIMAL + "[tls]\nmin_version = '1.1'\n", "tls.min_version: expected one of '1.2', '1.3', got '1.1'"),
        (MINIMAL + "[auth.argon2]\nlanes = 4\n", "auth.argon2.lanes: expected a number from 1 to 1"),
        (MINIMAL + "[limits]\nmax_message_size = -1\n", "limits.max_message_size: expected a number from"),
        (MINIMAL + "[[imap.listeners]]\naddress = '0.0.0.0'\n", "imap.listeners[0].port: missing (required)"),
        (MINIMAL + "[[imap.listeners]]\nport = 993\ntls = 'ssl'\n", "imap.listeners[0].tls: expected one of 'implicit', 'starttls'"),
        (MINIMAL + "[[imap.listeners]]\naddress = 'localhost'\nport = 1\n", "imap.listeners[0].address: expected an IP address"),
        (MINIMAL + "[[smtp.listeners]]\nkind = 'relay'\nport = 25\n", "smtp.listeners[0].kind: expected one of 'submission', 'mx'"),
        (MINIMAL + "[[imap.listeners]]\nport = 25\n[[smtp.listeners]]\nport = 25\n", "port 25 is already used"),
        (MINIMAL + "[database]\nurl = 'mysql://x'\n", "database.url: expected an SQLAlchemy URL"),
        (MINIMAL + "[auth.throttle]\ndelay_base = 10.0\ndelay_max = 2.0\n", "auth.throttle.delay_max: expected at least delay_base"),
        (MINIMAL + "[storage]\nmail_root = ''\n", "storage.mail_root: expected a path"),
        ('[server]\ndomains = []\n', "server.domains: expected at least one mail domain"),
        ('[server]\ndomains = ["Bad Domain"]\n', "server.domains: expected domain names"),
        ('[server]\nhostname = "x"\n', "server.domains: missing (required)"),
        ("[imap]\n", "server: missing section"),
        ("server = 3\n", "server: expected a table, got 3"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_errors_name_file_key_and_expectation(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text, "/etc/mailstack/mailstack.toml")
    assert str(e.value).startswith("/etc/mailstack/mailstack.toml: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    p = tmp_path / "mailstack.toml"
    p.write_text(MINIMAL + '[storage]\nmail_root = "mail"\n[database]\nurl = "sqlite:///db/x.db"\n')
    cfg = load(p)
    assert cfg.storage.mail_root == tmp_path / "mail"
    assert cfg.database.url == f"sqlite:///{tmp_path}/db/x.db"
    assert cfg.storage.spool == Path("/var/spool/mailstack")


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load(bad)


def test_default_path(monkeypatch) -> None:
    monkeypatch.delenv("MAILSTACK_CONFIG", raising=False)
    assert config_mod.default_path() == Path("/etc/mailstack/mailstack.toml")
    monkeypatch.setenv("MAILSTACK_CONFIG", "/srv/m.toml")
    assert config_mod.default_path() == Path("/srv/m.toml")
    assert config_mod.default_path("/x.toml") == Path("/x.toml")
