"""Exact and approximate top-k search (era_adapters/search.py)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from era_adapters.search import ann_search, build_ann_index, exact_search, recall_against_exact


def brute_force(queries, docs, k):
    """Reference top-k in float64: sort by (-score, index)."""
    scores = queries.astype(np.float64) @ docs.astype(np.float64).T
    idx = np.broadcast_to(np.arange(docs.shape[0]), scores.shape)
    order = np.lexsort((idx, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def integer_data(n_queries, n_docs, dim, seed):
    """Small-integer vectors: every dot product is exact in float32, so ties are exact too."""
    rng = np.random.default_rng(seed)
    docs = rng.integers(-1, 2, size=(n_docs, dim)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(n_queries, dim)).astype(np.float32)
    return queries, docs


def float_data_with_duplicates(n_queries, n_docs, dim, seed):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_docs // 3, dim)).astype(np.float32)
    docs = np.concatenate([base, base[rng.integers(0, len(base), n_docs - len(base))]])
    docs = docs[rng.permutation(n_docs)]
    return rng.standard_normal((n_queries, dim)).astype(np.float32), docs


@pytest.mark.parametrize("n_queries", [5, 40])  # faiss picks kernels by query count
@pytest.mark.parametrize("k", [1, 10, 120])  # k >= 100 takes faiss's reservoir path
def test_matches_brute_force_with_exact_ties(n_queries, k):
    queries, docs = integer_data(n_queries, 700, 6, seed=k)
    for chunk_size in (7, 700):
        scores, idx = exact_search(queries, docs, k, chunk_size=chunk_size)
        ref_scores, ref_idx = brute_force(queries, docs, k)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))
        assert scores.dtype == np.float32 and idx.dtype == np.int64


def test_matches_brute_force_on_floats_with_duplicates():
    queries, docs = float_data_with_duplicates(25, 300, 32, seed=1)
    scores, idx = exact_search(queries, docs, 20, chunk_size=64)
    ref_scores, ref_idx = brute_force(queries, docs, 20)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [integer_data, float_data_with_duplicates])
def test_identical_across_chunk_sizes(make):
    queries, docs = make(23, 240, 8, seed=3)
    n_docs = docs.shape[0]
    ref = exact_search(queries, docs, 30, chunk_size=n_docs)
    for chunk_size in (1, 7, 100, n_docs, 10 * n_docs):
        out = exact_search(queries, docs, 30, chunk_size=chunk_size)
        np.testing.assert_array_equal(out[0], ref[0])
        np.testing.assert_array_equal(out[1], ref[1])


def test_works_on_memmap(tmp_path):
    queries, docs = float_data_with_duplicates(9, 500, 16, seed=4)
    path = tmp_path / "docs.npy"
    np.save(path, docs)
    ref = exact_search(queries, docs, 25)
    for mm in (np.load(path, mmap_mode="r"), np.load(path, mmap_mode="c")):
        assert isinstance(mm, np.memmap)
        out = exact_search(queries, mm, 25, chunk_size=33)
        np.testing.assert_array_equal(out[0], ref[0])
        np.testing.assert_array_equal(out[1], ref[1])
    np.testing.assert_array_equal(np.load(path), docs)  # the file is untouched


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release uses madvise")
def test_memmap_pages_are_released(tmp_path):
    psutil = pytest.importorskip("psutil")
    docs = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float32, shape=(32768, 256))
    docs[:] = 1.0  # 32 MiB
    docs.flush()
    del docs
    mm = np.load(tmp_path / "d.npy", mmap_mode="r")
    proc = psutil.Process()
    before = proc.memory_info().rss
    exact_search(np.ones((2, 256), np.float32), mm, 5, chunk_size=1024)
    grown = proc.memory_info().rss - before
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB while scanning a 32 MiB memmap"


def test_k_larger_than_corpus():
    queries, docs = integer_data(4, 9, 5, seed=5)
    scores, idx = exact_search(queries, docs, 50, chunk_size=4)
    assert scores.shape == idx.shape == (4, 9)
    for row in idx:
        assert sorted(row.tolist()) == list(range(9))
    np.testing.assert_array_equal(idx, brute_force(queries, docs, 9)[1])


def test_dim_mismatch_and_bad_inputs():
    docs = np.zeros((10, 384), np.float32)
    with pytest.raises(ValueError, match=r"768.*384"):
        exact_search(np.zeros((2, 768), np.float32), docs, 3)
    with pytest.raises(ValueError, match=r"queries\[None, :\]"):
        exact_search(np.zeros(384, np.float32), docs, 3)
    with pytest.raises(TypeError, match="dtype"):
        exact_search(np.zeros((2, 384), np.int64), docs, 3)
    with pytest.raises(TypeError, match="dtype"):
        exact_search(np.zeros((2, 384), np.float32), docs.astype(np.int8), 3)
    with pytest.raises(ValueError, match="k must be"):
        exact_search(np.zeros((2, 384), np.float32), docs, 0)
    with pytest.raises(ValueError, match="NaN"):
        exact_search(np.full((2, 384), np.nan, np.float32), docs, 3)


def test_empty_inputs():
    docs = np.zeros((0, 4), np.float32)
    s, i = exact_search(np.ones((3, 4), np.float32), docs, 5)
    assert s.shape == i.shape == (3, 0)
    s, i = exact_search(np.ones((0, 4), np.float32), np.ones((6, 4), np.float32), 5)
    assert s.shape == i.shape == (0, 5)


def clustered(n_docs, n_queries, dim, seed):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim)).astype(np.float32)
    docs = centers[rng.integers(0, 20, n_docs)] + 0.3 * rng.standard_normal((n_docs, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[rng.choice(n_docs, n_queries, replace=False)] + 0.05 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    return queries.astype(np.float32), docs


@pytest.mark.parametrize("kind,params", [("ivf", {"nlist": 16, "nprobe": 8}), ("hnsw", {"M": 16, "efSearch": 64})])
def test_ann_recall_is_high_on_easy_data(kind, params):
    queries, docs = clustered(3000, 50, 32, seed=6)
    _, exact_idx = exact_search(queries, docs, 10)
    index = build_ann_index(docs, kind, seed=0, **params)
    scores, idx = ann_search(index, queries, 10)
    assert idx.shape == (50, 10) and idx.dtype == np.int64
    assert recall_against_exact(idx, exact_idx, 10) >= 0.95


def test_ann_rejects_bad_arguments():
    docs = np.ones((100, 8), np.float32)
    with pytest.raises(ValueError, match="kind"):
        build_ann_index(docs, "lsh")
    with pytest.raises(TypeError, match="efSearch"):
        build_ann_index(docs, "ivf", efSearch=10)
    index = build_ann_index(docs, "hnsw")
    with pytest.raises(ValueError, match=r"16.*8"):
        ann_search(index, np.ones((1, 16), np.float32), 3)


def test_recall_against_exact_hand_made():
    ann = np.array([[1, 2, 3, 8], [4, 5, -1, -1], [7, 7, 7, 7]])
    exact = np.array([[1, 2, 9, 3], [4, 6, 7, 5], [7, 0, 1, 2]])
    # top-3: {1,2,3}&{1,2,9} = 2/3; {4,5}&{4,6,7} = 1/3; {7}&{7,0,1} = 1/3
    assert recall_against_exact(ann, exact, 3) == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)
    assert recall_against_exact(ann, exact, 1) == pytest.approx(1.0)
    assert recall_against_exact(exact, exact, 4) == 1.0
    # exact lists shorter than k (k > n_docs) and -1 padding are handled
    assert recall_against_exact(np.array([[0, 1, -1]]), np.array([[1, 0]]), 10) == 1.0
    with pytest.raises(ValueError):
        recall_against_exact(ann[:2], exact, 3)
