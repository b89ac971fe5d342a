"""The account directory's tables (SQLAlchemy 2 declarative models).

Schema changes go through an Alembic revision in ``migrations/versions``;
``tests/test_migrations.py`` checks that the models and the migrations agree.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class AccountState(str, enum.Enum):
    PENDING = "pending"  # created from HR data, waiting for NUMEN activation
    ACTIVE = "active"
    DISABLED = "disabled"  # by an operator, or after too long without a login
    LOCKED = "locked"  # temporarily, after too many failed logins


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'active', 'disabled', 'locked')", name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    domain: Mapped[str] = mapped_column(String(253))
    first_name: Mapped[str] = mapped_column(String(200))
    last_name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=AccountState.PENDING.value)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    # NUMEN and birth date are personal data: a keyed hash of the NUMEN finds
    # the pending account, an Argon2id hash of NUMEN + birth date checks it.
    numen_lookup: Mapped[str | None] = mapped_column(String(64), unique=True)
    activation_hash: Mapped[str | None] = mapped_column(String(200))
    recovery_email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    # None: the [storage] default applies; 0: no limit.
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    quota_messages: Mapped[int | None] = mapped_column(BigInteger)

    @property
    def address(self) -> str:
        return f"{self.login}@{self.domain}"


class Alias(Base):
    """An address delivering to one target (alias) or several (distribution list)."""

    __tablename__ = "aliases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    local_part: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    targets: Mapped[list[AliasTarget]] = relationship(
        back_populates="alias", cascade="all, delete-orphan", order_by="AliasTarget.id"
    )


class AliasTarget(Base):
    __tablename__ = "alias_targets"
    __table_args__ = (UniqueConstraint("alias_id", "target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias_id: Mapped[int] = mapped_column(ForeignKey("aliases.id", ondelete="CASCADE"), index=True)
    target: Mapped[str] = mapped_column(String(320))
    alias: Mapped[Alias] = relationship(back_populates="targets")


class AuthFailure(Base):
    """Failed-login counters shared by every daemon process (per account, per IP)."""

    __tablename__ = "auth_failures"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # account | ip | activation
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
