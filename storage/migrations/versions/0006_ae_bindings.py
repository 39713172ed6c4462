"""AE permissions and allowed networks; login lockout; keyed audit records; film PIN lockouts

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 17:20:00

AEs registered before this revision keep store, query and retrieve (what they could do);
`lancang ae list` shows them so an operator can narrow them with `lancang ae set`.
"""
from alembic import op
import sqlalchemy as sa
import storage.types


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dicom_nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('permissions', sa.String(length=64), nullable=False,
                                      server_default='store,query,retrieve'))
        batch_op.add_column(sa.Column('allowed_networks', sa.Text(), nullable=False, server_default=''))
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('keyed', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('shares', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locked_until', storage.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lockouts', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_logins', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('locked_until', storage.types.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.drop_column('keyed')
    with op.batch_alter_table('shares', schema=None) as batch_op:
        batch_op.drop_column('lockouts')
        batch_op.drop_column('locked_until')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('locked_until')
        batch_op.drop_column('failed_logins')
    with op.batch_alter_table('dicom_nodes', schema=None) as batch_op:
        batch_op.drop_column('allowed_networks')
        batch_op.drop_column('permissions')
