"""The township edge's registration desk: one row per scheduled exam of a registered patient,
offered to the institution's modalities as their Modality Worklist (edge/mwl.py)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 15:30:00
"""
from alembic import op
import sqlalchemy as sa

from storage.types import UTCDateTime


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'edge_worklist',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('accession_number', sa.String(length=16), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('institution_id', sa.Integer(), nullable=False),
        sa.Column('family_name', sa.String(length=64), nullable=False),
        sa.Column('given_name', sa.String(length=64), nullable=False),
        sa.Column('name_pinyin', sa.String(length=130), nullable=False),
        sa.Column('sex', sa.String(length=1), nullable=False),
        sa.Column('birth_date', sa.Date(), nullable=False),
        sa.Column('resident_id', sa.String(length=18), nullable=False),
        sa.Column('phone', sa.String(length=32), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('modality', sa.String(length=16), nullable=False),
        sa.Column('procedure_code', sa.String(length=16), nullable=False),
        sa.Column('procedure', sa.String(length=64), nullable=False),
        sa.Column('station_ae', sa.String(length=16), nullable=False),
        sa.Column('scheduled_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('risk_colour', sa.String(length=8), nullable=False),
        sa.Column('urgent', sa.Boolean(), nullable=False),
        sa.Column('registered_by', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['institution_id'], ['institutions.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('accession_number'),
        sa.UniqueConstraint('study_instance_uid'),
    )
    op.create_index('ix_edge_worklist_day', 'edge_worklist', ['institution_id', 'scheduled_at'], unique=False)
    op.create_index('ix_edge_worklist_patient_id', 'edge_worklist', ['patient_id'], unique=False)
    op.create_index('ix_edge_worklist_resident_id', 'edge_worklist', ['resident_id'], unique=False)


def downgrade() -> None:
    for name in ('ix_edge_worklist_resident_id', 'ix_edge_worklist_patient_id', 'ix_edge_worklist_day'):
        op.drop_index(name, table_name='edge_worklist')
    op.drop_table('edge_worklist')
