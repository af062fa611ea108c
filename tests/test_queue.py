"""The job queue on a real server: claims never overlap, leases expire, failures retry then stop, counts add up."""

from __future__ import annotations

import time

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from plankton_db import queue
from plankton_db.errors import InvalidArgument
from plankton_db.models import EmbeddingModel

DIM = 4


def _images(s, n: int) -> list[int]:
    return list(
        s.execute(
            sa.text(
                "INSERT INTO images (sha256, original_name, original_path, width, height, format, mode, n_bytes) "
                "SELECT lpad(to_hex(g), 64, '0'), 'x.png', '/x.png', 10, 10, 'PNG', 'L', 1 "
                "FROM generate_series(1, :n) g RETURNING id"
            ),
            {"n": n},
        ).scalars()
    )


def _model(s, name: str = "m") -> int:
    row = EmbeddingModel(name=name, arch="test", weights_sha256="0" * 64, dim=DIM, preprocess={})
    s.add(row)
    s.flush()
    return row.id


def _statuses(db, model_id: int) -> dict[str, int]:
    with db.engine.connect() as c:
        rows = c.execute(sa.text("SELECT status, count(*) FROM embedding_jobs WHERE model_id = :m GROUP BY status"),
                         {"m": model_id})
        return dict(rows.all())


@pytest.fixture
def queued(db):
    """A model with 10 images queued."""
    with db.Session.begin() as s:
        ids = _images(s, 10)
        mid = _model(s)
        assert queue.enqueue(s, mid) == 10
    return mid, ids


def test_concurrent_claims_never_overlap_and_finish_writes_once(db, queued) -> None:
    mid, ids = queued
    # Two open transactions claim at once; SKIP LOCKED gives the second the rows the first did not lock.
    with db.Session.begin() as s1, db.Session.begin() as s2:
        c1 = queue.claim(s1, mid, limit=6, worker="a")
        c2 = queue.claim(s2, mid, limit=6, worker="b")
    got1, got2 = {j.image_id for j in c1.jobs}, {j.image_id for j in c2.jobs}
    assert len(got1) == 6 and len(got2) == 4 and not got1 & got2 and got1 | got2 == set(ids)
    assert all(j.attempt == 1 for j in c1.jobs + c2.jobs)
    for c in (c1, c2):
        with db.Session.begin() as s:
            out = queue.finish(s, c, [j.image_id for j in c.jobs], np.ones((len(c.jobs), DIM), np.float32))
        assert (out.done, out.lost, out.released) == (len(c.jobs), 0, 0)
    assert _statuses(db, mid) == {"done": 10}
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM embeddings WHERE model_id = :m"), {"m": mid}).scalar() == 10
    with db.Session.begin() as s:
        assert queue.claim(s, mid, limit=5, worker="a").jobs == ()


def test_expired_lease_returns_jobs_and_the_old_owner_writes_nothing(db, queued) -> None:
    mid, _ = queued
    with db.Session.begin() as s:
        stale = queue.claim(s, mid, limit=3, worker="dead", lease_seconds=0.05)
    time.sleep(0.2)
    with db.Session.begin() as s:
        fresh = queue.claim(s, mid, limit=3, worker="alive")
    assert [j.image_id for j in fresh.jobs] == [j.image_id for j in stale.jobs]
    assert all(j.attempt == 2 for j in fresh.jobs)
    with db.Session.begin() as s:
        late = queue.finish(s, stale, [j.image_id for j in stale.jobs], np.zeros((3, DIM), np.float32))
        assert queue.renew(s, stale) == 0
    assert (late.done, late.lost) == (0, 3)
    with db.Session.begin() as s:
        assert queue.finish(s, fresh, [j.image_id for j in fresh.jobs], np.ones((3, DIM), np.float32)).done == 3
    with db.engine.connect() as conn:
        vec = conn.execute(sa.text("SELECT embedding::text FROM embeddings LIMIT 1")).scalar()
    assert vec == "[1,1,1,1]"  # the live worker's vectors, not the dead one's


def test_failed_image_is_retried_then_marked_failed_with_its_error(db, queued) -> None:
    mid, ids = queued
    bad = ids[0]
    for attempt in (1, 2):
        with db.Session.begin() as s:
            c = queue.claim(s, mid, limit=10, worker="w", max_attempts=2)
            good = [j.image_id for j in c.jobs if j.image_id != bad]
            out = queue.finish(s, c, good[:2], np.ones((2, DIM), np.float32), [(bad, "ImageRejected: truncated")],
                               max_attempts=2)
        # The rest of the claim (neither embedded nor failed) goes back without using up an attempt.
        assert (out.retried, out.failed, out.released) == ((1, 0, 7) if attempt == 1 else (0, 1, 5))
    with db.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, attempts, last_error FROM embedding_jobs WHERE image_id = :i"),
                           {"i": bad}).one()
        untouched = conn.execute(sa.text("SELECT max(attempts) FROM embedding_jobs WHERE status = 'pending'")).scalar()
    assert tuple(row) == ("failed", 2, "ImageRejected: truncated")
    assert untouched == 0
    with db.Session.begin() as s:
        st = queue.queue_status(s).to_json()
    assert {k: st[k] for k in ("images", "pending", "running", "done", "failed")} == {
        "images": 10, "pending": 5, "running": 0, "done": 4, "failed": 1}
    assert st["models"][0]["errors"] == [{"image_id": bad, "error": "ImageRejected: truncated"}]
    assert st["models"][0]["rate_per_s"] > 0 and st["models"][0]["eta_s"] > 0
    # Asking again (`plankton embed --enqueue`) revives the failed job; a restarting worker does not.
    with db.Session.begin() as s:
        assert queue.enqueue(s, mid, retry_failed=False) == 0
        assert queue.enqueue(s, mid) == 1
    assert _statuses(db, mid) == {"pending": 6, "done": 4}


def test_expired_lease_out_of_attempts_is_failed(db, queued) -> None:
    mid, _ = queued
    with db.Session.begin() as s:
        queue.claim(s, mid, limit=1, worker="crashy", lease_seconds=0.05)
    time.sleep(0.2)
    with db.Session.begin() as s:
        assert queue.reap_expired(s, max_attempts=1) == 1
    with db.engine.connect() as conn:
        err = conn.execute(sa.text("SELECT last_error FROM embedding_jobs WHERE status = 'failed'")).scalar_one()
    assert err == "lease expired (worker crashy stopped or stalled)"


def test_ingest_enqueues_only_for_subscribed_models_in_its_transaction(db, image_folder) -> None:
    from plankton_db.ingest import ingest_paths

    with db.Session.begin() as s:
        served, idle = _model(s, "served"), _model(s, "idle")
        queue.subscribe(s, served)
    listener = psycopg.connect(db.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    listener.execute(f"LISTEN {queue.CHANNEL}")
    summary = ingest_paths(db.Session, db.settings, [image_folder])
    notes = list(listener.notifies(timeout=2, stop_after=1))
    listener.close()
    assert summary.added == 30
    assert _statuses(db, served) == {"pending": 30}
    assert _statuses(db, idle) == {}
    assert [n.channel for n in notes] == [queue.CHANNEL]


def test_release_gives_jobs_back_untried(db, queued) -> None:
    mid, _ = queued
    with db.Session.begin() as s:
        c = queue.claim(s, mid, limit=4, worker="w")
    with db.Session.begin() as s:
        assert queue.release(s, c) == 4
    assert _statuses(db, mid) == {"pending": 10}
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT max(attempts) FROM embedding_jobs")).scalar() == 0


def test_bad_arguments_are_refused_with_exact_messages(db, queued) -> None:
    mid, _ = queued
    with db.Session.begin() as s:
        with pytest.raises(InvalidArgument, match=r"^limit must be positive, got 0$"):
            queue.claim(s, mid, limit=0, worker="w")
        with pytest.raises(InvalidArgument, match=r"^lease_seconds must be positive, got -1$"):
            queue.claim(s, mid, limit=1, worker="w", lease_seconds=-1)
        c = queue.claim(s, mid, limit=2, worker="w")
        with pytest.raises(InvalidArgument, match=r"^2 image ids but 1 vectors$"):
            queue.finish(s, c, [j.image_id for j in c.jobs], np.ones((1, DIM), np.float32))


def test_embed_enqueue_queues_missing_images_and_serves_the_model(cli_env, image_folder) -> None:
    from typer.testing import CliRunner

    from plankton_db.cli import app

    run = CliRunner()
    assert run.invoke(app, ["ingest", str(image_folder)], env=cli_env).exit_code == 0
    r = run.invoke(app, ["embed", "--enqueue", "--device", "cpu"], env=cli_env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.strip() == (
        "30 images queued for tf_efficientnet_lite0; run `plankton worker --model tf_efficientnet_lite0` to embed them"
    )
    again = run.invoke(app, ["embed", "--enqueue", "--device", "cpu"], env=cli_env, catch_exceptions=False)
    assert again.output.startswith("0 images queued")
    bad = run.invoke(app, ["embed", "--enqueue", "--model", "no_such_net"], env=cli_env, catch_exceptions=False)
    assert bad.exit_code == 1
    assert bad.output.strip() == (
        "error: unknown model 'no_such_net': not a timm architecture (try tf_efficientnet_lite0 or resnet50)"
    )
