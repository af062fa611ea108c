"""Taxonomy and analyst SQL: WoRMS AphiaID and rank on taxa; views taxon_paths, images_with_labels, sample_abundance; functions taxon_subtree and similar_images

The views and functions live in sql/views/ and sql/functions/, one object per file, so analysts read the
same text the database runs. This revision executes those files; a later change to one of them needs a new
revision that executes it again (every file uses CREATE OR REPLACE).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
VIEWS = ("taxon_paths", "images_with_labels", "sample_abundance")
FUNCTIONS = {"taxon_subtree": "text", "similar_images": "bigint, integer, text, integer"}


def _run_file(path: Path) -> None:
    # op.execute also works offline (`alembic upgrade head --sql`); colons are escaped so that text() finds
    # no bind parameters in casts like ::float8.
    op.execute(sa.text(path.read_text().rstrip().rstrip(";").replace(":", r"\:")))


def upgrade() -> None:
    op.add_column("taxa", sa.Column("aphia_id", sa.Integer()))
    op.add_column("taxa", sa.Column("rank", sa.Text()))
    op.create_index("ix_taxa_aphia_id", "taxa", ["aphia_id"])
    op.create_check_constraint("aphia_id_positive", "taxa", "aphia_id > 0")
    for name in VIEWS:
        _run_file(SQL_DIR / "views" / f"{name}.sql")
    for name in FUNCTIONS:
        _run_file(SQL_DIR / "functions" / f"{name}.sql")


def downgrade() -> None:
    for name, args in FUNCTIONS.items():
        op.execute(f"DROP FUNCTION {name}({args})")
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    op.drop_constraint("aphia_id_positive", "taxa", type_="check")
    op.drop_index("ix_taxa_aphia_id", "taxa")
    op.drop_column("taxa", "rank")
    op.drop_column("taxa", "aphia_id")
