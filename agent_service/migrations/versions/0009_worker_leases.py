"""worker liveness leases: a running task's owner is lost once its lease expires

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'worker_leases',
        sa.Column('owner', sa.String(length=300), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('renewed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('owner'),
    )
    op.create_index('ix_worker_leases_expires_at', 'worker_leases', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_worker_leases_expires_at', table_name='worker_leases')
    op.drop_table('worker_leases')
