"""SQLAlchemy tables; the migrations create them and a test checks the two agree."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects.postgresql import BIT, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

LABEL_STATUSES = ("predicted", "validated", "dubious")


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> sa.TextClause:
    return sa.text("now()")


class Image(Base):
    """One stored image, identified by the sha256 of its bytes, with EcoTaxa-style metadata."""

    __tablename__ = "images"
    __table_args__ = (
        sa.CheckConstraint("width > 0 AND height > 0", name="positive_size"),
        sa.CheckConstraint("latitude BETWEEN -90 AND 90", name="latitude_range"),
        sa.CheckConstraint("longitude BETWEEN -180 AND 180", name="longitude_range"),
        sa.CheckConstraint("depth_min <= depth_max", name="depth_order"),
        sa.Index("ix_images_sample", "sample"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    original_name: Mapped[str] = mapped_column(sa.Text)
    original_path: Mapped[str] = mapped_column(sa.Text)
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)
    format: Mapped[str] = mapped_column(sa.String(16))
    mode: Mapped[str] = mapped_column(sa.String(16))
    n_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    ingested_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    sample: Mapped[str | None] = mapped_column(sa.Text)
    instrument: Mapped[str | None] = mapped_column(sa.Text)
    latitude: Mapped[float | None] = mapped_column(sa.Float)
    longitude: Mapped[float | None] = mapped_column(sa.Float)
    depth_min: Mapped[float | None] = mapped_column(sa.Float)
    depth_max: Mapped[float | None] = mapped_column(sa.Float)
    captured_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=sa.text("'{}'::jsonb"))


class Taxon(Base):
    """A name in the taxonomy tree (or a non-living category such as detritus)."""

    __tablename__ = "taxa"
    # taxonomy (issue 7, revision 0005): WoRMS AphiaID and rank
    __table_args__ = (sa.CheckConstraint("aphia_id > 0", name="aphia_id_positive"),)

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("taxa.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    aphia_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)  # issue 7
    rank: Mapped[str | None] = mapped_column(sa.Text)  # issue 7


class Annotation(Base):
    """One labelling decision; rows are never updated or deleted (a trigger enforces it)."""

    __tablename__ = "annotations"
    __table_args__ = (
        sa.CheckConstraint("status IN ('predicted', 'validated', 'dubious')", name="status"),
        sa.CheckConstraint("score IS NULL OR (score >= 0 AND score <= 1)", name="score_range"),
        sa.Index("ix_annotations_image_id_created_at", "image_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id", ondelete="RESTRICT"))
    taxon_id: Mapped[int] = mapped_column(sa.ForeignKey("taxa.id"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    annotator: Mapped[str] = mapped_column(sa.Text)
    source: Mapped[str] = mapped_column(sa.Text)
    score: Mapped[float | None] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())


class ImageLabel(Base):
    """The current label of each labelled image, maintained from annotations by a trigger."""

    __tablename__ = "image_labels"
    __table_args__ = (sa.Index("ix_image_labels_taxon_id_status", "taxon_id", "status"),)

    image_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    annotation_id: Mapped[int] = mapped_column(sa.ForeignKey("annotations.id"))
    taxon_id: Mapped[int] = mapped_column(sa.ForeignKey("taxa.id"))
    status: Mapped[str] = mapped_column(sa.String(16))
    annotated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class EmbeddingModel(Base):
    """An embedding space: a timm architecture, the sha256 of its weights and the preprocessing used."""

    __tablename__ = "embedding_models"

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    arch: Mapped[str] = mapped_column(sa.Text)
    weights_sha256: Mapped[str] = mapped_column(sa.String(64))
    dim: Mapped[int] = mapped_column(sa.Integer)
    preprocess: Mapped[dict[str, Any]] = mapped_column(JSONB)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("embedding_models.id"))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())


class Embedding(Base):
    """One image's vector in one model's space.

    The column has no fixed dimension so every model shares the table; indexes are
    per-model partial expression indexes that cast to the model's dimension.
    """

    __tablename__ = "embeddings"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("embedding_models.id"), primary_key=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True)
    embedding: Mapped[Any] = mapped_column(VECTOR(), nullable=False)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())


# ----------------------------------------------------------------------------- embedding job queue (issue 4)

JOB_STATUSES = ("pending", "running", "done", "failed")


class EmbeddingJob(Base):
    """One image waiting for (or given) an embedding in one model's space; workers claim it under a lease."""

    __tablename__ = "embedding_jobs"
    __table_args__ = (
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name="status"),
        sa.CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        sa.CheckConstraint(
            "(status = 'running') = (lease_id IS NOT NULL AND lease_expires_at IS NOT NULL)", name="lease_when_running"
        ),
        sa.Index("ix_embedding_jobs_pending", "model_id", "image_id", postgresql_where=sa.text("status = 'pending'")),
        sa.Index("ix_embedding_jobs_running", "lease_expires_at", postgresql_where=sa.text("status = 'running'")),
        sa.Index("ix_embedding_jobs_model_id_status", "model_id", "status"),
        sa.Index("ix_embedding_jobs_finished", "model_id", "finished_at", postgresql_where=sa.text("status = 'done'")),
    )

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("embedding_models.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True)
    status: Mapped[str] = mapped_column(sa.String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    lease_id: Mapped[Any | None] = mapped_column(sa.Uuid)
    lease_expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(sa.Text)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


# ----------------------------------------------------------------------------- hash codes and partitions (issue 3)


class HashProjection(Base):
    """An LSH or ITQ projection of one model's space into `bits`-bit codes (mean and planes stored)."""

    __tablename__ = "hash_projections"
    __table_args__ = (
        sa.CheckConstraint("method IN ('lsh', 'itq')", name="method"),
        sa.CheckConstraint("bits % 8 = 0 AND bits BETWEEN 8 AND 64000", name="bits"),
        sa.CheckConstraint("bucket_bits BETWEEN 1 AND 24 AND bucket_bits <= bits", name="bucket_bits"),
        sa.UniqueConstraint("model_id", "method", "bits"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("embedding_models.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(sa.String(8))
    bits: Mapped[int] = mapped_column(sa.Integer)
    bucket_bits: Mapped[int] = mapped_column(sa.Integer)
    mean: Mapped[Any] = mapped_column(VECTOR())
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())


class HashPlane(Base):
    """One hyperplane of a projection: bit `bit` is 1 when x . plane > threshold."""

    __tablename__ = "hash_planes"

    projection_id: Mapped[int] = mapped_column(sa.ForeignKey("hash_projections.id", ondelete="CASCADE"),
                                               primary_key=True)
    bit: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    plane: Mapped[Any] = mapped_column(VECTOR())
    threshold: Mapped[float] = mapped_column(sa.Float)


class HashCode(Base):
    """One image's code under one projection, and its bucket key (the code's first bucket_bits bits)."""

    __tablename__ = "hash_codes"
    __table_args__ = (sa.Index("ix_hash_codes_projection_id_bucket", "projection_id", "bucket"),)

    projection_id: Mapped[int] = mapped_column(sa.ForeignKey("hash_projections.id", ondelete="CASCADE"),
                                               primary_key=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True,
                                          index=True)
    code: Mapped[str] = mapped_column(BIT(varying=True))
    bucket: Mapped[int] = mapped_column(sa.Integer)


# ----------------------------------------------------------------------------- web labeling (issue 5, revision 0004)


class User(Base):
    """A person who logs in to the web UI; the password is stored only as a werkzeug hash."""

    __tablename__ = "users"
    __table_args__ = (sa.CheckConstraint("role IN ('viewer', 'annotator', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    password_hash: Mapped[str] = mapped_column(sa.Text)
    role: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())


class ApiToken(Base):
    """A bearer token for scripts; only its sha256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    last_used_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class LabelAction(Base):
    """One bulk decision in the UI: the annotations it appended, and when it was undone."""

    __tablename__ = "label_actions"
    __table_args__ = (
        sa.CheckConstraint("kind IN ('label', 'dubious', 'accept')", name="kind"),
        sa.Index("ix_label_actions_annotator_id", "annotator", "id"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    annotator: Mapped[str] = mapped_column(sa.Text)
    kind: Mapped[str] = mapped_column(sa.String(16))
    annotation_ids: Mapped[list[int]] = mapped_column(sa.ARRAY(sa.BigInteger))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    undone_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class AnnotationRetraction(Base):
    """An annotation withdrawn by undo; the annotation row itself stays."""

    __tablename__ = "annotation_retractions"

    annotation_id: Mapped[int] = mapped_column(sa.ForeignKey("annotations.id"), primary_key=True)
    action_id: Mapped[int] = mapped_column(sa.ForeignKey("label_actions.id"))
    retracted_by: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())


class KnnEdge(Base):
    """One of an image's nearest neighbours in one model's space, for kNN suggestions."""

    __tablename__ = "knn_graph"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("embedding_models.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    neighbour_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id", ondelete="CASCADE"), index=True)
    distance: Mapped[float] = mapped_column(sa.Float)


# ----------------------------------------------------------------------------- training (issue 6)


class TrainingImage(Base):
    """An image whose label a fine-tuned model learnt from; `plankton eval --holdout` never queries with it."""

    __tablename__ = "training_images"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("embedding_models.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True)
