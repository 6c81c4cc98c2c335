"""era_adapters.metrics: hand-computed cases, exact agreement with pytrec_eval, errors, the
`evaluate` module (offline), and the paired significance test."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest


from era_adapters.metrics import (
    EVALUATE_MODULE,
    METRIC_NAMES,
    mean_metrics,
    mean_metrics_ranked,
    paired_test,
    per_query_metrics,
    per_query_metrics_ranked,
)

pytrec_eval = pytest.importorskip("pytrec_eval")

TREC_MEASURES = {"ndcg_cut.1,5,10,100", "recall.10,100", "map_cut.100", "recip_rank"}
TREC_NAME = {
    "ndcg@1": "ndcg_cut_1",
    "ndcg@5": "ndcg_cut_5",
    "ndcg@10": "ndcg_cut_10",
    "ndcg@100": "ndcg_cut_100",
    "recall@10": "recall_10",
    "recall@100": "recall_100",
    "map@100": "map_cut_100",
}
# ids chosen to make ties interesting: case, prefixes, digits-as-text, non-ASCII (2, 3, 4 bytes)
TRICKY_IDS = ["a", "ab", "a b", "B", "b", "Z", "z", "10", "9", "é", "ß", "日本", "\U0001f600", "a\u0301", "ﬀ"]


def trec(run, qrels):
    """pytrec_eval's per-query values in our metric names (mrr@10: recip_rank cut at rank 10)."""
    res = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
    out = {}
    for name, t in TREC_NAME.items():
        out[name] = np.array([res[q][t] for q in qrels])
    rr = np.array([res[q]["recip_rank"] for q in qrels])
    out["mrr@10"] = np.where(rr >= 0.1, rr, 0.0)  # first relevant at rank r <= 10 iff 1/r >= 0.1
    return out


def random_case(seed, n_queries=300, pool=400, max_docs=150, long_query=False):
    """Random run with many tied scores, graded labels in {-1, 0, 1, 2, 3}, some empty runs."""
    rng = np.random.default_rng(seed)
    names = np.array([f"d{i}" for i in range(pool)] + TRICKY_IDS, dtype=object)
    run, qrels = {}, {}
    for i in range(n_queries):
        q = f"q{i}"
        n_docs = 0 if i % 37 == 0 else int(rng.integers(1, max_docs))
        if long_query and i == 1:
            n_docs = len(names)
        docs = rng.choice(names, size=n_docs, replace=False)
        scores = rng.integers(0, 12, size=n_docs) / 4.0  # few distinct values: many ties
        run[q] = {str(d): float(s) for d, s in zip(docs, scores)}
        n_judged = int(rng.integers(1, 40))
        judged = rng.choice(names, size=n_judged, replace=False)
        labels = rng.integers(-1, 4, size=n_judged)
        labels[0] = rng.integers(1, 4)  # at least one relevant doc
        qrels[q] = {str(d): int(x) for d, x in zip(judged, labels)}
    return run, qrels


# ----------------------------------------------------------------------------------------------
# hand-computed values
# ----------------------------------------------------------------------------------------------


def test_hand_computed_graded():
    run = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
    qrels = {"q": {"d1": 1, "d2": 0, "d3": 2, "d4": 3}}  # d4 relevant but not retrieved
    m = mean_metrics(run, qrels)
    # DCG = 1/log2(2) + 0/log2(3) + 2/log2(4) = 1 + 0 + 1 = 2
    # ideal: labels 3, 2, 1 -> 3/1 + 2/log2(3) + 1/log2(4) = 3.5 + 2/log2(3)
    assert m["ndcg@10"] == pytest.approx(2 / (3.5 + 2 / math.log2(3)), abs=1e-12)
    assert m["ndcg@100"] == pytest.approx(m["ndcg@10"], abs=1e-12)
    assert m["ndcg@1"] == pytest.approx(1 / 3, abs=1e-12)  # 1 / 3
    # @5: same DCG (only 3 docs), ideal also 3 docs deep
    assert m["ndcg@5"] == pytest.approx(m["ndcg@10"], abs=1e-12)
    # relevant (label >= 1): d1, d3, d4 -> 3; retrieved: d1 (rank 1), d3 (rank 3)
    assert m["recall@10"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["recall@100"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["mrr@10"] == pytest.approx(1.0, abs=1e-12)
    # AP = (P@1 + P@3) / 3 = (1 + 2/3) / 3 = 5/9
    assert m["map@100"] == pytest.approx(5 / 9, abs=1e-12)
    # exponential gain 2^l - 1: d1 -> 1, d3 -> 3, d4 -> 7
    # DCG = 1 + 3/2 = 2.5; ideal = 7 + 3/log2(3) + 1/2
    e = mean_metrics(run, qrels, gain="exponential")
    assert e["ndcg@10"] == pytest.approx(2.5 / (7.5 + 3 / math.log2(3)), abs=1e-12)
    assert e["ndcg@1"] == pytest.approx(1 / 7, abs=1e-12)
    assert e["recall@10"] == m["recall@10"] and e["map@100"] == m["map@100"]
    for name, v in m.items():
        assert trec(run, qrels)[name][0] == pytest.approx(v, abs=1e-12)


def test_ties_broken_by_doc_id_descending():
    qrels = {"q": {"a": 1}}
    # all tied: trec_eval ranks c, b, a (doc id descending), whatever the dict order
    for order in (["a", "b", "c"], ["c", "a", "b"]):
        m = mean_metrics({"q": {d: 1.0 for d in order}}, qrels)
        assert m["mrr@10"] == pytest.approx(1 / 3)
        assert m["ndcg@10"] == pytest.approx(1 / math.log2(4))  # gain 1 at rank 3, ideal 1
    # byte order of UTF-8: "b" (0x62) > "B" (0x42); "é" (U+00E9) > "z"; "ab" > "a"
    for hi, lo in (("b", "B"), ("é", "z"), ("ab", "a"), ("9", "10")):
        m = mean_metrics({"q": {lo: 0.5, hi: 0.5}}, {"q": {hi: 1}}, metrics=["mrr@10"])
        assert m["mrr@10"] == 1.0
        m = mean_metrics({"q": {lo: 0.5, hi: 0.5}}, {"q": {lo: 1}}, metrics=["mrr@10"])
        assert m["mrr@10"] == 0.5
    # a higher score always wins over the tie rule
    assert mean_metrics({"q": {"a": 2.0, "z": 1.0}}, qrels, metrics=["mrr@10"])["mrr@10"] == 1.0


def test_negative_and_zero_labels_count_as_unjudged():
    qrels_neg = {"q": {"a": 2, "b": -1, "c": 0, "d": 1}}
    qrels_none = {"q": {"a": 2, "d": 1}}
    run = {"q": {"b": 3.0, "c": 2.9, "x": 2.5, "a": 2.0, "d": 1.0}}
    m_neg, m_none = mean_metrics(run, qrels_neg), mean_metrics(run, qrels_none)
    assert m_neg == m_none
    # DCG@3 = 0 (b, c, x); DCG@10 = 2/log2(5) + 1/log2(6); ideal = 2 + 1/log2(3)
    assert m_neg["ndcg@10"] == pytest.approx((2 / math.log2(5) + 1 / math.log2(6)) / (2 + 1 / math.log2(3)))
    assert m_neg["mrr@10"] == pytest.approx(1 / 4)
    assert m_neg["map@100"] == pytest.approx((1 / 4 + 2 / 5) / 2)
    for name, v in m_neg.items():
        assert trec(run, qrels_neg)[name][0] == pytest.approx(v, abs=1e-12)


def test_cutoffs_and_empty_run():
    docs = {f"n{i:03d}": 100.0 - i for i in range(120)}
    run = {"deep": dict(docs, rel=100.0 - 9.5), "empty": {}}  # rel at rank 11 (after n000..n009)
    qrels = {"deep": {"rel": 1}, "empty": {"x": 1}}
    pq = per_query_metrics(run, qrels, ["deep", "empty"])
    assert pq["mrr@10"][0] == 0.0 and pq["recall@10"][0] == 0.0 and pq["ndcg@10"][0] == 0.0
    assert pq["recall@100"][0] == 1.0
    assert pq["ndcg@100"][0] == pytest.approx(1 / math.log2(12))
    assert pq["map@100"][0] == pytest.approx(1 / 11)
    for name in METRIC_NAMES:
        assert pq[name][1] == 0.0  # nothing retrieved scores 0
    # a doc beyond rank 100 counts for nothing
    run2 = {"deep": dict(docs, rel=-1.0)}
    assert mean_metrics(run2, {"deep": {"rel": 1}})["recall@100"] == 0.0
    # custom cutoffs
    m = mean_metrics(run, qrels, metrics=["recall@11", "mrr@11", "ndcg@20"])
    assert set(m) == {"recall@11", "mrr@11", "ndcg@20"}
    assert m["recall@11"] == 0.5 and m["mrr@11"] == pytest.approx(0.5 / 11)


# ----------------------------------------------------------------------------------------------
# exact agreement with pytrec_eval
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_pytrec_eval_random(seed):
    run, qrels = random_case(seed, long_query=(seed == 3))  # seed 3: ragged -> flat path
    ours = per_query_metrics(run, qrels)
    ref = trec(run, qrels)
    assert set(ours) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert ours[name].shape == (len(qrels),)
        np.testing.assert_allclose(ours[name], ref[name], rtol=0, atol=1e-6, err_msg=name)
    means = mean_metrics(run, qrels)
    for name in METRIC_NAMES:
        assert means[name] == pytest.approx(float(ref[name].mean()), abs=1e-9)


def test_mrr_equals_recip_rank_of_run_cut_to_top_10():
    run, qrels = random_case(7, n_queries=200)
    cut = {
        q: dict(sorted(d.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, d in run.items()
    }
    res = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    ref = np.array([res[q]["recip_rank"] for q in qrels])
    np.testing.assert_allclose(per_query_metrics(run, qrels)["mrr@10"], ref, atol=1e-6)


def test_exponential_gain_equals_trec_on_relabelled_qrels():
    run, qrels = random_case(11, n_queries=200)
    relabelled = {q: {d: (2**x - 1 if x > 0 else x) for d, x in g.items()} for q, g in qrels.items()}
    ours = per_query_metrics(run, qrels, gain="exponential")
    ref = trec(run, relabelled)
    for name in ("ndcg@1", "ndcg@5", "ndcg@10", "ndcg@100"):
        np.testing.assert_allclose(ours[name], ref[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("seed", [0, 1])
def test_ranked_fast_path_matches_dicts_and_pytrec_eval(seed):
    rng = np.random.default_rng(seed)
    n_docs, n_q, k = 500, 250, 120
    doc_ids = np.array([f"doc{i}" for i in range(n_docs - len(TRICKY_IDS))] + TRICKY_IDS, dtype=object)
    indices = np.stack([rng.choice(n_docs, size=k, replace=False) for _ in range(n_q)])
    indices[rng.random(indices.shape) < 0.1] = -1  # padding, anywhere in the row
    indices[5] = -1  # a query with nothing retrieved
    scores = (rng.integers(0, 30, size=indices.shape) / 8.0).astype(np.float32)  # ties
    scores[7, :3] = -np.inf
    qids = [f"q{i}" for i in range(n_q)]
    qrels = {}
    for i, q in enumerate(qids):
        judged = rng.choice(n_docs, size=int(rng.integers(1, 30)), replace=False)
        labels = rng.integers(-1, 4, size=judged.size)
        labels[0] = rng.integers(1, 4)
        qrels[q] = {doc_ids[j]: int(x) for j, x in zip(judged, labels)}
    qrels["unused"] = {"doc1": 1}  # qrels may hold more queries than the rows name

    run = {
        q: {doc_ids[j]: float(s) for j, s in zip(indices[i], scores[i]) if j >= 0} for i, q in enumerate(qids)
    }
    fast = per_query_metrics_ranked(indices, doc_ids, qids, qrels, scores)
    slow = per_query_metrics(run, qrels, qids)
    ref = trec(run, {q: qrels[q] for q in qids})
    for name in METRIC_NAMES:
        np.testing.assert_allclose(fast[name], slow[name], atol=1e-12, err_msg=name)
        np.testing.assert_allclose(fast[name], ref[name], atol=1e-6, err_msg=name)
    # without scores each row is taken as already ranked: equals a run with decreasing scores
    run_as_is = {
        q: {doc_ids[j]: -float(p) for p, j in enumerate(indices[i]) if j >= 0} for i, q in enumerate(qids)
    }
    as_is = per_query_metrics_ranked(indices, list(doc_ids), qids, qrels)
    ref2 = trec(run_as_is, {q: qrels[q] for q in qids})
    for name in METRIC_NAMES:
        np.testing.assert_allclose(as_is[name], ref2[name], atol=1e-6, err_msg=name)
    means = mean_metrics_ranked(indices, doc_ids, qids, qrels, scores, gain="exponential")
    assert means == pytest.approx(mean_metrics(run, qrels, qids, gain="exponential"), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------


def test_errors_on_bad_input():
    qrels = {"q1": {"a": 1}, "q2": {"b": 2}}
    run = {"q1": {"a": 1.0}, "q2": {"b": 1.0}}
    with pytest.raises(ValueError, match="in the run but not in qrels: 'q3'"):
        per_query_metrics(dict(run, q3={"a": 1.0}), qrels)
    with pytest.raises(ValueError, match="in qrels but not in the run: 'q2'"):
        per_query_metrics({"q1": {"a": 1.0}}, qrels)
    with pytest.raises(ValueError, match="not in the run: 'q9'"):
        per_query_metrics(run, qrels, ["q1", "q9"])
    with pytest.raises(ValueError, match="not in qrels: 'q9'"):
        per_query_metrics(dict(run, q9={}), qrels, ["q9"])
    with pytest.raises(ValueError, match=r"no relevant doc.*'q2'"):
        per_query_metrics(run, {"q1": {"a": 1}, "q2": {"b": 0, "c": -1}})
    with pytest.raises(ValueError, match=r"no relevant doc.*'q2'"):
        per_query_metrics(run, {"q1": {"a": 1}, "q2": {}})
    with pytest.raises(ValueError, match="integers"):
        per_query_metrics(run, {"q1": {"a": 1.5}, "q2": {"b": 1}})
    with pytest.raises(ValueError, match="NaN score in the run of query 'q2'"):
        per_query_metrics({"q1": {"a": 1.0}, "q2": {"b": float("nan")}}, qrels)
    with pytest.raises(ValueError, match="unknown metric"):
        per_query_metrics(run, qrels, metrics=["ndcg@0"])
    with pytest.raises(ValueError, match="unknown metric"):
        per_query_metrics(run, qrels, metrics=["precision@10"])
    with pytest.raises(ValueError, match="gain"):
        per_query_metrics(run, qrels, gain="log")
    with pytest.raises(TypeError, match="str"):
        per_query_metrics({"q1": {1: 1.0, 2: 1.0}, "q2": {"b": 1.0}}, qrels)  # ids break ties
    with pytest.raises(ValueError, match="no queries"):
        per_query_metrics({}, {})
    doc_ids = ["a", "b", "c"]
    with pytest.raises(ValueError, match="more than once"):
        per_query_metrics_ranked(np.array([[0, 1], [2, 2]]), doc_ids, ["q1", "q2"], qrels)
    with pytest.raises(ValueError, match="lie in"):
        per_query_metrics_ranked(np.array([[0, 3], [1, 2]]), doc_ids, ["q1", "q2"], qrels)
    with pytest.raises(ValueError, match="qids"):
        per_query_metrics_ranked(np.array([[0, 1]]), doc_ids, ["q1", "q2"], qrels)
    with pytest.raises(ValueError, match="shape"):
        per_query_metrics_ranked(np.array([[0, 1]]), doc_ids, ["q1"], qrels, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="not in qrels: 'zz'"):
        per_query_metrics_ranked(np.array([[0, 1]]), doc_ids, ["zz"], qrels)
    with pytest.raises(TypeError, match="doc_ids"):
        per_query_metrics_ranked(np.array([[0, 1]]), np.arange(3), ["q1"], qrels)


# ----------------------------------------------------------------------------------------------
# the `evaluate` module, loaded offline from its folder in a fresh process
# ----------------------------------------------------------------------------------------------

_EVAL_SCRIPT = r"""
import json, sys
import evaluate
metric = evaluate.load(sys.argv[1])
case = json.load(open(sys.argv[2]))
out = {
    "ranked": metric.compute(predictions=case["ranked"], references=case["refs"]),
    "scored": metric.compute(predictions=case["scored"], references=case["refs"], gain="exponential",
                             return_per_query=True),
    "subset": metric.compute(predictions=case["ranked"], references=case["refs"], metrics=["ndcg@3"]),
}
json.dump(out, open(sys.argv[3], "w"))
"""


def test_evaluate_module_offline_matches_function(tmp_path):
    run, qrels = random_case(5, n_queries=40, max_docs=30)
    qids = list(qrels)
    refs = [{"doc_ids": list(qrels[q]), "labels": list(qrels[q].values())} for q in qids]
    scored = [{"doc_ids": list(run[q]), "scores": list(run[q].values())} for q in qids]
    ranked = [[d for d, _ in sorted(run[q].items(), key=lambda kv: -kv[1])] for q in qids]  # no tie rule
    (tmp_path / "case.json").write_text(json.dumps({"refs": refs, "scored": scored, "ranked": ranked}))
    (tmp_path / "script.py").write_text(_EVAL_SCRIPT)
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),  # a fresh module cache
        HTTP_PROXY="http://127.0.0.1:9",  # any network attempt fails fast
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
    )
    env.pop("PYTHONPATH", None)  # the module must find the installed library on its own
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "script.py"), EVALUATE_MODULE,
         str(tmp_path / "case.json"), str(tmp_path / "out.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())

    run_ranked = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in zip(qids, ranked)}
    expected_ranked = mean_metrics(run_ranked, qrels)
    assert out["ranked"] == pytest.approx(expected_ranked, abs=1e-12)
    per_q = per_query_metrics(run, qrels, gain="exponential")
    scored_out = out["scored"]
    assert scored_out.pop("per_query") == {n: pytest.approx(v.tolist(), abs=1e-12) for n, v in per_q.items()}
    assert scored_out == pytest.approx({n: float(v.mean()) for n, v in per_q.items()}, abs=1e-12)
    assert set(out["subset"]) == {"ndcg@3"}


# ----------------------------------------------------------------------------------------------
# paired significance
# ----------------------------------------------------------------------------------------------


def test_paired_test():
    rng = np.random.default_rng(0)
    a = rng.random(300)
    same = paired_test(a, a.copy())
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    better = paired_test(a + 0.05 + 0.01 * rng.standard_normal(300), a)
    assert better["p_value"] < 0.001 and better["mean_diff"] == pytest.approx(0.05, abs=0.005)
    noise = rng.normal(0, 0.1, 300)
    p_noise = paired_test(a + noise - noise.mean(), a)["p_value"]  # mean diff exactly ~0
    assert p_noise > 0.5
    assert paired_test(a + noise, a, seed=3) == paired_test(a + noise, a, seed=3)  # deterministic
    # small n: all 2^n sign patterns are enumerated; n = 5 all positive -> p = 2/32
    assert paired_test(np.ones(5), np.zeros(5))["p_value"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError):
        paired_test(np.ones(3), np.ones(4))
    with pytest.raises(ValueError):
        paired_test(np.array([]), np.array([]))
