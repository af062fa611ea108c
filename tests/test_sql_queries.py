"""Every analyst query in sql/queries has a header and runs against a real, populated database."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from plankton_db.db import REPO_ROOT
from seed import seed

QUERIES = sorted((REPO_ROOT / "sql" / "queries").glob("*.sql"))


def _as_sqlalchemy(sql: str) -> str:
    """psql's :'name' (quoted variable) becomes a bound :name; plain :name is already one."""
    return re.sub(r":'(\w+)'", r":\1", sql).rstrip().rstrip(";")


def test_there_are_queries() -> None:
    assert len(QUERIES) >= 4


@pytest.mark.parametrize("path", QUERIES, ids=lambda p: p.stem)
def test_query_has_header_and_runs(db, path: Path) -> None:
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == f"-- name: {path.stem}", "first line must be the -- name: header"
    assert lines[1].startswith("-- ") and len(lines[1]) > 10, "second line must describe the query"
    vectors = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    with db.Session.begin() as s:
        model_id, ids = seed(s, vectors, ["Oithona"] * 4 + ["Oncaea"] * 4 + [None] * 4)
        # Half the images come from deep water, so depth filters have rows on both sides.
        s.execute(sa.text("UPDATE images SET depth_min = 150, depth_max = 200 WHERE id % 2 = 0"))
    params = {"image_id": ids[0], "k": 5, "model_id": model_id, "taxon": "Oithona", "min_depth": 100}
    sql = _as_sqlalchemy(text)
    used = {p for p in params if re.search(rf"(?<!:):{p}\b", sql)}
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(sql), {p: params[p] for p in used}).all()
    assert rows, f"{path.name} returned no rows on a populated database"
