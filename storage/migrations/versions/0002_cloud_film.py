"""cloud film: derived images on series/instances, and the shares table

New NOT NULL columns on existing tables carry a server default, so the upgrade works on
a database that already holds series and instances (they become "not derived yet" and the
worker's sweep derives them).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 11:04:29.361643
"""
from alembic import op
import sqlalchemy as sa
import storage.types


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('shares',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('token_nonce', sa.String(length=32), nullable=False),
    sa.Column('pin_salt', sa.String(length=32), nullable=False),
    sa.Column('pin_hash', sa.String(length=64), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=128), nullable=False),
    sa.Column('failed_attempts', sa.Integer(), nullable=False),
    sa.Column('locked_at', storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('opened_count', sa.Integer(), nullable=False),
    sa.Column('last_opened_at', storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('film_key', sa.String(length=400), nullable=True),
    sa.Column('film_state', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_shares_institution_id_institutions')),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.id'], name=op.f('fk_shares_study_pk_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_shares')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_shares_token_hash'))
    )
    with op.batch_alter_table('shares', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shares_institution_id'), ['institution_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_shares_study_instance_uid'), ['study_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_shares_study_pk'), ['study_pk'], unique=False)

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('preview_key', sa.String(length=400), nullable=True))
        batch_op.add_column(sa.Column('preview_sha256', sa.String(length=64), nullable=False, server_default=sa.text("''")))
        batch_op.add_column(sa.Column('preview_error', sa.Text(), nullable=False, server_default=sa.text("''")))

    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('thumbnail_key', sa.String(length=400), nullable=True))
        batch_op.add_column(sa.Column('derive_state', sa.String(length=16), nullable=False, server_default=sa.text("''")))
        batch_op.add_column(sa.Column('derived_through', storage.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('derived_at', storage.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('derive_attempts', sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch_op.add_column(sa.Column('derive_error', sa.Text(), nullable=False, server_default=sa.text("''")))
        batch_op.create_index(batch_op.f('ix_series_last_received_at'), ['last_received_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_last_received_at'))
        batch_op.drop_column('derive_error')
        batch_op.drop_column('derive_attempts')
        batch_op.drop_column('derived_at')
        batch_op.drop_column('derived_through')
        batch_op.drop_column('derive_state')
        batch_op.drop_column('thumbnail_key')

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('preview_error')
        batch_op.drop_column('preview_sha256')
        batch_op.drop_column('preview_key')

    with op.batch_alter_table('shares', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shares_study_pk'))
        batch_op.drop_index(batch_op.f('ix_shares_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_shares_institution_id'))

    op.drop_table('shares')
