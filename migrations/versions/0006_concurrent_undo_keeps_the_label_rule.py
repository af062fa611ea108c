"""Concurrent undo keeps the current-label rule: recompute locks the label row, then upserts instead of delete+insert

Revision 0004's image_labels_recompute() deleted the image's label and inserted the newest remaining
annotation. With a second labeler on the same image at the same moment this failed with a duplicate
key (500 in the UI) or kept a stale label (tests/test_concurrency.py found both). Now it locks the
current label row first, so a concurrent labeler finishes before the newest annotation is read (each
statement of a volatile PL/pgSQL function takes a fresh snapshot), and then upserts (or deletes when
nothing remains). The rule itself is unchanged.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NEW = """
CREATE OR REPLACE FUNCTION image_labels_recompute() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE img bigint; best record;
BEGIN
    SELECT image_id INTO img FROM annotations WHERE id = NEW.annotation_id;
    PERFORM 1 FROM image_labels WHERE image_id = img FOR UPDATE;
    SELECT a.id, a.taxon_id, a.status, a.created_at INTO best
      FROM annotations a
     WHERE a.image_id = img
       AND NOT EXISTS (SELECT 1 FROM annotation_retractions r WHERE r.annotation_id = a.id)
     ORDER BY (a.status <> 'predicted') DESC, a.created_at DESC, a.id DESC
     LIMIT 1;
    IF NOT FOUND THEN
        DELETE FROM image_labels WHERE image_id = img;
    ELSE
        INSERT INTO image_labels (image_id, annotation_id, taxon_id, status, annotated_at)
        VALUES (img, best.id, best.taxon_id, best.status, best.created_at)
        ON CONFLICT (image_id) DO UPDATE
           SET annotation_id = EXCLUDED.annotation_id, taxon_id = EXCLUDED.taxon_id,
               status = EXCLUDED.status, annotated_at = EXCLUDED.annotated_at;
    END IF;
    RETURN NULL;
END $$
"""

OLD = """
CREATE OR REPLACE FUNCTION image_labels_recompute() RETURNS trigger LANGUAGE plpgsql AS $$
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


def upgrade() -> None:
    op.execute(NEW)


def downgrade() -> None:
    op.execute(OLD)
