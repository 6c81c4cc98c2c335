"""era_adapters.data: loading both layouts (jsonl, jsonl.gz, parquet, Hub), validation messages, and the
seeded label-budget splits of docs/protocol.md ("Splits and label budgets")."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from era_adapters.data import DataError, Query, Task, cap_corpus, load_task, load_tasks
from era_adapters.splits import TaskSplit, make_split

BUDGETS = (0.05, 0.1, 0.2, 0.4)
REPO_ROOT = Path(__file__).resolve().parents[1]

# A line is a dict (written as JSON), a str (written verbatim) or None (a blank line).
Line = dict[str, Any] | str | None


def write_rows(path: Path, rows: list[Line]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist([row for row in rows if isinstance(row, dict)]), path)
        return path
    text = "".join((json.dumps(row) if isinstance(row, dict) else row or "") + "\n" for row in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def mair_docs(n: int = 6) -> list[Line]:
    return [{"id": f"d{i}", "doc": f"document number {i}"} for i in range(n)]


def mair_query(qid: str, labels: dict[str, int], split: str | None = "test", **extra: Any) -> dict[str, Any]:
    row = {"qid": qid, "instruction": "Find the doc.", "query": f"question {qid}", "split": split}
    row["labels"] = [{"id": doc_id, "score": score} for doc_id, score in labels.items()]
    return {**row, **extra}


def mair_queries() -> list[Line]:
    return [
        mair_query("q1", {"d1": 1}, "train"),
        mair_query("q2", {"d2": 2, "d3": 1}, "test"),
        mair_query("q3", {"d4": 1}, "dev"),
    ]


def write_mair(folder: Path, docs: list[Line] | None = None, queries: list[Line] | None = None,
               suffix: str = ".jsonl") -> Path:
    write_rows(folder / f"docs{suffix}", mair_docs() if docs is None else docs)
    write_rows(folder / f"queries{suffix}", mair_queries() if queries is None else queries)
    return folder


def write_beir(folder: Path, qrels: dict[str, list[str]] | None = None, queries: list[Line] | None = None) -> Path:
    corpus = [
        {"_id": "c1", "title": "Title", "text": "body one", "metadata": {}},
        {"_id": "c2", "title": "", "text": "body two", "metadata": {}},
        {"_id": "c3", "text": "body three", "metadata": {}},
    ]
    write_rows(folder / "corpus.jsonl", corpus)
    default_queries = [{"_id": qid, "text": f"query {qid}"} for qid in "abc"]
    write_rows(folder / "queries.jsonl", default_queries if queries is None else queries)
    default_qrels = {"train": ["a\tc1\t1"], "test": ["b\tc2\t2", "b\tc3\t0"]}
    for split, lines in (default_qrels if qrels is None else qrels).items():
        (folder / "qrels").mkdir(exist_ok=True)
        header = "query-id\tcorpus-id\tscore\n"
        (folder / "qrels" / f"{split}.tsv").write_text(header + "".join(f"{line}\n" for line in lines))
    return folder


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def quiet_load(data: Any, cache: Path, **kwargs: Any) -> list[Task]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_tasks(data, cache_dir=cache, **kwargs)


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


def test_folder_of_tasks_selection_and_ignore_identical_ids(tmp_path: Path, cache: Path) -> None:
    write_mair(tmp_path / "data" / "arguana")
    write_mair(tmp_path / "data" / "NFCorpus")  # no SOURCE.md: MAIR's table by folder name
    write_mair(tmp_path / "data" / "mystery")
    (tmp_path / "data" / "not_a_task").mkdir()

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
# Validation: every message names the file, the line (or row) and the id
# ---------------------------------------------------------------------------------------------

BAD_MAIR_INPUTS = {
    "duplicate doc id after a blank line": (
        mair_docs(3) + [None, {"id": "d1", "doc": "again"}], None,
        r"docs\.jsonl, line 5: duplicate doc id 'd1' \(first at .*docs\.jsonl, line 2\)",
    ),
    "duplicate query id": (
        None, mair_queries() + [mair_query("q1", {"d1": 1})],
        r"queries\.jsonl, line 4: duplicate query id 'q1' \(first at .*queries\.jsonl, line 1\)",
    ),
    "label on unknown doc": (
        None, [mair_query("q1", {"d1": 1}), mair_query("q2", {"ghost": 1})],
        r"queries\.jsonl, line 2: query 'q2' labels doc 'ghost', which is not in the corpus",
    ),
    "empty doc text": (
        mair_docs(2) + [{"id": "d2", "doc": "  \n "}], None,
        r"docs\.jsonl, line 3: doc 'd2' has an empty text",
    ),
    "empty query text": (
        None, [mair_query("q1", {"d1": 1}), mair_query("q2", {"d1": 1}, query=" ")],
        r"queries\.jsonl, line 2: query 'q2' has an empty 'query'",
    ),
    "malformed docs line": (
        mair_docs(2) + ['{"id": "d9", "doc": "unterminated}'], None,
        r"docs\.jsonl, line 3: malformed JSON",
    ),
    "malformed queries line": (
        None, [mair_query("q1", {"d1": 1}), "[1, 2]"],
        r"queries\.jsonl, line 2: expected a JSON object",
    ),
    "doc without text": (
        mair_docs(2) + [{"id": "d2"}], None,
        r"docs\.jsonl, line 3: missing required field 'doc'",
    ),
    "no doc has an id": (
        [{"doc": "x"}, {"doc": "y"}], [],
        r"docs\.jsonl: missing required field 'id' on every row",
    ),
    "query without labels": (
        None, [mair_query("q1", {"d1": 1}), {"qid": "q2", "instruction": "", "query": "x"}],
        r"queries\.jsonl, line 2: missing required field 'labels' \(query 'q2'\)",
    ),
    "unknown split": (
        None, [mair_query("q1", {"d1": 1}, split="validation")],
        r"queries\.jsonl, line 1: query 'q1' has split 'validation'",
    ),
    "fractional score": (
        None, [mair_query("q1", {"d1": 0.5})],
        r"queries\.jsonl, line 1: query 'q1', doc 'd1': score 0\.5 is not an integer grade",
    ),
    "number and string ids mixed": (
        [{"id": 7, "doc": "x"}, {"id": "d1", "doc": "y"}], None,
        r"docs\.jsonl, line 1: field 'id' is 7, not a string",
    ),
}


@pytest.mark.parametrize("case", BAD_MAIR_INPUTS, ids=list(BAD_MAIR_INPUTS))
def test_bad_mair_input_is_located(tmp_path: Path, cache: Path, case: str) -> None:
    docs, queries, pattern = BAD_MAIR_INPUTS[case]
    folder = write_mair(tmp_path / "task", docs, queries)
    with pytest.raises(DataError, match=pattern):
        quiet_load(folder, cache)


@pytest.mark.parametrize(
    ("suffix", "where"), [(".jsonl.gz", r"docs\.jsonl\.gz, line 4"), (".parquet", r"docs\.parquet, row 4")]
)
def test_duplicates_are_located_in_gz_and_parquet(tmp_path: Path, cache: Path, suffix: str, where: str) -> None:
    folder = write_mair(tmp_path / "task", mair_docs(3) + [{"id": "d0", "doc": "again"}], suffix=suffix)
    with pytest.raises(DataError, match=rf"{where}: duplicate doc id 'd0'"):
        load_tasks(folder, cache_dir=cache)


def test_corrupt_parquet_is_named(tmp_path: Path, cache: Path) -> None:
    folder = write_mair(tmp_path / "task", suffix=".parquet")
    (folder / "docs.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"docs\.parquet: not a readable parquet file"):
        load_tasks(folder, cache_dir=cache)


BAD_BEIR_QRELS = {
    "unknown doc": ({"test": ["a\tc1\t1", "b\tnope\t1"]}, r"qrels/test\.tsv, line 3: query 'b' labels doc 'nope'"),
    "unknown query": ({"dev": ["zz\tc1\t1"]}, r"qrels/dev\.tsv, line 2: query 'zz' is not in queries\.jsonl"),
    "short line": ({"test": ["a\tc1"]}, r"qrels/test\.tsv, line 2: expected 3 tab-separated fields"),
    "query in two splits": (
        {"train": ["a\tc1\t1"], "test": ["a\tc2\t1"]},
        r"qrels/test\.tsv, line 2: query 'a' is also judged in qrels/train\.tsv",
    ),
}


@pytest.mark.parametrize("case", BAD_BEIR_QRELS, ids=list(BAD_BEIR_QRELS))
def test_bad_beir_qrels_are_located(tmp_path: Path, cache: Path, case: str) -> None:
    qrels, pattern = BAD_BEIR_QRELS[case]
    with pytest.raises(DataError, match=pattern):
        quiet_load(write_beir(tmp_path / "beir", qrels=qrels), cache)


def test_beir_duplicate_query_id(tmp_path: Path, cache: Path) -> None:
    queries = [{"_id": "a", "text": "x"}, {"_id": "a", "text": "y"}]
    with pytest.raises(DataError, match=r"queries\.jsonl, line 2: duplicate query id 'a'"):
        quiet_load(write_beir(tmp_path / "beir", queries=queries), cache)


def test_unusable_folders(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no task folders found"):
        load_tasks(tmp_path / "empty", cache_dir=cache)
    with pytest.raises(DataError, match=r"no docs\.jsonl \(MAIR layout\) or corpus\.jsonl"):
        load_task(tmp_path / "empty", cache_dir=cache)
    folder = write_mair(tmp_path / "both")
    write_rows(folder / "docs.parquet", mair_docs())
    with pytest.raises(DataError, match=r"both docs\.jsonl and docs\.parquet exist"):
        load_tasks(folder, cache_dir=cache)


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def synthetic_task(n_labeled: int, splits: list[str] | None = None, n_unlabeled: int = 0, name: str = "toy") -> Task:
    docs = datasets.Dataset.from_dict({"id": ["d0"], "doc": ["text"]})
    queries = [
        Query(f"q{i:04d}", f"query {i}", "", {"d0": 1}, splits[i] if splits else None) for i in range(n_labeled)
    ]
    queries += [Query(f"u{i}", "no label", "", {}, None) for i in range(n_unlabeled)]
    return Task(name, "unknown", ["d0"], docs, queries)


def assert_nested_and_disjoint(split: TaskSplit) -> None:
    test = set(split.test_qids)
    for smaller, larger in zip(split.budgets, split.budgets[1:]):
        assert set(split.train(smaller)) <= set(split.train(larger))
        assert set(split.val(smaller)) <= set(split.val(larger))
    for budget in split.budgets:
        train, val = set(split.train(budget)), set(split.val(budget))
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train) == len(split.train(budget)) and len(val) == len(split.val(budget))


def test_seeded_split_counts_nesting_and_budget_includes_validation() -> None:
    task = synthetic_task(200, n_unlabeled=7)
    split = make_split(task, seed=3, budgets=BUDGETS)

    assert split.protocol == "seeded" and split.n_labeled == 200
    assert len(split.test_qids) == 100
    assert all(not qid.startswith("u") for qid in split.test_qids + split.train(0.4) + split.val(0.4))
    # budget b -> round(b * 200) labels in all, a fifth of them (at least one) for validation
    assert [(len(split.train(b)), len(split.val(b))) for b in BUDGETS] == [(8, 2), (16, 4), (32, 8), (64, 16)]
    assert_nested_and_disjoint(split)


def test_small_budgets_keep_one_validation_and_one_training_query() -> None:
    split = make_split(synthetic_task(30), budgets=(0.05, 0.1))  # 1.5 -> 2 labels; 3 labels
    assert [(len(split.train(b)), len(split.val(b))) for b in split.budgets] == [(1, 1), (2, 1)]


def test_shared_pool_caps_keep_sets_nested_and_apart() -> None:
    split = make_split(synthetic_task(10), budgets=(0.2, 0.6, 1.0))  # pool of 5; 1.0 wants 8 + 2
    assert_nested_and_disjoint(split)
    assert len(split.train(1.0)) + len(split.val(1.0)) == 5


def test_split_field_rules() -> None:
    splits = ["test"] * 40 + ["train"] * 50 + ["dev"] * 10
    task = synthetic_task(100, splits)
    split = make_split(task, seed=1)

    by_split = {name: {q.qid for q in task.queries if q.split == name} for name in ("train", "dev", "test")}
    assert split.protocol == "split-field"
    assert set(split.test_qids) == by_split["test"]
    for budget in BUDGETS:
        assert set(split.train(budget)) <= by_split["train"] and set(split.val(budget)) <= by_split["dev"]
    # budgets are fractions of all 100 labeled queries, validation included
    assert [(len(split.train(b)), len(split.val(b))) for b in BUDGETS] == [(4, 1), (8, 2), (16, 4), (32, 8)]
    assert_nested_and_disjoint(split)
    capped = make_split(task, budgets=(0.9,))  # wants 72 + 18, the pools hold 50 + 10
    assert (len(capped.train(0.9)), len(capped.val(0.9))) == (50, 10)


def test_split_field_without_dev_draws_validation_from_train() -> None:
    task = synthetic_task(100, ["test"] * 50 + ["train"] * 50)
    split = make_split(task)
    train_qids = {q.qid for q in task.queries if q.split == "train"}
    assert all(set(split.val(b)) <= train_qids for b in BUDGETS)
    assert [(len(split.train(b)), len(split.val(b))) for b in BUDGETS] == [(4, 1), (8, 2), (16, 4), (32, 8)]
    assert_nested_and_disjoint(split)


def test_split_field_with_only_dev_shares_it() -> None:
    task = synthetic_task(30, ["test"] * 20 + ["dev"] * 10)
    split = make_split(task)
    dev = {q.qid for q in task.queries if q.split == "dev"}
    assert split.protocol == "split-field" and len(split.test_qids) == 20
    assert all(set(split.train(b)) | set(split.val(b)) <= dev for b in BUDGETS)
    assert split.train(0.4) and split.val(0.4)
    assert_nested_and_disjoint(split)


def test_all_test_split_field_is_carved_by_seed() -> None:
    split = make_split(synthetic_task(60, ["test"] * 60))
    assert split.protocol == "seeded" and len(split.test_qids) == 30


def test_split_field_errors() -> None:
    with pytest.raises(DataError, match="none is 'test'"):
        make_split(synthetic_task(10, ["train"] * 10))
    mixed = synthetic_task(3, ["train", "test", "test"]).queries + [Query("q9", "x", "", {"d0": 1}, None)]
    with pytest.raises(DataError, match="query 'q9' has no split while others are train/dev"):
        make_split(Task("toy", "unknown", ["d0"], None, mixed))
    with pytest.raises(DataError, match="no query has a positive label"):
        make_split(synthetic_task(0, n_unlabeled=3))


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"budgets": (0.0,)}, {"budgets": ()}, {"test_fraction": 1.0},
                                    {"val_share": 0}])
def test_split_argument_checks(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_split(synthetic_task(10), **kwargs)


def test_split_is_deterministic_seed_sensitive_and_independent_of_file_order() -> None:
    task = synthetic_task(120)
    first = make_split(task, seed=7)
    assert make_split(task, seed=7) == first
    assert set(make_split(task, seed=8).test_qids) != set(first.test_qids)
    reordered = Task(task.name, task.domain, task.doc_ids, task.docs, task.queries[::-1])
    assert make_split(reordered, seed=7) == first
    split_field = synthetic_task(120, ["test"] * 40 + ["train"] * 80)
    assert make_split(split_field, seed=1).train(0.1) != make_split(split_field, seed=2).train(0.1)


def test_split_is_identical_across_processes() -> None:
    script = (
        "import json, datasets; from era_adapters.data import Query, Task; from era_adapters.splits import make_split\n"
        "queries = [Query(f'q{i:04d}', 'x', '', {'d0': 1}) for i in range(120)]\n"
        "task = Task('toy', 'unknown', ['d0'], datasets.Dataset.from_dict({'id': ['d0'], 'doc': ['t']}), queries)\n"
        "print(json.dumps(make_split(task, seed=7).to_dict()))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True)
    assert json.loads(result.stdout) == make_split(synthetic_task(120), seed=7).to_dict()


def test_split_round_trips_through_json() -> None:
    split = make_split(synthetic_task(80, ["test"] * 30 + ["train"] * 40 + ["dev"] * 10), seed=4)
    restored = TaskSplit.from_dict(json.loads(json.dumps(split.to_dict())))
    assert restored == split
    assert restored.train(0.1 + 1e-12) == split.train(0.1)
    assert split.to_dict()["budgets"][0] == {
        "budget": 0.05, "n_labels": 4, "train": split.train(0.05), "val": split.val(0.05)
    }
    with pytest.raises(KeyError, match=r"budget 0\.3 is not in this split"):
        split.val(0.3)


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
