"""audit rows carry their own MAC; every disclosed resource id in a child table

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("row_mac", sa.String(length=64), nullable=True))
    # Rows written before this revision carry no MAC (the migration cannot know the server
    # secret): the chain links them as before, up to the last row that exists now.
    with op.batch_alter_table("audit_chain", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("legacy_row_id", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE audit_chain SET legacy_row_id = (SELECT COALESCE(MAX(id), 0) FROM audit_events)"
    )
    op.create_table(
        "audit_event_resources",
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("resource_id", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["audit_events.id"]),
        sa.PrimaryKeyConstraint("event_id", "position"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("audit_event_resources")
    with op.batch_alter_table("audit_chain", schema=None) as batch_op:
        batch_op.drop_column("legacy_row_id")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("row_mac")
