"""Argon2id hashing and the password policy, without a database."""

from __future__ import annotations

import os
import threading

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from mailstack.accounts.passwords import Hasher, PolicyError, check_policy
from mailstack.config import Argon2Params, PasswordPolicy

POLICY = PasswordPolicy()


@pytest.mark.parametrize(
    "password,rule",
    [
        ("Ab#1", "too short: at least 10 characters"),
        ("a#1" + "x" * 300, "too long: at most 256 characters"),
        ("abc\x00def#12345", "control characters"),
        ("1234567890#", "at least one letter"),
        ("abcdefghij#", "at least one digit"),
        ("abcdefghij1", "at least one symbol"),
        ("Dupont#2026!", "must not contain your family name"),
        ("jean#2026!aa", "must not contain your first name"),
        ("pierre-2026!", "must not contain your first name"),
        ("DUPONTé#2026a", "must not contain your family name"),
    ],
)
def test_policy_names_the_rule(password: str, rule: str) -> None:
    with pytest.raises(PolicyError, match=rule):
        check_policy(POLICY, password, "jp.dupont9", "Jean-Pierre", "Dupont")


def test_policy_login_rule() -> None:
    with pytest.raises(PolicyError, match="must not contain your login"):
        check_policy(POLICY, "Zx!JP.Dupont9", "jp.dupont9", "", "")


@pytest.mark.parametrize("password", ["Correct#horse9", "mot de passe 2026", "Ünïcödé-pass-42", "x" * 9 + "1!"])
def test_policy_accepts_strong_passwords(password: str) -> None:
    check_policy(POLICY, password, "jean-pierre.dupont", "Jean-Pierre", "Dupont")


def test_policy_is_configurable() -> None:
    lax = PasswordPolicy(min_length=8, require_symbol=False, forbid_personal=False)
    check_policy(lax, "dupont12", "jean.dupont", "Jean", "Dupont")


def test_hash_is_phc_argon2id_with_configured_parameters() -> None:
    h = Hasher(Argon2Params())
    phc = h.hash("Correct#horse9")
    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert h.verify("Correct#horse9", phc)
    assert not h.verify("Correct#horse8", phc)
    assert not h.verify("Correct#horse9", "not a hash")
    assert not h.verify("Correct#horse9", "")
    assert h.hash("Correct#horse9") != phc  # random salt
    assert not h.needs_rehash(phc)
    assert Hasher(Argon2Params(memory_kib=32768)).needs_rehash(phc)


def test_unicode_normalization() -> None:
    h = Hasher(Argon2Params(memory_kib=8192, iterations=1))
    phc = h.hash("caf\u00e9#Pass123")  # é precomposed
    assert h.verify("cafe\u0301#Pass123", phc)  # e + combining accent


def test_foreign_multi_lane_hashes_verify_under_concurrency() -> None:
    """A hash imported with p=4 (e.g. from another system) verifies from many threads."""
    phc = Argon2id(salt=os.urandom(16), length=32, iterations=1, lanes=4, memory_cost=8192).derive_phc_encoded(b"Pw#123456789")
    h = Hasher(Argon2Params())
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(h.verify("Pw#123456789", phc))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert results == [True] * 6
