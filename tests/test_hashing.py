"""Hashing: projections, packing, Hamming distance and bucket keys, without a database."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plankton_db import hashing
from plankton_db.errors import InvalidArgument


def _positive_features(n: int = 600, dim: int = 48, seed: int = 0) -> np.ndarray:
    # Like pooled CNN features: non-negative, with a large shared offset and correlated directions.
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(8, dim))
    return np.abs(rng.normal(size=(n, 8)) @ mix) + 3.0


def test_pack_unpack_round_trip_and_bit_order() -> None:
    bits = np.array([[1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=bool)
    packed = hashing.pack(bits)
    assert packed.tolist() == [[0b10000001, 0b11110000]]
    assert np.array_equal(hashing.unpack(packed), bits)
    assert hashing.to_bitstring(packed) == "1000000111110000"


def test_hamming_counts_differing_bits() -> None:
    a = hashing.pack(np.array([[1] * 16], dtype=bool))
    b = hashing.pack(np.array([[1] * 8 + [0] * 8, [1] * 16], dtype=bool))
    assert hashing.hamming(b, a).tolist() == [8, 0]


def test_centring_makes_bits_informative_on_positive_features() -> None:
    x = _positive_features()
    proj = hashing.lsh(x, 64, seed=1)
    balance = proj.bits_of(x).mean(axis=0)
    # Without centring, the sign of a positive vector's coordinates is always 1 (no information at all).
    assert np.all(np.sign(x) > 0)
    assert 0.2 < balance.mean() < 0.8
    assert proj.planes.shape == (64, 48) and proj.thresholds.shape == (64,)
    np.testing.assert_allclose(proj.thresholds, proj.planes @ proj.mean, rtol=1e-4, atol=1e-4)


def test_lsh_planes_are_orthogonal_within_a_block_and_beyond_dim() -> None:
    x = _positive_features(dim=16)
    proj = hashing.lsh(x, 40, seed=2)  # more bits than dimensions: three blocks
    gram = proj.planes[:16] @ proj.planes[:16].T
    np.testing.assert_allclose(gram, np.eye(16), atol=1e-5)
    assert proj.bits == 40


def test_itq_learns_a_rotation_that_lowers_quantisation_loss() -> None:
    x = _positive_features()
    zero = hashing.itq(x, 16, iterations=1, seed=3)
    learned = hashing.itq(x, 16, iterations=40, seed=3)
    assert learned.params["quantization_loss"] < zero.params["quantization_loss"]
    # Codes of near-duplicates stay close; codes of random pairs are far apart.
    codes = learned.encode(x)
    near = learned.encode(x + 1e-3)
    assert hashing.hamming(codes, near).mean() < 1.0
    assert hashing.hamming(codes[:300], codes[300:]).mean() > 3.0


def test_codes_preserve_neighbours_better_with_more_bits() -> None:
    x = _positive_features(n=800)
    xc = x - x.mean(axis=0)
    cos = (xc / np.linalg.norm(xc, axis=1, keepdims=True)) @ (xc[0] / np.linalg.norm(xc[0]))
    true10 = set(np.argsort(-cos)[1:11])
    overlap = {}
    for bits in (8, 256):
        codes = hashing.lsh(x, bits, seed=4).encode(x)
        d = hashing.hamming(codes, codes[0]).astype(float)
        d[0] = np.inf
        overlap[bits] = len(true10 & set(np.argsort(d, kind="stable")[:10]))
    assert overlap[256] > overlap[8]


def test_bucket_key_reads_the_first_bits_most_significant_first() -> None:
    bits = np.array([[1, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1]], dtype=bool)
    assert hashing.bucket_key(bits, 4).tolist() == [0b1011, 0]
    assert hashing.bucket_key(bits, 8).tolist() == [0b10110000, 1]


def test_probe_keys_are_every_key_within_the_radius() -> None:
    keys = hashing.probe_keys(0b1010, 4, 2)
    assert len(keys) == len(set(keys)) == 1 + 4 + math.comb(4, 2)
    assert keys[0] == 0b1010
    assert all(bin(k ^ 0b1010).count("1") <= 2 for k in keys)
    assert sorted(hashing.probe_keys(5, 3, 3)) == list(range(8))


def test_default_bucket_bits_grow_with_the_collection() -> None:
    assert hashing.default_bucket_bits(16) == 1
    assert hashing.default_bucket_bits(100_000) == 13
    assert hashing.default_bucket_bits(10**12) == 24


@pytest.mark.parametrize("bits", [0, 12, 65, 4104])
def test_bits_must_be_whole_bytes_in_range(bits: int) -> None:
    with pytest.raises(InvalidArgument, match=f"^bits must be a multiple of 8 between 8 and 4096, got {bits}$"):
        hashing.check_bits(bits)


def test_bad_inputs_have_clear_messages() -> None:
    x = _positive_features(n=40, dim=16)
    with pytest.raises(InvalidArgument, match=r"^unknown hash method 'pq'; choose one of: lsh, itq$"):
        hashing.learn("pq", x, 64)
    with pytest.raises(InvalidArgument, match=r"^itq needs bits <= the embedding dimension \(16\), got 32; use lsh$"):
        hashing.itq(x, 32)
    with pytest.raises(InvalidArgument, match="^itq with 16 bits needs at least 16 embeddings to learn from, got 10$"):
        hashing.itq(x[:10], 16)
    with pytest.raises(InvalidArgument, match="^training vectors contain NaN or infinity$"):
        hashing.lsh(np.full((4, 16), np.nan), 8)
    with pytest.raises(InvalidArgument, match="^vectors have 3 dimensions but the projection expects 16$"):
        hashing.lsh(x, 8).bits_of(np.ones(3))
    with pytest.raises(InvalidArgument, match=r"^radius must be between 0 and the bucket bits \(4\), got 5$"):
        hashing.probe_keys(0, 4, 5)
    with pytest.raises(InvalidArgument, match="^radius 12 over 24 bucket bits probes"):
        hashing.probe_keys(0, 24, 12)
    with pytest.raises(InvalidArgument, match="^bits must be a multiple of 8 to pack, got 5$"):
        hashing.pack(np.ones((1, 5), dtype=bool))
