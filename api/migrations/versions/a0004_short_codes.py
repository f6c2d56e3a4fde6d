"""Short codes for the counter without a camera: the holder page's code per live pass token
(``api_short_code``, keyed by a keyed hash of the code, the token sealed) and the wrong codes
each terminal typed (``api_short_code_miss``, for the guessing throttle).

Revision ID: api_0004
Revises: api_0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "api_0004"
down_revision: str | Sequence[str] | None = "api_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_short_code",
        sa.Column("lookup", AutoString(length=64), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lookup"),
    )
    with op.batch_alter_table("api_short_code", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_short_code_expires_at"), ["expires_at"], unique=False
        )
    op.create_table(
        "api_short_code_miss",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("terminal", AutoString(length=64), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_short_code_miss", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_short_code_miss_terminal"), ["terminal"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("api_short_code_miss", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_short_code_miss_terminal"))
    op.drop_table("api_short_code_miss")
    with op.batch_alter_table("api_short_code", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_short_code_expires_at"))
    op.drop_table("api_short_code")
