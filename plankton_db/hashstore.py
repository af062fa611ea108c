"""Hash projections and codes in the database: learning one, storing its planes, coding every embedding.

After a build, the `hash_codes_refresh` trigger (migration 0003) codes every new embedding of the model
in SQL with the same planes, so the worker and `plankton embed` need not know about hashing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db import hashing
from plankton_db.errors import InvalidArgument
from plankton_db.pg import raw_connection

CHUNK = 5_000


@dataclass(frozen=True)
class ProjectionRow:
    """A stored projection."""

    id: int
    model_id: int
    method: str
    bits: int
    bucket_bits: int
    fingerprint: str
    params: dict
    codes: int


_SELECT = """
    SELECT p.id, p.model_id, p.method, p.bits, p.bucket_bits, p.fingerprint, p.params,
           (SELECT count(*) FROM hash_codes c WHERE c.projection_id = p.id) AS codes
      FROM hash_projections p
"""


def list_projections(session: Session, model_id: int | None = None) -> list[ProjectionRow]:
    """Every stored projection (of one model, when given), oldest first."""
    where = "" if model_id is None else " WHERE p.model_id = :m"
    rows = session.execute(sa.text(_SELECT + where + " ORDER BY p.id"), {"m": model_id})
    return [ProjectionRow(*r) for r in rows]


def find_projection(session: Session, model_id: int, bits: int | None = None,
                    method: str | None = None) -> ProjectionRow:
    """The projection with these bits and method (by default the newest one of the model)."""
    if bits is not None:
        hashing.check_bits(bits)
    if method is not None:
        hashing.check_method(method)
    rows = [p for p in list_projections(session, model_id)
            if (bits is None or p.bits == bits) and (method is None or p.method == method)]
    if not rows:
        what = " ".join(x for x in (f"{bits}-bit" if bits else "", method or "") if x) or "hash"
        hint = f" --bits {bits or 256}" + (f" --method {method}" if method else "")
        raise InvalidArgument(f"no {what} codes for this model: run `plankton hash build{hint}` first")
    return rows[-1]


def load_projection(session: Session, row: ProjectionRow) -> hashing.Projection:
    """The numpy projection (planes, thresholds, mean) of a stored row."""
    conn = raw_connection(session)
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT bit, plane, threshold FROM hash_planes WHERE projection_id = %s ORDER BY bit", (row.id,))
        planes = cur.fetchall()
        cur.execute("SELECT mean FROM hash_projections WHERE id = %s", (row.id,))
        mean = cur.fetchone()[0].to_numpy()
    return hashing.Projection(
        method=row.method,
        mean=mean.astype(np.float32),
        planes=np.stack([p[1].to_numpy() for p in planes]).astype(np.float32),
        thresholds=np.array([p[2] for p in planes], dtype=np.float32),
        bucket_bits=row.bucket_bits,
        params=row.params,
    )


def _sample(session: Session, model_id: int, size: int, seed: int) -> tuple[np.ndarray, int]:
    conn = raw_connection(session)
    ids = np.array([r[0] for r in conn.execute(
        "SELECT image_id FROM embeddings WHERE model_id = %s ORDER BY image_id", (model_id,))], dtype=np.int64)
    if len(ids) == 0:
        raise InvalidArgument("this model has no embeddings yet: run `plankton embed` first")
    chosen = ids if len(ids) <= size else np.sort(np.random.default_rng(seed).choice(ids, size, replace=False))
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT embedding FROM embeddings WHERE model_id = %s AND image_id = ANY(%s)",
                    (model_id, chosen.tolist()))
        x = np.stack([r[0].to_numpy() for r in cur])
    return x, len(ids)


def _bit_text(bits: np.ndarray) -> list[str]:
    # '0'/'1' characters straight from the boolean matrix, without a Python loop per bit.
    chars = (bits.astype(np.uint8) + ord("0")).view(f"S{bits.shape[1]}")
    return [c.decode() for c in chars.ravel()]


def build_hash_codes(
    session: Session,
    model_id: int,
    bits: int,
    method: str,
    *,
    bucket_bits: int | None = None,
    seed: int = 0,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ProjectionRow:
    """Learn a projection from (a sample of) the model's embeddings, store it, and code every embedding."""
    hashing.check_bits(bits)
    hashing.check_method(method)
    # Writers of embeddings wait until this commits; otherwise a vector inserted while we stream would be
    # missed by us and, not yet seeing our projection, by the trigger too.
    session.execute(sa.text("LOCK TABLE embeddings IN SHARE MODE"))
    x, total = _sample(session, model_id, hashing.ITQ_SAMPLE, seed)
    b = bucket_bits if bucket_bits is not None else hashing.default_bucket_bits(total)
    proj = hashing.learn(method, x, bits, seed=seed, bucket_bits=min(b, bits))
    del x
    for old in list_projections(session, model_id):
        if (old.method, old.bits) == (method, bits):
            drop_projection(session, old.id)

    conn = raw_connection(session)
    pid = conn.execute(
        "INSERT INTO hash_projections (model_id, method, bits, bucket_bits, mean, fingerprint, params) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) RETURNING id",
        (model_id, method, bits, proj.bucket_bits, proj.mean, proj.fingerprint(),
         json.dumps(proj.params)),
    ).fetchone()[0]
    with conn.cursor() as cur:
        with cur.copy("COPY hash_planes (projection_id, bit, plane, threshold) FROM STDIN WITH (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "int4", "vector", "float8"])
            for j in range(bits):
                cp.write_row((pid, j, proj.planes[j], float(proj.thresholds[j])))
    if on_total:
        on_total(total)
    _code_all(session, pid, model_id, proj, on_progress)
    session.execute(sa.text("ANALYZE hash_codes"))
    return next(p for p in list_projections(session, model_id) if p.id == pid)


def _code_all(session: Session, pid: int, model_id: int, proj: hashing.Projection,
              on_progress: Callable[[int], None] | None) -> None:
    conn = raw_connection(session)
    # A named (server-side) cursor streams the vectors. A COPY cannot be open while it fetches, so each
    # chunk gets its own short COPY.
    with conn.cursor(name="hash_codes_source", binary=True) as src, conn.cursor() as dst:
        src.itersize = CHUNK
        src.execute("SELECT image_id, embedding FROM embeddings WHERE model_id = %s ORDER BY image_id", (model_id,))
        while rows := src.fetchmany(CHUNK):
            bits = proj.bits_of(np.stack([r[1].to_numpy() for r in rows]))
            keys = hashing.bucket_key(bits, proj.bucket_bits)
            text = "".join(f"{pid}\t{r[0]}\t{code}\t{key}\n"
                           for r, code, key in zip(rows, _bit_text(bits), keys, strict=True))
            with dst.copy("COPY hash_codes (projection_id, image_id, code, bucket) FROM STDIN") as cp:
                cp.write(text.encode())
            if on_progress:
                on_progress(len(rows))


def drop_projection(session: Session, projection_id: int) -> None:
    """Delete a projection, its codes, and the Hamming indexes built on them."""
    from plankton_db.indexes import list_indexes

    for ix in list_indexes(session):
        if ix.projection_id == projection_id:
            session.execute(sa.text(f'DROP INDEX IF EXISTS "{ix.name}"'))
    session.execute(sa.text("DELETE FROM hash_projections WHERE id = :p"), {"p": projection_id})
