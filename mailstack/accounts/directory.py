"""The account directory: accounts, activation, aliases and lists.

Every operation is one database transaction: a failure changes nothing.
Blocking (database, Argon2id); daemons call it from a thread pool.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import Config
from ..files import write_atomic
from . import db
from .identity import (
    IdentityError,
    base_login,
    homonym_login,
    name_part,
    normalize_login,
)
from .models import Account, AccountState, Alias, AliasTarget, utcnow
from .passwords import Hasher, PolicyError, check_policy
from .throttle import Throttle, ip_key

_NUMEN_RE = re.compile(r"^[0-9A-Z]{13}$")
_ADDRESS_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
MAX_HOMONYMS = 10000
log = logging.getLogger(__name__)


class DirectoryError(Exception):
    """A refused directory operation, phrased for the operator."""


class NotFound(DirectoryError):
    pass


class ActivationRefused(DirectoryError):
    """One generic refusal: never says which of NUMEN, birth date or name was wrong."""

    def __init__(self, delay: float = 0.0):
        super().__init__("activation refused: these details do not match an account waiting for activation")
        self.delay = delay


@dataclass(frozen=True)
class AccountInfo:
    login: str
    address: str
    first_name: str
    last_name: str
    state: str
    created_at: datetime
    activated_at: datetime | None
    last_login_at: datetime | None
    password_changed_at: datetime | None
    locked_until: datetime | None
    disabled_reason: str | None
    recovery_email: str | None
    pending_activation_data: bool
    quota_bytes: int | None
    quota_messages: int | None

    @classmethod
    def of(cls, a: Account) -> AccountInfo:
        return cls(
            login=a.login,
            address=a.address,
            first_name=a.first_name,
            last_name=a.last_name,
            state=a.state,
            created_at=a.created_at,
            activated_at=a.activated_at,
            last_login_at=a.last_login_at,
            password_changed_at=a.password_changed_at,
            locked_until=a.locked_until,
            disabled_reason=a.disabled_reason,
            recovery_email=a.recovery_email,
            pending_activation_data=a.activation_hash is not None,
            quota_bytes=a.quota_bytes,
            quota_messages=a.quota_messages,
        )


def normalize_numen(numen: str) -> str:
    n = re.sub(r"\s+", "", numen).upper()
    if not _NUMEN_RE.match(n):
        raise DirectoryError("NUMEN must be 13 letters and digits")
    return n


def parse_birth_date(text: str) -> date:
    try:
        d = date.fromisoformat(text.strip())
    except ValueError:
        raise DirectoryError(f"birth date {text!r} is not a date in the form YYYY-MM-DD") from None
    if not (1900 <= d.year and d <= date.today()):
        raise DirectoryError(f"birth date {text} is not plausible")
    return d


def normalize_address(address: str) -> str:
    a = address.strip().lower()
    if not _ADDRESS_RE.match(a) or ".." in a or a.startswith(".") or ".@" in a:
        raise DirectoryError(f"{address!r} is not a valid mail address")
    return a


def load_secret(path: Path) -> bytes:
    """The installation's secret key (NUMEN lookup hashes)."""
    try:
        data = path.read_bytes().strip()
    except OSError as e:
        raise DirectoryError(f"cannot read the secret key {path}: {e.strerror}") from None
    if len(data) < 32:
        raise DirectoryError(f"the secret key {path} is too short (at least 32 bytes)")
    return data


def write_secret(path: Path) -> None:
    write_atomic(path, secrets.token_hex(32) + "\n", 0o600)


class Directory:
    def __init__(self, cfg: Config, engine: Engine | None = None):
        self.cfg = cfg
        self.engine = engine or db.make_engine(cfg.database.url)
        self.sessions = db.session_factory(self.engine)
        self.read_sessions = db.read_session_factory(self.engine)
        self.hasher = Hasher(cfg.auth.argon2)
        self.throttle = Throttle(cfg.auth.throttle)
        self._secret: bytes | None = None

    def reconfigure(self, cfg: Config) -> None:
        """A reloaded configuration: throttle, password policy, inactivity rule.
        The engine, the hasher and the secret stay (restart-only keys)."""
        self.cfg = cfg
        self.throttle = Throttle(cfg.auth.throttle)

    # -- plumbing ------------------------------------------------------------

    def check_schema(self) -> None:
        db.check_current(self.engine)

    def session(self) -> Session:
        return self.sessions()

    def _numen_lookup(self, numen: str) -> str:
        if self._secret is None:
            self._secret = load_secret(self.cfg.auth.secret_file)
        return hmac.new(self._secret, b"numen:" + numen.encode(), hashlib.sha256).hexdigest()

    def _activation_material(self, numen: str, birth: date) -> str:
        return f"{numen}|{birth.isoformat()}"

    def _find(self, s: Session, login: str) -> Account:
        acc = self._lookup(s, login)
        if acc is None:
            raise NotFound(f"no account {login!r}")
        return acc

    def _lookup(self, s: Session, login: str) -> Account | None:
        try:
            local, domain = normalize_login(login, self.cfg.server.domains)
        except IdentityError as e:
            raise NotFound(str(e)) from None
        acc = s.scalar(select(Account).where(Account.login == local))
        if acc is not None and domain is not None and acc.domain != domain:
            return None
        return acc

    def _check_domain(self, domain: str | None) -> str:
        domain = (domain or self.cfg.default_domain).lower()
        if domain not in self.cfg.server.domains:
            raise DirectoryError(
                f"{domain!r} is not a mail domain of this server (server.domains: {', '.join(self.cfg.server.domains)})"
            )
        return domain

    @staticmethod
    def _login_taken(s: Session, login: str) -> bool:
        if s.scalar(select(func.count()).select_from(Account).where(Account.login == login)):
            return True
        return bool(s.scalar(select(func.count()).select_from(Alias).where(Alias.local_part == login)))

    # -- accounts --------------------------------------------------------------

    def add_user(
        self,
        first_name: str,
        last_name: str,
        domain: str | None = None,
        password: str | None = None,
        numen: str | None = None,
        birth_date: str | None = None,
        recovery_email: str | None = None,
    ) -> AccountInfo:
        first_name, last_name = first_name.strip(), last_name.strip()
        try:
            base = base_login(first_name, last_name)
        except IdentityError as e:
            raise DirectoryError(str(e)) from None
        domain = self._check_domain(domain)
        if password is None and not (numen and birth_date):
            raise DirectoryError("give a password, or a NUMEN and a birth date for a pending account")
        if (numen is None) != (birth_date is None):
            raise DirectoryError("NUMEN and birth date go together")
        lookup = activation = None
        if numen is not None and birth_date is not None:
            n, d = normalize_numen(numen), parse_birth_date(birth_date)
            lookup = self._numen_lookup(n)
            activation = self.hasher.hash(self._activation_material(n, d))
        if recovery_email is not None:
            recovery_email = normalize_address(recovery_email)
        # A homonym race between two processes ends in IntegrityError on the
        # unique login: try again with the next free number.
        for _attempt in range(5):
            try:
                with self.sessions() as s, s.begin():
                    login = self._free_login(s, base)
                    if password is not None:
                        self._check_password(password, login, first_name, last_name)
                    if lookup is not None and s.scalar(select(Account.id).where(Account.numen_lookup == lookup)):
                        raise DirectoryError("an account with this NUMEN already exists")
                    now = utcnow()
                    acc = Account(
                        login=login,
                        domain=domain,
                        first_name=first_name,
                        last_name=last_name,
                        state=(AccountState.ACTIVE if password is not None else AccountState.PENDING).value,
                        password_hash=self.hasher.hash(password) if password is not None else None,
                        numen_lookup=lookup,
                        activation_hash=activation,
                        recovery_email=recovery_email,
                        created_at=now,
                        activated_at=now if password is not None else None,
                        password_changed_at=now if password is not None else None,
                    )
                    s.add(acc)
                    s.flush()
                    return AccountInfo.of(acc)
            except IntegrityError:
                continue
        raise DirectoryError(f"could not allocate a login for {base} (concurrent creations); try again")

    def _free_login(self, s: Session, base: str) -> str:
        for n in range(MAX_HOMONYMS):
            login = homonym_login(base, n)
            if not self._login_taken(s, login):
                return login
        raise DirectoryError(f"too many homonyms of {base}")

    def _check_password(self, password: str, login: str, first_name: str, last_name: str) -> None:
        try:
            check_policy(self.cfg.auth.password, password, login, first_name, last_name)
        except PolicyError as e:
            raise DirectoryError(str(e)) from None

    def get(self, login: str) -> AccountInfo:
        with self.sessions() as s:
            return AccountInfo.of(self._find(s, login))

    def list_users(self) -> list[AccountInfo]:
        with self.sessions() as s:
            return [AccountInfo.of(a) for a in s.scalars(select(Account).order_by(Account.login))]

    def set_password(self, login: str, password: str) -> AccountInfo:
        with self.sessions() as s, s.begin():
            acc = self._find(s, login)
            self._check_password(password, acc.login, acc.first_name, acc.last_name)
            acc.password_hash = self.hasher.hash(password)
            acc.password_changed_at = utcnow()
            if acc.state == AccountState.PENDING.value:
                acc.state = AccountState.ACTIVE.value
                acc.activated_at = utcnow()
            s.flush()
            return AccountInfo.of(acc)

    def set_quota(self, login: str, quota_bytes: int | None, quota_messages: int | None) -> AccountInfo:
        """Per-account limits; None restores the [storage] default, 0 means none."""
        for what, v in (("bytes", quota_bytes), ("messages", quota_messages)):
            if v is not None and v < 0:
                raise DirectoryError(f"quota {what} must be 0 or more")
        with self.sessions() as s, s.begin():
            acc = self._find(s, login)
            acc.quota_bytes, acc.quota_messages = quota_bytes, quota_messages
            s.flush()
            return AccountInfo.of(acc)

    def disable(self, login: str, reason: str = "disabled by an operator") -> AccountInfo:
        with self.sessions() as s, s.begin():
            acc = self._find(s, login)
            acc.state = AccountState.DISABLED.value
            acc.disabled_reason = reason
            s.flush()
            return AccountInfo.of(acc)

    def enable(self, login: str) -> AccountInfo:
        """Re-enable a disabled or locked account (and clear its failure counter)."""
        with self.sessions() as s, s.begin():
            acc = self._find(s, login)
            if acc.state == AccountState.PENDING.value:
                raise DirectoryError(f"{acc.login} is waiting for activation; set a password or activate it")
            acc.state = AccountState.ACTIVE.value
            acc.disabled_reason = None
            acc.locked_until = None
            # Restart the inactivity clock, or the next sweep disables it again.
            acc.last_login_at = utcnow() if self.cfg.auth.inactivity_days else acc.last_login_at
            self.throttle.reset(s, "account", acc.login)
            s.flush()
            return AccountInfo.of(acc)

    def delete(self, login: str) -> AccountInfo:
        with self.sessions() as s, s.begin():
            acc = self._find(s, login)
            info = AccountInfo.of(acc)
            # A local target that no longer exists would bounce every list mail.
            s.execute(delete(AliasTarget).where(AliasTarget.target == acc.address))
            self.throttle.reset(s, "account", acc.login)
            s.delete(acc)
            return info

    # -- activation ------------------------------------------------------------

    def activate(self, numen: str, birth_date: str, name: str, password: str, client: str = "cli") -> AccountInfo:
        """First activation: NUMEN, birth date and family name must match a
        pending account.  Any mismatch is one generic refusal and counts
        toward throttling (per NUMEN and per client)."""
        try:
            n, d = normalize_numen(numen), parse_birth_date(birth_date)
            given_name = name_part(name, "name")
        except (DirectoryError, IdentityError):
            n = d = given_name = None
        lookup = self._numen_lookup(n) if n else "malformed"
        keys = [("activation", lookup), ("ip", ip_key(client))]
        with self.sessions() as s, s.begin():
            refused = self.throttle.refused(s, keys)
            acc = None if refused or n is None else s.scalar(select(Account).where(Account.numen_lookup == lookup))
            ok = False
            if acc is not None and acc.state == AccountState.PENDING.value and acc.activation_hash:
                ok = self.hasher.verify(self._activation_material(n, d), acc.activation_hash)
                ok = ok and given_name == name_part(acc.last_name)
            elif not refused:
                self.hasher.dummy_verify(password)  # same time whether or not the NUMEN exists
            if not ok:
                delay = self.throttle.fail(s, keys)
                refusal = ActivationRefused(delay)
            else:
                self._check_password(password, acc.login, acc.first_name, acc.last_name)
                now = utcnow()
                acc.password_hash = self.hasher.hash(password)
                acc.state = AccountState.ACTIVE.value
                acc.activated_at = acc.password_changed_at = now
                self.throttle.reset(s, "activation", lookup)
                s.flush()
                return AccountInfo.of(acc)
        # The failure counters are committed before the refusal is raised.
        raise refusal

    # -- inactivity ------------------------------------------------------------

    def disable_inactive(self, now: datetime | None = None) -> list[str]:
        """Disable active accounts without a login for auth.inactivity_days."""
        days = self.cfg.auth.inactivity_days
        if not days:
            return []
        cutoff = (now or utcnow()) - timedelta(days=days)
        with self.sessions() as s, s.begin():
            stale = s.scalars(
                select(Account).where(
                    Account.state == AccountState.ACTIVE.value,
                    func.coalesce(Account.last_login_at, Account.activated_at, Account.created_at) < cutoff,
                )
            ).all()
            for acc in stale:
                acc.state = AccountState.DISABLED.value
                acc.disabled_reason = f"no login for {days} days"
            return [a.login for a in stale]

    # -- aliases and lists -----------------------------------------------------

    def add_alias(self, address: str, targets: list[str]) -> list[str]:
        """Create an alias (one target) or list (several), or add targets to it."""
        address = normalize_address(address if "@" in address else f"{address}@{self.cfg.default_domain}")
        local, _, domain = address.partition("@")
        self._check_domain(domain)
        if not targets:
            raise DirectoryError("give at least one target")
        with self.sessions() as s, s.begin():
            if s.scalar(select(Account.id).where(Account.login == local)):
                raise DirectoryError(f"{address} would collide with the login {local}")
            resolved = [self._resolve_target(s, t, address) for t in targets]
            alias = s.scalar(select(Alias).where(Alias.address == address))
            if alias is None:
                alias = Alias(address=address, local_part=local, created_at=utcnow())
                s.add(alias)
            have = {t.target for t in alias.targets}
            for t in resolved:
                if t not in have:
                    alias.targets.append(AliasTarget(target=t))
                    have.add(t)
            s.flush()
            return [t.target for t in alias.targets]

    def _resolve_target(self, s: Session, target: str, alias_address: str) -> str:
        """A bare login becomes its address; a local address must exist."""
        t = target.strip().lower()
        if "@" not in t:
            acc = s.scalar(select(Account).where(Account.login == t))
            if acc is None:
                raise DirectoryError(f"target {target!r}: no such login")
            return acc.address
        t = normalize_address(t)
        if t == alias_address:
            raise DirectoryError(f"target {target!r}: an alias cannot point to itself")
        local, _, domain = t.partition("@")
        if domain in self.cfg.server.domains:
            acc = s.scalar(select(Account).where(Account.login == local, Account.domain == domain))
            if acc is None and not s.scalar(select(Alias.id).where(Alias.address == t)):
                raise DirectoryError(f"target {target!r}: no such local account, alias or list")
        return t

    def list_aliases(self) -> list[tuple[str, list[str]]]:
        with self.sessions() as s:
            return [(a.address, [t.target for t in a.targets]) for a in s.scalars(select(Alias).order_by(Alias.address))]

    def remove_alias(self, address: str, targets: list[str] | None = None) -> None:
        """Remove the alias, or only some of its targets (the alias goes when none is left)."""
        address = normalize_address(address if "@" in address else f"{address}@{self.cfg.default_domain}")
        with self.sessions() as s, s.begin():
            alias = s.scalar(select(Alias).where(Alias.address == address))
            if alias is None:
                raise NotFound(f"no alias or list {address}")
            if not targets:
                s.delete(alias)
                return
            wanted = {self._resolve_removal(s, t) for t in targets}
            present = {t.target for t in alias.targets}
            missing = wanted - present
            if missing:
                raise NotFound(f"{address} has no target {', '.join(sorted(missing))}")
            alias.targets = [t for t in alias.targets if t.target not in wanted]
            if not alias.targets:
                s.delete(alias)

    def _resolve_removal(self, s: Session, target: str) -> str:
        t = target.strip().lower()
        if "@" in t:
            return t
        acc = s.scalar(select(Account).where(Account.login == t))
        return acc.address if acc else t

    def expand(self, address: str) -> list[str]:
        """Final recipients of an address: accounts' addresses and remote addresses."""
        a = address.strip().lower()
        with self.sessions() as s:
            return sorted(self._expand(s, a, set()))

    def _expand(self, s: Session, address: str, seen: set[str]) -> set[str]:
        if address in seen or len(seen) > 1000:
            return set()
        seen.add(address)
        alias = s.scalar(select(Alias).where(Alias.address == address))
        if alias is None:
            return {address}
        out: set[str] = set()
        for t in alias.targets:
            out |= self._expand(s, t.target, seen)
        return out

    def expand_local(self, address: str) -> tuple[list[AccountInfo], list[str]] | None:
        """What a local address reaches: (accounts, remote addresses) after
        expanding aliases and lists, each once; None if nothing answers to it."""
        a = address.strip().lower()
        with self.read_sessions() as s:
            acc = self._account_at(s, a)
            if acc is not None:  # the common case; a login is never also an alias
                return [AccountInfo.of(acc)], []
            finals = self._expand(s, a, set())
            if finals == {a}:
                return None
            accounts, remote = {}, []
            for f in sorted(finals):
                if f.rpartition("@")[2] not in self.cfg.server.domains:
                    remote.append(f)
                elif (acc := self._account_at(s, f)) is not None:
                    accounts[acc.login] = AccountInfo.of(acc)
                else:
                    log.warning("alias target %s of %s has no account", f, a)
            if not accounts and not remote:  # a loop, or only deleted accounts
                return None
            return list(accounts.values()), remote

    @staticmethod
    def _account_at(s: Session, address: str) -> Account | None:
        local, _, domain = address.partition("@")
        return s.scalar(select(Account).where(Account.login == local, Account.domain == domain))


__all__ = [
    "AccountInfo",
    "ActivationRefused",
    "Directory",
    "DirectoryError",
    "NotFound",
    "load_secret",
    "write_secret",
]
