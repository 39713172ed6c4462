"""Maternal care: pregnancies (of a person, or of a patient record without one), their risk
gradings (2017 规范 colours, every one kept), referrals up and down the tree with the record at
referral and the transport status, and the referrals' transport events

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 14:40:00
"""
from alembic import op
import sqlalchemy as sa

from storage.types import UTCDateTime


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pregnancies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('person_id', sa.Integer(), nullable=True),
        sa.Column('patient_pk', sa.Integer(), nullable=True),
        sa.Column('lmp', sa.Date(), nullable=True),
        sa.Column('edd', sa.Date(), nullable=True),
        sa.Column('gravida', sa.Integer(), nullable=False),
        sa.Column('para', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('ended_on', sa.Date(), nullable=True),
        sa.Column('institution_id', sa.Integer(), nullable=False),
        sa.Column('created_by_id', sa.Integer(), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint('(person_id IS NULL) <> (patient_pk IS NULL)', name=op.f('ck_pregnancies_owner')),
        sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_pregnancies_created_by_id_users')),
        sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'],
                                name=op.f('fk_pregnancies_institution_id_institutions')),
        sa.ForeignKeyConstraint(['patient_pk'], ['patients.id'], name=op.f('fk_pregnancies_patient_pk_patients')),
        sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_pregnancies_person_id_persons')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pregnancies')),
    )
    op.create_index('ix_pregnancies_institution_id', 'pregnancies', ['institution_id'], unique=False)
    op.create_index('ix_pregnancies_patient_pk', 'pregnancies', ['patient_pk'], unique=False)
    op.create_index('ix_pregnancies_person_id', 'pregnancies', ['person_id'], unique=False)

    op.create_table(
        'pregnancy_gradings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('pregnancy_id', sa.Integer(), nullable=False),
        sa.Column('level', sa.String(length=8), nullable=False),
        sa.Column('infectious', sa.Boolean(), nullable=False),
        sa.Column('criteria', sa.JSON(), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('ga_days', sa.Integer(), nullable=True),
        sa.Column('graded_by_id', sa.Integer(), nullable=False),
        sa.Column('institution_id', sa.Integer(), nullable=False),
        sa.Column('graded_at', UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['graded_by_id'], ['users.id'], name=op.f('fk_pregnancy_gradings_graded_by_id_users')),
        sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'],
                                name=op.f('fk_pregnancy_gradings_institution_id_institutions')),
        sa.ForeignKeyConstraint(['pregnancy_id'], ['pregnancies.id'],
                                name=op.f('fk_pregnancy_gradings_pregnancy_id_pregnancies')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pregnancy_gradings')),
    )
    op.create_index('ix_pregnancy_gradings_pregnancy_id', 'pregnancy_gradings', ['pregnancy_id'], unique=False)

    op.create_table(
        'maternal_referrals',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('pregnancy_id', sa.Integer(), nullable=False),
        sa.Column('direction', sa.String(length=8), nullable=False),
        sa.Column('from_institution_id', sa.Integer(), nullable=False),
        sa.Column('to_institution_id', sa.Integer(), nullable=False),
        sa.Column('consult_id', sa.Integer(), nullable=True),
        sa.Column('referred_by_id', sa.Integer(), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('key_findings', sa.Text(), nullable=False),
        sa.Column('record', sa.JSON(), nullable=False),
        sa.Column('transport_status', sa.String(length=16), nullable=False),
        sa.Column('status_changed_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('cancel_reason', sa.Text(), nullable=False),
        sa.Column('follow_up_instructions', sa.Text(), nullable=False),
        sa.Column('follow_up_on', sa.Date(), nullable=True),
        sa.ForeignKeyConstraint(['consult_id'], ['consult_requests.id'],
                                name=op.f('fk_maternal_referrals_consult_id_consult_requests')),
        sa.ForeignKeyConstraint(['from_institution_id'], ['institutions.id'],
                                name=op.f('fk_maternal_referrals_from_institution_id_institutions')),
        sa.ForeignKeyConstraint(['pregnancy_id'], ['pregnancies.id'],
                                name=op.f('fk_maternal_referrals_pregnancy_id_pregnancies')),
        sa.ForeignKeyConstraint(['referred_by_id'], ['users.id'],
                                name=op.f('fk_maternal_referrals_referred_by_id_users')),
        sa.ForeignKeyConstraint(['to_institution_id'], ['institutions.id'],
                                name=op.f('fk_maternal_referrals_to_institution_id_institutions')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_maternal_referrals')),
    )
    op.create_index('ix_maternal_referrals_consult_id', 'maternal_referrals', ['consult_id'], unique=False)
    op.create_index('ix_maternal_referrals_created_at', 'maternal_referrals', ['created_at'], unique=False)
    op.create_index('ix_maternal_referrals_from_institution_id', 'maternal_referrals', ['from_institution_id'],
                    unique=False)
    op.create_index('ix_maternal_referrals_pregnancy_id', 'maternal_referrals', ['pregnancy_id'], unique=False)
    op.create_index('ix_maternal_referrals_to_institution_id', 'maternal_referrals', ['to_institution_id'],
                    unique=False)

    op.create_table(
        'maternal_referral_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('referral_id', sa.Integer(), nullable=False),
        sa.Column('from_status', sa.String(length=16), nullable=True),
        sa.Column('to_status', sa.String(length=16), nullable=False),
        sa.Column('at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['referral_id'], ['maternal_referrals.id'],
                                name=op.f('fk_maternal_referral_events_referral_id_maternal_referrals')),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_maternal_referral_events_user_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_maternal_referral_events')),
    )
    op.create_index('ix_maternal_referral_events_referral_id', 'maternal_referral_events', ['referral_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_maternal_referral_events_referral_id', table_name='maternal_referral_events')
    op.drop_table('maternal_referral_events')
    for name in ('to_institution_id', 'pregnancy_id', 'from_institution_id', 'created_at', 'consult_id'):
        op.drop_index(f'ix_maternal_referrals_{name}', table_name='maternal_referrals')
    op.drop_table('maternal_referrals')
    op.drop_index('ix_pregnancy_gradings_pregnancy_id', table_name='pregnancy_gradings')
    op.drop_table('pregnancy_gradings')
    for name in ('person_id', 'patient_pk', 'institution_id'):
        op.drop_index(f'ix_pregnancies_{name}', table_name='pregnancies')
    op.drop_table('pregnancies')
