"""Every read query for similarity search; returns small frozen dataclasses and never commits.

One interface covers every path: a metric (cosine, l2, hamming) and a method (exact, hnsw, ivfflat,
lsh, two-stage). A `Searcher` resolves a plan once (the model's dimension, which index and which hash
projection to use) into one SQL statement with the model id, casts and k written in, so the server can
keep it prepared; each query then sends only a binary vector. `search_by_id` and `search_by_vector`
are the one-shot forms.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db import hashing
from plankton_db.errors import InvalidArgument, UnknownImage
from plankton_db.pg import raw_connection

# pgvector operator per metric; the names follow the metric, as pgvector's own functions do.
OPERATORS = {"cosine": "<=>", "l2": "<->", "hamming": "<~>"}
METHODS = ("exact", "hnsw", "ivfflat", "lsh", "two-stage")
MAX_K = 10_000
DEFAULT_RADIUS = 2
DEFAULT_CANDIDATES = 200
MAX_EF_SEARCH = 1000


@dataclass(frozen=True)
class Filters:
    """Restrictions on which images may be returned."""

    taxon: str | None = None  # this taxon and its whole subtree
    sample: str | None = None
    unlabeled: bool = False
    depth_min: float | None = None  # images whose depth range overlaps [depth_min, depth_max]
    depth_max: float | None = None

    @property
    def active(self) -> bool:
        """Whether any restriction is set."""
        return any(v not in (None, False) for v in self.__dict__.values())


@dataclass(frozen=True)
class SearchOptions:
    """How to search: the method and its knobs (None means the method's default)."""

    method: str = "exact"
    ef_search: int | None = None  # hnsw: candidate list size (pgvector default 40)
    probes: int | None = None  # ivfflat: lists visited (pgvector default 1)
    candidates: int | None = None  # two-stage: Hamming shortlist size re-ranked on full vectors
    radius: int | None = None  # lsh: probe buckets within this Hamming radius of the query's bucket
    bits: int | None = None  # hash projection used by hamming, lsh and two-stage (default: newest)
    hash_method: str | None = None  # lsh or itq projection (default: newest)
    iterative: bool = True  # filtered hnsw/ivfflat scans continue until k rows pass the filter


@dataclass(frozen=True)
class Hit:
    """One search result."""

    image_id: int
    distance: float
    taxon: str | None
    status: str | None
    original_path: str


def check_search_args(metric: str, k: int, method: str = "exact") -> str:
    """Validate the metric, k and method; return the pgvector operator."""
    if metric not in OPERATORS:
        raise InvalidArgument(f"unknown metric {metric!r}; choose one of: {', '.join(OPERATORS)}")
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
    if method not in METHODS:
        raise InvalidArgument(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if metric == "hamming" and method in ("lsh", "two-stage"):
        raise InvalidArgument(f"method {method} re-ranks full vectors by cosine or l2; use --metric cosine or l2")
    return OPERATORS[metric]


def _check_options(o: SearchOptions) -> None:
    for name, lo, hi in (("ef_search", 1, MAX_EF_SEARCH), ("probes", 1, 32768), ("candidates", 1, MAX_K),
                         ("radius", 0, hashing.MAX_BUCKET_BITS)):
        value = getattr(o, name)
        if value is not None and not lo <= value <= hi:
            raise InvalidArgument(f"{name} must be between {lo} and {hi}, got {value}")


def _filter_sql(filters: Filters, params: dict, col: str = "e.image_id") -> str:
    # EXISTS clauses keep the outer scan in distance order, so an index scan can stream through them.
    clauses = []
    if filters.sample is not None:
        clauses.append(f"EXISTS (SELECT 1 FROM images i WHERE i.id = {col} AND i.sample = %(sample)s)")
        params["sample"] = filters.sample
    if filters.depth_min is not None or filters.depth_max is not None:
        lo = -np.inf if filters.depth_min is None else filters.depth_min
        hi = np.inf if filters.depth_max is None else filters.depth_max
        if lo > hi:
            raise InvalidArgument(f"depth_min ({lo}) is greater than depth_max ({hi})")
        clauses.append(f"EXISTS (SELECT 1 FROM images i WHERE i.id = {col} "
                       "AND i.depth_max >= %(depth_lo)s AND i.depth_min <= %(depth_hi)s)")
        params["depth_lo"], params["depth_hi"] = float(lo), float(hi)
    if filters.unlabeled:
        clauses.append(f"NOT EXISTS (SELECT 1 FROM image_labels il WHERE il.image_id = {col})")
    if filters.taxon is not None:
        clauses.append(
            f"""EXISTS (SELECT 1 FROM image_labels il WHERE il.image_id = {col} AND il.taxon_id IN (
                WITH RECURSIVE sub(id) AS (
                    SELECT id FROM taxa WHERE name = %(taxon)s
                    UNION SELECT t.id FROM taxa t JOIN sub ON t.parent_id = sub.id)
                SELECT id FROM sub))"""
        )
        params["taxon"] = filters.taxon
    return "".join(f" AND {c}" for c in clauses)


_OUTER = """
    SELECT r.image_id, r.distance, t.name, l.status, i.original_path
      FROM {settings}({inner}) r
      JOIN images i ON i.id = r.image_id
      LEFT JOIN image_labels l ON l.image_id = r.image_id
      LEFT JOIN taxa t ON t.id = l.taxon_id
     ORDER BY r.distance, r.image_id
"""
# Search-time knobs travel inside the statement: `cfg` calls set_config(name, value, true) -- SET LOCAL --
# and the index scan below it is gated on cfg.ok, so the executor runs set_config before pgvector reads
# hnsw.ef_search / ivfflat.probes at its first tuple. One prepared statement, one round trip, nothing to
# undo afterwards.
_GATE = " AND cfg.ok IS NOT NULL"


@dataclass
class Searcher:
    """A resolved search plan for one model, metric and method; reuse it for many queries."""

    model_id: int
    dim: int
    metric: str
    options: SearchOptions
    storage: str | None = None  # vector or halfvec when an embedding index is used
    projection: object | None = None  # hashstore.ProjectionRow for hamming, lsh and two-stage
    codes: hashing.Projection | None = None  # numpy planes, when loaded, so query codes skip a round trip
    fallbacks: int = 0  # filtered index scans that came back short and were answered exactly
    _sql: dict = field(default_factory=dict)

    @classmethod
    def prepare(cls, session: Session, model_id: int, *, metric: str = "cosine", method: str = "exact",
                options: SearchOptions | None = None, load_planes: bool = False) -> Searcher:
        """Resolve the model, index and projection a search needs, or say which command creates them."""
        options = replace(options or SearchOptions(), method=method)
        check_search_args(metric, 1, method)
        _check_options(options)
        dim = session.execute(sa.text("SELECT dim FROM embedding_models WHERE id = :m"), {"m": model_id}).scalar()
        if dim is None:
            raise InvalidArgument(f"no embedding model with id {model_id}")
        s = cls(model_id, dim, metric, options)
        if metric == "hamming" or method in ("lsh", "two-stage"):
            from plankton_db.hashstore import find_projection, load_projection

            s.projection = find_projection(session, model_id, options.bits, options.hash_method)
            if load_planes:
                s.codes = load_projection(session, s.projection)
        if method in ("hnsw", "ivfflat"):
            from plankton_db.indexes import find_index

            ix = find_index(session, model_id, method, metric, s.projection.id if s.projection else None)
            if ix is None:
                hint = f" --bits {s.projection.bits} --hash-method {s.projection.method}" if s.projection else ""
                raise InvalidArgument(f"no {method} index for {metric} on this model: run "
                                      f"`plankton index build --kind {method} --metric {metric}{hint}` first")
            s.storage = ix.storage
        return s

    # ----------------------------------------------------------------------------- SQL

    def _inner(self, k: int, filters: Filters, params: dict, exclude: bool, gate: str) -> str:
        o, m = self.options, self.model_id
        op = OPERATORS[self.metric]
        if self.metric == "hamming":
            p = self.projection
            where = _filter_sql(filters, params, "c.image_id") + (" AND c.image_id <> %(exclude)s" if exclude else "")
            # Exact scans compare the uncast column, so they never pick up the bit(N) index by accident,
            # and break Hamming ties by id so results are reproducible.
            if o.method == "exact":
                return (f"SELECT c.image_id, (c.code <~> %(code)s::bit({p.bits}))::float8 AS distance "
                        f"FROM hash_codes c WHERE c.projection_id = {p.id}{where} "
                        f"ORDER BY c.code <~> %(code)s::bit({p.bits}), c.image_id LIMIT {k}")
            expr = f"c.code::bit({p.bits}) <~> %(code)s::bit({p.bits})"
            return (f"SELECT c.image_id, ({expr})::float8 AS distance FROM hash_codes c "
                    f"WHERE c.projection_id = {p.id}{gate}{where} ORDER BY {expr} LIMIT {k}")
        where = _filter_sql(filters, params) + (" AND e.image_id <> %(exclude)s" if exclude else "")
        full = f"e.embedding {op} %(vec)b"
        if o.method == "exact":
            return (f"SELECT e.image_id, {full} AS distance FROM embeddings e "
                    f"WHERE e.model_id = {m}{where} ORDER BY {full} LIMIT {k}")
        if o.method in ("hnsw", "ivfflat"):
            cast = f"{self.storage}({self.dim})"
            expr = f"e.embedding::{cast} {op} %(vec)b::{cast}"
            # The index orders by the (possibly half-precision) cast; the reported distance is the full one.
            return (f"SELECT e.image_id, {full} AS distance FROM embeddings e "
                    f"WHERE e.model_id = {m}{gate}{where} ORDER BY {expr} LIMIT {k}")
        p = self.projection
        cwhere = _filter_sql(filters, params, "c.image_id") + (" AND c.image_id <> %(exclude)s" if exclude else "")
        if o.method == "lsh":
            return (f"SELECT e.image_id, {full} AS distance FROM hash_codes c "
                    f"JOIN embeddings e ON e.model_id = {m} AND e.image_id = c.image_id "
                    f"WHERE c.projection_id = {p.id} AND c.bucket = ANY(%(buckets)s){cwhere} "
                    f"ORDER BY {full} LIMIT {k}")
        c = max(k, o.candidates or DEFAULT_CANDIDATES)
        ham = f"c.code::bit({p.bits}) <~> %(code)s::bit({p.bits})"
        return (f"SELECT e.image_id, {full} AS distance FROM ("
                f"SELECT c.image_id FROM hash_codes c WHERE c.projection_id = {p.id}{gate}{cwhere} "
                f"ORDER BY {ham} LIMIT {c}) s "
                f"JOIN embeddings e ON e.model_id = {m} AND e.image_id = s.image_id ORDER BY {full} LIMIT {k}")

    def _settings(self, k: int, filters: Filters) -> tuple[str, ...]:
        # Applied with set_config(..., true), i.e. SET LOCAL, inside the statement itself (see _GATE).
        o = self.options
        iterative = "relaxed_order" if (o.iterative and filters.active) else "off"
        if o.method == "ivfflat":
            return ("ivfflat.probes", str(o.probes or 1), "ivfflat.iterative_scan", iterative)
        if o.method == "hnsw":
            return ("hnsw.ef_search", str(max(o.ef_search or 40, min(k, MAX_EF_SEARCH))), "hnsw.iterative_scan",
                    iterative)
        if o.method == "two-stage":
            # An HNSW scan yields at most ef_search rows, so the shortlist needs ef_search >= c; past
            # pgvector's limit of 1000 the scan keeps going iteratively (the order is re-ranked anyway).
            c = max(k, o.candidates or DEFAULT_CANDIDATES)
            ef = max(o.ef_search or 1, min(c, MAX_EF_SEARCH))  # a wider graph search than c only costs time
            # The shortlist may run on an ivfflat Hamming index instead; probes and iterative scans then
            # decide how many of the c candidates it can find.
            return ("hnsw.ef_search", str(ef), "hnsw.iterative_scan",
                    "relaxed_order" if c > ef or filters.active else "off",
                    "ivfflat.probes", str(o.probes or 1), "ivfflat.iterative_scan", "relaxed_order")
        return ()

    def _sql_for(self, k: int, filters: Filters, exclude: bool) -> tuple[str, dict]:
        """The statement (cached: the same text is what lets the server reuse its prepared plan)."""
        key = (k, filters, exclude)
        if key not in self._sql:
            if len(self._sql) > 64:  # many distinct filters: keep the cache small
                self._sql.clear()
            params: dict = {}
            settings = self._settings(k, filters)
            # Names and values are fixed strings and validated integers, so they are written in.
            calls = " || ".join(f"set_config('{n}', '{v}', true)" for n, v in zip(settings[::2], settings[1::2],
                                                                                 strict=True))
            cfg = f"(SELECT {calls} AS ok) cfg CROSS JOIN LATERAL " if settings else ""
            inner = self._inner(k, filters, params, exclude, _GATE if settings else "")
            self._sql[key] = (_OUTER.format(settings=cfg, inner=inner), params)
        return self._sql[key]

    # ----------------------------------------------------------------------------- queries

    def query_code(self, session: Session, vector: np.ndarray) -> np.ndarray:
        """The boolean code of a query vector under this searcher's projection."""
        if self.codes is not None:
            return self.codes.bits_of(vector)[0]
        text = session.execute(sa.text("SELECT hash_code(:p, CAST(:v AS vector))::text"),
                               {"p": self.projection.id, "v": _literal(vector)}).scalar_one()
        return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")

    def search(self, session: Session, vector: np.ndarray, *, k: int = 20, filters: Filters = Filters(),
               exclude: int | None = None, code: np.ndarray | None = None) -> list[Hit]:
        """The k nearest images to a vector (or, for hamming, to its code)."""
        check_search_args(self.metric, k, self.options.method)
        vec = _check_vector(vector, self.dim)
        params: dict = {"vec": vec}
        if exclude is not None:
            params["exclude"] = exclude
        if self.projection is not None:
            bits = self.query_code(session, vec) if code is None else code
            if self.options.method == "lsh":
                b = self.projection.bucket_bits
                params["buckets"] = hashing.probe_keys(int(hashing.bucket_key(bits, b)[0]), b,
                                                       DEFAULT_RADIUS if self.options.radius is None
                                                       else self.options.radius)
            else:
                params["code"] = hashing.bool_bitstring(bits)
        sql, fparams = self._sql_for(k, filters, exclude is not None)
        params.update(fparams)
        rows = raw_connection(session).execute(sql, params, prepare=True, binary=True).fetchall()
        hits = [Hit(int(r[0]), float(r[1]), r[2], r[3], r[4]) for r in rows]
        if len(hits) < k and filters.active and self.options.method in ("hnsw", "ivfflat"):
            self.fallbacks += 1
            hits = self._exact_fallback(session, vec, k, filters, exclude, code)
        return hits

    def _exact_fallback(self, session, vec, k, filters, exclude, code) -> list[Hit]:
        # An iterative scan stops at hnsw.max_scan_tuples / ivfflat.max_probes; a very selective filter can
        # leave it short of k rows, and then an exact scan over the few matching rows is cheap anyway.
        exact = Searcher(self.model_id, self.dim, self.metric, replace(self.options, method="exact"),
                         projection=self.projection, codes=self.codes)
        return exact.search(session, vec, k=k, filters=filters, exclude=exclude, code=code)


def _check_vector(vector: np.ndarray, dim: int) -> np.ndarray:
    vec = np.asarray(vector, dtype=np.float32).ravel()
    if not np.all(np.isfinite(vec)):
        raise InvalidArgument("query vector contains NaN or infinity")
    if len(vec) != dim:
        raise InvalidArgument(f"query vector has {len(vec)} dimensions but the model has {dim}")
    return vec


def _literal(vec: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.9g}" for x in np.asarray(vec, dtype=np.float32).ravel()) + "]"


def _stored(session: Session, model_id: int, image_id: int, projection) -> tuple[np.ndarray, np.ndarray | None]:
    found = session.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM images WHERE id = :id), "
                "(SELECT embedding::text FROM embeddings WHERE image_id = :id AND model_id = :m)"),
        {"id": image_id, "m": model_id},
    ).one()
    if not found[0]:
        raise UnknownImage(f"no image with id {image_id}")
    if found[1] is None:
        raise UnknownImage(f"image {image_id} has no embedding for this model yet: run `plankton embed`")
    vec = np.array(found[1].strip("[]").split(","), dtype=np.float32)
    if projection is None:
        return vec, None
    code = session.execute(sa.text("SELECT code::text FROM hash_codes WHERE projection_id = :p AND image_id = :i"),
                           {"p": projection.id, "i": image_id}).scalar()
    if code is None:
        raise UnknownImage(f"image {image_id} has no hash code yet: run `plankton hash build --bits {projection.bits}`")
    return vec, np.frombuffer(code.encode(), dtype=np.uint8) == ord("1")


def search_by_id(
    session: Session, model_id: int, image_id: int, *, metric: str = "cosine", k: int = 20,
    filters: Filters = Filters(), method: str = "exact", options: SearchOptions | None = None,
) -> list[Hit]:
    """The k images nearest to a stored image (the image itself excluded), in one SQL statement."""
    check_search_args(metric, k, method)
    searcher = Searcher.prepare(session, model_id, metric=metric, method=method, options=options)
    vec, code = _stored(session, model_id, image_id, searcher.projection)
    return searcher.search(session, vec, k=k, filters=filters, exclude=image_id, code=code)


def search_by_vector(
    session: Session, model_id: int, vector: np.ndarray, *, metric: str = "cosine", k: int = 20,
    filters: Filters = Filters(), method: str = "exact", options: SearchOptions | None = None,
) -> list[Hit]:
    """The k images nearest to a vector (for example a file embedded with the model's preprocessing)."""
    check_search_args(metric, k, method)
    vec = np.asarray(vector, dtype=np.float32).ravel()
    if not np.all(np.isfinite(vec)):
        raise InvalidArgument("query vector contains NaN or infinity")
    searcher = Searcher.prepare(session, model_id, metric=metric, method=method, options=options)
    return searcher.search(session, vec, k=k, filters=filters)
