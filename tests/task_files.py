"""Writers of small MAIR / BEIR task folders for the data tests (any format: jsonl, jsonl.gz, parquet)."""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from era_adapters.data import Task, load_tasks
from era_adapters.splits import TaskSplit

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


def quiet_load(data: Any, cache: Path, **kwargs: Any) -> list[Task]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_tasks(data, cache_dir=cache, **kwargs)


def assert_nested_and_disjoint(split: TaskSplit) -> None:
    test = set(split.test_qids)
    for smaller, larger in zip(split.budgets, split.budgets[1:]):
        assert set(split.train(smaller)) <= set(split.train(larger))
        assert set(split.val(smaller)) <= set(split.val(larger))
    for budget in split.budgets:
        train, val = set(split.train(budget)), set(split.val(budget))
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train) == len(split.train(budget)) and len(val) == len(split.val(budget))
