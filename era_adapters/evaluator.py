"""An evaluator for in-memory data, shaped like sentence-transformers' `InformationRetrievalEvaluator`:
built from `queries`, `corpus` and `relevant_docs` dicts, called on a model, returning a flat dict of
metrics. It runs `era_adapters.evaluate` (the same code as `era-evaluate`) on every given query, and
reports the adapter next to doc2doc (the index as it is) and query2query (the re-index), with the
query count and the paired sign-flip test against doc2doc.

    from era_adapters.evaluator import EraEvaluator

    evaluator = EraEvaluator(queries, corpus, relevant_docs, name="my-data")
    results = evaluator(adapter)        # the EraAdapter align/adapt returned, a folder or a Hub id
    results["adapter_ndcg@10"], results["doc2doc_ndcg@10"], results["adapter_vs_doc2doc_p_value"]
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from modeling_era import EraAdapter
from era_adapters.evaluate import EvaluateArguments, run_evaluation
from era_adapters.inputs import describe, task_from_dicts

__all__ = ["EraEvaluator"]


class EraEvaluator:
    """Scores an ERA adapter on every query of `relevant_docs` (exact search over the whole `corpus`).

    `queries` {qid: text}, `corpus` {doc_id: text}, `relevant_docs` {qid: {doc_id: grade} or a set of doc
    ids}. `instruction`: the instruction shown with every query (adapters with an `{instruction}` slot).
    `query2query=False` leaves out the re-index baseline (e.g. when the query encoder is too slow to
    embed the corpus). `cache_dir`: the ERA embedding cache. Calling it returns `{<system>_<metric>:
    value}` for `adapter`, `doc2doc` and `query2query`, `<system>_vs_doc2doc_diff` / `_p_value`, and
    `n_queries`; the whole report (per query too) is kept in `.report`.
    """

    primary_metric = "adapter_ndcg@10"

    def __init__(self, queries: Mapping[str, str], corpus: Mapping[str, str],
                 relevant_docs: Mapping[str, Mapping[str, int] | Iterable[str]], *, name: str = "",
                 instruction: str = "", query2query: bool = True, cache_dir: str | os.PathLike | None = None,
                 batch_size: int = 32) -> None:
        judged = {qid: text for qid, text in queries.items() if qid in relevant_docs}
        self.task = task_from_dicts(corpus, judged, relevant_docs, name=name or "evaluation", instruction=instruction)
        self.name, self.query2query, self.cache_dir, self.batch_size = name, query2query, cache_dir, batch_size
        self.report: dict[str, Any] | None = None

    def __call__(self, model: EraAdapter | str | os.PathLike, output_path: str | os.PathLike | None = None,
                 **_: Any) -> dict[str, float]:
        """Evaluate `model`; with `output_path`, also write the report files there (results.md, ...).
        (Extra keywords, such as sentence-transformers' `epoch` and `steps`, are accepted and ignored.)"""
        in_memory = isinstance(model, EraAdapter)
        spec = "adapter" if in_memory else str(model)
        systems = ["doc2doc"] + (["query2query"] if self.query2query else []) + [spec]
        args = EvaluateArguments(data=describe([self.task]), systems=systems, all_queries=True,
                                 cache_dir=None if self.cache_dir is None else str(self.cache_dir),
                                 batch_size=self.batch_size, output=None if output_path is None else str(output_path))
        self.report = run_evaluation(args, tasks=[self.task], models={spec: model} if in_memory else None)
        flat: dict[str, float] = {"n_queries": float(len(self.report["tasks"][self.task.name]["test_qids"]))}
        for name, result in self.report["results"].items():
            key = "adapter" if result["system"]["kind"] == "adapter" else name
            flat.update({f"{key}_{metric}": value for metric, value in result["macro"].items()})
            if result.get("vs_doc2doc"):
                flat[f"{key}_vs_doc2doc_diff"] = result["vs_doc2doc"]["mean_diff"]
                flat[f"{key}_vs_doc2doc_p_value"] = result["vs_doc2doc"]["p_value"]
        return flat
