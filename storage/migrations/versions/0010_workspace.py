"""The regional workspace: persons above patient records (resident ID / health card links),
pinyin keys of patient names, the study list's order indexes, 互认 decisions, and an
institution's declaration that its PatientIDs are resident ID numbers

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 08:30:00
"""
from alembic import op
import sqlalchemy as sa

from imaging import pinyin
from storage.types import UTCDateTime


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'persons',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('resident_id', sa.String(length=18), nullable=True),
        sa.Column('health_card', sa.String(length=64), nullable=True),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('resident_id'),
        sa.UniqueConstraint('health_card'),
    )
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name_pinyin', sa.String(length=200), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('name_initials', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('person_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('link_source', sa.String(length=16), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('resident_id', sa.String(length=18), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('health_card', sa.String(length=64), nullable=False, server_default=''))
        batch_op.create_index('ix_patients_person_id', ['person_id'], unique=False)
        batch_op.create_index('ix_patients_resident_id', ['resident_id'], unique=False)
        batch_op.create_foreign_key('fk_patients_person_id', 'persons', ['person_id'], ['id'])
    # Prefix search on the pinyin keys; PostgreSQL needs the pattern operator class for LIKE.
    for column in ('name_pinyin', 'name_initials'):
        op.create_index(f'ix_patients_{column}', 'patients', [column], unique=False,
                        postgresql_ops={column: 'varchar_pattern_ops'})
    with op.batch_alter_table('institutions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_ids_are_resident_ids', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.create_index('ix_studies_newest', 'studies', ['study_date', 'id'], unique=False)
    op.create_index('ix_studies_institution_newest', 'studies', ['institution_id', 'study_date', 'id'], unique=False)
    op.create_table(
        'recognition_decisions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_pk', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=128), nullable=False),
        sa.Column('performing_institution_id', sa.Integer(), nullable=False),
        sa.Column('deciding_institution_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('modality', sa.String(length=100), nullable=False),
        sa.Column('recognised', sa.Boolean(), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=False),
        sa.Column('reason_text', sa.String(length=200), nullable=False),
        sa.Column('decided_at', UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['study_pk'], ['studies.id']),
        sa.ForeignKeyConstraint(['performing_institution_id'], ['institutions.id']),
        sa.ForeignKeyConstraint(['deciding_institution_id'], ['institutions.id']),
        sa.ForeignKeyConstraint(['user_id'], ['users.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    for column in ('study_pk', 'study_instance_uid', 'performing_institution_id', 'deciding_institution_id',
                   'decided_at'):
        op.create_index(f'ix_recognition_decisions_{column}', 'recognition_decisions', [column], unique=False)
    _backfill_pinyin()


def _backfill_pinyin() -> None:
    """Patients stored before this revision get their pinyin keys."""
    conn = op.get_bind()
    patients = sa.table('patients', sa.column('id', sa.Integer), sa.column('name_ideographic', sa.String),
                        sa.column('name_alphabetic', sa.String), sa.column('name_pinyin', sa.String),
                        sa.column('name_initials', sa.String))
    rows = conn.execute(sa.select(patients.c.id, patients.c.name_ideographic, patients.c.name_alphabetic)).all()
    for row in rows:
        full, initials = pinyin.keys(row.name_ideographic, row.name_alphabetic)
        if full:
            conn.execute(patients.update().where(patients.c.id == row.id)
                         .values(name_pinyin=full, name_initials=initials))


def downgrade() -> None:
    for column in ('study_pk', 'study_instance_uid', 'performing_institution_id', 'deciding_institution_id',
                   'decided_at'):
        op.drop_index(f'ix_recognition_decisions_{column}', table_name='recognition_decisions')
    op.drop_table('recognition_decisions')
    op.drop_index('ix_studies_institution_newest', table_name='studies')
    op.drop_index('ix_studies_newest', table_name='studies')
    with op.batch_alter_table('institutions', schema=None) as batch_op:
        batch_op.drop_column('patient_ids_are_resident_ids')
    for column in ('name_pinyin', 'name_initials'):
        op.drop_index(f'ix_patients_{column}', table_name='patients')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_constraint('fk_patients_person_id', type_='foreignkey')
        batch_op.drop_index('ix_patients_resident_id')
        batch_op.drop_index('ix_patients_person_id')
        batch_op.drop_column('health_card')
        batch_op.drop_column('resident_id')
        batch_op.drop_column('link_source')
        batch_op.drop_column('person_id')
        batch_op.drop_column('name_initials')
        batch_op.drop_column('name_pinyin')
    op.drop_table('persons')
