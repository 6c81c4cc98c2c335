"""Retrieval metrics, vectorised with numpy, equal to ``pytrec_eval`` (trec_eval) to 1e-6.
(Longer than most modules: the eight metrics share one relevance matrix and its tie rules.)

Metrics (``METRIC_NAMES``; any ``<family>@<k>`` with family in ndcg / recall / mrr / map works):

==============  =====================================================================
``ndcg@k``      trec_eval ``ndcg_cut_k``: DCG = sum_{rank r <= k} gain(label) / log2(r + 1),
                divided by the ideal DCG at k built from *all* judged docs of the query.
                ``gain="linear"`` (default, as trec_eval): gain = label; ``"exponential"``:
                gain = 2**label - 1. Labels <= 0 and unjudged docs have gain 0.
``recall@k``    trec_eval ``recall_k``: relevant docs in the top k / relevant docs in qrels.
``mrr@k``       trec_eval ``recip_rank`` on the run cut to its top k: 1 / rank of the first
                relevant doc if that rank is <= k, else 0.
``map@k``       trec_eval ``map_cut_k``: sum over relevant docs at rank r <= k of
                precision@r, divided by the number of relevant docs in qrels.
==============  =====================================================================

A doc is *relevant* iff its label is >= 1 (trec_eval's default ``relevance_level``).

Ranking and ties: as trec_eval, the run of a query is ordered by score descending and equal
scores are ordered by doc id *descending* in byte order of the UTF-8 ids (C ``strcmp``; for
Python ``str`` this is code-point order, i.e. plain ``str`` comparison). So among docs
``"a", "b", "c"`` with one score, ``"c"`` is ranked first. The order in which a dict lists its
docs plays no part.

Inputs are the ``pytrec_eval`` shapes (``run: {qid: {doc_id: score}}``, ``qrels: {qid: {doc_id:
int label}}``) or, on the fast path, the ``(n_queries, k)`` index/score arrays a faiss search
returns plus the corpus doc ids (``per_query_metrics_ranked``). Either way one relevance
matrix ``(n_queries, depth)`` is built and every metric is a few array operations on it. No
Python loop runs per document: the dicts are read with C-level ``map``/``chain`` (one generator
step per query), labels are joined by dict lookups or integer ``searchsorted``, and ranking is
one row-wise ``argsort`` (doc ids are compared only for scores that tie).

Errors (``ValueError`` unless stated): a query id in the run and not in qrels or the other way
round (message names the ids); a query whose qrels hold no label >= 1 (the caller should have
excluded it); non-integer labels; NaN scores; duplicated docs in a ranked row. A query whose
run is empty (``run[qid] == {}``) scores 0 everywhere.

``paired_test`` is a paired two-sided randomisation (sign-flip) test for two systems scored
on the same queries; numpy only, fixed seed.

``EVALUATE_MODULE`` is the folder of the Hugging Face ``evaluate`` module that wraps these metrics
(shipped in the wheel): ``evaluate.load(era_adapters.metrics.EVALUATE_MODULE)`` works offline.
"""
from __future__ import annotations

import importlib.resources
import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, repeat
from typing import Literal

import numpy as np

__all__ = [
    "EVALUATE_MODULE",
    "METRIC_NAMES",
    "per_query_metrics",
    "mean_metrics",
    "per_query_metrics_ranked",
    "mean_metrics_ranked",
    "paired_test",
]

METRIC_NAMES: tuple[str, ...] = (
    "ndcg@10",
    "ndcg@1",
    "ndcg@5",
    "ndcg@100",
    "recall@10",
    "recall@100",
    "mrr@10",
    "map@100",
)

EVALUATE_MODULE = str(importlib.resources.files("era_adapters") / "retrieval_metric")
Gain = Literal["linear", "exponential"]
_METRIC_RE = re.compile(r"^(ndcg|recall|mrr|map)@([1-9][0-9]*)$")
_MAX_LISTED = 5  # ids named in an error message


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _parse_metrics(metrics: Iterable[str]) -> list[tuple[str, str, int]]:
    if isinstance(metrics, str):
        metrics = [metrics]
    parsed = []
    for name in metrics:
        m = _METRIC_RE.match(name) if isinstance(name, str) else None
        if m is None:
            raise ValueError(
                f"unknown metric {name!r}: expected '<family>@<k>' with family in "
                "ndcg, recall, mrr, map and k >= 1 (e.g. 'ndcg@10')"
            )
        parsed.append((name, m.group(1), int(m.group(2))))
    if not parsed:
        raise ValueError("no metrics requested")
    return parsed


def _gain(labels: np.ndarray, gain: str) -> np.ndarray:
    """Gain of each label; labels <= 0 (and unjudged docs, stored as 0) give 0."""
    if gain == "linear":
        return np.where(labels > 0, labels, 0.0)
    if gain == "exponential":
        return np.where(labels > 0, np.exp2(np.maximum(labels, 0.0)) - 1.0, 0.0)
    raise ValueError(f"gain must be 'linear' or 'exponential', not {gain!r}")


def _name_ids(ids: Iterable) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:_MAX_LISTED])
    return shown + (f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else "")


def _check_same_qids(run_keys: Iterable, qrels_keys: Iterable) -> None:
    run_keys, qrels_keys = set(run_keys), set(qrels_keys)
    only_run = sorted(run_keys - qrels_keys, key=str)
    only_qrels = sorted(qrels_keys - run_keys, key=str)
    if only_run:
        raise ValueError(f"query id(s) in the run but not in qrels: {_name_ids(only_run)}")
    if only_qrels:
        raise ValueError(
            f"query id(s) in qrels but not in the run: {_name_ids(only_qrels)} "
            "(give a query with no retrieved docs an empty dict: it scores 0)"
        )


class _Qrels:
    """The qrels of the selected queries, flattened: counts of relevant docs and sorted gains."""

    def __init__(self, qrels: Mapping, qids: Sequence, gain: str):
        missing = [q for q in qids if q not in qrels]
        if missing:
            raise ValueError(f"query id(s) not in qrels: {_name_ids(missing)}")
        per_q = [qrels[q] for q in qids]
        for q, d in zip(qids, per_q):
            if not isinstance(d, Mapping):
                raise TypeError(f"qrels[{q!r}] must be a dict {{doc_id: label}}, not {type(d).__name__}")
        lens = np.fromiter(map(len, per_q), dtype=np.int64, count=len(per_q))
        try:
            labels = np.fromiter(
                chain.from_iterable(d.values() for d in per_q), dtype=np.float64, count=int(lens.sum())
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"qrels labels must be integers: {e}") from None
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        qq = np.repeat(np.arange(len(qids)), lens)
        if bad.any():
            q = qids[int(qq[np.argmax(bad)])]
            raise ValueError(f"qrels labels must be integers; query {q!r} has {labels[np.argmax(bad)]!r}")
        self.per_q, self.q, self.labels = per_q, qq, labels
        self.n_rel = np.bincount(qq, weights=labels >= 1, minlength=len(qids))
        no_rel = np.flatnonzero(self.n_rel == 0)
        if no_rel.size:
            raise ValueError(
                f"{no_rel.size} query(ies) have no relevant doc (label >= 1) in qrels: "
                f"{_name_ids(qids[i] for i in no_rel)}; exclude them before scoring"
            )
        # Positive gains of each query, sorted descending: the ideal ranking.
        pos_mask = labels > 0
        g = _gain(labels[pos_mask], gain)
        gq = qq[pos_mask]
        order = np.lexsort((-g, gq))
        self.ideal_gain, self.ideal_q = g[order], gq[order]
        counts = np.bincount(self.ideal_q, minlength=len(qids))
        starts = np.cumsum(counts) - counts
        self.ideal_pos = np.arange(self.ideal_q.size) - starts[self.ideal_q]

    def idcg(self, k: int, n_q: int) -> np.ndarray:
        keep = self.ideal_pos < k
        w = self.ideal_gain[keep] / np.log2(self.ideal_pos[keep] + 2.0)
        return np.bincount(self.ideal_q[keep], weights=w, minlength=n_q)


def _tie_keys(ids) -> np.ndarray:
    """Rank of each doc id in ascending str order (= UTF-8 byte order, trec_eval's strcmp)."""
    ids = np.asarray(ids, dtype=object)
    if not all(isinstance(d, str) for d in ids):
        raise TypeError("doc ids must be str (they break ties of equal scores, as in trec_eval)")
    return np.unique(ids, return_inverse=True)[1].reshape(-1)


def _relevance_matrix_2d(scores, valid, labels, depth, doc_ids_at, qids) -> np.ndarray:
    """Rank each row as trec_eval does and return the labels at ranks 1..depth.

    ``scores``, ``valid``, ``labels``: ``(n_q, L)``; cells with ``valid`` False are padding
    (ignored wherever they sit). ``doc_ids_at(rows, cols)`` gives the doc ids of cells; it is
    only called for cells whose score ties another in the same row. Ranks past a row's last
    doc are 0 (unjudged).
    """
    n_q, width = scores.shape
    nan = np.isnan(scores) & valid
    if nan.any():
        raise ValueError(f"NaN score in the run of query {qids[int(np.nonzero(nan)[0][0])]!r}")
    key = np.where(valid, -scores, np.inf)  # ascending key = score descending, padding last
    if np.any(valid & (key == np.inf)):  # real -inf scores: keep padding strictly after them
        order = np.lexsort((key, ~valid), axis=1)
    else:
        order = np.argsort(key, axis=1, kind="stable")
    ks = np.take_along_axis(key, order, axis=1)
    vs = np.take_along_axis(valid, order, axis=1)
    same = (ks[:, 1:] == ks[:, :-1]) & vs[:, 1:] & vs[:, :-1]
    if same.any():
        # Break ties by doc id, descending (trec_eval: strcmp(b, a)). Only tied cells need a
        # key: every other real cell has a score unique in its row.
        tied = np.zeros((n_q, width), dtype=bool)
        tied[:, 1:] |= same
        tied[:, :-1] |= same
        r, c = np.nonzero(tied)
        sec = np.zeros((n_q, width), dtype=np.int64)
        sec[r, c] = -_tie_keys(doc_ids_at(r, order[r, c]))
        rows = np.unique(r)  # re-sort only the rows that hold ties
        resort = np.lexsort((sec[rows], ks[rows], ~vs[rows]), axis=1)
        order[rows] = np.take_along_axis(order[rows], resort, axis=1)
        vs[rows] = np.take_along_axis(vs[rows], resort, axis=1)
    pos = np.cumsum(vs, axis=1) - 1  # rank - 1 among real docs
    r, c = np.nonzero(vs & (pos < depth))
    rel = np.zeros((n_q, depth), dtype=np.float64)
    rel[r, pos[r, c]] = labels[r, order[r, c]]
    return rel


def _relevance_matrix_flat(q, scores, labels, n_q, depth, doc_ids_of, qids) -> np.ndarray:
    """As ``_relevance_matrix_2d`` for ragged input: entries with query index ``q``.

    ``doc_ids_of(entry_indices)`` gives doc ids of entries (only called for ties).
    """
    nan = np.isnan(scores)
    if nan.any():
        raise ValueError(f"NaN score in the run of query {qids[int(q[np.argmax(nan)])]!r}")
    order = np.lexsort((-scores, q))  # stable: by query, then score descending
    qs, ss = q[order], scores[order]
    same = (qs[1:] == qs[:-1]) & (ss[1:] == ss[:-1])
    if same.any():
        tied = np.zeros(qs.size, dtype=bool)
        tied[1:] |= same
        tied[:-1] |= same
        tied_idx = np.flatnonzero(tied)
        sec = np.zeros(qs.size, dtype=np.int64)
        sec[tied_idx] = -_tie_keys(doc_ids_of(order[tied_idx]))
        resort = np.lexsort((sec, -ss, qs))
        order, qs = order[resort], qs[resort]
    counts = np.bincount(q, minlength=n_q)
    starts = np.cumsum(counts) - counts
    pos = np.arange(qs.size) - starts[qs]
    keep = pos < depth
    rel = np.zeros((n_q, depth), dtype=np.float64)
    rel[qs[keep], pos[keep]] = labels[order[keep]]
    return rel


def _metrics_from_matrix(rel, qr: _Qrels, parsed, gain) -> dict[str, np.ndarray]:
    n_q, depth = rel.shape
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    families = {f for _, f, _ in parsed}
    if "ndcg" in families:
        dcg_cum = np.cumsum(_gain(rel, gain) / np.log2(ranks + 1.0), axis=1)
    if families & {"recall", "mrr", "map"}:
        is_rel = rel >= 1
        n_rel_cum = np.cumsum(is_rel, axis=1)
    if "map" in families:
        ap_cum = np.cumsum(np.where(is_rel, n_rel_cum / ranks, 0.0), axis=1)
    if "mrr" in families:
        first = np.argmax(is_rel, axis=1)  # index of the first relevant doc (0 if none)
    for name, fam, k in parsed:
        c = min(k, depth) - 1
        if fam == "ndcg":
            idcg = qr.idcg(k, n_q)  # > 0: every query has a label >= 1
            out[name] = dcg_cum[:, c] / idcg
        elif fam == "recall":
            out[name] = n_rel_cum[:, c] / qr.n_rel
        elif fam == "map":
            out[name] = ap_cum[:, c] / qr.n_rel
        else:  # mrr
            out[name] = np.where(n_rel_cum[:, c] > 0, 1.0 / (first + 1.0), 0.0)
    return out


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def per_query_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    qids: Sequence[str] | None = None,
    *,
    metrics: Iterable[str] = METRIC_NAMES,
    gain: Gain = "linear",
) -> dict[str, np.ndarray]:
    """Per-query metrics of a run, as trec_eval computes them.

    Args:
        run: ``{qid: {doc_id: score}}``; higher score = better; any number of docs per query
            (only the top ``max k`` count). ``{}`` for a query with no retrieved docs.
        qrels: ``{qid: {doc_id: int label}}``; relevant iff label >= 1; each query needs one.
        qids: the queries to score, in the order of the returned arrays. Default:
            ``list(qrels)``, and then run and qrels must hold exactly the same query ids.
            When given, each must be in both; other ids in run or qrels are ignored.
        metrics: names like ``"ndcg@10"`` (see ``METRIC_NAMES``).
        gain: nDCG gain, ``"linear"`` (label, as trec_eval) or ``"exponential"`` (2**label - 1).

    Returns:
        ``{metric: float64 array of shape (len(qids),)}`` aligned with ``qids``.
    """
    parsed = _parse_metrics(metrics)
    _gain(np.zeros(1), gain)  # validate early
    if qids is None:
        _check_same_qids(run.keys(), qrels.keys())
        qids = list(qrels)
    else:
        qids = list(qids)
        missing = [q for q in qids if q not in run]
        if missing:
            raise ValueError(f"query id(s) not in the run: {_name_ids(missing)}")
    if not qids:
        raise ValueError("no queries to score")
    qr = _Qrels(qrels, qids, gain)
    per_q_run = [run[q] for q in qids]
    for q, d in zip(qids, per_q_run):
        if not isinstance(d, Mapping):
            raise TypeError(f"run[{q!r}] must be a dict {{doc_id: score}}, not {type(d).__name__}")
    lens = np.fromiter(map(len, per_q_run), dtype=np.int64, count=len(qids))
    total = int(lens.sum())
    try:
        scores = np.fromiter(chain.from_iterable(d.values() for d in per_q_run), np.float64, count=total)
    except (TypeError, ValueError) as e:
        raise ValueError(f"run scores must be numbers: {e}") from None
    # Label of every retrieved doc, looked up with a C-level map per query (unjudged -> 0).
    labels = np.fromiter(
        chain.from_iterable(map(g.get, d, repeat(0)) for g, d in zip(qr.per_q, per_q_run)),
        np.float64,
        count=total,
    )
    n_q = len(qids)
    q = np.repeat(np.arange(n_q), lens)

    def flat_doc_ids():
        return np.fromiter(chain.from_iterable(per_q_run), dtype=object, count=total)

    depth = max(k for _, _, k in parsed)
    width = int(lens.max())
    if n_q * width <= 2 * total + 100_000:  # not too ragged: pad to a matrix, sort its rows
        starts = np.cumsum(lens) - lens
        col = np.arange(total) - starts[q]
        valid = np.zeros((n_q, width), dtype=bool)
        valid[q, col] = True
        sc2 = np.zeros((n_q, width))
        sc2[q, col] = scores
        lab2 = np.zeros((n_q, width))
        lab2[q, col] = labels
        rel = _relevance_matrix_2d(
            sc2, valid, lab2, depth, lambda r, c: flat_doc_ids()[starts[r] + c], qids
        )
    else:
        rel = _relevance_matrix_flat(
            q, scores, labels, n_q, depth, lambda e: flat_doc_ids()[e], qids
        )
    return _metrics_from_matrix(rel, qr, parsed, gain)


def per_query_metrics_ranked(
    indices: np.ndarray,
    doc_ids: Sequence[str] | np.ndarray,
    qids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    scores: np.ndarray | None = None,
    *,
    metrics: Iterable[str] = METRIC_NAMES,
    gain: Gain = "linear",
) -> dict[str, np.ndarray]:
    """Fast path for search output: per-query metrics from ranked index arrays.

    Args:
        indices: int array ``(n_queries, k)``, row i = the docs retrieved for ``qids[i]`` as
            positions in ``doc_ids`` (what ``faiss.Index.search`` returns as ``I``); ``-1``
            marks "no result" (faiss padding) and is skipped.
        doc_ids: the corpus doc ids, ``doc_ids[j]`` = id of the doc at position j.
        qids: query id of each row; each must be in ``qrels`` (other qrels ids are ignored).
        qrels: ``{qid: {doc_id: int label}}``, as in ``per_query_metrics``.
        scores: float array ``(n_queries, k)`` (faiss ``D``, higher = better) or None. Given,
            each row is re-ordered exactly as trec_eval orders the equivalent run dict (score
            descending, ties by doc id descending), so the result equals
            ``per_query_metrics`` on that dict. None: each row is taken as ranked already.
        metrics, gain: as in ``per_query_metrics``.

    Returns:
        ``{metric: float64 array of shape (n_queries,)}`` aligned with ``qids``.
    """
    parsed = _parse_metrics(metrics)
    _gain(np.zeros(1), gain)
    indices = np.asarray(indices)
    if indices.ndim != 2 or (indices.size and indices.dtype.kind not in "iu"):
        raise ValueError(f"indices must be a 2-D integer array, got shape {indices.shape} dtype {indices.dtype}")
    qids = list(qids)
    n_q, k_ret = indices.shape
    if len(qids) != n_q:
        raise ValueError(f"{len(qids)} qids for {n_q} rows of indices")
    if n_q == 0:
        raise ValueError("no queries to score")
    doc_ids = doc_ids if isinstance(doc_ids, np.ndarray) else np.asarray(doc_ids, dtype=object)
    if doc_ids.ndim != 1 or doc_ids.dtype.kind not in "OUS":
        raise TypeError(f"doc_ids must be a 1-D sequence of str doc ids, got dtype {doc_ids.dtype}")
    if indices.size and (indices.max() >= len(doc_ids) or indices.min() < -1):
        raise ValueError(f"indices must lie in [-1, {len(doc_ids)}) (the corpus has {len(doc_ids)} docs)")
    if scores is None:
        scores = np.broadcast_to(-np.arange(k_ret, dtype=np.float64), indices.shape)
    else:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != indices.shape:
            raise ValueError(f"scores shape {scores.shape} != indices shape {indices.shape}")
    qr = _Qrels(qrels, qids, gain)

    valid = indices >= 0
    # duplicated docs in a row would be collapsed by a run dict: refuse them
    key = np.sort(np.where(valid, indices, -1 - np.arange(k_ret)), axis=1)  # padding: distinct < 0
    dup = key[:, 1:] == key[:, :-1]
    if dup.any():
        raise ValueError(f"query {qids[int(np.nonzero(dup)[0][0])]!r}: the same doc is retrieved more than once")
    # labels by an integer join: number the distinct retrieved docs, look the qrels doc ids up
    # in that numbering (one dict, C-level map), then match (row, doc) keys with searchsorted.
    uniq, inv = np.unique(np.where(valid, indices, -1), return_inverse=True)
    inv = inv.reshape(indices.shape)
    n_u = np.int64(uniq.size)
    first = int(uniq.size > 0 and uniq[0] < 0)  # code 0 is padding when there is padding
    number = dict(zip(doc_ids[uniq[first:]].tolist(), range(first, uniq.size)))
    if len(number) != uniq.size - first:
        raise ValueError("doc_ids holds the same id at several positions, and more than one was retrieved")
    qcode = np.fromiter(
        chain.from_iterable(map(number.get, d, repeat(-1)) for d in qr.per_q), np.int64, count=qr.labels.size
    )
    judged = qcode >= 0
    qkey = qr.q[judged] * n_u + qcode[judged]
    korder = np.argsort(qkey)
    qkey, qlab = qkey[korder], qr.labels[judged][korder]
    if qkey.size:
        rkey = np.arange(n_q, dtype=np.int64)[:, None] * n_u + inv
        at = np.minimum(np.searchsorted(qkey, rkey), qkey.size - 1)
        labels = np.where(valid & (qkey[at] == rkey), qlab[at], 0.0)
    else:  # no judged doc was retrieved
        labels = np.zeros(indices.shape)
    depth = max(k for _, _, k in parsed)
    rel = _relevance_matrix_2d(scores, valid, labels, depth, lambda r, c: doc_ids[indices[r, c]], qids)
    return _metrics_from_matrix(rel, qr, parsed, gain)


def _means(per_q: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(v.mean()) for name, v in per_q.items()}


def mean_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    qids: Sequence[str] | None = None,
    *,
    metrics: Iterable[str] = METRIC_NAMES,
    gain: Gain = "linear",
) -> dict[str, float]:
    """Mean over queries of ``per_query_metrics`` (same arguments): ``{metric: float}``."""
    return _means(per_query_metrics(run, qrels, qids, metrics=metrics, gain=gain))


def mean_metrics_ranked(
    indices: np.ndarray,
    doc_ids: Sequence[str] | np.ndarray,
    qids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    scores: np.ndarray | None = None,
    *,
    metrics: Iterable[str] = METRIC_NAMES,
    gain: Gain = "linear",
) -> dict[str, float]:
    """Mean over queries of ``per_query_metrics_ranked`` (same arguments): ``{metric: float}``."""
    return _means(
        per_query_metrics_ranked(indices, doc_ids, qids, qrels, scores, metrics=metrics, gain=gain)
    )


def paired_test(
    a: np.ndarray, b: np.ndarray, seed: int = 0, n_resamples: int = 10_000
) -> dict[str, float]:
    """Paired two-sided randomisation (sign-flip) test of mean(a) == mean(b).

    ``a`` and ``b`` are per-query scores of two systems on the same queries, in the same order.
    Under the null the sign of each per-query difference is exchangeable; the p-value is the
    share of sign assignments whose |mean difference| is at least the observed one. All
    ``2**n`` assignments are enumerated when that is <= ``n_resamples``; otherwise
    ``n_resamples`` random ones (numpy ``default_rng(seed)``) with the +1 correction
    ``(hits + 1) / (n_resamples + 1)``. Identical systems give p = 1.

    Returns ``{"p_value", "mean_diff" (mean of a - b), "n" (queries)}``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D and of one length, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired_test needs at least one query")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired_test: scores must be finite")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    d = a - b
    n = d.size
    observed = abs(d.mean())
    # tolerance so that sign patterns equal to the observed one up to rounding count as hits
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()) / n)
    if n < 63 and 2**n <= n_resamples:
        patterns = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
        stats = np.abs((1 - 2 * patterns) @ d) / n
        hits = int((stats >= observed - tol).sum())
        p = hits / 2**n
    else:
        rng = np.random.default_rng(seed)
        hits, done, chunk = 0, 0, max(1, min(n_resamples, 2**22 // n))
        while done < n_resamples:
            m = min(chunk, n_resamples - done)
            signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
            stats = np.abs(signs @ d) / n
            hits += int((stats >= observed - tol).sum())
            done += m
        p = (hits + 1) / (n_resamples + 1)
    return {"p_value": float(p), "mean_diff": float(d.mean()), "n": int(n)}
