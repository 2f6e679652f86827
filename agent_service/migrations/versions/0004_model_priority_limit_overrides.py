"""the model that answered, task priority, and per-agent/user/model limit overrides

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('tasks', sa.Column('model', sa.String(length=200), nullable=True))
    op.add_column('tasks', sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
    op.create_table('limit_overrides',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('scope', sa.Enum('agent', 'user', 'model', name='limit_scope'), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('value', sa.String(length=200), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_limit_overrides_scope_subject_name', 'limit_overrides', ['scope', 'subject', 'name'],
                    unique=True)


def downgrade() -> None:
    op.drop_index('ix_limit_overrides_scope_subject_name', table_name='limit_overrides')
    op.drop_table('limit_overrides')
    sa.Enum(name='limit_scope').drop(op.get_bind(), checkfirst=True)
    with op.batch_alter_table('tasks') as batch:  # SQLite can only drop columns by rebuilding the table
        batch.drop_column('priority')
        batch.drop_column('model')
