"""UIDs up to 128 characters: real devices send UIDs longer than the standard's 64, which
are stored exactly as sent (with a warning status) instead of refused

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 00:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# (table, column) pairs that hold a UID an instance brought.
UID_COLUMNS = [
    ("studies", "study_instance_uid"), ("series", "series_instance_uid"),
    ("instances", "sop_instance_uid"), ("instances", "sop_class_uid"),
    ("superseded_instances", "sop_instance_uid"), ("shares", "study_instance_uid"),
    ("access_grants", "study_instance_uid"), ("consult_studies", "study_instance_uid"),
]


def _resize(length: int) -> None:
    for table, column in UID_COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column, existing_type=sa.String(length=192 - length), type_=sa.String(length=length))


def upgrade() -> None:
    _resize(128)


def downgrade() -> None:
    _resize(64)
