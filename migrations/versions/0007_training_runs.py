"""Training images per fine-tuned model, so evaluation can query only with images a model never trained on

`plankton train` registers a new embedding model (parent, hyper-parameters, checkpoint sha256 and metrics
in embedding_models.params) and lists here every image whose label it learnt from. `plankton eval
--holdout` leaves these images out of the queries. A table rather than a JSON array in params: a model
trained on millions of labels would otherwise carry a multi-megabyte jsonb value, and the exclusion is a
plain indexed anti-join.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_images",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["embedding_models.id"], name="fk_training_images_model_id_embedding_models",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_training_images_image_id_images",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "image_id", name="pk_training_images"),
    )
    op.create_index("ix_training_images_image_id", "training_images", ["image_id"])


def downgrade() -> None:
    op.drop_index("ix_training_images_image_id", table_name="training_images")
    op.drop_table("training_images")
