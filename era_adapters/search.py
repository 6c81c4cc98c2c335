"""Inner-product top-k search over document embeddings.

Exact search (`exact_search`) streams the corpus in row chunks through faiss, so a corpus held in
a memory-mapped ``.npy`` (``np.load(path, mmap_mode="r")``) larger than RAM can be searched with
bounded memory; no ``n_queries x n_docs`` score matrix is ever built. Indices are row numbers in
the corpus order, which is what the evaluator and hard-negative mining need.

Conventions (exact search):

* Scores are faiss float32 inner products; rows are sorted by score, descending.
* Ties: among equal scores the **lower corpus index comes first**, and this also decides which of
  several equally-scored documents make it into the top k. The output is therefore the first k
  rows of the corpus sorted by ``(-score, index)`` and does not depend on ``chunk_size``.
* ``k > n_docs``: the result has ``min(k, n_docs)`` columns (no ``-1`` padding).

Approximate search (`build_ann_index` / `ann_search`) wraps faiss IVF-Flat and HNSW-Flat for large
corpora; `recall_against_exact` reports their recall@k against `exact_search`.

`drop_identical_ids` applies BEIR's `ignore_identical_ids` rule to a ranking, and `rank_for_queries`
is the one search-then-rule path that the evaluation and stage 2's validation share.
"""
from __future__ import annotations

import ctypes
import mmap
import sys

import faiss
import numpy as np

__all__ = ["exact_search", "exact_search_chunks", "build_ann_index", "ann_search", "recall_against_exact", "drop_identical_ids",
           "rank_for_queries", "release_pages"]

_IP = faiss.METRIC_INNER_PRODUCT
# Largest (rows x chunk) block of full scores used to settle ties at the k-th place (~48 MB).
_TIE_BLOCK_ENTRIES = 1 << 22


# --------------------------------------------------------------------------- validation


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_docs(docs) -> np.ndarray:
    if not isinstance(docs, np.ndarray):
        raise TypeError(
            f"docs must be a numpy array or np.memmap, got {type(docs).__name__}; "
            "use np.asarray(docs) or np.load(path, mmap_mode='r')"
        )
    if docs.ndim != 2:
        raise ValueError(f"docs must be 2-D (n_docs, dim), got shape {docs.shape}")
    if not np.issubdtype(docs.dtype, np.floating):
        raise TypeError(f"docs must hold floats (float32 preferred), got dtype {docs.dtype}")
    return docs


def _check_queries(queries, dim: int, what: str = "docs") -> np.ndarray:
    queries = np.asarray(queries)
    if queries.ndim != 2:
        hint = "; for one query use queries[None, :]" if queries.ndim == 1 else ""
        raise ValueError(f"queries must be 2-D (n_queries, dim), got shape {queries.shape}{hint}")
    if not np.issubdtype(queries.dtype, np.floating):
        raise TypeError(f"queries must hold floats (float32 preferred), got dtype {queries.dtype}")
    if queries.shape[1] != dim:
        raise ValueError(
            f"dimension mismatch: queries have dim {queries.shape[1]} but {what} have dim {dim}; "
            f"queries must live in the doc encoder's space (apply the adapter that maps query "
            f"embeddings to dim {dim}, or search the index built with the matching doc encoder)"
        )
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not np.isfinite(queries).all():
        raise ValueError("queries contain NaN or inf")
    return queries


# --------------------------------------------------------------------------- exact search


def exact_search(
    queries: np.ndarray, docs: np.ndarray, k: int, chunk_size: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of every query over ``docs``, streamed in chunks of rows.

    Args:
        queries: (n, d) floats (cast to float32).
        docs: (N, d) float32 array or ``np.memmap`` (other float dtypes are cast chunk by chunk).
        k: number of results per query; ``k > N`` gives ``N`` columns.
        chunk_size: corpus rows per faiss call. Results are identical for every chunk size;
            memory is about ``chunk_size * d * 4`` bytes plus ``n * k`` results.

    Returns:
        ``(scores, indices)``: (n, min(k, N)) float32 and int64, best first; equal scores are
        ordered by lower corpus index, which also decides who enters the top k.

    For a shared ``np.memmap`` (modes r, r+, w+) the pages of each chunk are handed back to the
    OS once searched (``madvise(MADV_DONTNEED)``), so resident memory stays about one chunk even
    when the whole file is scanned. The page cache is left alone.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    docs = _check_docs(docs)

    def chunks():
        for start in range(0, docs.shape[0], int(chunk_size)):
            view = docs[start : start + int(chunk_size)]
            yield view
            release_pages(view)

    return exact_search_chunks(queries, chunks(), k, docs.shape[1])


def exact_search_chunks(queries: np.ndarray, chunks, k: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`exact_search` over a corpus given as an iterable of (rows, dim) chunks in corpus order (e.g. a
    stored-vector source read batch by batch): the same results, the same tie rule, one chunk in memory."""
    k = _check_k(k)
    queries = _check_queries(queries, dim)
    n = queries.shape[0]
    best_s = np.empty((n, 0), dtype=np.float32)
    best_i = np.empty((n, 0), dtype=np.int64)
    start = 0
    for chunk in chunks:
        if n:
            s, i = _chunk_topk(queries, np.ascontiguousarray(chunk, dtype=np.float32), k)
            best_s, best_i = _merge(best_s, best_i, s, i + start, k)
        start += len(chunk)
    if n == 0:
        return np.empty((n, min(k, start)), np.float32), np.empty((n, min(k, start)), np.int64)
    return best_s, best_i


def _chunk_topk(q: np.ndarray, chunk: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one chunk under (score desc, index asc); rows need not be sorted yet.

    faiss's scores do not depend on how the corpus is cut, but its choice among documents tied
    at the k-th score does. We ask for k+1: where the (k+1)-th score is below the k-th, the set is
    unambiguous; rows where they tie are redone with the chunk fully ranked, in small blocks.
    """
    nc = chunk.shape[0]
    if nc <= k:
        return faiss.knn(q, chunk, nc, _IP)
    s, i = faiss.knn(q, chunk, k + 1, _IP)
    tied = np.flatnonzero(s[:, k - 1] == s[:, k])
    s, i = s[:, :k].copy(), i[:, :k].copy()
    step = max(1, _TIE_BLOCK_ENTRIES // nc)
    for b in range(0, tied.size, step):
        rows = tied[b : b + step]
        fs, fi = faiss.knn(q[rows], chunk, nc, _IP)
        order = np.lexsort((fi, -fs), axis=1)[:, :k]
        s[rows] = np.take_along_axis(fs, order, axis=1)
        i[rows] = np.take_along_axis(fi, order, axis=1)
    return s, i


def _merge(s1, i1, s2, i2, k):
    s = np.concatenate([s1, s2], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    order = np.lexsort((i, -s), axis=1)[:, :k]  # score desc, then index asc
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_MADV_DONTNEED = 4


def release_pages(view: np.ndarray) -> None:
    """Best effort: unmap the full pages of a searched chunk of a shared, file-backed memmap.

    Only shared mappings are touched (their pages live in the page cache, so a later access just
    faults them back in); private ('c') maps and ordinary arrays are left alone.
    """
    if (
        _libc is None
        or not isinstance(view, np.memmap)
        or getattr(view, "_mmap", None) is None
        or view.mode not in ("r", "r+", "w+")
        or not view.flags.c_contiguous
    ):
        return
    page = mmap.PAGESIZE
    start = -(-view.ctypes.data // page) * page  # first full page inside the chunk
    end = (view.ctypes.data + view.nbytes) // page * page
    if end > start:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


# --------------------------------------------------------------------------- approximate search


def build_ann_index(
    docs: np.ndarray, kind: str = "ivf", *, seed: int = 0, chunk_size: int = 65536, **params
) -> faiss.Index:
    """An approximate inner-product index over ``docs`` (held in RAM by faiss).

    kind="ivf": IVF-Flat. Params ``nlist`` (default ~4*sqrt(N), at most N//39), ``nprobe``
    (default min(nlist, 16)), ``train_size`` (default min(N, 40*nlist)). k-means is trained on a
    sample of rows drawn with ``seed`` (faiss's k-means seed is set to ``seed`` too).
    kind="hnsw": HNSW-Flat. Params ``M`` (32), ``efConstruction`` (40), ``efSearch`` (64).
    Parameter names follow faiss; change ``index.nprobe`` / ``index.hnsw.efSearch`` later to trade
    speed for recall. Vectors are added in chunks, so a memmapped corpus is read once.
    """
    docs = _check_docs(docs)
    n_docs, dim = docs.shape
    if n_docs == 0:
        raise ValueError("cannot build an ANN index over an empty corpus")
    params = dict(params)
    if kind == "ivf":
        nlist = int(params.pop("nlist", max(1, min(int(4 * np.sqrt(n_docs)), n_docs // 39))))
        nprobe = int(params.pop("nprobe", min(nlist, 16)))
        train_size = int(params.pop("train_size", min(n_docs, 40 * nlist)))
        if not 1 <= nlist <= n_docs:
            raise ValueError(f"nlist must be in [1, n_docs={n_docs}], got {nlist}")
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", _IP)
        index.cp.seed = int(seed)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n_docs, size=max(nlist, min(train_size, n_docs)), replace=False))
        index.train(np.ascontiguousarray(docs[rows], dtype=np.float32))
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(params.pop("M", 32)), _IP)
        index.hnsw.efConstruction = int(params.pop("efConstruction", 40))
        index.hnsw.efSearch = int(params.pop("efSearch", 64))
    else:
        raise ValueError(f"kind must be 'ivf' or 'hnsw', got {kind!r}")
    if params:
        raise TypeError(f"unknown parameters for kind={kind!r}: {sorted(params)}")
    for start in range(0, n_docs, chunk_size):
        index.add(np.ascontiguousarray(docs[start : start + chunk_size], dtype=np.float32))
    return index


def ann_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k: ``(scores, indices)`` of shape (n, min(k, index.ntotal)), best first.

    Where the index finds fewer than k neighbours (e.g. IVF with few lists probed) the missing
    places hold index -1. No tie-order guarantee, unlike `exact_search`.
    """
    k = min(_check_k(k), index.ntotal)
    queries = _check_queries(queries, index.d, what="the index's vectors")
    if k == 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    return index.search(queries, k)


def recall_against_exact(ann_indices: np.ndarray, exact_indices: np.ndarray, k: int) -> float:
    """Mean over queries of |ANN top-k ∩ exact top-k| / |exact top-k| (``-1`` entries ignored).

    Queries whose exact list is empty are skipped; NaN if every one is. A document tied with the
    exact k-th score but ranked just outside it counts as a miss.
    """
    k = _check_k(k)
    ann, exact = np.asarray(ann_indices), np.asarray(exact_indices)
    if ann.ndim != 2 or exact.ndim != 2 or ann.shape[0] != exact.shape[0]:
        raise ValueError(
            f"need two 2-D index arrays with one row per query, got {ann.shape} and {exact.shape}"
        )
    recalls = []
    for a_row, e_row in zip(ann[:, :k], exact[:, :k]):
        truth = set(e_row[e_row >= 0].tolist())
        if truth:
            recalls.append(len(truth.intersection(a_row[a_row >= 0].tolist())) / len(truth))
    return float(np.mean(recalls)) if recalls else float("nan")


# --------------------------------------------------------------------------- identical ids


def drop_identical_ids(scores: np.ndarray, indices: np.ndarray, qids: list[str], doc_ids: list[str],
                       k: int) -> tuple[np.ndarray, np.ndarray]:
    """BEIR's `ignore_identical_ids`: a retrieved doc whose id equals the query's id does not count.
    Returns the top `k` of each row without such docs (-inf / -1 where fewer remain)."""
    retrieved_ids = np.asarray(doc_ids, dtype=object)[np.maximum(indices, 0)]
    keep = (indices >= 0) & (retrieved_ids != np.asarray(qids, dtype=object)[:, None])
    # Stable sort puts the kept columns first, in their ranked order; then cut to k.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, order, axis=1)
    return (
        np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32),
        np.where(kept, np.take_along_axis(indices, order, axis=1), -1),
    )


def rank_for_queries(query_vectors: np.ndarray, doc_vectors: np.ndarray, k: int, *, qids: list[str],
                     doc_ids: list[str], ignore_identical_ids: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`k` (scores, rows) of each query over `doc_vectors`, with a task's identical-id rule
    applied (one extra result is fetched when a query's own document may have to be dropped)."""
    depth = min(k + int(ignore_identical_ids), len(doc_ids))
    scores, indices = exact_search(query_vectors, doc_vectors, depth)
    if ignore_identical_ids:
        scores, indices = drop_identical_ids(scores, indices, qids, doc_ids, k)
    return scores, indices
