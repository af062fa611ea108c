"""Hash codes: stored LSH/ITQ projections per model, one bit code and bucket key per image, filled by trigger

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects.postgresql import BIT, JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NOW = sa.text("now()")
EMPTY_JSON = sa.text("'{}'::jsonb")


def upgrade() -> None:
    op.create_table(
        "hash_projections",
        sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("embedding_models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=False),
        sa.Column("bucket_bits", sa.Integer(), nullable=False),
        sa.Column("mean", VECTOR(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("params", JSONB(), server_default=EMPTY_JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("method IN ('lsh', 'itq')", name="method"),
        # Codes are packed into bytes, and pgvector's bit indexes stop at 64,000 bits.
        sa.CheckConstraint("bits % 8 = 0 AND bits BETWEEN 8 AND 64000", name="bits"),
        # A bucket key is an integer made of the first bucket_bits bits; 24 keeps it positive and enumerable.
        sa.CheckConstraint("bucket_bits BETWEEN 1 AND 24 AND bucket_bits <= bits", name="bucket_bits"),
        sa.UniqueConstraint("model_id", "method", "bits"),
    )

    # One hyperplane per bit: bit j of x is 1 when x . plane_j > threshold_j, where threshold_j = mean . plane_j,
    # which is the same as projecting the mean-centred vector.
    op.create_table(
        "hash_planes",
        sa.Column("projection_id", sa.Integer(), sa.ForeignKey("hash_projections.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("bit", sa.Integer(), primary_key=True),
        sa.Column("plane", VECTOR(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
    )
    # vector's default storage is EXTERNAL: a 1280-d plane would live in TOAST and every code computed by the
    # trigger would fetch 1024 TOAST chunks. MAIN keeps planes up to ~2000 dims inline in the heap page.
    op.execute("ALTER TABLE hash_planes ALTER COLUMN plane SET STORAGE MAIN")

    # Dimensionless bit varying, like embeddings.embedding: ANN indexes cast to bit(N) per projection.
    op.create_table(
        "hash_codes",
        sa.Column("projection_id", sa.Integer(), sa.ForeignKey("hash_projections.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("image_id", sa.BigInteger(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("code", BIT(varying=True), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
    )
    # Multi-probe LSH reads a handful of buckets of one projection.
    op.create_index("ix_hash_codes_projection_id_bucket", "hash_codes", ["projection_id", "bucket"])
    op.create_index("ix_hash_codes_image_id", "hash_codes", ["image_id"])

    # The code of any vector under a stored projection, in SQL, so analysts and the trigger share one rule.
    op.execute(
        """
        CREATE FUNCTION hash_code(projection integer, v vector) RETURNS bit varying
        LANGUAGE sql STABLE PARALLEL SAFE AS $$
            SELECT string_agg(CASE WHEN (v <#> h.plane) < -h.threshold THEN '1' ELSE '0' END, ''
                              ORDER BY h.bit)::bit varying
              FROM hash_planes h
             WHERE h.projection_id = projection
        $$
        """
    )
    # The first b bits read as an unsigned integer (casting to bit(32) pads with zeros on the right).
    op.execute(
        """
        CREATE FUNCTION hash_bucket(code bit varying, b integer) RETURNS integer
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT (substring(code FROM 1 FOR b)::bit(32) >> (32 - b))::integer
        $$
        """
    )
    # New or changed embeddings get a code under every projection of their model, whoever writes them
    # (the embed command, the worker, or SQL). Statement level: one pass per batch, not per row.
    op.execute(
        """
        CREATE FUNCTION hash_codes_refresh() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO hash_codes AS hc (projection_id, image_id, code, bucket)
            SELECT p.id, n.image_id, c.code, hash_bucket(c.code, p.bucket_bits)
              FROM changed n
              JOIN hash_projections p ON p.model_id = n.model_id
             CROSS JOIN LATERAL (SELECT hash_code(p.id, n.embedding) AS code) c
            ON CONFLICT (projection_id, image_id) DO UPDATE SET code = EXCLUDED.code, bucket = EXCLUDED.bucket;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER embeddings_hash_codes_insert AFTER INSERT ON embeddings "
        "REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION hash_codes_refresh()"
    )
    op.execute(
        "CREATE TRIGGER embeddings_hash_codes_update AFTER UPDATE ON embeddings "
        "REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION hash_codes_refresh()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER embeddings_hash_codes_update ON embeddings")
    op.execute("DROP TRIGGER embeddings_hash_codes_insert ON embeddings")
    op.execute("DROP FUNCTION hash_codes_refresh()")
    op.execute("DROP FUNCTION hash_bucket(bit varying, integer)")
    op.execute("DROP FUNCTION hash_code(integer, vector)")
    op.drop_table("hash_codes")
    op.drop_table("hash_planes")
    op.drop_table("hash_projections")
