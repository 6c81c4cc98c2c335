"""era_adapters.readers: every problem in a task's files is a DataError that names the file, the line (or
row) and the id."""
from __future__ import annotations

from pathlib import Path

import pytest

from era_adapters.data import DataError, load_task, load_tasks
from task_files import mair_docs, mair_queries, mair_query, quiet_load, write_beir, write_mair, write_rows

BUDGETS = (0.05, 0.1, 0.2, 0.4)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


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
