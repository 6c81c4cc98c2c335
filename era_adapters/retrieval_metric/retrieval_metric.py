"""ERA retrieval metric for Hugging Face ``evaluate``: nDCG@k, Recall@k, MRR@10, MAP@100.

Loads offline from this folder, which the era-adapters wheel installs::

    import evaluate
    from era_adapters.metrics import EVALUATE_MODULE
    metric = evaluate.load(EVALUATE_MODULE)

A thin wrapper: every number comes from ``era_adapters.metrics`` (one implementation, equal to
pytrec_eval / trec_eval to 1e-6). See ``RetrievalMetric`` for the input format.
"""
from __future__ import annotations

import datasets
import evaluate

try:  # indented on purpose: evaluate's import scanner must not demand a pip package "era_adapters"
    from era_adapters import metrics as _m
except ImportError as error:
    raise ImportError(
        "retrieval_metric needs the era-adapters library: `pip install era-adapters` (or `pip install .` in its repo)"
    ) from error


_DESCRIPTION = """\
Retrieval metrics as trec_eval (pytrec_eval) computes them, per query then averaged:
ndcg@1/5/10/100 (ndcg_cut), recall@10/100, mrr@10 (recip_rank on the top 10), map@100
(map_cut_100). A doc is relevant iff its label is >= 1; nDCG gain is the label ("linear",
as trec_eval) or 2**label - 1 ("exponential"). Equal scores are ordered by doc id descending,
as trec_eval does.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: one entry per query, either
        - a list of doc ids in rank order (best first), or
        - a dict {"doc_ids": [str, ...], "scores": [float, ...]} (any order; ranked by score
          descending, ties by doc id descending, exactly as trec_eval).
        An empty list / empty dict lists means nothing was retrieved: the query scores 0.
    references: one entry per query, aligned with predictions:
        {"doc_ids": [str, ...], "labels": [int, ...]} (the qrels of that query). Each query
        needs at least one label >= 1.
    gain: "linear" (default) or "exponential" nDCG gain.
    metrics: list of metric names (default era_adapters.metrics.METRIC_NAMES), e.g. ["ndcg@10"].
    return_per_query: also return "per_query": {metric: [value per query]}.
Returns:
    {metric: mean over queries (float)} (+ "per_query" when asked).
Example:
    >>> metric = evaluate.load(EVALUATE_MODULE)
    >>> metric.compute(predictions=[["d1", "d2"]],
    ...                references=[{"doc_ids": ["d2"], "labels": [1]}], metrics=["mrr@10"])
    {'mrr@10': 0.5}
"""

_QRELS = {"doc_ids": datasets.Sequence(datasets.Value("string")), "labels": datasets.Sequence(datasets.Value("int64"))}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalMetric(evaluate.Metric):
    """trec_eval-exact retrieval metrics (nDCG@k, Recall@k, MRR@10, MAP@100) over queries.

    Input format, one example per query (``predictions[i]`` and ``references[i]``):

    * ``predictions[i]``: a ranked list of doc ids (best first), or a run
      ``{"doc_ids": [...], "scores": [...]}`` ranked by score (ties: doc id descending).
    * ``references[i]``: the query's qrels ``{"doc_ids": [...], "labels": [...]}``, int labels,
      relevant iff >= 1, at least one relevant doc per query.

    All predictions of one ``compute``/``add_batch`` session use one of the two formats (the
    first example picks it). Queries are numbered in input order; scores are float64.

    ``compute(..., gain="linear"|"exponential", metrics=None, return_per_query=False)``
    returns ``{metric: mean}``; all numbers come from ``era_adapters.metrics``.
    """

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": {
                            "doc_ids": datasets.Sequence(datasets.Value("string")),
                            "scores": datasets.Sequence(datasets.Value("float64")),
                        },
                        "references": _QRELS,
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("string")), "references": _QRELS}
                ),
            ],
            reference_urls=["https://github.com/usnistgov/trec_eval", "https://github.com/cvangysel/pytrec_eval"],
        )

    def _compute(self, predictions, references, gain="linear", metrics=None, return_per_query=False):
        qids = [str(i) for i in range(len(predictions))]
        run, qrels = {}, {}
        for qid, pred, ref in zip(qids, predictions, references):
            if isinstance(pred, dict):
                doc_ids, scores = list(pred["doc_ids"]), [float(s) for s in pred["scores"]]
                if len(doc_ids) != len(scores):
                    raise ValueError(f"query {qid}: {len(doc_ids)} doc_ids but {len(scores)} scores")
            else:  # ranked list: strictly decreasing scores keep the given order
                doc_ids = list(pred)
                scores = [float(len(doc_ids) - r) for r in range(len(doc_ids))]
            run[qid] = dict(zip(doc_ids, scores))
            if len(run[qid]) != len(doc_ids):
                raise ValueError(f"query {qid}: a doc id is listed more than once in the prediction")
            if len(ref["doc_ids"]) != len(ref["labels"]):
                raise ValueError(f"query {qid}: references doc_ids and labels differ in length")
            qrels[qid] = dict(zip(ref["doc_ids"], (int(x) for x in ref["labels"])))
            if len(qrels[qid]) != len(ref["doc_ids"]):
                raise ValueError(f"query {qid}: a doc id is listed more than once in the references")
        per_q = _m.per_query_metrics(
            run, qrels, qids, metrics=_m.METRIC_NAMES if metrics is None else metrics, gain=gain
        )
        out = {name: float(v.mean()) for name, v in per_q.items()}
        if return_per_query:
            out["per_query"] = {name: v.tolist() for name, v in per_q.items()}
        return out
