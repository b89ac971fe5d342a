"""Failed-login throttling shared through the database.

Counters live in ``auth_failures`` so that IMAP, SMTP and several processes
on several machines see the same picture.  Each failure within the window
raises a progressive delay (answered by the daemon without holding a
thread); past a threshold the key is locked for a while.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..config import ThrottleConfig
from .models import AuthFailure, utcnow

Key = tuple[str, str]  # (scope, key): ("account", login), ("ip", "192.0.2.1"), ("activation", hash)


def ip_key(address: str | None) -> str:
    """Throttle IPv6 clients per /64: one host usually owns the whole prefix."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:128]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Throttle:
    def __init__(self, cfg: ThrottleConfig):
        self.cfg = cfg

    def delay(self, failures: int) -> float:
        """Seconds to wait before answering the failure number ``failures``."""
        extra = failures - self.cfg.free_failures
        if extra <= 0:
            return 0.0
        return min(self.cfg.delay_base * 2 ** min(extra - 1, 16), self.cfg.delay_max)

    def _limit(self, scope: str) -> int:
        return self.cfg.ip_lockout if scope == "ip" else self.cfg.account_lockout

    def locked_until(self, s: Session, keys: Iterable[Key], now: datetime | None = None) -> datetime | None:
        now = now or utcnow()
        latest = None
        for scope, key in keys:
            row = s.get(AuthFailure, (scope, key))
            if row is not None and row.locked_until is not None and row.locked_until > now:
                latest = max(latest or row.locked_until, row.locked_until)
        return latest

    def refused(self, s: Session, keys: Iterable[Key], now: datetime | None = None) -> bool:
        return self.locked_until(s, keys, now) is not None

    def fail(self, s: Session, keys: Iterable[Key], now: datetime | None = None) -> float:
        """Count one failure for each key; return the delay to apply."""
        now = now or utcnow()
        worst = 0
        for scope, key in keys:
            row = self._row_for_update(s, scope, key, now)
            if now - row.last_at > timedelta(seconds=self.cfg.window) and (
                row.locked_until is None or row.locked_until <= now
            ):
                row.failures, row.first_at = 0, now
            row.failures += 1
            row.last_at = now
            if row.failures >= self._limit(scope):
                row.locked_until = now + timedelta(seconds=self.cfg.lockout_duration)
            worst = max(worst, row.failures)
        s.flush()
        return self.delay(worst)

    def failures(self, s: Session, scope: str, key: str) -> int:
        row = s.get(AuthFailure, (scope, key))
        return 0 if row is None else row.failures

    def reset(self, s: Session, scope: str, key: str) -> None:
        s.execute(delete(AuthFailure).where(AuthFailure.scope == scope, AuthFailure.key == key))

    def purge(self, s: Session, now: datetime | None = None) -> int:
        """Drop counters that are neither recent nor locked."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=self.cfg.window)
        rows = s.scalars(select(AuthFailure).where(AuthFailure.last_at < cutoff)).all()
        n = 0
        for row in rows:
            if row.locked_until is None or row.locked_until <= now:
                s.delete(row)
                n += 1
        return n

    @staticmethod
    def _row_for_update(s: Session, scope: str, key: str, now: datetime) -> AuthFailure:
        # Insert-if-missing that cannot race between processes, then lock the row.
        dialect = s.get_bind().dialect.name
        values = dict(scope=scope, key=key, failures=0, first_at=now, last_at=now)
        if dialect == "postgresql":
            s.execute(postgresql.insert(AuthFailure).values(**values).on_conflict_do_nothing())
        elif dialect == "sqlite":
            s.execute(sqlite.insert(AuthFailure).values(**values).on_conflict_do_nothing())
        elif s.get(AuthFailure, (scope, key)) is None:
            s.add(AuthFailure(**values))
            s.flush()
        stmt = select(AuthFailure).where(AuthFailure.scope == scope, AuthFailure.key == key)
        if dialect == "postgresql":
            stmt = stmt.with_for_update()
        return s.scalars(stmt.execution_options(populate_existing=True)).one()
