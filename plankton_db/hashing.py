"""Binary codes for embeddings: LSH and ITQ projections, bit packing, Hamming distance, bucket keys.

Pure numpy. A projection maps x to bits `x . plane_j > threshold_j` with threshold_j = mean . plane_j,
which is the sign of the mean-centred projection. Centring matters: pooled CNN features are almost all
positive, so signs of the raw coordinates (pgvector's binary_quantize) carry little information.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from plankton_db.errors import InvalidArgument

METHODS = ("lsh", "itq")
MIN_BITS, MAX_BITS = 8, 4096
MAX_BUCKET_BITS = 24
MAX_PROBES = 100_000
ITQ_SAMPLE = 20_000
ITQ_ITERATIONS = 30


def check_bits(bits: int) -> int:
    """Validate a code length: whole bytes, within what the indexes and the CLI support."""
    if not isinstance(bits, int | np.integer) or bits % 8 or not MIN_BITS <= bits <= MAX_BITS:
        raise InvalidArgument(f"bits must be a multiple of 8 between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return int(bits)


def check_method(method: str) -> str:
    """Validate a hashing method name."""
    if method not in METHODS:
        raise InvalidArgument(f"unknown hash method {method!r}; choose one of: {', '.join(METHODS)}")
    return method


def default_bucket_bits(n: int, per_bucket: int = 16) -> int:
    """Bucket key length so that buckets hold about `per_bucket` vectors on average (1 to 24 bits)."""
    return int(min(MAX_BUCKET_BITS, max(1, round(math.log2(max(n, 2) / per_bucket)))))


@dataclass(frozen=True)
class Projection:
    """Hyperplanes (bits x dim), their thresholds and the mean they were centred on."""

    method: str
    mean: np.ndarray
    planes: np.ndarray
    thresholds: np.ndarray
    bucket_bits: int
    params: dict = field(default_factory=dict)

    @property
    def bits(self) -> int:
        """Code length."""
        return int(self.planes.shape[0])

    @property
    def dim(self) -> int:
        """Input dimension."""
        return int(self.planes.shape[1])

    def fingerprint(self) -> str:
        """sha256 over the method, mean, planes and thresholds: identifies the projection across processes."""
        h = hashlib.sha256(self.method.encode())
        for a in (self.mean, self.planes, self.thresholds):
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        return h.hexdigest()

    def bits_of(self, x: np.ndarray) -> np.ndarray:
        """Boolean codes, one row per input vector."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if x.shape[1] != self.dim:
            raise InvalidArgument(f"vectors have {x.shape[1]} dimensions but the projection expects {self.dim}")
        return (x @ self.planes.T) > self.thresholds

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Packed codes (n x bits/8 bytes, first bit in the high bit of the first byte, as PostgreSQL stores bit)."""
        return pack(self.bits_of(x))


def _centre(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InvalidArgument("need at least two vectors to learn a projection")
    if not np.all(np.isfinite(x)):
        raise InvalidArgument("training vectors contain NaN or infinity")
    mean = x.mean(axis=0)
    return x - mean, mean


def _finish(method: str, mean: np.ndarray, planes: np.ndarray, bucket_bits: int | None, n: int,
            params: dict) -> Projection:
    planes = planes.astype(np.float32)
    mean32 = mean.astype(np.float32)
    b = bucket_bits if bucket_bits is not None else default_bucket_bits(n)
    if not 1 <= b <= min(MAX_BUCKET_BITS, planes.shape[0]):
        raise InvalidArgument(f"bucket bits must be between 1 and {min(MAX_BUCKET_BITS, planes.shape[0])}, got {b}")
    thresholds = (planes.astype(np.float64) @ mean).astype(np.float32)
    return Projection(method, mean32, planes, thresholds, int(b), params)


def lsh(x: np.ndarray, bits: int, *, seed: int = 0, bucket_bits: int | None = None) -> Projection:
    """Random hyperplanes through the data mean; orthogonalised in blocks of `dim` (super-bit LSH)."""
    check_bits(bits)
    centred, mean = _centre(x)
    dim = centred.shape[1]
    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, bits, dim):
        m = min(dim, bits - start)
        # Orthogonal planes within a block cut the space into more evenly sized cells than independent ones.
        q, _ = np.linalg.qr(rng.standard_normal((dim, m)))
        blocks.append(q.T)
    return _finish("lsh", mean, np.vstack(blocks), bucket_bits, len(centred), {"seed": seed, "trained_on": len(x)})


def itq(x: np.ndarray, bits: int, *, seed: int = 0, iterations: int = ITQ_ITERATIONS, sample: int = ITQ_SAMPLE,
        bucket_bits: int | None = None) -> Projection:
    """Iterative quantisation (Gong and Lazebnik 2011): PCA to `bits` dimensions, then a learned rotation."""
    check_bits(bits)
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    if len(x) > sample:
        x = x[rng.choice(len(x), size=sample, replace=False)]
    centred, mean = _centre(x)
    n, dim = centred.shape
    if bits > dim:
        raise InvalidArgument(f"itq needs bits <= the embedding dimension ({dim}), got {bits}; use lsh")
    if bits > n:
        raise InvalidArgument(f"itq with {bits} bits needs at least {bits} embeddings to learn from, got {n}")
    # Principal directions from the covariance (dim x dim), cheaper than an SVD of the data when n >> dim.
    eigval, eigvec = np.linalg.eigh(centred.T @ centred / n)
    pca = eigvec[:, np.argsort(eigval)[::-1][:bits]]
    v = centred @ pca
    rotation, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    loss = float("nan")
    for _ in range(iterations):
        b = np.where(v @ rotation >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(v.T @ b)
        rotation = u @ wt
        loss = float(np.mean((b - v @ rotation) ** 2))
    params = {"seed": seed, "iterations": iterations, "trained_on": n, "quantization_loss": round(loss, 6)}
    return _finish("itq", mean, (pca @ rotation).T, bucket_bits, len(centred), params)


def learn(method: str, x: np.ndarray, bits: int, *, seed: int = 0, bucket_bits: int | None = None) -> Projection:
    """A projection by method name."""
    return {"lsh": lsh, "itq": itq}[check_method(method)](x, bits, seed=seed, bucket_bits=bucket_bits)


def pack(bits: np.ndarray) -> np.ndarray:
    """Pack boolean rows into bytes, most significant bit first."""
    bits = np.atleast_2d(np.asarray(bits, dtype=bool))
    if bits.shape[1] % 8:
        raise InvalidArgument(f"bits must be a multiple of 8 to pack, got {bits.shape[1]}")
    return np.packbits(bits, axis=1, bitorder="big")


def unpack(codes: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Boolean rows back from packed bytes."""
    out = np.unpackbits(np.atleast_2d(np.asarray(codes, dtype=np.uint8)), axis=1, bitorder="big").astype(bool)
    return out if bits is None else out[:, :bits]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed codes: every row of `a` against one code or a matching row of `b`."""
    return np.bitwise_count(np.bitwise_xor(np.atleast_2d(a), b)).sum(axis=-1).astype(np.int64)


def to_bitstring(code: np.ndarray, bits: int | None = None) -> str:
    """A packed code as PostgreSQL's bit text, e.g. '0110...'."""
    return bool_bitstring(unpack(code, bits)[0])


def bool_bitstring(bits: np.ndarray) -> str:
    """A boolean code as PostgreSQL's bit text, without a Python loop per bit (it is on the query path)."""
    return (np.asarray(bits, dtype=np.uint8) + ord("0")).tobytes().decode("ascii")


def bucket_key(bits: np.ndarray, bucket_bits: int) -> np.ndarray:
    """The first `bucket_bits` bits of each boolean code read as an unsigned integer (as SQL hash_bucket does)."""
    bits = np.atleast_2d(np.asarray(bits, dtype=bool))[:, :bucket_bits]
    weights = 1 << np.arange(bucket_bits - 1, -1, -1, dtype=np.int64)
    return bits.astype(np.int64) @ weights


def probe_keys(key: int, bucket_bits: int, radius: int) -> list[int]:
    """Every bucket key within Hamming `radius` of `key` (multi-probe), nearest first."""
    if not 0 <= radius <= bucket_bits:
        raise InvalidArgument(f"radius must be between 0 and the bucket bits ({bucket_bits}), got {radius}")
    count = sum(math.comb(bucket_bits, r) for r in range(radius + 1))
    if count > MAX_PROBES:
        raise InvalidArgument(f"radius {radius} over {bucket_bits} bucket bits probes {count} buckets "
                              f"(limit {MAX_PROBES}); use a smaller radius")
    keys = [int(key)]
    for r in range(1, radius + 1):
        for flip in itertools.combinations(range(bucket_bits), r):
            k = int(key)
            for pos in flip:
                k ^= 1 << (bucket_bits - 1 - pos)
            keys.append(k)
    return keys
