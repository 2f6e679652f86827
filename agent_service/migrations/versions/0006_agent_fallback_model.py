"""an agent's fallback model, called while its own model's circuit breaker is open

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('agents', sa.Column('fallback_model', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('agents') as batch:  # SQLite can only drop columns by rebuilding the table
        batch.drop_column('fallback_model')
