"""The catalog schema of chextriev 0.1 (vectors and PNG thumbnails in SQL rows), plus
``images.series_instance_uid``. Catalogs made before Alembic was introduced have exactly this
schema (without the UID column, which this revision adds to them) and count as this revision.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if "images" in sa.inspect(bind).get_table_names():
        # A catalog made before Alembic: same tables; add the one column it lacks.
        columns = {c["name"] for c in sa.inspect(bind).get_columns("images")}
        if "series_instance_uid" not in columns:
            with op.batch_alter_table("images") as batch:
                batch.add_column(sa.Column("series_instance_uid", sa.String(128)))
        return
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(128), nullable=False, unique=True),
        sa.Column("pseudonymised", sa.Boolean, nullable=False),
        sa.Column("sex", sa.String(8)),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(128), nullable=False, unique=True),
        sa.Column("patient_id", sa.Integer, sa.ForeignKey("patients.id")),
        sa.Column("study_date", sa.String(16)),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_index("ix_studies_patient_id", "studies", ["patient_id"])
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.String(256), nullable=False),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("format", sa.String(16)),
        sa.Column("sop_instance_uid", sa.String(128), unique=True),
        sa.Column("study_instance_uid", sa.String(128)),
        sa.Column("series_instance_uid", sa.String(128)),
        sa.Column("patient_id", sa.Integer, sa.ForeignKey("patients.id")),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id")),
        sa.Column("view", sa.String(32)),
        sa.Column("study_date", sa.String(16)),
        sa.Column("sex", sa.String(8)),
        sa.Column("age", sa.Float),
        sa.Column("height", sa.Integer),
        sa.Column("width", sa.Integer),
        sa.Column("known_findings", sa.JSON),
        sa.Column("probabilities", sa.JSON),
        sa.Column("region_probabilities", sa.JSON),
        sa.Column("boxes", sa.JSON),
        sa.Column("box_source", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("checkpoint_id", sa.String(32)),
        sa.Column("embedding", sa.LargeBinary),
        sa.Column("region_embedding", sa.LargeBinary),
        sa.Column("region_dim", sa.Integer),
        sa.Column("thumbnail", sa.LargeBinary),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
    )
    for column in ("image_id", "patient_id", "study_id", "view", "sex", "age", "status"):
        op.create_index(f"ix_images_{column}", "images", [column])
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.String(1024), nullable=False, unique=True),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("image_pk", sa.Integer, sa.ForeignKey("images.id")),
        sa.Column("updated", sa.DateTime, nullable=False),
    )
    op.create_index("ix_sources_content_hash", "sources", ["content_hash"])
    op.create_index("ix_sources_image_pk", "sources", ["image_pk"])
    op.create_table(
        "index_builds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("checkpoint_id", sa.String(32)),
        sa.Column("embedding_dim", sa.Integer, nullable=False),
        sa.Column("index_type", sa.String(32), nullable=False),
        sa.Column("factory", sa.String(128), nullable=False),
        sa.Column("n_vectors", sa.BigInteger, nullable=False),
        sa.Column("db_state", sa.String(64), nullable=False),
        sa.Column("build_dir", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    for table in ("index_builds", "sources", "images", "studies", "patients"):
        op.drop_table(table)
