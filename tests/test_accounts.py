"""The account directory on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from mailstack.accounts.auth import Authenticator, Outcome
from mailstack.accounts.directory import ActivationRefused, DirectoryError, NotFound
from mailstack.accounts.models import Account, AuthFailure, utcnow

PW = "Correct#horse9"
NUMEN = "16S0123456ABC"


def test_homonyms_get_the_lowest_free_number(directory) -> None:
    logins = [directory.add_user("Jean-Pierre", "Dupont", password=PW).login for _ in range(3)]
    assert logins == ["jean-pierre.dupont", "jean-pierre.dupont1", "jean-pierre.dupont2"]
    # Different spelling, same login: still a homonym.
    assert directory.add_user("JEAN PIERRE", "DUPONT", password=PW).login == "jean-pierre.dupont3"
    directory.delete("jean-pierre.dupont1")
    assert directory.add_user("Jean-Pierre", "Dupont", password=PW).login == "jean-pierre.dupont1"
    info = directory.get("Jean-Pierre.Dupont2@AC-NORMANDIE.TEST")
    assert info.address == "jean-pierre.dupont2@ac-normandie.test"


def test_login_never_collides_with_an_alias(directory) -> None:
    directory.add_user("Anne", "Martin", password=PW)
    directory.add_alias("marie.curie@ac-normandie.test", ["anne.martin"])
    assert directory.add_user("Marie", "Curie", password=PW).login == "marie.curie1"
    with pytest.raises(DirectoryError, match="collide with the login anne.martin"):
        directory.add_alias("anne.martin@ac-rouen.test", ["marie.curie1"])


def test_unknown_domain_refused(directory) -> None:
    with pytest.raises(DirectoryError, match="not a mail domain"):
        directory.add_user("Anne", "Martin", domain="example.com", password=PW)
    assert directory.list_users() == []


def test_weak_password_refused_with_the_rule_and_nothing_created(directory) -> None:
    cases = {
        "Short#1a": "too short",
        "nodigits#here": "digit",
        "12345678#90": "letter",
        "NoSymbol1234": "symbol",
        "martin#2026xyz": "family name",
        "xANNE-2026-zz!": "first name",
    }
    for pw, rule in cases.items():
        with pytest.raises(DirectoryError, match=rule):
            directory.add_user("Anne", "Martin", password=pw)
    assert directory.list_users() == []


def test_pending_account_activation(directory) -> None:
    info = directory.add_user("Éloïse", "D'Hérouville", numen=NUMEN, birth_date="1980-02-03")
    assert info.state == "pending" and info.pending_activation_data
    auth = Authenticator(directory)
    assert auth.authenticate("eloise.dherouville", PW).outcome is Outcome.BAD_CREDENTIALS
    done = directory.activate(NUMEN.lower(), "1980-02-03", "d'herouville", PW, client="192.0.2.1")
    assert done.state == "active" and done.login == "eloise.dherouville"
    assert auth.authenticate("eloise.dherouville", PW).ok
    with pytest.raises(ActivationRefused):  # only once
        directory.activate(NUMEN, "1980-02-03", "D'Hérouville", PW, client="192.0.2.1")


@pytest.mark.parametrize(
    "numen,birth,name",
    [
        ("16S0123456ABD", "1980-02-03", "D'Hérouville"),  # wrong NUMEN
        (NUMEN, "1980-02-04", "D'Hérouville"),  # wrong birth date
        (NUMEN, "1980-02-03", "Dupont"),  # wrong family name
        ("garbage", "1980-02-03", "D'Hérouville"),  # malformed NUMEN
        (NUMEN, "3 février", "D'Hérouville"),  # malformed date
    ],
)
def test_activation_with_any_wrong_detail_is_one_generic_refusal(directory, numen, birth, name) -> None:
    directory.add_user("Éloïse", "D'Hérouville", numen=NUMEN, birth_date="1980-02-03")
    with pytest.raises(ActivationRefused) as e:
        directory.activate(numen, birth, name, PW, client="192.0.2.7")
    assert str(e.value) == str(ActivationRefused())
    assert directory.get("eloise.dherouville").state == "pending"


def test_activation_checks_password_policy_after_identity(directory) -> None:
    directory.add_user("Éloïse", "D'Hérouville", numen=NUMEN, birth_date="1980-02-03")
    with pytest.raises(DirectoryError, match="must not contain your first name"):
        directory.activate(NUMEN, "1980-02-03", "d'Hérouville", "eloise#2026xx")
    assert directory.get("eloise.dherouville").state == "pending"


def test_activation_is_throttled(directory_factory) -> None:
    d = directory_factory(throttle=dict(account_lockout=3, delay_base=0.0))
    d.add_user("Éloïse", "D'Hérouville", numen=NUMEN, birth_date="1980-02-03")
    for _ in range(3):
        with pytest.raises(ActivationRefused):
            d.activate(NUMEN, "1999-01-01", "D'Hérouville", PW, client="192.0.2.9")
    # Locked now: even the right details are refused until the lock expires.
    with pytest.raises(ActivationRefused):
        d.activate(NUMEN, "1980-02-03", "D'Hérouville", PW, client="192.0.2.9")
    assert d.get("eloise.dherouville").state == "pending"


def test_numen_is_stored_only_hashed(directory) -> None:
    directory.add_user("Éloïse", "D'Hérouville", numen=NUMEN, birth_date="1980-02-03")
    with directory.sessions() as s:
        row = s.scalar(select(Account))
        stored = " ".join(str(getattr(row, c.key)) for c in Account.__table__.columns)
    assert NUMEN not in stored and "1980" not in stored and "0123456" not in stored


def test_duplicate_numen_refused(directory) -> None:
    directory.add_user("Anne", "Martin", numen=NUMEN, birth_date="1970-01-01")
    with pytest.raises(DirectoryError, match="NUMEN already exists"):
        directory.add_user("Anne", "Martin", numen=NUMEN, birth_date="1970-01-01")
    assert len(directory.list_users()) == 1


def test_authenticate_outcomes(directory) -> None:
    directory.add_user("Anne", "Martin", password=PW)
    auth = Authenticator(directory)
    ok = auth.authenticate("ANNE.MARTIN@ac-normandie.test", PW, "192.0.2.1", "imap")
    assert ok.ok and ok.login == "anne.martin" and ok.address == "anne.martin@ac-normandie.test"
    assert directory.get("anne.martin").last_login_at is not None
    assert auth.authenticate("anne.martin@ac-rouen.test", PW).outcome is Outcome.BAD_CREDENTIALS
    assert auth.authenticate("anne.martin", PW + "x").outcome is Outcome.BAD_CREDENTIALS
    assert auth.authenticate("nobody.here", PW).outcome is Outcome.BAD_CREDENTIALS
    assert auth.authenticate("", "").outcome is Outcome.BAD_CREDENTIALS
    assert auth.authenticate("x" * 5000, "\udcff" * 10).outcome is Outcome.BAD_CREDENTIALS
    directory.disable("anne.martin")
    assert auth.authenticate("anne.martin", PW).outcome is Outcome.DISABLED
    assert auth.authenticate("anne.martin", "wrong").outcome is Outcome.BAD_CREDENTIALS  # state not revealed
    directory.enable("anne.martin")
    assert auth.authenticate("anne.martin", PW).ok


def test_lockout_and_progressive_delay(directory_factory) -> None:
    d = directory_factory(throttle=dict(free_failures=2, delay_base=1.0, delay_max=8.0, account_lockout=5))
    d.add_user("Anne", "Martin", password=PW)
    auth = Authenticator(d)
    delays = [auth.authenticate("anne.martin", "bad", "192.0.2.1").delay for _ in range(5)]
    assert delays == [0.0, 0.0, 1.0, 2.0, 4.0]
    info = d.get("anne.martin")
    assert info.state == "locked" and info.locked_until > utcnow()
    locked = auth.authenticate("anne.martin", PW, "198.51.100.1")  # right password, other client
    assert locked.outcome is Outcome.LOCKED and locked.delay > 0
    # The lock expires: the right password works again and clears the counter.
    with d.sessions() as s, s.begin():
        past = utcnow() - timedelta(seconds=1)
        s.execute(update(Account).values(locked_until=past))
        s.execute(update(AuthFailure).values(locked_until=past))
    assert auth.authenticate("anne.martin", PW).ok
    assert d.get("anne.martin").state == "active"
    with d.sessions() as s:
        assert d.throttle.failures(s, "account", "anne.martin") == 0


def test_ip_lockout_covers_every_account(directory_factory) -> None:
    d = directory_factory(throttle=dict(ip_lockout=4, account_lockout=100, delay_base=0.0))
    d.add_user("Anne", "Martin", password=PW)
    auth = Authenticator(d)
    for user in ("a.b", "c.d", "e.f", "g.h"):
        auth.authenticate(user, "bad", "2001:db8:1:2::5")
    # Same /64, other host: still locked.  Another client is not.
    assert auth.authenticate("anne.martin", PW, "2001:db8:1:2::99").outcome is Outcome.LOCKED
    assert auth.authenticate("anne.martin", PW, "2001:db8:1:3::5").ok


def test_cache_skips_hashing_and_drops_on_password_change(directory, monkeypatch) -> None:
    directory.add_user("Anne", "Martin", password=PW)
    auth = Authenticator(directory)
    assert auth.authenticate("anne.martin", PW).ok
    calls = []
    real_verify = directory.hasher.verify
    monkeypatch.setattr(type(directory.hasher), "verify", lambda self, p, h: calls.append(1) or real_verify(p, h))
    assert auth.authenticate("anne.martin", PW).ok
    assert calls == []  # served by the cache
    directory.set_password("anne.martin", "Other#pass2026")
    assert auth.authenticate("anne.martin", PW).outcome is Outcome.BAD_CREDENTIALS
    assert auth.authenticate("anne.martin", "Other#pass2026").ok


def test_old_hash_parameters_are_upgraded_at_login(directory_factory) -> None:
    from mailstack.config import Argon2Params

    old = directory_factory()
    old.add_user("Anne", "Martin", password=PW)
    stronger = Argon2Params(memory_kib=12288, iterations=2, lanes=1)
    new = directory_factory(argon2=stronger)
    with new.sessions() as s:
        before = s.scalar(select(Account.password_hash))
    assert "m=8192,t=1" in before
    assert Authenticator(new).authenticate("anne.martin", PW).ok
    with new.sessions() as s:
        after = s.scalar(select(Account.password_hash))
    assert "m=12288,t=2,p=1" in after
    assert Authenticator(new).authenticate("anne.martin", PW).ok


def test_inactivity_disables(directory_factory) -> None:
    d = directory_factory(inactivity_days=30)
    d.add_user("Anne", "Martin", password=PW)
    d.add_user("Paul", "Durand", password=PW)
    with d.sessions() as s, s.begin():
        s.execute(
            update(Account).where(Account.login == "anne.martin").values(last_login_at=utcnow() - timedelta(days=31))
        )
        s.execute(
            update(Account).where(Account.login == "paul.durand").values(activated_at=utcnow() - timedelta(days=40))
        )
    auth = Authenticator(d)
    # At login time (daemons) ...
    assert auth.authenticate("anne.martin", PW).outcome is Outcome.DISABLED
    assert d.get("anne.martin").disabled_reason == "no login for 30 days"
    # ... and by the sweep (serve, or 'mailstack user expire-inactive').
    assert d.disable_inactive() == ["paul.durand"]
    d.enable("paul.durand")
    assert auth.authenticate("paul.durand", PW).ok


def test_aliases_and_lists(directory) -> None:
    directory.add_user("Anne", "Martin", password=PW)
    directory.add_user("Paul", "Durand", password=PW, domain="ac-rouen.test")
    targets = directory.add_alias("secretariat", ["anne.martin", "paul.durand@ac-rouen.test", "Parent@Example.com"])
    assert targets == ["anne.martin@ac-normandie.test", "paul.durand@ac-rouen.test", "parent@example.com"]
    directory.add_alias("tous@ac-normandie.test", ["secretariat@ac-normandie.test", "anne.martin"])
    assert directory.expand("TOUS@ac-normandie.test") == [
        "anne.martin@ac-normandie.test",
        "parent@example.com",
        "paul.durand@ac-rouen.test",
    ]
    with pytest.raises(DirectoryError, match="no such local account"):
        directory.add_alias("x@ac-normandie.test", ["ghost@ac-normandie.test"])
    with pytest.raises(DirectoryError, match="no such login"):
        directory.add_alias("x@ac-normandie.test", ["ghost"])
    with pytest.raises(DirectoryError, match="not a mail domain"):
        directory.add_alias("x@example.com", ["anne.martin"])
    with pytest.raises(DirectoryError, match="not a valid mail address"):
        directory.add_alias("x@ac-normandie.test", ["not an address@"])
    directory.remove_alias("secretariat", ["parent@example.com"])
    assert dict(directory.list_aliases())["secretariat@ac-normandie.test"] == [
        "anne.martin@ac-normandie.test",
        "paul.durand@ac-rouen.test",
    ]
    # Deleting an account removes it from lists.
    directory.delete("anne.martin")
    assert dict(directory.list_aliases())["tous@ac-normandie.test"] == ["secretariat@ac-normandie.test"]
    directory.remove_alias("tous@ac-normandie.test")
    with pytest.raises(NotFound):
        directory.remove_alias("tous@ac-normandie.test")


def test_alias_loops_terminate(directory) -> None:
    directory.add_user("Anne", "Martin", password=PW)
    directory.add_alias("a@ac-normandie.test", ["anne.martin"])
    directory.add_alias("b@ac-normandie.test", ["a@ac-normandie.test"])
    directory.add_alias("a@ac-normandie.test", ["b@ac-normandie.test"])
    assert directory.expand("a@ac-normandie.test") == ["anne.martin@ac-normandie.test"]


def test_unknown_login_operations(directory) -> None:
    for op in (directory.get, directory.disable, directory.enable, directory.delete):
        with pytest.raises(NotFound, match="no account"):
            op("ghost.user")
    with pytest.raises(NotFound):
        directory.set_password("ghost.user", PW)


def test_enable_refuses_pending(directory) -> None:
    directory.add_user("Anne", "Martin", numen=NUMEN, birth_date="1970-01-01")
    with pytest.raises(DirectoryError, match="waiting for activation"):
        directory.enable("anne.martin")


def test_concurrent_authentication_with_default_argon2(directory_factory) -> None:
    """Many threads hashing at once at the production parameters: no hang, no error."""
    from concurrent.futures import ThreadPoolExecutor

    from mailstack.config import Argon2Params

    d = directory_factory(argon2=Argon2Params(), cache_ttl=0)
    for i in range(4):
        d.add_user("Anne", "Martin", password=PW)
    auth = Authenticator(d)
    users = ["anne.martin", "anne.martin1", "anne.martin2", "anne.martin3"] * 4
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(auth.authenticate, u, PW, f"192.0.2.{i}") for i, u in enumerate(users)]
        results = [f.result(timeout=60) for f in futures]
    assert [r.outcome for r in results] == [Outcome.OK] * len(users)


def test_failed_login_counter_shared_between_authenticators(directory_factory) -> None:
    """Two Authenticators (two daemons) see one counter in the database."""
    d1 = directory_factory(throttle=dict(account_lockout=4, delay_base=0.0))
    d2 = directory_factory(throttle=dict(account_lockout=4, delay_base=0.0))
    d1.add_user("Anne", "Martin", password=PW)
    a1, a2 = Authenticator(d1), Authenticator(d2)
    for a in (a1, a2, a1, a2):
        assert a.authenticate("anne.martin", "bad", "192.0.2.1").outcome is Outcome.BAD_CREDENTIALS
    assert a1.authenticate("anne.martin", PW).outcome is Outcome.LOCKED
    assert a2.authenticate("anne.martin", PW).outcome is Outcome.LOCKED


def test_database_down_is_unavailable(tmp_path) -> None:
    from mailstack.accounts.directory import Directory
    from tests.conftest import make_config

    cfg = make_config(tmp_path, "postgresql+psycopg://nobody@127.0.0.1:1/none")
    auth = Authenticator(Directory(cfg))
    assert auth.authenticate("anne.martin", PW).outcome is Outcome.UNAVAILABLE



def test_async_authentication_keeps_the_event_loop_free(directory_factory) -> None:
    """authenticate_async hashes in a thread and waits the failure delay on the loop."""
    import asyncio

    from mailstack.config import Argon2Params

    d = directory_factory(argon2=Argon2Params(), cache_ttl=0, throttle=dict(free_failures=0, delay_base=0.2))
    d.add_user("Anne", "Martin", password=PW)
    auth = Authenticator(d)

    async def scenario() -> tuple[list, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        results = await asyncio.gather(
            auth.authenticate_async("anne.martin", PW, "192.0.2.1", "test"),
            auth.authenticate_async("anne.martin", "wrong", "192.0.2.2", "test"),
        )
        done.set()
        await t
        return results, ticks

    results, ticks = asyncio.run(scenario())
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.BAD_CREDENTIALS]
    assert results[1].delay == 0.2
    assert ticks > 20  # the loop kept running during hashing and the delay
