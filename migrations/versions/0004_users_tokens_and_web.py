"""Web labeling: users and API tokens, labeling actions with undo (retractions), and the kNN graph for suggestions

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("role IN ('viewer', 'annotator', 'admin')", name="role"),
        sa.UniqueConstraint("name"),
    )
    # Only the sha256 of a token is kept, so a database dump does not leak working tokens.
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])

    # One row per bulk decision in the UI, so "undo" knows which annotations belong together.
    op.create_table(
        "label_actions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("annotator", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("annotation_ids", ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("undone_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("kind IN ('label', 'dubious', 'accept')", name="kind"),
    )
    op.create_index("ix_label_actions_annotator_id", "label_actions", ["annotator", "id"])

    # Undo never deletes an annotation: it retracts it, and the image's current label is recomputed
    # from the annotations that remain, by the same rule as the insert trigger of revision 0001.
    op.create_table(
        "annotation_retractions",
        sa.Column("annotation_id", sa.BigInteger(), sa.ForeignKey("annotations.id"), primary_key=True),
        sa.Column("action_id", sa.BigInteger(), sa.ForeignKey("label_actions.id"), nullable=False),
        sa.Column("retracted_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
    )
    op.execute(
        """
        CREATE FUNCTION image_labels_recompute() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE img bigint;
        BEGIN
            SELECT image_id INTO img FROM annotations WHERE id = NEW.annotation_id;
            DELETE FROM image_labels WHERE image_id = img;
            INSERT INTO image_labels (image_id, annotation_id, taxon_id, status, annotated_at)
            SELECT a.image_id, a.id, a.taxon_id, a.status, a.created_at
              FROM annotations a
             WHERE a.image_id = img
               AND NOT EXISTS (SELECT 1 FROM annotation_retractions r WHERE r.annotation_id = a.id)
             ORDER BY (a.status <> 'predicted') DESC, a.created_at DESC, a.id DESC
             LIMIT 1;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER annotation_retractions_relabel AFTER INSERT ON annotation_retractions "
        "FOR EACH ROW EXECUTE FUNCTION image_labels_recompute()"
    )

    # Each image's nearest neighbours, computed once per embedding; suggestions vote over it in one join.
    op.create_table(
        "knn_graph",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("embedding_models.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("image_id", sa.BigInteger(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("rank", sa.SmallInteger(), primary_key=True),
        sa.Column("neighbour_id", sa.BigInteger(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("distance", sa.Float(), nullable=False),
    )
    op.create_index("ix_knn_graph_neighbour_id", "knn_graph", ["neighbour_id"])


def downgrade() -> None:
    op.drop_table("knn_graph")
    op.execute("DROP TRIGGER annotation_retractions_relabel ON annotation_retractions")
    op.drop_table("annotation_retractions")
    op.execute("DROP FUNCTION image_labels_recompute()")
    op.drop_table("label_actions")
    op.drop_table("api_tokens")
    op.drop_table("users")
