"""Embedding job queue: one row per (model, image) claimed by workers under a lease, with NOTIFY on new work

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "embedding_jobs",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("embedding_models.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("image_id", sa.BigInteger(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_id", sa.Uuid(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name="status"),
        sa.CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        # A running job always has an owner and a deadline; nothing else holds a lease.
        sa.CheckConstraint(
            "(status = 'running') = (lease_id IS NOT NULL AND lease_expires_at IS NOT NULL)", name="lease_when_running"
        ),
    )
    # Claims scan only pending rows, in image order; the partial index stays small once the queue drains.
    op.create_index(
        "ix_embedding_jobs_pending", "embedding_jobs", ["model_id", "image_id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    # Reaping expired leases and finding the next deadline look only at running rows.
    op.create_index(
        "ix_embedding_jobs_running", "embedding_jobs", ["lease_expires_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index("ix_embedding_jobs_model_id_status", "embedding_jobs", ["model_id", "status"])
    op.create_index("ix_embedding_jobs_image_id", "embedding_jobs", ["image_id"])
    # The recent rate in `plankton status` counts jobs finished in the last minutes.
    op.create_index(
        "ix_embedding_jobs_finished", "embedding_jobs", ["model_id", "finished_at"],
        postgresql_where=sa.text("status = 'done'"),
    )

    # Idle workers LISTEN on this channel, so new work wakes them at once instead of being polled for.
    # Statement level: one notification per INSERT, however many rows it adds.
    op.execute(
        """
        CREATE FUNCTION embedding_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('plankton_embedding_jobs', 'insert');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER embedding_jobs_inserted AFTER INSERT ON embedding_jobs "
        "FOR EACH STATEMENT EXECUTE FUNCTION embedding_jobs_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER embedding_jobs_inserted ON embedding_jobs")
    op.execute("DROP FUNCTION embedding_jobs_notify()")
    op.drop_table("embedding_jobs")
