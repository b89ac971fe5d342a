"""Password hashing (Argon2id, PHC strings) and the password policy."""

from __future__ import annotations

import hmac
import os
import re
import threading
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..config import Argon2Params, PasswordPolicy

_PHC_PARAMS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")

# cryptography's Argon2id fails (MemoryError, or hangs on some versions) when
# several threads hash with lanes >= 2.  We only create lanes=1 hashes; hashes
# imported from elsewhere with p > 1 are verified one at a time.
_MULTI_LANE = threading.Lock()


class PolicyError(ValueError):
    """A password refused by the policy; the message names the rule."""


@dataclass(frozen=True)
class Hasher:
    params: Argon2Params

    def hash(self, password: str) -> str:
        kdf = Argon2id(
            salt=os.urandom(16),
            length=32,
            iterations=self.params.iterations,
            lanes=self.params.lanes,
            memory_cost=self.params.memory_kib,
        )
        return kdf.derive_phc_encoded(_encode(password))

    def verify(self, password: str, phc: str) -> bool:
        m = _PHC_PARAMS.match(phc or "")
        if not m:
            return False
        try:
            if int(m.group(3)) > 1:
                with _MULTI_LANE:
                    Argon2id.verify_phc_encoded(_encode(password), phc)
            else:
                Argon2id.verify_phc_encoded(_encode(password), phc)
        except (InvalidKey, ValueError):
            return False
        return True

    def needs_rehash(self, phc: str) -> bool:
        m = _PHC_PARAMS.match(phc or "")
        if not m:
            return True
        wanted = (self.params.memory_kib, self.params.iterations, self.params.lanes)
        return tuple(int(g) for g in m.groups()) != wanted

    def dummy_verify(self, password: str) -> None:
        """Spend the time of a real verification (unknown users look like known ones)."""
        self.verify(password, _dummy_hash(self.params))


_DUMMY: dict[Argon2Params, str] = {}


def _dummy_hash(params: Argon2Params) -> str:
    if params not in _DUMMY:
        _DUMMY[params] = Hasher(params).hash(os.urandom(16).hex())
    return _DUMMY[params]


def _encode(password: str) -> bytes:
    # NFC so the same password typed on a Mac and on Windows matches.
    return unicodedata.normalize("NFC", password).encode("utf-8")


def check_policy(
    policy: PasswordPolicy,
    password: str,
    login: str = "",
    first_name: str = "",
    last_name: str = "",
) -> None:
    """Raise PolicyError naming the first rule the password breaks."""
    if len(password) < policy.min_length:
        raise PolicyError(f"password too short: at least {policy.min_length} characters")
    if len(password) > policy.max_length:
        raise PolicyError(f"password too long: at most {policy.max_length} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in password):
        raise PolicyError("password must not contain control characters")
    if policy.require_letter and not any(c.isalpha() for c in password):
        raise PolicyError("password needs at least one letter")
    if policy.require_digit and not any(c.isdigit() for c in password):
        raise PolicyError("password needs at least one digit")
    if policy.require_symbol and all(c.isalnum() for c in password):
        raise PolicyError("password needs at least one symbol (not a letter or digit)")
    if policy.forbid_personal:
        folded = _fold(password)
        for what, value in (("first name", first_name), ("family name", last_name), ("login", login)):
            for piece in _personal_pieces(value):
                if piece in folded:
                    raise PolicyError(f"password must not contain your {what}")


def _fold(s: str) -> str:
    s = unicodedata.normalize("NFKD", s.lower())
    return "".join(c for c in s if not unicodedata.combining(c))


def _personal_pieces(value: str) -> list[str]:
    """The value and its words of 3+ letters ("Jean-Pierre" -> jean-pierre, jean, pierre)."""
    folded = _fold(value).strip()
    if not folded:
        return []
    words = [w for w in re.split(r"[^a-z0-9]+", folded) if len(w) >= 3]
    return [folded, *words] if len(folded) >= 3 else words


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
