"""Contacts for notifications sent outside the platform (e-mail, 企业微信 mobile), the
delivery state of each notification, a rotatable secret for a user's calendar feed, and
"must change the password" for passwords someone else chose (the demo admin, a reset); an
institution's reading department and address for the report header

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 05:40:00
"""
from alembic import op
import sqlalchemy as sa

from storage.types import UTCDateTime


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('institutions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('department', sa.String(length=100), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('address', sa.String(length=300), nullable=False, server_default=''))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email', sa.String(length=254), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('mobile', sa.String(length=32), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('calendar_feed_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('must_change_password', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index('ix_users_calendar_feed_hash', ['calendar_feed_hash'], unique=True)
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivered', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('delivered_at', UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_column('delivered_at')
        batch_op.drop_column('delivered')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index('ix_users_calendar_feed_hash')
        batch_op.drop_column('must_change_password')
        batch_op.drop_column('calendar_feed_hash')
        batch_op.drop_column('mobile')
        batch_op.drop_column('email')
    with op.batch_alter_table('institutions', schema=None) as batch_op:
        batch_op.drop_column('address')
        batch_op.drop_column('department')
