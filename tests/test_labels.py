"""Labels, users, suggestions and the simulation at the core level, and the web CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from plankton_db import labels, simulate, suggest, users
from plankton_db.errors import InvalidArgument
from seed import seed

runner = CliRunner()


def _clusters(n_per: int = 12, dim: int = 16, seed_: int = 0) -> tuple[np.ndarray, list[str]]:
    """Three tight, well separated clusters: a data set the simulation must label in few actions."""
    rng = np.random.default_rng(seed_)
    centres = np.eye(dim)[:3] * 10
    vecs = np.concatenate([c + rng.normal(0, 0.3, (n_per, dim)) for c in centres]).astype(np.float32)
    return vecs, [name for name in ("a", "b", "c") for _ in range(n_per)]


def test_undo_restores_the_previous_label_and_keeps_history(db) -> None:
    with db.Session.begin() as s:
        model_id, ids = seed(s, *_clusters(2))
        first = labels.label_images(s, ids[:2], "b", annotator="u1")
        labels.mark_dubious(s, ids[:1], annotator="u1")
        undone = labels.undo_last(s, "u1")
        assert undone.kind == "dubious"
        cur = s.execute(sa.text("SELECT taxon, status FROM current_labels WHERE image_id = :i"), {"i": ids[0]}).one()
        assert tuple(cur) == ("b", "validated")
        assert labels.undo_last(s, "u1").action_id == first.action_id
        cur = s.execute(sa.text("SELECT taxon, status FROM current_labels WHERE image_id = :i"), {"i": ids[0]}).one()
        assert tuple(cur) == ("a", "validated")  # back to the seeded label
        hist = labels.history(s, ids[0])
        assert [(h.taxon, h.status, h.retracted, h.current) for h in hist][:2] == [
            ("b", "dubious", True, False), ("b", "validated", True, False)]
        with pytest.raises(labels.NothingToUndo, match="^u1 has no action to undo$"):
            labels.undo_last(s, "u1")
        with pytest.raises(sa.exc.DBAPIError, match="annotations are append-only; DELETE is not allowed"):
            with s.begin_nested():
                s.execute(sa.text("DELETE FROM annotations WHERE image_id = :i"), {"i": ids[0]})


def test_users_passwords_and_tokens(db) -> None:
    with db.Session.begin() as s:
        assert users.ensure_first_admin(s) is not None
        assert users.ensure_first_admin(s) is None
        u = users.add_user(s, "kim", "viewer", "long-enough")
        assert users.authenticate(s, "kim", "long-enough") == u
        assert users.authenticate(s, "kim", "wrong-one!") is None
        assert users.authenticate(s, "nobody", "long-enough") is None
        token = users.create_token(s, "kim")
        assert users.user_for_token(s, token) == u and users.user_for_token(s, token + "x") is None
        assert token not in str(s.execute(sa.text("SELECT token_sha256 FROM api_tokens")).all())
        with pytest.raises(InvalidArgument, match="^user 'kim' already exists$"):
            users.add_user(s, "kim", "viewer", "long-enough")
        with pytest.raises(InvalidArgument, match="^the password must have at least 8 characters$"):
            users.add_user(s, "lee", "viewer", "short")
        with pytest.raises(InvalidArgument, match="^unknown role 'boss'; choose one of: viewer, annotator, admin$"):
            users.add_user(s, "lee", "boss", "long-enough")
        with pytest.raises(users.UnknownUser, match="^no user named 'ghost'$"):
            users.create_token(s, "ghost")
    assert u.can("viewer") and not u.can("annotator")


def test_suggestions_vote_by_similarity(db) -> None:
    vecs, names = _clusters()
    with db.Session.begin() as s:
        model_id, ids = seed(s, vecs)  # no labels
        labels.label_images(s, ids[:3], "a", annotator="u", create_taxon=True)
        labels.label_images(s, ids[12:15], "b", annotator="u", create_taxon=True)
        summary = suggest.refresh(s, model_id)
        assert summary.graph_added == 36
        preds = dict(s.execute(sa.text("SELECT image_id, taxon FROM current_labels WHERE status = 'predicted'")).all())
        assert all(preds[i] == "a" for i in ids[3:12]) and all(preds[i] == "b" for i in ids[15:24])
        again = suggest.refresh(s, model_id)
        assert again.predictions_written == 0  # unchanged predictions are not appended again
        items, total = suggest.review_page(s, "a", limit=5)
        assert total == len([i for i in preds.values() if i == "a"]) and len(items) == 5
        assert [i.score for i in items] == sorted((i.score for i in items), reverse=True)
        with pytest.raises(InvalidArgument, match="^graph k must be between 1 and 200, got 0$"):
            suggest.build_graph(s, model_id, k=0)


def test_simulation_labels_clusters_in_few_actions_and_keeps_nothing(db) -> None:
    vecs, names = _clusters()
    with db.Session.begin() as s:
        model_id, ids = seed(s, vecs, names)
    with db.Session() as s:
        result = simulate.simulate(s, model_id, page_size=20)
        s.rollback()
    assert result.images == 36
    assert result.actions <= 6 and result.images_per_action >= 6
    assert result.speedup > 1
    with db.Session() as s:
        assert s.execute(sa.text("SELECT count(*) FROM annotations WHERE annotator = 'simulator'")).scalar() == 0
        assert s.execute(sa.text("SELECT count(*) FROM image_labels WHERE status = 'validated'")).scalar() == 36
        with pytest.raises(InvalidArgument, match="^page size must be between 1 and 500, got 0$"):
            simulate.simulate(s, model_id, page_size=0)


def test_cli_user_token_simulate(cli_env, db) -> None:
    from plankton_db.cli import app

    vecs, names = _clusters()
    with db.Session.begin() as s:
        seed(s, vecs, names)
    ok = runner.invoke(app, ["user", "add", "ann", "--role", "annotator", "--password-stdin"],
                       input="a-good-password\n", env=cli_env)
    assert ok.exit_code == 0 and ok.output.strip() == "user ann created with role annotator"
    dup = runner.invoke(app, ["user", "add", "ann", "--role", "annotator", "--password-stdin"],
                        input="a-good-password\n", env=cli_env)
    assert dup.exit_code == 1 and "error: user 'ann' already exists" in dup.output
    role = runner.invoke(app, ["user", "add", "bob", "--role", "boss", "--password-stdin"], input="x" * 9, env=cli_env)
    assert role.exit_code == 1 and "error: unknown role 'boss'; choose one of: viewer, annotator, admin" in role.output
    nostdin = runner.invoke(app, ["user", "add", "bob", "--role", "viewer"], env=cli_env)
    assert nostdin.exit_code == 1 and "error: pass --password-stdin and pipe the password in" in nostdin.output
    token = runner.invoke(app, ["token", "create", "ann"], env=cli_env)
    assert token.exit_code == 0 and token.output.strip().startswith("pdb_")
    ghost = runner.invoke(app, ["token", "create", "ghost"], env=cli_env)
    assert ghost.exit_code == 1 and "error: no user named 'ghost'" in ghost.output
    sim = runner.invoke(app, ["simulate-labeling", "--page-size", "20", "--json", "--model", "test-model"], env=cli_env)
    assert sim.exit_code == 0, sim.output
    body = json.loads(sim.stdout[sim.stdout.index("{"):])
    assert {"images", "actions", "images_per_action", "simulated_hours"} <= set(body) and body["images"] == 36
    wide = {**cli_env, "COLUMNS": "200"}
    bad = runner.invoke(app, ["simulate-labeling", "--page-size", "0"], env=wide)
    assert bad.exit_code == 2 and "Invalid value for '--page-size': Input should be greater than or equal to 1" in bad.output
    port = runner.invoke(app, ["serve", "--port", "0"], env=wide)
    assert port.exit_code == 2 and "Invalid value for '--port' (env var: 'PLANKTON_WEB_PORT'): Input should be" in port.output
