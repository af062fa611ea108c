"""Claimed batches as a stream: DataLoader processes claim jobs, decode and preprocess while the model runs.

Each loader process has its own database connections (nothing crosses a fork), claims a batch in
one short transaction, reads and preprocesses its images, and yields the batch. With nothing to
claim it waits on LISTEN for new work, so an idle worker costs the database nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
import torch
from sqlalchemy.orm import sessionmaker

from plankton_db import queue
from plankton_db.embedding import Preprocess
from plankton_db.errors import DatabaseUnavailable
from plankton_db.store import ContentStore

log = logging.getLogger("worker")
T = TypeVar("T")

# An idle worker re-checks the queue at least this often even without a notification, as a safety
# net for notifications lost while the listening connection was down.
IDLE_RECHECK_S = 60.0
# How often a waiting process looks at its stop flag; this is not a database query.
STOP_CHECK_S = 0.5


@dataclass(frozen=True)
class Batch:
    """A claim plus its decoded images: the tensor rows line up with `image_ids`."""

    claim: queue.Claim
    image_ids: list[int]
    tensor: torch.Tensor
    failures: list[tuple[int, str]]
    load_s: float

    def pin_memory(self) -> Batch:
        """The DataLoader's pinning thread calls this, so host-to-GPU copies can run asynchronously."""
        return dataclasses.replace(self, tensor=self.tensor.pin_memory()) if self.tensor.numel() else self


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def is_connection_error(exc: BaseException) -> bool:
    """Whether the exception means the server went away (worth reconnecting), not a bad query."""
    if isinstance(exc, sa.exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, sa.exc.OperationalError) or isinstance(
            exc.orig, psycopg.OperationalError
        )
    return isinstance(exc, (psycopg.OperationalError, sa.exc.InterfaceError))


def with_reconnect(fn: Callable[[], T], *, give_up_after: float, should_stop: Callable[[], bool] | None = None,
                   what: str = "database call") -> T | None:
    """Run fn, retrying with capped exponential backoff while the connection is down; None if told to stop."""
    deadline = time.monotonic() + give_up_after
    delay = 0.25
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - filtered just below; anything else is re-raised
            if not is_connection_error(exc):
                raise
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(
                    f"database unreachable for {give_up_after:.0f} s during {what}: {reason}"
                ) from exc
            log.warning("database connection lost during %s (%s); retrying in %.1f s", what, reason, delay)
            end = time.monotonic() + delay
            while time.monotonic() < end:
                if should_stop is not None and should_stop():
                    return None
                time.sleep(min(STOP_CHECK_S, max(0.0, end - time.monotonic())))
            # Jitter spreads many workers' reconnects after a server restart.
            delay = min(delay * 2, 10.0) * random.uniform(0.8, 1.2)


class Listener:
    """A LISTEN connection on the queue's channel; opened before claiming so no notification slips by."""

    def __init__(self, url: str) -> None:
        self.url = _libpq_url(url)
        self.conn: psycopg.Connection | None = None

    def open(self) -> None:
        """Connect and LISTEN (no-op when already listening)."""
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.url, autocommit=True)
            self.conn.execute(f"LISTEN {queue.CHANNEL}")

    def wait(self, timeout: float, should_stop: Callable[[], bool]) -> bool:
        """Block until a notification, the timeout, or a stop request; True when notified."""
        end = time.monotonic() + timeout
        try:
            self.open()
            assert self.conn is not None
            while (left := end - time.monotonic()) > 0 and not should_stop():
                for _ in self.conn.notifies(timeout=min(STOP_CHECK_S, left), stop_after=1):
                    return True
            return False
        except psycopg.OperationalError as exc:
            # The caller's next claim goes through the reconnecting path; here we just start over.
            log.warning("listening connection lost (%s); reconnecting", str(exc).strip().splitlines()[0])
            self.close()
            return True

    def close(self) -> None:
        """Drop the connection."""
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def load_images(store: ContentStore, jobs: tuple[queue.Job, ...], preprocess: Preprocess):
    """Decode and preprocess each job's image; any error on one image is recorded, never raised."""
    ids, tensors, failures = [], [], []
    for job in jobs:
        try:
            tensors.append(preprocess(store.read_image(job.sha256)))
            ids.append(job.image_id)
        except Exception as exc:  # noqa: BLE001 - a poisoned image must fail alone, whatever the cause
            failures.append((job.image_id, f"{type(exc).__name__}: {exc}"))
    return ids, (torch.stack(tensors) if tensors else torch.empty(0)), failures


class ClaimedBatches(torch.utils.data.IterableDataset):
    """Batches claimed from the queue; each DataLoader process claims its own, so none is shared."""

    def __init__(self, *, url: str, store_dir: str, model_id: int, preprocess: Preprocess, batch_size: int,
                 worker_name: str, lease_seconds: float, max_attempts: int, exit_when_empty: bool,
                 reconnect_timeout: float, stop: Any) -> None:
        super().__init__()
        self.url, self.store_dir, self.model_id, self.preprocess = url, store_dir, model_id, preprocess
        self.batch_size, self.worker_name = batch_size, worker_name
        self.lease_seconds, self.max_attempts = lease_seconds, max_attempts
        self.exit_when_empty, self.reconnect_timeout = exit_when_empty, reconnect_timeout
        # A multiprocessing Event shared with the main process: set on SIGTERM.
        self.stop = stop

    def __iter__(self) -> Iterator[Batch]:
        parent = os.getppid()
        in_child = torch.utils.data.get_worker_info() is not None

        def should_stop() -> bool:
            # A loader process whose main process was killed must not linger holding claims.
            return self.stop.is_set() or (in_child and os.getppid() != parent)

        engine = sa.create_engine(self.url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        Session = sessionmaker(engine)
        store = ContentStore(self.store_dir)
        listener = Listener(self.url)
        try:
            with_reconnect(listener.open, give_up_after=self.reconnect_timeout, should_stop=should_stop, what="LISTEN")
            while not should_stop():
                claim = with_reconnect(lambda: self._claim(Session), give_up_after=self.reconnect_timeout,
                                       should_stop=should_stop, what="claim")
                if claim is None:
                    break
                if claim.jobs:
                    start = time.perf_counter()
                    ids, tensor, failures = load_images(store, claim.jobs, self.preprocess)
                    yield Batch(claim, ids, tensor, failures, time.perf_counter() - start)
                    continue
                state = with_reconnect(lambda: self._idle_state(Session), give_up_after=self.reconnect_timeout,
                                       should_stop=should_stop, what="queue check")
                if state is None:
                    break
                open_jobs, next_deadline = state
                if self.exit_when_empty and not open_jobs:
                    break
                # Sleep until told about new work, or until the earliest lease can expire and be reaped.
                wait = IDLE_RECHECK_S if next_deadline is None else min(IDLE_RECHECK_S, next_deadline + 0.05)
                listener.wait(wait, should_stop)
        finally:
            listener.close()
            engine.dispose()

    def _claim(self, Session: sessionmaker) -> queue.Claim:
        with Session.begin() as s:
            return queue.claim(s, self.model_id, limit=self.batch_size, worker=self.worker_name,
                               lease_seconds=self.lease_seconds, max_attempts=self.max_attempts)

    def _idle_state(self, Session: sessionmaker) -> tuple[bool, float | None]:
        with Session.begin() as s:
            return queue.idle_state(s, self.model_id)


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker_init_fn: only the main process decides when to stop, and tells us through an Event."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: ClaimedBatches, *, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """A DataLoader over claimed batches; batch_size=None because each item already is a batch."""
    import multiprocessing as mp

    kwargs: dict[str, Any] = {}
    if workers:
        # fork starts in milliseconds and shares the already-imported torch; only the Event crosses over.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        kwargs = dict(multiprocessing_context=method, prefetch_factor=2, worker_init_fn=ignore_stop_signals)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       collate_fn=_identity, **kwargs)


def _identity(batch: Batch) -> Batch:
    # The default collate would try to convert the dataclass; pinning still reaches the tensor below.
    return batch
