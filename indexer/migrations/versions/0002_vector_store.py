"""Bulk vectors out of SQL rows: embeddings and region embeddings move into the vector store
beside the index (``<index_dir>/store``, see ``indexer/vector_store.py``), ``images`` gains
``vector_slot``; the ``catalog_state`` and ``writer_lock`` tables are added.

The rows are kept: every stored embedding is copied into the store (in chunks, fsynced before
this migration's transaction commits) and its row points at its slot. Needs the index folder
(``chextriev db upgrade --index-dir DIR``) when the catalog holds vectors.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import logging

import numpy as np
import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)
CHUNK = 2_000


def upgrade() -> None:
    from chextriev.errors import ChextrievError
    from indexer.vector_store import NUM_REGIONS, VectorStore

    bind = op.get_bind()
    inspector = sa.inspect(bind)
    tables = set(inspector.get_table_names())
    columns = {c["name"] for c in inspector.get_columns("images")}
    images = sa.table("images", sa.column("id", sa.Integer), sa.column("embedding", sa.LargeBinary),
                      sa.column("region_embedding", sa.LargeBinary),
                      sa.column("region_dim", sa.Integer), sa.column("vector_slot", sa.BigInteger))
    total = 0
    if "embedding" in columns:
        total = bind.execute(sa.select(sa.func.count()).select_from(images)
                             .where(images.c.embedding.is_not(None))).scalar()
    index_dir = context.config.attributes.get("index_dir")
    if total and index_dir is None:  # checked before any change (SQLite DDL is not rolled back)
        raise ChextrievError(
            f"this upgrade moves {total} stored embeddings into files beside the index: "
            "pass the index folder (`chextriev db upgrade --db URL --index-dir DIR`)")
    # Each step is skipped when already done, so a run interrupted on SQLite (whose DDL is not
    # transactional) can simply be run again.
    if "catalog_state" not in tables:
        op.create_table(
            "catalog_state",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("generation", sa.BigInteger, nullable=False),
            sa.Column("store_rows", sa.BigInteger, nullable=False),
            sa.Column("removals", sa.BigInteger, nullable=False),
            sa.Column("updated", sa.DateTime, nullable=False),
        )
    if "writer_lock" not in tables:
        op.create_table(
            "writer_lock",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("pid", sa.Integer),
            sa.Column("host", sa.String(256)),
            sa.Column("started", sa.DateTime),
            sa.Column("command", sa.Text),
        )
    if "vector_slot" not in columns:
        with op.batch_alter_table("images") as batch:
            batch.add_column(sa.Column("vector_slot", sa.BigInteger))
    rows = 0
    if total:
        first = bind.execute(sa.select(images.c.embedding, images.c.region_dim)
                             .where(images.c.embedding.is_not(None)).limit(1)).first()
        dim = len(first[0]) // 4
        store = VectorStore.open(index_dir, committed=0, dim=dim, region_dim=first[1],
                                 create=True)
        last = 0
        while True:
            chunk = bind.execute(
                sa.select(images.c.id, images.c.embedding, images.c.region_embedding,
                          images.c.region_dim)
                .where(images.c.embedding.is_not(None), images.c.id > last)
                .order_by(images.c.id).limit(CHUNK)).all()
            if not chunk:
                break
            keys = np.array([r[0] for r in chunk], np.int64)
            vectors = np.stack([np.frombuffer(r[1], np.float32) for r in chunk])
            regions = None
            if store.region_dim:
                regions = np.stack([
                    np.frombuffer(r[2], np.float16).reshape(NUM_REGIONS, r[3]).astype(np.float32)
                    if r[2] is not None else np.full((NUM_REGIONS, store.region_dim), np.nan)
                    for r in chunk])
            slots = store.write(keys, vectors, regions)
            store.commit(int(slots[-1]) + 1)
            bind.execute(images.update().where(images.c.id == sa.bindparam("pk"))
                         .values(vector_slot=sa.bindparam("slot")),
                         [{"pk": int(k), "slot": int(s)} for k, s in zip(keys, slots)])
            last = int(keys[-1])
        rows = store.committed
        log.info("moved %d embeddings into %s", rows, store.root)
    op.execute(sa.text("DELETE FROM catalog_state"))
    op.execute(sa.text("INSERT INTO catalog_state (id, generation, store_rows, removals, updated) "
                       "VALUES (1, 1, :rows, 0, CURRENT_TIMESTAMP)").bindparams(rows=rows))
    with op.batch_alter_table("images") as batch:
        if "embedding" in columns:
            batch.drop_column("embedding")
            batch.drop_column("region_embedding")
        batch.create_unique_constraint("uq_images_vector_slot", ["vector_slot"])
        batch.create_index("ix_images_status_slot", ["status", "vector_slot"])


def downgrade() -> None:
    raise NotImplementedError("0002 moved the vectors into files; restore a backup to go back")
