"""audit events indexed by (client_id, event, occurred_at) for API-key activity

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 00:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_events_client_event", "audit_events", ["client_id", "event", "occurred_at"]
    )
    op.drop_index("ix_audit_events_client_id", table_name="audit_events")


def downgrade() -> None:
    op.create_index("ix_audit_events_client_id", "audit_events", ["client_id"])
    op.drop_index("ix_audit_events_client_event", table_name="audit_events")
