"""The worker's main loop: take decoded batches, run the model with no transaction open, write results.

Database work per batch is two short transactions: renewing the lease (which also tells us whether
the batch is still ours) and finishing it (binary COPY plus one statement). Everything else, the
claiming and decoding included, happens in DataLoader processes ahead of the model.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
import torch

from plankton_db import queue
from plankton_db.db import Database
from plankton_db.embed import load_encoder
from plankton_db.errors import InvalidArgument, PlanktonError
from plankton_db.store import ContentStore
from worker.source import Batch, ClaimedBatches, make_loader, with_reconnect

log = logging.getLogger("worker")

# After this many whole batches fail in a row the fault is the worker's (driver, model), not the images.
MAX_BATCH_FAILURES_IN_A_ROW = 3


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker process runs; every field has a command-line option."""

    model: str | None = None
    # Local weights for a timm architecture (as for `plankton embed --checkpoint`).
    checkpoint: str | None = None
    device: str = "auto"
    batch_size: int = 64
    exit_when_empty: bool = False
    # Decoding processes; None picks 1 on CPU (the model needs the cores) and up to 8 on CUDA.
    loader_workers: int | None = None
    lease_seconds: float = queue.DEFAULT_LEASE_SECONDS
    max_attempts: int = queue.DEFAULT_MAX_ATTEMPTS
    reconnect_timeout: float = 300.0
    log_every_s: float = 30.0
    name: str | None = None

    def check(self) -> None:
        """InvalidArgument with an exact message for any value out of range."""
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 4096:
            raise InvalidArgument(f"batch size must be an integer from 1 to 4096, got {self.batch_size!r}")
        if self.loader_workers is not None and not 0 <= self.loader_workers <= 64:
            raise InvalidArgument(f"loader workers must be from 0 to 64, got {self.loader_workers!r}")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidArgument(f"max attempts must be an integer of at least 1, got {self.max_attempts!r}")
        queue.check_positive("lease seconds", self.lease_seconds)
        queue.check_positive("reconnect timeout", self.reconnect_timeout)


@dataclass
class WorkerStats:
    """What a worker did, with where its time went."""

    model: str = ""
    device: str = ""
    embedded: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0
    released: int = 0
    batches: int = 0
    seconds: float = 0.0
    model_s: float = 0.0
    db_s: float = 0.0
    batch_times: list[float] = field(default_factory=list)
    db_times: list[float] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Embedded images over wall time since the first batch arrived."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


class Worker:
    """One worker process: an encoder, a stream of claimed batches, and a stop flag for SIGTERM."""

    def __init__(self, db: Database, config: WorkerConfig) -> None:
        config.check()
        self.db, self.config = db, config
        self.name = config.name or f"{socket.gethostname()}:{os.getpid()}"
        import multiprocessing as mp

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self._stop_event = ctx.Event()
        self.stats = WorkerStats()
        self._chunk = config.batch_size

    def request_stop(self) -> None:
        """Finish the batch in hand, give back the ones prefetched, then return from run()."""
        if not self._stop_event.is_set():
            log.warning("stop requested: finishing the current batch, then exiting")
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop_event.is_set()

    def _retry(self, fn: Callable, what: str):
        return with_reconnect(fn, give_up_after=self.config.reconnect_timeout, what=what)

    def run(self) -> WorkerStats:
        """Drain the queue for one model until stopped (or, with exit_when_empty, until nothing is left)."""
        cfg = self.config

        def prepare():
            with self.db.Session.begin() as s:
                encoder, row = load_encoder(s, cfg.model, checkpoint=cfg.checkpoint, device=cfg.device,
                                            store=ContentStore(self.db.settings.store))
                queue.subscribe(s, row.id)
                added = queue.enqueue(s, row.id, retry_failed=False)
            return encoder, row, added

        try:
            self.encoder, row, added = self._retry(prepare, "start-up")
        except sa.exc.IntegrityError:
            # Two workers registering a new model at the same moment: the other one won, so reuse its row.
            self.encoder, row, added = self._retry(prepare, "start-up")
        device = self.encoder.device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
        self.stats.model, self.stats.device = row.name, str(device)
        workers = cfg.loader_workers if cfg.loader_workers is not None else (
            1 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1)))
        log.info("worker %s: model %s (%d dims) on %s, batch %d, %d loader processes; %d images newly queued",
                 self.name, row.name, row.dim, device, cfg.batch_size, workers, added)
        dataset = ClaimedBatches(
            url=self.db.url, store_dir=str(self.db.settings.store), model_id=row.id,
            preprocess=self.encoder.spec.preprocess, batch_size=cfg.batch_size, worker_name=self.name,
            lease_seconds=cfg.lease_seconds, max_attempts=cfg.max_attempts, exit_when_empty=cfg.exit_when_empty,
            reconnect_timeout=cfg.reconnect_timeout, stop=self._stop_event,
        )
        loader = make_loader(dataset, workers=workers, pin_memory=device.type == "cuda")
        self._consume(iter(loader))
        log.info("worker %s stopped: %d embedded, %d failed, %d retried, %d lost to expired leases, %d given back",
                 self.name, self.stats.embedded, self.stats.failed, self.stats.retried, self.stats.lost,
                 self.stats.released)
        return self.stats

    def _consume(self, batches: Iterator[Batch]) -> None:
        start: float | None = None
        window = (time.perf_counter(), 0)
        failures_in_a_row = 0
        try:
            for batch in batches:
                if self.stopping:
                    self.stats.released += self._retry(lambda b=batch: self._release(b), "release") or 0
                    continue
                start = start or time.perf_counter()
                ok = self._process(batch)
                failures_in_a_row = 0 if ok else failures_in_a_row + 1
                if failures_in_a_row >= MAX_BATCH_FAILURES_IN_A_ROW:
                    raise PlanktonError(f"the model failed on {failures_in_a_row} batches in a row; stopping "
                                        "(see the log for the error)")
                self.stats.seconds = time.perf_counter() - start
                window = self._maybe_log(window)
        except BaseException:
            # Stop the loader processes from claiming more and hand back what they already hold.
            self._stop_event.set()
            for batch in batches:
                try:
                    self.stats.released += self._release(batch)
                except Exception:  # noqa: BLE001 - the leases expire anyway; the first error matters more
                    break
            raise

    def _release(self, batch: Batch) -> int:
        with self.db.Session.begin() as s:
            return queue.release(s, batch.claim)

    def _process(self, batch: Batch) -> bool:
        """Embed and finish one batch; False when the model failed on it as a whole."""
        cfg, t0 = self.config, time.perf_counter()

        def renew() -> int:
            with self.db.Session.begin() as s:
                return queue.renew(s, batch.claim, cfg.lease_seconds)

        # Prefetched batches may have waited; if the lease ran out meanwhile, another worker owns them now.
        if self._retry(renew, "lease renewal") == 0:
            self.stats.lost += len(batch.claim.jobs)
            return True
        t1 = time.perf_counter()
        try:
            vectors = self._encode(batch.tensor) if batch.image_ids else np.zeros((0, 0), np.float32)
        except Exception as exc:  # noqa: BLE001 - recorded on every job of the batch, which is retried
            log.exception("model failed on a batch of %d", len(batch.image_ids))
            error = f"{type(exc).__name__}: {exc}"

            def fail():
                with self.db.Session.begin() as s:
                    return queue.fail_claim(s, batch.claim, error, max_attempts=cfg.max_attempts)

            self._count(self._retry(fail, "recording a failed batch"))
            return False
        t2 = time.perf_counter()

        def finish():
            with self.db.Session.begin() as s:
                return queue.finish(s, batch.claim, batch.image_ids, vectors, batch.failures,
                                    max_attempts=cfg.max_attempts)

        outcome = self._retry(finish, "writing results")
        t3 = time.perf_counter()
        self._count(outcome)
        for image_id, error in batch.failures:
            log.warning("image %d failed: %s", image_id, error)
        self.stats.batches += 1
        self.stats.model_s += t2 - t1
        self.stats.db_s += (t1 - t0) + (t3 - t2)
        self.stats.batch_times.append(t3 - t0)
        self.stats.db_times.append((t1 - t0) + (t3 - t2))
        return True

    def _count(self, outcome: queue.Outcome | None) -> None:
        if outcome is None:
            return
        self.stats.embedded += outcome.done
        self.stats.failed += outcome.failed
        self.stats.retried += outcome.retried
        self.stats.lost += outcome.lost
        self.stats.released += outcome.released

    def _encode(self, tensor: torch.Tensor) -> np.ndarray:
        """Run the model in chunks; on out-of-memory halve the chunk (for the rest of the run) and go on."""
        parts, i = [], 0
        while i < len(tensor):
            n = min(self._chunk, len(tensor) - i)
            try:
                parts.append(self.encoder.encode_tensors(tensor[i : i + n]))
                i += n
            except torch.OutOfMemoryError:
                if n == 1:
                    raise
                self._chunk = max(1, (n + 1) // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("out of GPU memory on a batch of %d images; continuing with batches of %d", n, self._chunk)
        return np.concatenate(parts)

    def _maybe_log(self, window: tuple[float, int]) -> tuple[float, int]:
        started, done_before = window
        now = time.perf_counter()
        if now - started < self.config.log_every_s:
            return window
        done = self.stats.embedded - done_before
        total = sum(self.stats.batch_times) or 1.0
        log.info("%s: %d images in %.1f s = %.1f images/s (model %.0f%%, database %.1f%% of batch time); "
                 "%d embedded, %d failed so far", self.stats.model, done, now - started, done / (now - started),
                 100 * self.stats.model_s / total, 100 * self.stats.db_s / total, self.stats.embedded,
                 self.stats.failed)
        return now, self.stats.embedded


@contextmanager
def stop_on_signals(worker: Worker) -> Iterator[None]:
    """SIGTERM (and Ctrl-C) ask the worker to finish its batch and exit; a second Ctrl-C is not needed."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: worker.request_stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
