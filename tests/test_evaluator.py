"""era_adapters.evaluator.EraEvaluator: sentence-transformers' evaluator shape, ERA's honesty (the adapter
next to doc2doc and query2query on the same queries, with counts and a paired test)."""
from __future__ import annotations

import json

import pytest

from era_adapters.adapt import adapt
from era_adapters.evaluator import EraEvaluator
from synonym_task import FAST


def test_evaluator_reports_the_adapter_next_to_both_baselines(setup, tmp_path):
    docs = [json.loads(line) for line in (setup / "data" / "syn" / "docs.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (setup / "data" / "syn" / "queries.jsonl").read_text().splitlines()]
    corpus = {doc["id"]: doc["doc"] for doc in docs}
    train, test = queries[:60], queries[60:]
    trained = adapt(pairs=[(q["query"], q["labels"][0]["id"]) for q in train], corpus=corpus, init=setup / "align",
                    output=tmp_path / "both", label_budget=1.0, validation="holdout", cache_dir=setup / "cache", **FAST)
    evaluator = EraEvaluator({q["qid"]: q["query"] for q in test}, corpus,
                             {q["qid"]: {q["labels"][0]["id"]: 1} for q in test}, name="syn-test",
                             cache_dir=setup / "cache")
    in_memory = evaluator(trained, output_path=tmp_path / "report")
    assert in_memory["n_queries"] == 60
    for system in ("adapter", "doc2doc", "query2query"):
        assert 0.0 <= in_memory[f"{system}_ndcg@10"] <= 1.0
    assert in_memory[evaluator.primary_metric] == in_memory["adapter_ndcg@10"]
    # the labels taught the synonym map: far above the index on queries it never saw, and significant
    assert in_memory["adapter_ndcg@10"] > in_memory["doc2doc_ndcg@10"] + 0.2
    assert in_memory["adapter_vs_doc2doc_p_value"] < 0.05
    assert in_memory["adapter_vs_doc2doc_diff"] == pytest.approx(
        in_memory["adapter_ndcg@10"] - in_memory["doc2doc_ndcg@10"], abs=1e-9)
    assert "| system | syn-test (60 queries) |" in (tmp_path / "report" / "results.md").read_text()
    from_folder = evaluator(tmp_path / "both")  # the saved folder scores the same
    assert from_folder["adapter_ndcg@10"] == pytest.approx(in_memory["adapter_ndcg@10"], abs=1e-6)
    without = EraEvaluator({q["qid"]: q["query"] for q in test}, corpus, {q["qid"]: {q["labels"][0]["id"]} for q in test},
                           query2query=False, cache_dir=setup / "cache")(trained)
    assert "query2query_ndcg@10" not in without and without["doc2doc_ndcg@10"] == in_memory["doc2doc_ndcg@10"]
