"""Redemption requests are found by their pass token (a short-lived token serves one checkout:
the allocation looks for earlier requests with the same token).

Revision ID: api_0005
Revises: api_0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "api_0005"
down_revision: str | Sequence[str] | None = "api_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_api_redemption_request_token_uri", "api_redemption_request", ["token_uri"])


def downgrade() -> None:
    op.drop_index("ix_api_redemption_request_token_uri", "api_redemption_request")
