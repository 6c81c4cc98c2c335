"""era_adapters.data: loading both layouts (jsonl, jsonl.gz, parquet, Hub), folders of tasks, domains,
the corpus cap, and the real data beside the repo."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import datasets
import pytest

from era_adapters.data import DataError, Query, Task, cap_corpus, load_tasks
from era_adapters.splits import make_split
from task_files import assert_nested_and_disjoint, mair_queries, mair_query, quiet_load, write_beir, write_mair

BUDGETS = (0.05, 0.1, 0.2, 0.4)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_mair_layout_loads_in_every_format(tmp_path: Path, cache: Path, suffix: str) -> None:
    folder = write_mair(tmp_path / "nfcorpus", suffix=suffix)
    (folder / "SOURCE.md").write_text("# x\n\n- Domain: medical / nutrition\n- MAIR task: NFCorpus\n")

    [task] = load_tasks(folder, cache_dir=cache)

    assert (task.name, task.domain, task.ignore_identical_ids) == ("nfcorpus", "medical", False)
    assert task.doc_ids == [f"d{i}" for i in range(6)]
    assert isinstance(task.docs, datasets.Dataset) and task.docs.column_names == ["id", "doc"]
    assert task.docs.cache_files, "the corpus should be memory-mapped from an Arrow file"
    assert task.doc_texts[2] == "document number 2"
    assert task.queries[1] == Query("q2", "question q2", "Find the doc.", {"d2": 2, "d3": 1}, "test")
    assert [query.split for query in task.queries] == ["train", "test", "dev"]


def test_beir_layout(tmp_path: Path, cache: Path) -> None:
    folder = write_beir(tmp_path / "mybeir")
    with pytest.warns(UserWarning, match=r"'mybeir': 1 of 3 queries have no positive label"):
        [task] = load_tasks(folder, cache_dir=cache)

    assert task.doc_ids == ["c1", "c2", "c3"]
    assert list(task.doc_texts) == ["Title body one", "body two", "body three"]
    by_id = {query.qid: query for query in task.queries}
    assert by_id["a"] == Query("a", "query a", "", {"c1": 1}, "train")
    assert by_id["b"].labels == {"c2": 2, "c3": 0} and by_id["b"].split == "test"
    assert by_id["b"].positive_ids == ["c2"]
    assert by_id["c"].labels == {} and by_id["c"].split is None
    assert [query.qid for query in task.labeled_queries] == ["a", "b"]
    assert task.domain == "unknown"


def test_qrels_files_given_by_role_are_honoured(tmp_path: Path, cache: Path) -> None:
    folder = write_beir(tmp_path / "mine", qrels={"train": ["a\tc1\t1", "c\tc3\t1"]})
    elsewhere = tmp_path / "labels" / "held-out.tsv"
    elsewhere.parent.mkdir()
    elsewhere.write_text("query-id\tcorpus-id\tscore\nb\tc2\t1\n")
    (task,) = quiet_load(folder, cache, qrels={"test": elsewhere})
    roles = {query.qid: query.split for query in task.queries}
    assert roles == {"a": "train", "b": "test", "c": "train"}
    assert task.roles_from == f"your qrels files (train: {folder / 'qrels' / 'train.tsv'}, test: {elsewhere})"
    assert make_split(task).test_qids == ["b"]  # exactly the given test file's queries
    (swapped,) = quiet_load(folder, cache, qrels={"train": elsewhere, "test": folder / "qrels" / "train.tsv"})
    assert {query.qid: query.split for query in swapped.queries} == {"a": "test", "b": "train", "c": "test"}
    with pytest.raises(DataError, match="the dev qrels file given does not exist"):
        quiet_load(folder, cache, qrels={"dev": tmp_path / "nope.tsv"})
    write_mair(tmp_path / "other")
    with pytest.raises(ValueError, match="name the files of one task, but .* holds 2 tasks"):
        quiet_load(tmp_path, cache, qrels={"test": elsewhere})
    with pytest.raises(ValueError, match="apply to BEIR folders"):
        quiet_load(tmp_path / "other", cache, qrels={"test": elsewhere})


def test_folder_of_tasks_selection_and_ignore_identical_ids(tmp_path: Path, cache: Path) -> None:
    write_mair(tmp_path / "data" / "arguana")
    write_mair(tmp_path / "data" / "NFCorpus")  # no SOURCE.md: MAIR's table by folder name
    write_mair(tmp_path / "data" / "mystery")
    (tmp_path / "data" / "__pycache__").mkdir()  # hidden and "_" folders are not tasks
    (tmp_path / "data" / ".git").mkdir()

    tasks = quiet_load(tmp_path / "data", cache)
    assert [(t.name, t.domain, t.ignore_identical_ids) for t in tasks] == [
        ("NFCorpus", "medical", False),
        ("arguana", "web", True),
        ("mystery", "unknown", False),
    ]
    picked = quiet_load(str(tmp_path / "data"), cache, tasks=["mystery", "arguana"],
                        ignore_identical_ids={"arguana": False, "mystery": True})
    assert [(t.name, t.ignore_identical_ids) for t in picked] == [("mystery", True), ("arguana", False)]
    with pytest.raises(DataError, match=r"no task named \['scifact'\]; available: \['NFCorpus', 'arguana', 'myst"):
        load_tasks(tmp_path / "data", tasks=["scifact"], cache_dir=cache)


def test_domain_from_source_md_mair_task_line(tmp_path: Path, cache: Path) -> None:
    folder = write_mair(tmp_path / "fiqa_copy")
    (folder / "SOURCE.md").write_text("- MAIR task: FiQA\n")
    assert quiet_load(folder, cache)[0].domain == "finance"


def test_one_warning_per_task_counts_queries_without_positive(tmp_path: Path, cache: Path) -> None:
    queries = mair_queries() + [mair_query("q4", {}), mair_query("q5", {"d5": 0})]
    folder = write_mair(tmp_path / "toy", queries=queries)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [task] = load_tasks(folder, cache_dir=cache)
    messages = [str(warning.message) for warning in caught if "positive" in str(warning.message)]
    assert messages == [
        "task 'toy': 2 of 5 queries have no positive label (score > 0); "
        "they are kept for inference but excluded from training and evaluation."
    ]
    assert len(task.queries) == 5 and [q.qid for q in task.labeled_queries] == ["q1", "q2", "q3"]


def test_hub_path(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    calls = []

    def fake_load_dataset(path: str, name: str, split: str, cache_dir: str | None = None) -> datasets.Dataset:
        calls.append((path, name, split))
        if path == "MAIR-Bench/MAIR-Docs":
            return datasets.Dataset.from_list([{"id": "p1", "doc": "a doc"}, {"id": "p2", "doc": "b doc"}])
        row = {"qid": "x", "instruction": "Given a claim...", "query": "a claim", "labels": [{"id": "p2", "score": 1}]}
        return datasets.Dataset.from_list([row])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    tasks = load_tasks("SciFact,ArguAna", cache_dir=cache)

    assert calls == [
        ("MAIR-Bench/MAIR-Docs", "SciFact", "docs"), ("MAIR-Bench/MAIR-Queries", "SciFact", "queries"),
        ("MAIR-Bench/MAIR-Docs", "ArguAna", "docs"), ("MAIR-Bench/MAIR-Queries", "ArguAna", "queries"),
    ]
    assert [(t.name, t.domain, t.ignore_identical_ids) for t in tasks] == [
        ("SciFact", "academic", False), ("ArguAna", "web", True)
    ]
    assert tasks[0].doc_ids == ["p1", "p2"]
    assert tasks[0].queries == [Query("x", "a claim", "Given a claim...", {"p2": 1}, None)]
    assert [t.name for t in load_tasks("SciFact,ArguAna", tasks=["ArguAna"], cache_dir=cache)] == ["ArguAna"]


def test_hub_errors_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load MAIR task 'Nope' from the Hub \(no network\)"):
        load_tasks("Nope")


def test_hub_rows_are_named_by_row_number(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_load_dataset(path: str, name: str, split: str, cache_dir: str | None = None) -> datasets.Dataset:
        if path == "MAIR-Bench/MAIR-Docs":
            return datasets.Dataset.from_list([{"id": "p1", "doc": "a"}, {"id": "p1", "doc": "b"}])
        return datasets.Dataset.from_list([{"qid": "x", "instruction": "", "query": "q", "labels": []}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    where = r"MAIR-Bench/MAIR-Docs \(config 'T', split 'docs'\), row 2"
    with pytest.raises(DataError, match=rf"{where}: duplicate doc id 'p1'"):
        load_tasks("T")


def test_missing_paths_are_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder of tasks"):
        load_tasks(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not a folder of tasks"):
        load_tasks("./shared/dta")


# ---------------------------------------------------------------------------------------------
# The real data beside the repo
# ---------------------------------------------------------------------------------------------


def test_real_scifact_and_arguana(shared_data: Path, cache: Path) -> None:
    scifact, arguana = load_tasks(shared_data, tasks=["scifact", "arguana"], cache_dir=cache)

    # counts from their SOURCE.md
    assert (len(scifact.doc_ids), scifact.domain, scifact.ignore_identical_ids) == (5183, "academic", False)
    assert sum(q.split == "test" for q in scifact.queries) == 300
    assert sum(q.split == "train" for q in scifact.queries) == 809
    assert sum(len(q.positive_ids) for q in scifact.queries if q.split == "test") == 339
    assert (len(arguana.doc_ids), len(arguana.queries), arguana.domain) == (8674, 1401, "web")
    assert arguana.ignore_identical_ids is True

    split = make_split(scifact, seed=0)
    assert split.protocol == "split-field" and len(split.test_qids) == 300
    assert_nested_and_disjoint(split)
    assert len(split.train(0.4)) + len(split.val(0.4)) == round(0.4 * 1109)


def corpus_task(num_docs: int, judged: list[int]) -> Task:
    ids = [f"d{i}" for i in range(num_docs)]
    docs = datasets.Dataset.from_dict({"id": ids, "doc": [f"text {i}" for i in ids]})
    queries = [Query(f"q{i}", "query", "", {f"d{i}": 1}, None) for i in judged]
    return Task("toy", "unknown", ids, docs, queries)


def test_cap_corpus_keeps_judged_docs_and_is_seeded() -> None:
    task = corpus_task(100, judged=[3, 50, 97])
    capped = cap_corpus(task, 10, seed=0)
    assert len(capped.doc_ids) == 10 and {"d3", "d50", "d97"} <= set(capped.doc_ids)
    assert capped.doc_ids == sorted(capped.doc_ids, key=lambda d: int(d[1:]))  # corpus order kept
    assert list(capped.docs["id"]) == capped.doc_ids and capped.docs["doc"][0] == f"text {capped.doc_ids[0]}"
    assert cap_corpus(task, 10, seed=0).doc_ids == capped.doc_ids
    assert cap_corpus(task, 10, seed=1).doc_ids != capped.doc_ids
    assert cap_corpus(task, None) is task and cap_corpus(task, 500) is task
    assert cap_corpus(task, 2).doc_ids == ["d3", "d50", "d97"]  # judged docs are never dropped
