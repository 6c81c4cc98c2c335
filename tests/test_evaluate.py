"""The evaluation harness end to end on a fixture task with tiny random encoders, and its errors."""
from __future__ import annotations

import json

import pytest
import pytrec_eval
from transformers import AutoModel, AutoTokenizer

from modeling_era import EraConfig, EraQueryEncoder
from tiny_models import make_tiny_bert, write_task
from era_adapters.artifacts import save_query_encoder
from era_adapters.cli import evaluate_main
from era_adapters.evaluate import evaluate

@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return str(make_tiny_bert(root / "query", hidden_size=32, seed=1)), str(make_tiny_bert(root / "doc", hidden_size=16, seed=2))


def run_evaluation(tmp_path, encoders, systems, **kwargs):
    query_encoder, doc_encoder = encoders
    return evaluate(tmp_path / "data", systems, query_encoder=query_encoder, doc_encoder=doc_encoder,
                    cache_dir=tmp_path / "cache", **kwargs)


def tiny_adapter(encoders) -> EraQueryEncoder:
    """A linear adapter from the tiny query encoder (32-d) into the tiny doc encoder's space (16-d)."""
    query_encoder, doc_encoder = encoders
    config = EraConfig(query_encoder=query_encoder, doc_encoder=doc_encoder, query_dim=32, doc_dim=16,
                       prompt_template="{query}")
    return EraQueryEncoder.from_backbone(
        config, AutoModel.from_pretrained(query_encoder), AutoTokenizer.from_pretrained(query_encoder)
    )


def test_end_to_end_report_and_outputs(tmp_path, encoders):
    write_task(tmp_path / "data" / "tiny")
    out = tmp_path / "out"
    report = run_evaluation(tmp_path, encoders, ["doc2doc", "query2query", "query2doc"], output=out)
    results = report["results"]
    # Each query is its positive doc's exact text, so an encoder on both sides finds it first.
    assert results["doc2doc"]["tasks"]["tiny"]["ndcg@10"] == pytest.approx(1.0)
    assert results["query2query"]["macro"]["mrr@10"] == pytest.approx(1.0)
    assert results["query2doc"]["macro"]["ndcg@10"] < 1.0
    assert report["tasks"]["tiny"]["test_qids"] == report["tasks"]["tiny"]["split"]["test"]
    assert len(report["tasks"]["tiny"]["test_qids"]) == 10  # half of 20 labeled queries
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["query2doc"]["tasks"]["tiny"]["ndcg@10"] == results["query2doc"]["tasks"]["tiny"]["ndcg@10"]
    assert (out / "ndcg10.png").stat().st_size > 1000
    assert "| query2doc |" in (out / "results.md").read_text()
    # The TREC run scored by pytrec_eval gives the numbers of the report.
    run: dict[str, dict[str, float]] = {}
    for line in (out / "runs" / "query2doc" / "tiny.trec").read_text().splitlines():
        qid, _, doc_id, _, score, _ = line.split()
        run.setdefault(qid, {})[doc_id] = float(score)
    qrels = {qid: {f"d{qid[1:]}": 1} for qid in run}
    scored = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100"}).evaluate(run)
    per_query = results["query2doc"]["tasks"]["tiny"]["per_query"]
    for qid, values in scored.items():
        assert per_query[qid]["ndcg@10"] == pytest.approx(values["ndcg_cut_10"], abs=1e-6)
        assert per_query[qid]["recall@100"] == pytest.approx(values["recall_100"], abs=1e-6)


def test_results_are_deterministic_and_cached(tmp_path, encoders):
    write_task(tmp_path / "data" / "tiny")
    first = run_evaluation(tmp_path, encoders, ["query2doc"])
    second = run_evaluation(tmp_path, encoders, ["query2doc"])
    assert first["results"]["query2doc"]["tasks"]["tiny"]["per_query"] == (
        second["results"]["query2doc"]["tasks"]["tiny"]["per_query"]
    )


def test_adapter_system_matches_its_query_encoder(tmp_path, encoders):
    """An adapter evaluated through the cache scores what EraQueryEncoder.encode_queries produces."""
    write_task(tmp_path / "data" / "tiny")
    tiny_adapter(encoders).save_pretrained(tmp_path / "my-adapter")
    report = run_evaluation(tmp_path, encoders, ["doc2doc", str(tmp_path / "my-adapter")])
    adapter_result = report["results"]["my-adapter"]
    assert adapter_result["system"]["kind"] == "adapter"
    assert "vs_doc2doc" in adapter_result["tasks"]["tiny"]
    assert 0.0 <= adapter_result["macro"]["ndcg@10"] <= 1.0
    with pytest.raises(ValueError, match="index was built with some/other-encoder"):
        evaluate(tmp_path / "data", [str(tmp_path / "my-adapter")], doc_encoder="some/other-encoder",
                 cache_dir=tmp_path / "cache")


def test_record_writes_test_metrics_into_the_adapter_config_and_card(tmp_path, encoders):
    from huggingface_hub import ModelCard

    write_task(tmp_path / "data" / "tiny")
    save_query_encoder(tiny_adapter(encoders), tmp_path / "recorded")
    before = EraConfig.from_pretrained(tmp_path / "recorded").to_dict()
    assert "evaluation" not in before["training_metadata"]
    with pytest.raises(ValueError, match="--all-queries scores training queries"):
        run_evaluation(tmp_path, encoders, [str(tmp_path / "recorded")], record=True, all_queries=True)
    report = run_evaluation(tmp_path, encoders, [str(tmp_path / "recorded")], record=True, max_docs=30)
    # --record puts the baselines in, so the card shows the adapter next to them on the same queries
    assert list(report["results"]) == ["doc2doc", "query2query", "recorded"]
    measured = report["results"]["recorded"]["tasks"]["tiny"]
    after = EraConfig.from_pretrained(tmp_path / "recorded")
    recorded = after.training_metadata["evaluation"]["tiny"]
    metrics = ("ndcg@10", "recall@100", "mrr@10", "map@100")
    assert {m: recorded[m] for m in metrics} == {m: measured[m] for m in metrics}
    assert recorded["n_queries"] == 10 and recorded["vs_doc2doc"] == measured["vs_doc2doc"]
    for name in ("doc2doc", "query2query"):
        theirs = report["results"][name]["tasks"]["tiny"]
        assert {m: recorded["baselines"][name][m] for m in metrics} == {m: theirs[m] for m in metrics}
    assert recorded["baselines"]["doc2doc"]["ndcg@10"] == pytest.approx(1.0)  # the adapter is far below it
    assert after.training_metadata["evaluation_settings"]["max_docs"] == 30
    assert "seeded split" in after.training_metadata["evaluation_settings"]["test_source"]["tiny"]
    # everything else in config.json is unchanged
    assert {k: v for k, v in after.to_dict().items() if k != "training_metadata"} == {
        k: v for k, v in before.items() if k != "training_metadata"}
    card = ModelCard.load(tmp_path / "recorded" / "README.md")
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("tiny", "ndcg_at_10")] == round(measured["ndcg@10"], 5)
    assert f"| tiny | 10 | **this adapter** | {measured['ndcg@10']:.4f} |" in card.text
    assert "| tiny | 10 | doc2doc (the index as it is: doc encoder on both sides) | 1.0000 |" in card.text
    assert "**Below the index on `tiny`:**" in card.text
    assert not list((tmp_path / "recorded").glob(".*tmp"))  # no staging files left behind


def test_an_adapter_trained_on_test_queries_is_refused(tmp_path, encoders):
    write_task(tmp_path / "data" / "tiny")
    model = tiny_adapter(encoders)
    test = run_evaluation(tmp_path, encoders, ["doc2doc"])["tasks"]["tiny"]["test_qids"]
    model.config.training_metadata = {"mode": "both", "split": {"tiny": {"train": [test[0]], "val": []}}}
    save_query_encoder(model, tmp_path / "leaky")
    with pytest.raises(ValueError, match=rf"leaky was trained on 1 of the 10 test queries of task 'tiny' \(e.g. "
                                         rf"'{test[0]}'\)"):
        run_evaluation(tmp_path, encoders, ["doc2doc", str(tmp_path / "leaky")])


def test_identical_ids_are_ignored_when_the_task_asks(tmp_path, encoders):
    # As in ArguAna, each query's id is a doc id (here: the doc with the query's own text).
    overrides = {i: {"qid": f"d{i}", "labels": [{"id": f"d{i + 20}", "score": 1}]} for i in range(20)}
    write_task(tmp_path / "data" / "arguana", overrides=overrides)
    report = run_evaluation(tmp_path, encoders, ["doc2doc"], output=tmp_path / "out")
    assert report["tasks"]["arguana"]["ignore_identical_ids"] is True
    for line in (tmp_path / "out" / "runs" / "doc2doc" / "arguana.trec").read_text().splitlines():
        qid, _, doc_id, *_ = line.split()
        assert qid != doc_id


def test_caps_are_recorded(tmp_path, encoders):
    write_task(tmp_path / "data" / "tiny", num_docs=60)
    report = run_evaluation(tmp_path, encoders, ["doc2doc"], max_docs=30, max_queries=4)
    task = report["tasks"]["tiny"]
    assert len(task["doc_ids"]) == 30 and len(task["test_qids"]) == 4
    judged = {f"d{i}" for i in range(20)}
    assert judged <= set(task["doc_ids"])


def test_bad_inputs(tmp_path, encoders):
    write_task(tmp_path / "data" / "tiny")
    with pytest.raises(ValueError, match="at least one --system"):
        run_evaluation(tmp_path, encoders, [])
    with pytest.raises(ValueError, match="needs --query-encoder"):
        evaluate(tmp_path / "data", ["query2query"], doc_encoder=encoders[1], cache_dir=tmp_path / "cache")
    no_positive = {i: {"labels": [{"id": f"d{i}", "score": 0}]} for i in range(20)}
    write_task(tmp_path / "empty" / "nolabels", overrides=no_positive)
    with pytest.raises(ValueError, match="nolabels"):
        evaluate(tmp_path / "empty", ["doc2doc"], doc_encoder=encoders[1], cache_dir=tmp_path / "cache")


def test_command_line(tmp_path, encoders, capsys):
    write_task(tmp_path / "data" / "tiny")
    assert evaluate_main(["--data", str(tmp_path / "data"), "--system", "doc2doc", "--doc-encoder", encoders[1],
                          "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out")]) == 0
    assert "| doc2doc | 1.0000 | 1.0000 |" in capsys.readouterr().out


def test_trec_run_files_reproduce_the_reported_metrics_exactly_with_ties():
    """Scores 1 float32 ulp apart (equal at 6 decimals) and exact ties: trec_eval reading the run file
    must rank as the reported metrics did, so the file holds every score in full."""
    import numpy as np

    from era_adapters.metrics import per_query_metrics_ranked
    from era_adapters.reports import trec_run

    rng = np.random.default_rng(0)
    doc_ids = [f"d{i:02d}" for i in range(60)]
    qids = [f"q{i}" for i in range(8)]
    base = np.float32(0.7)
    steps = rng.integers(0, 6, size=(len(qids), 60))  # few distinct values: many exact ties
    scores = (base + steps.astype(np.float32) * np.spacing(base)).astype(np.float32)  # 0.7000000 .. 0.7000003
    order = np.argsort(-scores, axis=1, kind="stable")  # a search's order; ties in index order
    indices, ranked = order, np.take_along_axis(scores, order, axis=1).astype(np.float32)
    qrels = {qid: {doc_ids[j]: int(rng.integers(0, 3)) for j in rng.choice(60, 12, replace=False)} for qid in qids}
    qrels = {qid: {**labels, doc_ids[0]: 1} for qid, labels in qrels.items()}  # at least one relevant
    ours = per_query_metrics_ranked(indices, doc_ids, qids, qrels, ranked, metrics=["ndcg@10", "map@100"])

    def trec_eval(text: str) -> dict[str, dict[str, float]]:
        run: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            qid, _, doc_id, _, score, _ = line.split()
            run.setdefault(qid, {})[doc_id] = float(score)
        return pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "map_cut_100"}).evaluate(run)

    full = trec_eval(trec_run(qids, doc_ids, indices, ranked, "sys"))
    for i, qid in enumerate(qids):
        assert full[qid]["ndcg_cut_10"] == pytest.approx(ours["ndcg@10"][i], abs=1e-12)
        assert full[qid]["map_cut_100"] == pytest.approx(ours["map@100"][i], abs=1e-12)
    # What 6 decimals did: steps of one ulp collapse into ties that trec_eval breaks by doc id.
    rounded = "\n".join(f"{qid} Q0 {doc_ids[j]} 1 {s:.6f} sys" for qid, row, values in zip(qids, indices, ranked)
                        for j, s in zip(row, values))
    six = trec_eval(rounded)
    assert any(six[qid]["ndcg_cut_10"] != pytest.approx(ours["ndcg@10"][i], abs=1e-9) for i, qid in enumerate(qids))
