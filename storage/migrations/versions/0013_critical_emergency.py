"""危急值 (critical findings with acknowledgement and escalation), informed-consent records,
and on consults: the emergency fast path (危重孕产妇) with its response time, and what the
invitation carries (远程医疗服务管理规范: reason, specialty, title, preferred time)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 15:00:00
"""
from alembic import op
import sqlalchemy as sa

from storage.types import UTCDateTime


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('consult_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('emergency', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('accepted_at', UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('invite_reason', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('specialty', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('requested_title', sa.String(length=32), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('preferred_at', UTCDateTime(timezone=True), nullable=True))
    op.create_table(
        'consent_records',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('consult_id', sa.Integer(), nullable=False),
        sa.Column('obtained_by_id', sa.Integer(), nullable=False),
        sa.Column('obtained_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('signer', sa.String(length=16), nullable=False),
        sa.Column('signer_name', sa.String(length=64), nullable=False),
        sa.Column('relationship_to_patient', sa.String(length=32), nullable=False),
        sa.Column('reason_not_patient', sa.Text(), nullable=False),
        sa.Column('form_key', sa.String(length=300), nullable=False),
        sa.Column('form_sha256', sa.String(length=64), nullable=False),
        sa.Column('form_type', sa.String(length=64), nullable=False),
        sa.Column('recorded_at', UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['consult_id'], ['consult_requests.id']),
        sa.ForeignKeyConstraint(['obtained_by_id'], ['users.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_consent_records_consult_id', 'consent_records', ['consult_id'])
    op.create_table(
        'critical_findings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=128), nullable=False),
        sa.Column('consult_id', sa.Integer(), nullable=True),
        sa.Column('institution_id', sa.Integer(), nullable=False),
        sa.Column('category', sa.String(length=64), nullable=False),
        sa.Column('statement', sa.Text(), nullable=False),
        sa.Column('flagged_by_id', sa.Integer(), nullable=False),
        sa.Column('flagged_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('due_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('level', sa.Integer(), nullable=False),
        sa.Column('steps', sa.JSON(), nullable=False),
        sa.Column('acknowledged_by_id', sa.Integer(), nullable=True),
        sa.Column('acknowledged_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('phone', sa.String(length=32), nullable=False),
        sa.Column('remarks', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['consult_id'], ['consult_requests.id']),
        sa.ForeignKeyConstraint(['institution_id'], ['institutions.id']),
        sa.ForeignKeyConstraint(['flagged_by_id'], ['users.id']),
        sa.ForeignKeyConstraint(['acknowledged_by_id'], ['users.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    for column in ('study_instance_uid', 'consult_id', 'institution_id', 'flagged_at', 'due_at'):
        op.create_index(f'ix_critical_findings_{column}', 'critical_findings', [column])


def downgrade() -> None:
    op.drop_table('critical_findings')
    op.drop_table('consent_records')
    with op.batch_alter_table('consult_requests', schema=None) as batch_op:
        for column in ('preferred_at', 'requested_title', 'specialty', 'invite_reason', 'accepted_at', 'emergency'):
            batch_op.drop_column(column)
