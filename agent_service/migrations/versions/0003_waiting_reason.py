"""why a deferred task is waiting (the admission seam)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('tasks', sa.Column('waiting_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:  # SQLite can only drop columns by rebuilding the table
        batch.drop_column('waiting_reason')
