"""audit events lose their index on occurred_at alone: no query uses it (a key's activity reads
ix_audit_events_client_event), and each write paid for it

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 18:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_audit_events_occurred_at", table_name="audit_events")


def downgrade() -> None:
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])
