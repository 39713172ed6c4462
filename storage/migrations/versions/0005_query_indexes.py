"""query indexes: prefix (wildcard) matching on patient names and IDs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 12:00:00

QIDO-RS / C-FIND wildcard keys on patients (PatientName=李^兰*, ZHANG^X*, PatientID=LC-01*)
become LIKE 'prefix%' over the three PN component groups and the ID (imaging/query.py). An
index serves such a prefix only with the C collation or a *_pattern_ops operator class, and
PostgreSQL needs one on each ORed column to avoid a full scan of patients. So on PostgreSQL:
varchar_pattern_ops indexes on name_alphabetic, name_ideographic, name_phonetic and
patient_id (they serve equality too; the existing default indexes stay for the other
operators). name_phonetic had no index at all: SQLite gets a plain one (its LIKE is
case-insensitive and never uses an index, but equality on the three groups can).
Measured with 50,000 patients / 100,000 studies / 1,000,000 instances (bench/dicomweb.py).
"""
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

PATTERN_INDEXES = {  # index name -> column, PostgreSQL only
    "ix_patients_name_alphabetic_pattern": "name_alphabetic",
    "ix_patients_name_ideographic_pattern": "name_ideographic",
    "ix_patients_patient_id_pattern": "patient_id",
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, column in PATTERN_INDEXES.items():
            op.create_index(name, "patients", [column], postgresql_ops={column: "varchar_pattern_ops"})
    op.create_index("ix_patients_name_phonetic", "patients", ["name_phonetic"],
                    postgresql_ops={"name_phonetic": "varchar_pattern_ops"})


def downgrade() -> None:
    op.drop_index("ix_patients_name_phonetic", table_name="patients")
    if op.get_bind().dialect.name == "postgresql":
        for name in reversed(list(PATTERN_INDEXES)):
            op.drop_index(name, table_name="patients")
