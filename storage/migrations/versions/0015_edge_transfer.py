"""The township edge's transfer to the region: at the edge the durable outbox (studies,
instances) and the line's state; at the region the edges with their credential's hash, the
manifests they announced and the instances they uploaded

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 15:00:00
"""
from alembic import op
import sqlalchemy as sa

from storage.types import UTCDateTime


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def _edge_side() -> None:
    op.create_table(
        'edge_link',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('last_contact_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('error_kind', sa.String(length=32), nullable=False),
        sa.Column('error_detail', sa.Text(), nullable=False),
        sa.Column('error_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('rate_bps', sa.Float(), nullable=False),
        sa.Column('wire_ratio', sa.Float(), nullable=False),
        sa.Column('measured_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('scanned_through', UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'edge_outbox_studies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=128), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('queued_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('changed_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('instances', sa.Integer(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('error_kind', sa.String(length=32), nullable=False),
        sa.Column('error_detail', sa.Text(), nullable=False),
        sa.Column('error_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('sent_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('purged_at', UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('study_instance_uid'),
    )
    op.create_index('ix_edge_outbox_studies_state', 'edge_outbox_studies', ['state'], unique=False)
    op.create_table(
        'edge_outbox_instances',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_id', sa.Integer(), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=128), nullable=False),
        sa.Column('object_key', sa.String(length=400), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('confirmed', sa.BigInteger(), nullable=False),
        sa.Column('done', sa.Boolean(), nullable=False),
        sa.Column('done_at', UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['study_id'], ['edge_outbox_studies.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('sop_instance_uid'),
    )
    op.create_index('ix_edge_outbox_instances_study_id', 'edge_outbox_instances', ['study_id'], unique=False)


def _region_side() -> None:
    op.create_table(
        'edge_nodes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('institution_id', sa.Integer(), nullable=False),
        sa.Column('credential_hash', sa.String(length=64), nullable=False),
        sa.Column('issued_by', sa.String(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_seen_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_address', sa.String(length=64), nullable=False),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('backlog_studies', sa.Integer(), nullable=False),
        sa.Column('backlog_bytes', sa.BigInteger(), nullable=False),
        sa.Column('oldest_queued_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('reported_error', sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(['institution_id'], ['institutions.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('credential_hash'),
        sa.UniqueConstraint('name'),
    )
    op.create_index('ix_edge_nodes_institution_id', 'edge_nodes', ['institution_id'], unique=False)
    op.create_table(
        'edge_studies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('edge_id', sa.Integer(), nullable=False),
        sa.Column('institution_id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=128), nullable=False),
        sa.Column('instances', sa.Integer(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('updated_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('completed_at', UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['edge_id'], ['edge_nodes.id']),
        sa.ForeignKeyConstraint(['institution_id'], ['institutions.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('edge_id', 'study_instance_uid'),
    )
    op.create_index('ix_edge_studies_edge_id', 'edge_studies', ['edge_id'], unique=False)
    op.create_index('ix_edge_studies_institution_id', 'edge_studies', ['institution_id'], unique=False)
    op.create_index('ix_edge_studies_study_instance_uid', 'edge_studies', ['study_instance_uid'], unique=False)
    op.create_table(
        'edge_uploads',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('edge_study_id', sa.Integer(), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=128), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('done', sa.Boolean(), nullable=False),
        sa.Column('verified_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['edge_study_id'], ['edge_studies.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('edge_study_id', 'sop_instance_uid'),
    )
    op.create_index('ix_edge_uploads_edge_study_id', 'edge_uploads', ['edge_study_id'], unique=False)


def upgrade() -> None:
    _edge_side()
    _region_side()


def downgrade() -> None:
    for table, columns in (('edge_uploads', ['edge_study_id']),
                           ('edge_studies', ['study_instance_uid', 'institution_id', 'edge_id']),
                           ('edge_nodes', ['institution_id']), ('edge_outbox_instances', ['study_id']),
                           ('edge_outbox_studies', ['state'])):
        for column in columns:
            op.drop_index(f'ix_{table}_{column}', table_name=table)
        op.drop_table(table)
    op.drop_table('edge_link')
