"""agent kinds (tools, output schema), task payloads and structured results, durable steps, approvals, groups

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

STEP_TYPES = ('model_turn', 'tool_call')
STEP_STATUSES = ('started', 'succeeded', 'failed', 'awaiting_approval', 'approved', 'rejected', 'expired')


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TYPE task_status ADD VALUE IF NOT EXISTS 'awaiting_approval' AFTER 'running'")
    op.add_column('agents', sa.Column('kind', sa.String(20), nullable=False, server_default='text'))
    op.add_column('agents', sa.Column('tools', sa.JSON(), nullable=True))
    op.add_column('agents', sa.Column('output_schema', sa.JSON(), nullable=True))
    op.create_table(
        'task_groups',
        sa.Column('id', sa.String(200), primary_key=True),
        sa.Column('user_id', sa.String(200), nullable=False),
        sa.Column('callback', sa.String(300), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('callback_sent_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column('tasks', sa.Column('kind', sa.String(20), nullable=True))
    op.add_column('tasks', sa.Column('payload', sa.JSON(), nullable=True))
    op.add_column('tasks', sa.Column('result_data', sa.JSON(), nullable=True))
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('group_id', sa.String(200), nullable=True))
        batch.create_foreign_key('fk_tasks_group_id', 'task_groups', ['group_id'], ['id'])
        batch.create_index('ix_tasks_group_id', ['group_id'], unique=False)
    op.create_table(
        'task_steps',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('task_id', sa.Uuid(), sa.ForeignKey('tasks.id', ondelete='CASCADE'), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('step_type', sa.Enum(*STEP_TYPES, name='step_type'), nullable=False),
        sa.Column('status', sa.Enum(*STEP_STATUSES, name='step_status'), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column('content', sa.Text(), nullable=True),
        sa.Column('duration_ms', sa.Integer(), nullable=True),
        sa.Column('tool_calls', sa.JSON(), nullable=True),
        sa.Column('model', sa.String(200), nullable=True),
        sa.Column('prompt_tokens', sa.Integer(), nullable=True),
        sa.Column('completion_tokens', sa.Integer(), nullable=True),
        sa.Column('cached_tokens', sa.Integer(), nullable=True),
        sa.Column('cost_usd', sa.Numeric(20, 10), nullable=True),
        sa.Column('tool_call_id', sa.String(200), nullable=True),
        sa.Column('tool_name', sa.String(64), nullable=True),
        sa.Column('arguments', sa.JSON(), nullable=True),
        sa.Column('idempotency_key', sa.String(200), nullable=True),
        sa.Column('approval_expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('approval_note', sa.Text(), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_task_steps_task_position', 'task_steps', ['task_id', 'position'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_task_steps_task_position', table_name='task_steps')
    op.drop_table('task_steps')
    sa.Enum(name='step_status').drop(op.get_bind(), checkfirst=True)
    sa.Enum(name='step_type').drop(op.get_bind(), checkfirst=True)
    with op.batch_alter_table('tasks') as batch:
        batch.drop_index('ix_tasks_group_id')
        batch.drop_constraint('fk_tasks_group_id', type_='foreignkey')
        batch.drop_column('group_id')
    for column in ('result_data', 'payload', 'kind'):
        op.drop_column('tasks', column)
    op.drop_table('task_groups')
    for column in ('output_schema', 'tools', 'kind'):
        op.drop_column('agents', column)
    # PostgreSQL cannot drop an enum value; a task awaiting approval fails instead.
    op.execute("UPDATE tasks SET status = 'failed', error = 'approval withdrawn by a downgrade' WHERE status = 'awaiting_approval'")
