"""prenom.nom identities: how a login is derived from a person's names.

The rules are the académie's (see README, "Identities"): strip accents, fold
ligatures, drop apostrophes, turn separators into single hyphens, keep only
a-z 0-9 and hyphens.  Homonyms get the lowest free numeric suffix; that part
needs the directory and lives in ``directory.py``.
"""

from __future__ import annotations

import re
import unicodedata

# Letters that Unicode decomposition does not reduce to ASCII.
_FOLD = str.maketrans(
    {
        "œ": "oe",
        "æ": "ae",
        "ß": "ss",
        "ẞ": "ss",
        "ø": "o",
        "ł": "l",
        "đ": "d",
        "ð": "d",
        "þ": "th",
        "ı": "i",
        "ħ": "h",
        "ŧ": "t",
    }
)
_APOSTROPHES = str.maketrans("", "", "'\u2019\u02bc")
# Spaces, hyphens (ASCII and Unicode dashes), underscores and dots.
_SEPARATOR_RUN = re.compile(r"[\s\-_.\u2010-\u2015\u2212\ufe58\ufe63\uff0d]+")
_HYPHEN_RUN = re.compile(r"-+")
_NOT_ALLOWED = re.compile(r"[^a-z0-9-]")

# An address local part is at most 64 octets (RFC 5321); keep room for a
# homonym number.
MAX_LOGIN = 60


class IdentityError(ValueError):
    """A name that cannot give a login."""


def name_part(name: str, what: str = "name") -> str:
    """One half of a login (``prenom`` or ``nom``) from a person's name."""
    s = unicodedata.normalize("NFKD", name.lower())
    s = "".join(c for c in s if not unicodedata.combining(c))
    s = s.translate(_FOLD).lower()  # lower() again: NFKD can yield capitals (e.g. ℌ)
    s = s.translate(_APOSTROPHES)
    s = _SEPARATOR_RUN.sub("-", s).strip("-")
    s = _NOT_ALLOWED.sub("", s)
    # Dropping characters can leave doubled or edge hyphens ("Jean - ! - Paul").
    s = _HYPHEN_RUN.sub("-", s).strip("-")
    if not s:
        raise IdentityError(f"{what} {name!r} gives an empty login part")
    return s


def base_login(first_name: str, last_name: str) -> str:
    """``prenom.nom`` before any homonym suffix."""
    login = f"{name_part(first_name, 'first name')}.{name_part(last_name, 'family name')}"
    if len(login) > MAX_LOGIN:
        raise IdentityError(f"names give a login longer than {MAX_LOGIN} characters: {login}")
    return login


def homonym_login(base: str, n: int) -> str:
    """The n-th homonym of ``base``: n=0 is the base itself, then nom1, nom2, ..."""
    return base if n == 0 else f"{base}{n}"


def normalize_login(user: str, domains: list[str]) -> tuple[str, str | None]:
    """Split a login as typed by a client into (login, domain or None).

    Logins are case-insensitive and accepted alone or as the full address.
    Raises IdentityError if the domain is not one of ours.
    """
    user = user.strip().lower()
    domain = None
    if "@" in user:
        user, _, domain = user.rpartition("@")
        if domain not in domains:
            raise IdentityError(f"{domain!r} is not a mail domain of this server")
    return user, domain
