"""tasks may wait in the database for the fair-share dispatcher (status `waiting`), in dispatch order

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        # Allowed in a transaction since PostgreSQL 12, provided nothing in it uses the new value (the index
        # below does not name it). SQLite stores the status as text with no constraint: nothing to do.
        op.execute("ALTER TYPE task_status ADD VALUE IF NOT EXISTS 'waiting' BEFORE 'pending'")
    op.create_index('ix_tasks_dispatch_order', 'tasks', ['status', 'user_id', 'priority', 'created_at'], unique=False)


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value; rows still waiting go back to pending, which the sweeper queues.
    op.execute("UPDATE tasks SET status = 'pending' WHERE status = 'waiting'")
    op.drop_index('ix_tasks_dispatch_order', table_name='tasks')
