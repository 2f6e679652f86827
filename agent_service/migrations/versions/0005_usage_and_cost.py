"""cached tokens and cost per task (summed over its paid attempts) and per attempt

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

USD = sa.Numeric(20, 10, asdecimal=False)


def upgrade() -> None:
    op.add_column('tasks', sa.Column('cached_tokens', sa.Integer(), nullable=True))
    op.add_column('tasks', sa.Column('cost_usd', USD, nullable=True))
    op.add_column('tasks', sa.Column('unpriced_calls', sa.Integer(), server_default='0', nullable=False))
    op.add_column('task_attempts', sa.Column('model', sa.String(length=200), nullable=True))
    op.add_column('task_attempts', sa.Column('prompt_tokens', sa.Integer(), nullable=True))
    op.add_column('task_attempts', sa.Column('completion_tokens', sa.Integer(), nullable=True))
    op.add_column('task_attempts', sa.Column('cached_tokens', sa.Integer(), nullable=True))
    op.add_column('task_attempts', sa.Column('cost_usd', USD, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('task_attempts') as batch:  # SQLite can only drop columns by rebuilding the table
        for column in ('cost_usd', 'cached_tokens', 'completion_tokens', 'prompt_tokens', 'model'):
            batch.drop_column(column)
    with op.batch_alter_table('tasks') as batch:
        for column in ('unpriced_calls', 'cost_usd', 'cached_tokens'):
            batch.drop_column(column)
