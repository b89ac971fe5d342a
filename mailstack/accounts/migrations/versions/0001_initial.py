"""Initial account directory: accounts, aliases and lists, failed-login counters.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from mailstack.accounts.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("login", sa.String(64), nullable=False),
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("first_name", sa.String(200), nullable=False),
        sa.Column("last_name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=True),
        sa.Column("numen_lookup", sa.String(64), nullable=True),
        sa.Column("activation_hash", sa.String(200), nullable=True),
        sa.Column("recovery_email", sa.String(320), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("activated_at", UTCDateTime(), nullable=True),
        sa.Column("password_changed_at", UTCDateTime(), nullable=True),
        sa.Column("last_login_at", UTCDateTime(), nullable=True),
        sa.Column("locked_until", UTCDateTime(), nullable=True),
        sa.Column("disabled_reason", sa.String(200), nullable=True),
        sa.CheckConstraint("state IN ('pending', 'active', 'disabled', 'locked')", name=op.f("ck_accounts_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("login", name=op.f("uq_accounts_login")),
        sa.UniqueConstraint("numen_lookup", name=op.f("uq_accounts_numen_lookup")),
    )
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("local_part", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("address", name=op.f("uq_aliases_address")),
    )
    op.create_index(op.f("ix_aliases_local_part"), "aliases", ["local_part"])
    op.create_table(
        "alias_targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alias_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(320), nullable=False),
        sa.ForeignKeyConstraint(
            ["alias_id"], ["aliases.id"], name=op.f("fk_alias_targets_alias_id_aliases"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_targets")),
        sa.UniqueConstraint("alias_id", "target", name=op.f("uq_alias_targets_alias_id")),
    )
    op.create_index(op.f("ix_alias_targets_alias_id"), "alias_targets", ["alias_id"])
    op.create_table(
        "auth_failures",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.Column("locked_until", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_auth_failures")),
    )


def downgrade() -> None:
    op.drop_table("auth_failures")
    op.drop_index(op.f("ix_alias_targets_alias_id"), table_name="alias_targets")
    op.drop_table("alias_targets")
    op.drop_index(op.f("ix_aliases_local_part"), table_name="aliases")
    op.drop_table("aliases")
    op.drop_table("accounts")
