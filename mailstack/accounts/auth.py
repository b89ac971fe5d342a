"""The one authentication function IMAP and SMTP call.

``Authenticator.authenticate`` is blocking (database + Argon2id, ~40 ms) and
meant to run in a thread pool; it never sleeps.  It returns the delay the
daemon must wait before answering a failure, so that throttling costs the
server a timer, not a thread.  Successful verifications are remembered for a
short time (as Dovecot's auth_cache) so that phones and Outlook reconnecting
all day do not keep the cores busy hashing.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from .. import metrics
from ..config import Config
from .directory import Directory
from .identity import IdentityError, normalize_login
from .models import Account, AccountState, utcnow
from .throttle import ip_key

log = logging.getLogger("mailstack.auth")


class Outcome(str, enum.Enum):
    OK = "ok"
    BAD_CREDENTIALS = "bad-credentials"  # unknown user or wrong password
    LOCKED = "locked"  # too many failures (account or client address)
    DISABLED = "disabled"  # by an operator or for inactivity: contact the admin
    PENDING = "pending"  # never activated
    UNAVAILABLE = "unavailable"  # database down: try again later


@dataclass(frozen=True)
class AuthResult:
    outcome: Outcome
    login: str | None = None  # the canonical login on success
    address: str | None = None
    delay: float = 0.0  # seconds to wait before answering a failure

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


class _Cache:
    """Successful verifications: keyed hash of (login, password) -> password hash.

    The key is an HMAC with a per-process random key, so the table never
    holds a usable password.  A hit is trusted only while the account's
    stored hash is unchanged, which makes a password change or reset in any
    process drop it.
    """

    def __init__(self, ttl: int, size: int):
        self.ttl, self.size = ttl, size
        self._key = os.urandom(32)
        self._items: OrderedDict[bytes, tuple[str, str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _k(self, login: str, password: str) -> bytes:
        return hmac.new(self._key, login.encode() + b"\0" + password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def get(self, login: str, password: str) -> tuple[str, str] | None:
        if not self.ttl:
            return None
        k = self._k(login, password)
        with self._lock:
            item = self._items.get(k)
            if item is None or item[2] < time.monotonic():
                self._items.pop(k, None)
                return None
            self._items.move_to_end(k)
            return item[0], item[1]

    def put(self, login: str, password: str, phc: str) -> None:
        if not self.ttl:
            return
        with self._lock:
            self._items[self._k(login, password)] = (login, phc, time.monotonic() + self.ttl)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def drop_login(self, login: str) -> None:
        with self._lock:
            for k in [k for k, v in self._items.items() if v[0] == login]:
                del self._items[k]


_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


def log_safe(user: str) -> str:
    """A client-chosen name as one log token: no space, no ``=``, nothing a
    log parser (fail2ban) could take for a field of ours."""
    return _UNSAFE.sub("?", user[:100]) or "-"


class Authenticator:
    def __init__(self, directory: Directory):
        self.directory = directory
        self.cfg = directory.cfg
        self.cache = _Cache(self.cfg.auth.cache_ttl, self.cfg.auth.cache_size)

    def reconfigure(self, cfg: Config) -> None:
        """A reloaded configuration (the directory's too); a cache whose size
        or lifetime changed starts empty."""
        self.directory.reconfigure(cfg)
        self.cfg = cfg
        if (cfg.auth.cache_ttl, cfg.auth.cache_size) != (self.cache.ttl, self.cache.size):
            self.cache = _Cache(cfg.auth.cache_ttl, cfg.auth.cache_size)

    def authenticate(
        self, user: str, password: str, client: str | None = None, service: str = "", session: str = "-"
    ) -> AuthResult:
        """Check a login and password. Blocking; never raises for bad input.

        The log line is a stable interface (config/fail2ban/ matches it):
        ``auth service=S session=ID client=IP outcome=O user=U ...``.  What
        the client chose (the user name) comes after what it cannot choose."""
        t0 = time.monotonic()
        try:
            result = self._authenticate(user, password, client)
        except SQLAlchemyError as e:
            log.error("auth service=%s session=%s client=%s outcome=unavailable user=%s error=%s",
                      service, session, client or "-", log_safe(user), e)
            metrics.LOGINS.labels(service, Outcome.UNAVAILABLE.value).inc()
            return AuthResult(Outcome.UNAVAILABLE)
        took = time.monotonic() - t0
        metrics.LOGINS.labels(service, result.outcome.value).inc()
        metrics.AUTH_SECONDS.labels(service).observe(took)
        level = logging.INFO if result.ok else logging.WARNING
        log.log(
            level,
            "auth service=%s session=%s client=%s outcome=%s user=%s delay=%.1f ms=%d",
            service,
            session,
            client or "-",
            result.outcome.value,
            log_safe(user),
            result.delay,
            took * 1000,
        )
        return result

    async def authenticate_async(
        self, user: str, password: str, client: str | None = None, service: str = "", session: str = "-"
    ) -> AuthResult:
        """For asyncio daemons: hash in the default executor, then wait the delay."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, self.authenticate, user, password, client, service, session)
        if result.delay:
            await asyncio.sleep(result.delay)
        return result

    def _authenticate(self, user: str, password: str, client: str | None) -> AuthResult:
        """Three steps, so that no database lock is held while hashing:
        read the account, verify the password, then record the outcome."""
        d = self.directory
        try:
            login, domain = normalize_login(user, self.cfg.server.domains)
        except IdentityError:
            login, domain = user.strip().lower(), None
        login = login[:128] or "-"
        keys = [("account", login), ("ip", ip_key(client))]

        # 1. Read.
        with d.sessions() as s, s.begin():
            now = utcnow()
            acc = s.scalar(select(Account).where(Account.login == login))
            if acc is not None and domain is not None and acc.domain != domain:
                acc = None
            locked = d.throttle.refused(s, keys, now) or (
                acc is not None and acc.state == AccountState.LOCKED.value and acc.locked_until and acc.locked_until > now
            )
            if locked:
                # No verification while locked: that is the point of the lock.
                delay = d.throttle.fail(s, keys, now)
                return AuthResult(Outcome.LOCKED, delay=max(delay, self.cfg.auth.throttle.delay_base))
            stored = acc.password_hash if acc is not None else None

        # 2. Verify, outside any transaction.
        verified = self._verify(login, password, stored)
        new_hash = d.hasher.hash(password) if verified and d.hasher.needs_rehash(stored or "") else None

        # 3. Record.
        with d.sessions() as s, s.begin():
            now = utcnow()
            acc = s.scalar(select(Account).where(Account.login == login)) if stored is not None else None
            if acc is None or acc.password_hash != stored:  # changed meanwhile: verify again next time
                verified = False
            if not verified:
                delay = d.throttle.fail(s, keys, now)
                if acc is not None and d.throttle.refused(s, [("account", login)], now):
                    if acc.state == AccountState.ACTIVE.value:
                        acc.state = AccountState.LOCKED.value
                    acc.locked_until = d.throttle.locked_until(s, [("account", login)], now)
                    self.cache.drop_login(login)
                return AuthResult(Outcome.BAD_CREDENTIALS, delay=delay)
            return self._succeed(s, acc, password, new_hash, now)

    def _verify(self, login: str, password: str, stored: str | None) -> bool:
        if stored is None:
            self.directory.hasher.dummy_verify(password)  # unknown users cost the same time
            return False
        cached = self.cache.get(login, password)
        if cached is not None and hmac.compare_digest(cached[1], stored):
            return True
        return self.directory.hasher.verify(password, stored)

    def _succeed(self, s, acc: Account, password: str, new_hash: str | None, now) -> AuthResult:
        """The password is right: only now may the account's state be revealed."""
        d, cfg = self.directory, self.cfg.auth
        if acc.state == AccountState.LOCKED.value:  # the lock has expired
            acc.state, acc.locked_until = AccountState.ACTIVE.value, None
        if acc.state == AccountState.PENDING.value:
            return AuthResult(Outcome.PENDING)
        if acc.state == AccountState.DISABLED.value:
            return AuthResult(Outcome.DISABLED)
        if cfg.inactivity_days:
            last = acc.last_login_at or acc.activated_at or acc.created_at
            if now - last > timedelta(days=cfg.inactivity_days):
                acc.state = AccountState.DISABLED.value
                acc.disabled_reason = f"no login for {cfg.inactivity_days} days"
                return AuthResult(Outcome.DISABLED)
        if d.throttle.failures(s, "account", acc.login):
            d.throttle.reset(s, "account", acc.login)
        # One write a minute is enough for the inactivity rule.
        if acc.last_login_at is None or now - acc.last_login_at > timedelta(minutes=1):
            acc.last_login_at = now
        if new_hash is not None:
            acc.password_hash = new_hash
        self.cache.put(acc.login, password, acc.password_hash or "")
        return AuthResult(Outcome.OK, login=acc.login, address=acc.address)
