"""The partner keystore (``api_partner_key``): the signing key the service creates for each
enrolled partner, sealed with AES-256-GCM under a key derived from the keystore password.

Revision ID: api_0008
Revises: api_0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "api_0008"
down_revision: str | Sequence[str] | None = "api_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_partner_key",
        sa.Column("address", sa.String(length=42), primary_key=True),
        sa.Column("kdf_salt", sa.LargeBinary(length=32), nullable=False),
        sa.Column("nonce", sa.LargeBinary(length=16), nullable=False),
        sa.Column("sealed_key", sa.LargeBinary(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("api_partner_key")
