"""ANN indexes per embedding model: build (with progress), list (with sizes) and drop.

Every model shares the dimensionless `embeddings.embedding` column, so an index is a partial expression
index: `((embedding::halfvec(1280)) halfvec_cosine_ops) WHERE model_id = 1`. Searches use the same cast,
which is how the planner matches them. Hamming indexes live on `hash_codes` the same way, cast to
bit(N) and restricted to one projection. Index names encode what they are, so the catalogue is the
only record: `ann_m<model>_<kind>_<metric>_<storage>` and `ann_p<projection>_<kind>_hamming`.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.errors import InvalidArgument

KINDS = ("hnsw", "ivfflat")
METRICS = ("cosine", "l2", "hamming")
STORAGES = ("vector", "halfvec")
# Measured in bench/retrieval.py (docs/BENCHMARKS.md, "retrieval"): halfvec halves the index and builds
# faster with the same recall@10, so it is the default.
DEFAULT_STORAGE = "halfvec"
MAX_DIMS = {"vector": 2000, "halfvec": 4000}  # pgvector's limits for indexed vectors
# HNSW links per node. A Hamming index is a two-stage search's first stage, re-ranked by cosine: with m = 8
# it builds in about half the time of m = 16, and per query it sits on the same recall/latency curve (m = 8
# with c candidates about matches m = 16 with c / 2; docs/ANN.md, "Hamming graphs"), so 8 is its default.
# Float indexes keep pgvector's 16.
DEFAULT_M = {"cosine": 16, "l2": 16, "hamming": 8}
_NAME = re.compile(r"^ann_(?:m(?P<model>\d+)_(?P<kind>hnsw|ivfflat)_(?P<metric>cosine|l2)_(?P<storage>vector|halfvec)"
                   r"|p(?P<projection>\d+)_(?P<hkind>hnsw|ivfflat)_hamming)$")


@dataclass(frozen=True)
class IndexInfo:
    """An ANN index found in the catalogue."""

    name: str
    kind: str
    metric: str
    storage: str
    model_id: int
    projection_id: int | None
    bits: int | None
    bytes: int
    options: dict
    valid: bool


def index_name(model_id: int, kind: str, metric: str, storage: str, projection_id: int | None = None) -> str:
    """The catalogue name of an ANN index."""
    if metric == "hamming":
        return f"ann_p{projection_id}_{kind}_hamming"
    return f"ann_m{model_id}_{kind}_{metric}_{storage}"


def list_indexes(session: Session, model_id: int | None = None) -> list[IndexInfo]:
    """Every ANN index (of one model, when given) with its size on disk."""
    rows = session.execute(sa.text(
        r"""
        SELECT c.relname, pg_relation_size(c.oid), coalesce(c.reloptions, '{}'), x.indisvalid,
               p.model_id, p.bits
          FROM pg_class c
          JOIN pg_index x ON x.indexrelid = c.oid
          LEFT JOIN hash_projections p ON c.relname LIKE 'ann\_p' || p.id || '\_%'
         WHERE c.relkind = 'i' AND c.relname LIKE 'ann\_%' AND c.relnamespace = current_schema()::regnamespace
         ORDER BY c.relname
        """
    ))
    out = []
    for name, size, opts, valid, proj_model, bits in rows:
        m = _NAME.match(name)
        if not m:
            continue
        options = dict(o.split("=", 1) for o in opts)
        if m["projection"]:
            if proj_model is None:  # projection deleted: the index is orphaned (drop_projection removes them)
                continue
            info = IndexInfo(name, m["hkind"], "hamming", "bit", proj_model, int(m["projection"]), bits, size,
                             options, valid)
        else:
            info = IndexInfo(name, m["kind"], m["metric"], m["storage"], int(m["model"]), None, None, size,
                             options, valid)
        if model_id is None or info.model_id == model_id:
            out.append(info)
    return out


def find_index(session: Session, model_id: int, kind: str, metric: str,
               projection_id: int | None = None) -> IndexInfo | None:
    """The valid index a search of this kind and metric would use (halfvec preferred), if any."""
    found = [i for i in list_indexes(session, model_id) if i.kind == kind and i.metric == metric and i.valid
             and (metric != "hamming" or i.projection_id == projection_id)]
    found.sort(key=lambda i: i.storage != DEFAULT_STORAGE)
    return found[0] if found else None


def default_lists(n: int) -> int:
    """IVFFlat list count as pgvector recommends: rows / 1000 up to 1M rows, sqrt(rows) beyond."""
    return max(1, n // 1000 if n <= 1_000_000 else int(math.sqrt(n)))


def _memory_budget(n: int, bytes_per_row: int) -> int:
    # The whole graph should fit in maintenance_work_mem, or HNSW builds slow down badly once it spills.
    # Capped at a quarter of this machine's memory (the embedded server shares it).
    need = int(n * (bytes_per_row + 400) * 1.3) + (64 << 20)
    cap = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    return max(64 << 20, min(need, cap))


def build_index(
    session: Session,
    model_id: int,
    *,
    kind: str,
    metric: str,
    storage: str = DEFAULT_STORAGE,
    m: int | None = None,
    ef_construction: int = 64,
    lists: int | None = None,
    bits: int | None = None,
    hash_method: str | None = None,
    workers: int | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> IndexInfo:
    """Build (or rebuild) one ANN index for a model, then ANALYZE; returns what was built."""
    if kind not in KINDS:
        raise InvalidArgument(f"unknown index kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if metric not in METRICS:
        raise InvalidArgument(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if storage not in STORAGES:
        raise InvalidArgument(f"unknown storage {storage!r}; choose one of: {', '.join(STORAGES)}")
    m = DEFAULT_M[metric] if m is None else m
    if not 2 <= m <= 100:
        raise InvalidArgument(f"m must be between 2 and 100, got {m}")
    if not 4 <= ef_construction <= 1000 or ef_construction < 2 * m:
        raise InvalidArgument(f"ef_construction must be between 4 and 1000 and at least 2 * m, got {ef_construction}")
    name_row = session.execute(sa.text("SELECT name, dim FROM embedding_models WHERE id = :m"), {"m": model_id}).first()
    if name_row is None:
        raise InvalidArgument(f"no embedding model with id {model_id}")
    model_name, dim = name_row
    n = session.execute(sa.text("SELECT count(*) FROM embeddings WHERE model_id = :m"), {"m": model_id}).scalar_one()
    if n == 0:
        raise InvalidArgument(f"model {model_name!r} has no embeddings: run `plankton embed` before building an index")

    proj = None
    if metric == "hamming":
        from plankton_db.hashstore import find_projection

        proj = find_projection(session, model_id, bits, hash_method)
        name = index_name(model_id, kind, metric, storage, proj.id)
        target = f"hash_codes USING {kind} ((code::bit({proj.bits})) bit_hamming_ops)"
        where = f"projection_id = {proj.id}"
        bytes_per_row, table = proj.bits // 8, "hash_codes"
    else:
        if dim > MAX_DIMS[storage]:
            raise InvalidArgument(f"{storage} indexes hold at most {MAX_DIMS[storage]} dimensions; "
                                  f"model {model_name!r} has {dim}: use --storage halfvec")
        name = index_name(model_id, kind, metric, storage)
        target = f"embeddings USING {kind} ((embedding::{storage}({dim})) {storage}_{metric}_ops)"
        where = f"model_id = {model_id}"
        bytes_per_row, table = dim * (2 if storage == "halfvec" else 4), "embeddings"
    if kind == "hnsw":
        with_ = f"m = {int(m)}, ef_construction = {int(ef_construction)}"
    else:
        lists = default_lists(n) if lists is None else lists
        if not 1 <= lists <= 32768:
            raise InvalidArgument(f"lists must be between 1 and 32768, got {lists}")
        with_ = f"lists = {int(lists)}"

    workers = max(0, (os.cpu_count() or 1) - 1) if workers is None else workers
    session.execute(sa.text(f"SET LOCAL maintenance_work_mem = '{_memory_budget(n, bytes_per_row) >> 20}MB'"))
    session.execute(sa.text(f"SET LOCAL max_parallel_maintenance_workers = {min(int(workers), 64)}"))
    # Two index kinds over the same expression would leave the choice to the planner's cost guesses, and a
    # search for one kind could silently run on the other; so one expression has one ANN index.
    for other in list_indexes(session, model_id):
        if (other.metric, other.storage, other.projection_id) == (metric, storage if metric != "hamming" else "bit",
                                                                  proj.id if metric == "hamming" else None):
            session.execute(sa.text(f'DROP INDEX "{other.name}"'))
    session.execute(sa.text(f'DROP INDEX IF EXISTS "{name}"'))
    ddl = f'CREATE INDEX "{name}" ON {target} WITH ({with_}) WHERE {where}'
    watcher = _ProgressWatcher(session, on_progress) if on_progress else None
    try:
        session.execute(sa.text(ddl))
    finally:
        if watcher:
            watcher.stop()
    session.execute(sa.text(f"ANALYZE {table}"))
    return next(i for i in list_indexes(session, model_id) if i.name == name)


def drop_index(session: Session, name: str) -> IndexInfo:
    """Drop one ANN index by name."""
    found = [i for i in list_indexes(session) if i.name == name]
    if not found:
        raise InvalidArgument(f"no ANN index named {name!r} (see `plankton index list`)")
    session.execute(sa.text(f'DROP INDEX "{name}"'))
    return found[0]


class _ProgressWatcher:
    """Polls pg_stat_progress_create_index for the building backend from a second connection."""

    def __init__(self, session: Session, on_progress: Callable[[str, int, int], None], every: float = 0.5) -> None:
        self.pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        self.engine = session.get_bind()
        self.on_progress = on_progress
        self.every = every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sql = sa.text("SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total "
                      "FROM pg_stat_progress_create_index WHERE pid = :pid")
        with self.engine.connect() as conn:
            while not self.done.wait(self.every):
                row = conn.execute(sql, {"pid": self.pid}).first()
                conn.rollback()
                if row is None:
                    continue
                phase, td, tt, bd, bt = row
                done, total = (td, tt) if tt else (bd, bt)
                self.on_progress(phase, int(done or 0), int(total or 0))

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self.done.set()
        self.thread.join(timeout=5)
