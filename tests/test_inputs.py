"""era_adapters.inputs: tasks from Python objects (dicts, pairs, an anchor/positive Dataset, texts), and the
stages running on them the way sentence-transformers users hold their data."""
from __future__ import annotations

import json

import datasets
import pytest

from era_adapters.adapt import adapt
from era_adapters.align import align
from era_adapters.data import DataError
from era_adapters.inputs import task_from_dicts, task_from_pairs, task_from_texts
from era_adapters.splits import make_split
from synonym_task import FAST

CORPUS = {"d1": "the cat sat", "d2": "a dog ran", "d3": "fish swim"}


def test_dicts_become_a_task_with_graded_labels_and_roles():
    task = task_from_dicts(CORPUS, {"q1": "cat?", "q2": "dog?", "q3": "bird?"},
                           {"q1": {"d1": 2}, "q2": {"d2"}}, name="pets", roles={"q1": "train", "q2": "test"})
    assert task.doc_ids == ["d1", "d2", "d3"] and list(task.doc_texts) == list(CORPUS.values())
    by_id = {query.qid: query for query in task.queries}
    assert by_id["q1"].labels == {"d1": 2} and by_id["q2"].labels == {"d2": 1} and by_id["q3"].labels == {}
    assert (by_id["q1"].split, by_id["q2"].split, by_id["q3"].split) == ("train", "test", None)
    with pytest.raises(DataError, match="labels doc 'd9', which is not in the corpus"):
        task_from_dicts(CORPUS, {"q1": "cat?"}, {"q1": {"d9": 1}})
    with pytest.raises(DataError, match="query 'q7' is not in queries"):
        task_from_dicts(CORPUS, {"q1": "cat?"}, {"q7": {"d1": 1}})
    with pytest.raises(DataError, match="empty or non-string text"):
        task_from_dicts({"d1": " "}, {}, {})


def test_pairs_by_id_or_text_and_an_anchor_positive_dataset():
    pairs = [("where is the cat", "d1"), ("where is the cat", "d3"), ("a new text", "an unseen document")]
    task = task_from_pairs(pairs, CORPUS)
    assert len(task.queries) == 2 and len(task.doc_ids) == 4  # one query per distinct text; the new doc added
    cat = next(query for query in task.queries if query.query == "where is the cat")
    assert cat.labels == {"d1": 1, "d3": 1} and all(query.split == "train" for query in task.queries)
    added = task.doc_ids[-1]
    assert task.doc_texts[-1] == "an unseen document" and task.queries[1].labels == {added: 1}
    dataset = datasets.Dataset.from_dict({"anchor": ["q a", "q b"], "positive": ["doc a", "doc b"]})
    from_dataset = task_from_pairs(dataset)
    assert [q.query for q in from_dataset.queries] == ["q a", "q b"] and list(from_dataset.doc_texts) == ["doc a", "doc b"]
    with pytest.raises(DataError, match="'anchor' and 'positive' columns"):
        task_from_pairs(datasets.Dataset.from_dict({"question": ["x"], "answer": ["y"]}))
    with pytest.raises(DataError, match=r"pair 1: expected \(query, positive doc id or text\)"):
        task_from_pairs([("only a query",)])
    # pairs are all training pairs: with test_fraction 0 (what adapt(pairs=...) uses) nothing is held for testing
    assert make_split(task, test_fraction=0.0).train_pool and not make_split(task, test_fraction=0.0).test_qids
    assert task_from_texts(["one", "two"]).doc_ids == ["t0", "t1"]


def synonym_dicts(setup):
    docs = [json.loads(line) for line in (setup / "data" / "syn" / "docs.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (setup / "data" / "syn" / "queries.jsonl").read_text().splitlines()]
    corpus = {doc["id"]: doc["doc"] for doc in docs}
    return corpus, queries


def test_align_on_texts_and_adapt_on_pairs_train_on_what_was_given(setup, tmp_path):
    corpus, queries = synonym_dicts(setup)
    aligned = align(texts=list(corpus.values()), query_encoder=str(setup / "q"), doc_encoder=str(setup / "d"),
                    output=tmp_path / "align", cache_dir=setup / "cache")
    assert aligned.config.training_metadata["alignment"]["texts"]["texts"]["documents"] == len(corpus)
    pairs = [(query["query"], query["labels"][0]["id"]) for query in queries[:60]]
    adapted = adapt(pairs=pairs, corpus=corpus, init=aligned, output=tmp_path / "both", all_train_labels=True,
                    cache_dir=setup / "cache", **FAST)
    metadata = adapted.config.training_metadata
    labels = metadata["labels"]["tasks"]["pairs"]
    assert (labels["train_queries"], labels["train_pairs"], labels["test_queries"]) == (60, 60, 0)
    assert metadata["validation"]["strategy"] == "kfold"  # 60 pairs, none held out: folds choose the epochs
    assert metadata["split"]["pairs"]["source"] == "(query, positive) pairs given in Python, all train"
    assert metadata["recipe"]["start"]["init"].startswith("an in-memory EraAdapter")
    assert (tmp_path / "both" / "model.safetensors").is_file()
