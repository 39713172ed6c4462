"""Studies shared together through one cloud-film link (the same patient's other exams)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 08:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'share_studies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('share_id', sa.Integer(), nullable=False),
        sa.Column('study_pk', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(['share_id'], ['shares.id']),
        sa.ForeignKeyConstraint(['study_pk'], ['studies.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('share_id', 'study_pk'),
    )
    op.create_index('ix_share_studies_share_id', 'share_studies', ['share_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_share_studies_share_id', table_name='share_studies')
    op.drop_table('share_studies')
