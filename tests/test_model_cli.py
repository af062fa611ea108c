"""`plankton model list|delete`: what a model takes with it, and what stops a deletion."""

from __future__ import annotations

import json

import numpy as np
import sqlalchemy as sa
from seed import seed
from typer.testing import CliRunner

from plankton_db.cli import app
from plankton_db.db import Database
from plankton_db.embed import write_embeddings
from plankton_db.hashstore import build_hash_codes
from plankton_db.indexes import build_index, list_indexes
from plankton_db.models import EmbeddingModel

runner = CliRunner()


def _two_models(db: Database) -> tuple[int, int]:
    vectors = np.random.default_rng(0).random((40, 16), dtype=np.float32)
    with db.Session.begin() as s:
        parent_id, ids = seed(s, vectors, labels=["a", "b"] * 20)
        child = EmbeddingModel(name="child", arch="test", weights_sha256="1" * 64, dim=8, preprocess={},
                               parent_id=parent_id, params={"mode": "head", "metrics": {"holdout_top1": 0.75}})
        s.add(child)
        s.flush()
        write_embeddings(s, child.id, ids, vectors[:, :8])
        build_hash_codes(s, child.id, 64, "lsh")
        build_index(s, child.id, kind="hnsw", metric="cosine")
        return parent_id, child.id


def test_model_list_shows_parents_modes_and_vector_counts(cli_env: dict[str, str], db: Database) -> None:
    _two_models(db)
    r = runner.invoke(app, ["model", "list", "--json"], env=cli_env)
    assert r.exit_code == 0, r.output
    rows = {m["name"]: m for m in json.loads(r.output)}
    assert rows["test-model"]["parent"] is None and rows["test-model"]["embedded"] == 40
    assert rows["child"]["parent"] == "test-model" and rows["child"]["mode"] == "head"
    assert rows["child"]["holdout_top1"] == 0.75 and rows["child"]["dim"] == 8
    r = runner.invoke(app, ["model", "list"], env=cli_env)
    assert r.exit_code == 0 and "2 embedding models" in r.output


def test_model_delete_takes_vectors_indexes_and_codes_and_needs_yes(cli_env: dict[str, str], db: Database) -> None:
    parent_id, child_id = _two_models(db)
    r = runner.invoke(app, ["model", "delete", "child"], env=cli_env)
    assert r.exit_code == 1 and "this deletes model 'child' and its 40 vectors; run again with --yes" in r.output
    r = runner.invoke(app, ["model", "delete", "test-model", "--yes"], env=cli_env)
    assert r.exit_code == 1 and "model 'test-model' is the parent of child: delete those first" in r.output
    r = runner.invoke(app, ["model", "delete", "nope", "--yes"], env=cli_env)
    assert r.exit_code == 1 and "unknown model 'nope'" in r.output
    with db.Session() as s:  # none of the refused calls changed anything
        assert s.execute(sa.text("SELECT count(*) FROM embeddings")).scalar_one() == 80
        assert len(list_indexes(s, child_id)) == 1
    r = runner.invoke(app, ["model", "delete", "child", "--yes"], env=cli_env)
    assert r.exit_code == 0 and "deleted model child: 40 vectors, 1 ANN indexes" in r.output, r.output
    with db.Session() as s:
        counts = s.execute(sa.text(
            "SELECT (SELECT count(*) FROM embeddings WHERE model_id = :c), "
            "(SELECT count(*) FROM embeddings WHERE model_id = :p), "
            "(SELECT count(*) FROM hash_projections WHERE model_id = :c), (SELECT count(*) FROM hash_codes), "
            "(SELECT count(*) FROM embedding_models)"), {"c": child_id, "p": parent_id}).one()
        assert tuple(counts) == (0, 40, 0, 0, 1)
        assert list_indexes(s, child_id) == []
    # With its child gone, the parent can go too.
    r = runner.invoke(app, ["model", "delete", "test-model", "--yes"], env=cli_env)
    assert r.exit_code == 0 and "deleted model test-model: 40 vectors, 0 ANN indexes" in r.output
