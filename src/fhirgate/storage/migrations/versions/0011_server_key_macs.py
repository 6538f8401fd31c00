"""server key rows carry a MAC under a key derived from the server secret

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows written before this revision carry no MAC (the migration cannot know the server
    # secret): the server seals each at start-up once its private key decrypts under the secret
    # and matches its published public key (``oauth.keys.Keyring.open``).
    with op.batch_alter_table("server_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("row_mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("server_keys", schema=None) as batch_op:
        batch_op.drop_column("row_mac")
