"""The embedding job queue: enqueue, claim under a lease, finish, retry, reap expired leases, and count.

Every function takes a session and never commits; the worker keeps each transaction short and
never holds one open while the model runs. Ownership of a claimed job is its `lease_id`: a worker
whose lease expired (and was taken over) finds its rows gone and writes nothing, so no image is
embedded twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.errors import InvalidArgument
from plankton_db.pg import raw_connection

CHANNEL = "plankton_embedding_jobs"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_LEASE_SECONDS = 600.0
# The window `plankton status` measures its rate over.
RATE_WINDOW_SECONDS = 300
# Models with this params key set receive jobs for every newly ingested image.
ENQUEUE_ON_INGEST = "enqueue_on_ingest"


@dataclass(frozen=True)
class Job:
    """One claimed image: its id, where its bytes are, and which attempt this is."""

    image_id: int
    sha256: str
    attempt: int


@dataclass(frozen=True)
class Claim:
    """A batch of jobs held under one lease."""

    model_id: int
    lease_id: uuid.UUID
    jobs: tuple[Job, ...]


@dataclass
class Outcome:
    """What finishing (or releasing) a claim did."""

    done: int = 0
    retried: int = 0
    failed: int = 0
    # Jobs this lease no longer owned (it expired and another worker took them): nothing was written.
    lost: int = 0
    released: int = 0


@dataclass(frozen=True)
class ModelQueue:
    """Queue counts for one model, with its recent rate and the time left at that rate."""

    model_id: int
    name: str
    dim: int
    pending: int
    running: int
    done: int
    failed: int
    embedded: int
    rate_per_s: float
    eta_s: float | None
    errors: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class QueueStatus:
    """Counts over every model, plus each model's detail."""

    images: int
    models: list[ModelQueue]

    def to_json(self) -> dict:
        """The `plankton status --json` object."""
        total = {k: sum(getattr(m, k) for m in self.models) for k in ("pending", "running", "done", "failed")}
        return {"images": self.images, **total, "models": [m.__dict__ for m in self.models]}


def check_positive(name: str, value: float) -> None:
    """InvalidArgument unless `value` is a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgument(f"{name} must be positive, got {value!r}")


def subscribe(session: Session, model_id: int) -> None:
    """Make ingest enqueue new images for this model from now on."""
    session.execute(
        sa.text(
            "UPDATE embedding_models SET params = params || jsonb_build_object(CAST(:k AS text), true) "
            "WHERE id = :m"
        ),
        {"k": ENQUEUE_ON_INGEST, "m": model_id},
    )


def enqueue(
    session: Session, model_id: int, image_ids: Sequence[int] | None = None, *, retry_failed: bool = True
) -> int:
    """Queue images without an embedding (default: all of them); failed jobs start afresh if retry_failed."""
    where = "" if image_ids is None else "AND i.id = ANY(CAST(:ids AS bigint[]))"
    # A worker (re)starting must not revive poisoned images; a person asking to enqueue again does.
    conflict = (
        """DO UPDATE SET status = 'pending', attempts = 0, last_error = NULL, finished_at = NULL, worker = NULL
             WHERE j.status IN ('failed', 'done')"""
        if retry_failed
        else "DO NOTHING"
    )
    result = session.execute(
        sa.text(
            f"""
            INSERT INTO embedding_jobs AS j (model_id, image_id)
            SELECT :m, i.id FROM images i
             WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = :m AND e.image_id = i.id) {where}
            ON CONFLICT (model_id, image_id) {conflict}
            """
        ),
        {"m": model_id, "ids": list(image_ids or [])},
    )
    return result.rowcount


def enqueue_new_images(session: Session, image_ids: Sequence[int]) -> int:
    """Queue freshly ingested images for every model subscribed to ingest; called in ingest's transaction."""
    if not image_ids:
        return 0
    result = session.execute(
        sa.text(
            """
            INSERT INTO embedding_jobs (model_id, image_id)
            SELECT m.id, i FROM embedding_models m, unnest(CAST(:ids AS bigint[])) AS i
             WHERE (m.params ->> :k) = 'true'
            ON CONFLICT DO NOTHING
            """
        ),
        {"ids": list(image_ids), "k": ENQUEUE_ON_INGEST},
    )
    return result.rowcount


_REAP = sa.text(
    """
    WITH expired AS (
        SELECT model_id, image_id FROM embedding_jobs
         WHERE status = 'running' AND lease_expires_at < now()
           FOR UPDATE SKIP LOCKED)
    UPDATE embedding_jobs j
       SET status = CASE WHEN j.attempts >= :max THEN 'failed' ELSE 'pending' END,
           last_error = 'lease expired (worker ' || coalesce(j.worker, '?') || ' stopped or stalled)',
           finished_at = CASE WHEN j.attempts >= :max THEN now() END,
           lease_id = NULL, lease_expires_at = NULL
      FROM expired e
     WHERE j.model_id = e.model_id AND j.image_id = e.image_id
    """
)

# Jobs whose embedding already exists (written by `plankton embed`, say) are closed on the spot
# instead of being handed out again.
_CLAIM = sa.text(
    """
    WITH picked AS (
        SELECT model_id, image_id FROM embedding_jobs
         WHERE model_id = :m AND status = 'pending'
         ORDER BY image_id
         LIMIT :n
           FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE embedding_jobs j
           SET status = CASE WHEN e.image_id IS NULL THEN 'running' ELSE 'done' END,
               attempts = j.attempts + CASE WHEN e.image_id IS NULL THEN 1 ELSE 0 END,
               lease_id = CASE WHEN e.image_id IS NULL THEN CAST(:lease AS uuid) END,
               lease_expires_at = CASE WHEN e.image_id IS NULL THEN now() + make_interval(secs => :secs) END,
               finished_at = CASE WHEN e.image_id IS NULL THEN NULL ELSE now() END,
               worker = :worker
          FROM picked p
          LEFT JOIN embeddings e ON e.model_id = p.model_id AND e.image_id = p.image_id
         WHERE j.model_id = p.model_id AND j.image_id = p.image_id
        RETURNING j.image_id, j.status, j.attempts)
    SELECT c.image_id, i.sha256, c.attempts
      FROM claimed c JOIN images i ON i.id = c.image_id
     WHERE c.status = 'running'
     ORDER BY c.image_id
    """
)


def reap_expired(session: Session, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> int:
    """Return jobs whose lease ran out to the queue (or fail them when out of attempts)."""
    return session.execute(_REAP, {"max": max_attempts}).rowcount


def claim(
    session: Session,
    model_id: int,
    *,
    limit: int,
    worker: str,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Claim:
    """Take up to `limit` pending jobs under a new lease; rows other workers hold are skipped, not waited for."""
    check_positive("limit", limit)
    check_positive("lease_seconds", lease_seconds)
    reap_expired(session, max_attempts=max_attempts)
    lease = uuid.uuid4()
    rows = session.execute(
        _CLAIM, {"m": model_id, "n": int(limit), "lease": str(lease), "secs": float(lease_seconds), "worker": worker}
    ).all()
    return Claim(model_id, lease, tuple(Job(r[0], r[1], r[2]) for r in rows))


def renew(session: Session, claim: Claim, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> int:
    """Push the lease's deadline out; returns how many of its jobs it still owns."""
    return session.execute(
        sa.text(
            "UPDATE embedding_jobs SET lease_expires_at = now() + make_interval(secs => :secs) "
            "WHERE model_id = :m AND lease_id = :lease AND status = 'running'"
        ),
        {"m": claim.model_id, "lease": claim.lease_id, "secs": float(lease_seconds)},
    ).rowcount


def _copy_results(session: Session, image_ids: Sequence[int], vectors: np.ndarray) -> None:
    """Binary COPY the vectors into a per-session staging table, emptied at commit."""
    raw = raw_connection(session)
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS job_results (image_id bigint PRIMARY KEY, embedding vector) "
            "ON COMMIT DELETE ROWS"
        )
        with cur.copy("COPY job_results (image_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "vector"])
            for image_id, vec in zip(image_ids, vectors, strict=True):
                copy.write_row((int(image_id), vec))


_FINISH = sa.text(
    """
    WITH owned AS (
        UPDATE embedding_jobs j
           SET status = 'done', finished_at = now(), last_error = NULL, lease_id = NULL, lease_expires_at = NULL
          FROM job_results r
         WHERE j.model_id = :m AND j.image_id = r.image_id AND j.lease_id = :lease AND j.status = 'running'
        RETURNING j.image_id)
    , written AS (
        -- An embedding that already exists (from `plankton embed`) is equally valid and is kept.
        INSERT INTO embeddings (model_id, image_id, embedding)
        SELECT :m, r.image_id, r.embedding FROM job_results r JOIN owned o ON o.image_id = r.image_id
        ON CONFLICT (model_id, image_id) DO NOTHING
        RETURNING 1)
    SELECT (SELECT count(*) FROM owned), (SELECT count(*) FROM written)
    """
)

_FAIL = sa.text(
    """
    UPDATE embedding_jobs j
       SET status = CASE WHEN j.attempts >= :max THEN 'failed' ELSE 'pending' END,
           finished_at = CASE WHEN j.attempts >= :max THEN now() END,
           last_error = f.error, lease_id = NULL, lease_expires_at = NULL
      FROM unnest(CAST(:ids AS bigint[]), CAST(:errors AS text[])) AS f(image_id, error)
     WHERE j.model_id = :m AND j.image_id = f.image_id AND j.lease_id = :lease AND j.status = 'running'
    RETURNING j.status
    """
)

_RELEASE = sa.text(
    """
    UPDATE embedding_jobs
       SET status = 'pending', attempts = greatest(attempts - 1, 0), lease_id = NULL, lease_expires_at = NULL
     WHERE model_id = :m AND lease_id = :lease AND status = 'running'
    """
)


def finish(
    session: Session,
    claim: Claim,
    image_ids: Sequence[int],
    vectors: np.ndarray,
    failures: Sequence[tuple[int, str]] = (),
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Outcome:
    """Write the vectors and close their jobs, retry or fail the failures, and release anything left over."""
    if len(image_ids) != len(vectors):
        raise InvalidArgument(f"{len(image_ids)} image ids but {len(vectors)} vectors")
    out = Outcome()
    if len(image_ids):
        _copy_results(session, image_ids, np.asarray(vectors, dtype=np.float32))
        out.done, _ = session.execute(_FINISH, {"m": claim.model_id, "lease": claim.lease_id}).one()
    if failures:
        statuses = session.execute(
            _FAIL,
            {"m": claim.model_id, "lease": claim.lease_id, "max": max_attempts,
             "ids": [int(i) for i, _ in failures], "errors": [str(e)[:2000] for _, e in failures]},
        ).scalars().all()
        out.failed = sum(s == "failed" for s in statuses)
        out.retried = len(statuses) - out.failed
    # Anything the claim held that was neither embedded nor failed goes back untouched.
    out.released = session.execute(_RELEASE, {"m": claim.model_id, "lease": claim.lease_id}).rowcount
    out.lost = len(image_ids) + len(failures) - out.done - out.retried - out.failed
    if out.retried or out.released or out.done:
        # Wakes idle workers: retried jobs are claimable again, and `--exit-when-empty` waiters re-check.
        session.execute(sa.text("SELECT pg_notify(:c, 'finish')"), {"c": CHANNEL})
    return out


def fail_claim(session: Session, claim: Claim, error: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Outcome:
    """Count a failed attempt against every job the claim still holds (the batch as a whole failed)."""
    return finish(session, claim, [], np.zeros((0, 0), np.float32), [(j.image_id, error) for j in claim.jobs],
                  max_attempts=max_attempts)


def release(session: Session, claim: Claim) -> int:
    """Give the claim's jobs back untried (a worker shutting down); the attempt is not counted."""
    n = session.execute(_RELEASE, {"m": claim.model_id, "lease": claim.lease_id}).rowcount
    if n:
        session.execute(sa.text("SELECT pg_notify(:c, 'release')"), {"c": CHANNEL})
    return n


def idle_state(session: Session, model_id: int) -> tuple[bool, float | None]:
    """(whether the model has pending or running jobs, seconds until the earliest running lease expires)."""
    row = session.execute(
        sa.text(
            """
            SELECT EXISTS (SELECT 1 FROM embedding_jobs WHERE model_id = :m AND status IN ('pending', 'running')),
                   (SELECT extract(epoch FROM min(lease_expires_at) - now())
                      FROM embedding_jobs WHERE model_id = :m AND status = 'running')
            """
        ),
        {"m": model_id},
    ).one()
    return bool(row[0]), (max(0.0, float(row[1])) if row[1] is not None else None)


def queue_status(session: Session, *, model_id: int | None = None, errors: int = 5) -> QueueStatus:
    """Counts per model, each with its rate over the last minutes and the time left at that rate."""
    images = session.execute(sa.text("SELECT count(*) FROM images")).scalar_one()
    rows = session.execute(
        sa.text(
            """
            SELECT m.id, m.name, m.dim,
                   count(j.image_id) FILTER (WHERE j.status = 'pending'),
                   count(j.image_id) FILTER (WHERE j.status = 'running'),
                   count(j.image_id) FILTER (WHERE j.status = 'done'),
                   count(j.image_id) FILTER (WHERE j.status = 'failed'),
                   (SELECT count(*) FROM embeddings e WHERE e.model_id = m.id),
                   count(j.image_id)
                       FILTER (WHERE j.status = 'done' AND j.finished_at > now() - make_interval(secs => :w)),
                   extract(epoch FROM now() - min(j.finished_at)
                       FILTER (WHERE j.status = 'done' AND j.finished_at > now() - make_interval(secs => :w)))
              FROM embedding_models m
              LEFT JOIN embedding_jobs j ON j.model_id = m.id
             WHERE CAST(:only AS int) IS NULL OR m.id = CAST(:only AS int)
             GROUP BY m.id ORDER BY m.id
            """
        ),
        {"w": RATE_WINDOW_SECONDS, "only": model_id},
    ).all()
    models = []
    for mid, name, dim, pending, running, done, failed, embedded, recent, span in rows:
        # A worker that started a minute ago is judged over that minute, not the whole window.
        rate = recent / max(float(span or 0.0), 1.0) if recent else 0.0
        left = pending + running
        eta = (left / rate if rate > 0 else None) if left else 0.0
        errs = [
            {"image_id": i, "error": e}
            for i, e in session.execute(
                sa.text(
                    "SELECT image_id, last_error FROM embedding_jobs WHERE model_id = :m AND status = 'failed' "
                    "ORDER BY finished_at DESC NULLS LAST, image_id LIMIT :n"
                ),
                {"m": mid, "n": errors},
            )
        ] if failed and errors else []
        models.append(ModelQueue(mid, name, dim, pending, running, done, failed, embedded, round(rate, 3),
                                 None if eta is None else round(eta, 1), errs))
    return QueueStatus(images=images, models=models)
