"""Retrieval tasks (MAIR or BEIR layout, local or from the Hub) and seeded label-budget splits.

Loading gives a `Task`: its corpus as an Arrow-backed `datasets.Dataset` (memory-mapped, columns
`id` and `doc`), its queries as `Query` objects. Every problem in the input is a `DataError` that
names the file, the line (or row) and the id, and says how to fix it.

`make_split` implements DESIGN.md "Evaluation protocol": a fixed test part, and per label budget a
nested validation slice and training set, counted together against the budget.
"""
from __future__ import annotations

import csv
import glob
import gzip
import json
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SPLIT_NAMES = ("train", "dev", "test")
DEFAULT_BUDGETS = (0.05, 0.1, 0.2, 0.4)
HUB_QUERIES = "MAIR-Bench/MAIR-Queries"
HUB_DOCS = "MAIR-Bench/MAIR-Docs"

# Tasks whose queries are themselves documents of the corpus: a retrieved doc whose id equals the
# qid must not count (BEIR's `ignore_identical_ids`).
# Independent random streams (numpy SeedSequence entropy [stream, seed]) for each seeded choice.
_TEST_STREAM, _TRAIN_STREAM, _VAL_STREAM, _STREAM_CORPUS = 0, 1, 2, 3
IGNORE_IDENTICAL_IDS_TASKS = frozenset({"arguana", "ArguAna"})

# MAIR's task -> domain table (sunnweiwei/MAIR README, "List of 6 domains and 126 tasks"); the
# fallback when a task folder's SOURCE.md has no "Domain:" line.
MAIR_DOMAINS: dict[str, tuple[str, ...]] = {
    domain: tuple(names.split())
    for domain, names in {
        "web": "WebTableSearch SParC SParC-SQL Spider Spider-SQL ExcluIR Core17 News21 Robust04 NevIR"
        " AY2 WnCw WnWi Microblog_2011 Microblog_2012 Microblog_2013 Microblog_2014 ACORDAR NTCIR WoW"
        " TopiOCQA ProCIS-Dialog ProCIS-Turn CAsT_2019 CAsT_2020 CAsT_2021 CAsT_2022 Fever QuanTemp"
        " MISeD ArguAna Touche Core_2017 DD_2015 DD_2016 DD_2017 FairRanking_2021 FairRanking_2022"
        " NeuCLIR-Tech_2023 NeuCLIR_2022 NeuCLIR_2023 ToT_2023 ToT_2024 InstructIR CPCD PointRec"
        " CQADupStack Quora ChroniclingAmericaQA TREx zsRE ELI5 IFEval ProductSearch_2023",
        "medical": "PrecisionMedicine-Article_2019 PrecisionMedicine-Article_2020 CliniDS_2014"
        " CliniDS_2015 CliniDS_2016 Genomics-AdHoc_2007 PrecisionMedicine_2017 PrecisionMedicine_2018"
        " PrecisionMedicine_2019 ClinicalTrials_2021 ClinicalTrials_2022 ClinicalTrials_2023 CARE"
        " Genomics-AdHoc_2004 Genomics-AdHoc_2005 Genomics-AdHoc_2006 NFCorpus Trec-Covid Monant",
        "code": "RepoBench SWE-Bench-Lite FoodAPI HuggingfaceAPI PytorchAPI SpotifyAPI TMDB TensorAPI"
        " ToolBench WeatherAPI APPS CodeSearchNet HumanEval-X LeetCode MBPP Conala TLDR CodeEditSearch",
        "legal": "BillSum AILA2019-Case GerDaLIR LeCaRDv2 AILA2019-Statutes BSARD LegalQuAD"
        " REGIR-EU2UK REGIR-UK2EU TREC-Legal_2011 CUAD",
        "finance": "ConvFinQA Apple FinQA FinanceBench HC3Finance TAT-DQA Trade-the-event FiQA",
        "academic": "LitSearch FairRanking_2020 ProofWiki_Reference Stacks_Reference Stein_Reference"
        " Trench_Reference TAD TAS2 SciDocs ProofWiki_Proof Stacks_Proof Stein_Proof Trench_Proof"
        " SciFact Competition-Math StackMathQA",
    }.items()
}
_DOMAIN_OF_MAIR_TASK = {name.lower(): domain for domain, names in MAIR_DOMAINS.items() for name in names}

_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
_MAIR_QUERY_FIELDS = ("qid", "instruction", "query", "labels")
_QRELS_HEADER = ["query-id", "corpus-id", "score"]


class DataError(ValueError):
    """Input data that cannot be used as is; the message says where and how to fix it."""


@dataclass(frozen=True)
class Query:
    qid: str
    query: str
    instruction: str
    labels: dict[str, int]  # doc id -> graded relevance; only score > 0 counts as positive
    split: str | None = None

    @property
    def positive_ids(self) -> list[str]:
        return [doc_id for doc_id, score in self.labels.items() if score > 0]

    @property
    def has_positive(self) -> bool:
        return any(score > 0 for score in self.labels.values())


@dataclass
class Task:
    name: str
    domain: str
    doc_ids: list[str]
    docs: datasets.Dataset  # columns "id", "doc"; row i is doc_ids[i]
    queries: list[Query]
    ignore_identical_ids: bool = False
    source: str = ""  # folder or Hub dataset it came from, for reports

    @property
    def doc_texts(self) -> Sequence[str]:
        """The corpus texts, read lazily from Arrow (no Python list of the whole corpus)."""
        return self.docs["doc"]

    @property
    def labeled_queries(self) -> list[Query]:
        """Queries usable for training and evaluation: those with at least one positive label."""
        return [query for query in self.queries if query.has_positive]

    def __repr__(self) -> str:
        return (
            f"Task(name={self.name!r}, domain={self.domain!r}, docs={len(self.doc_ids)}, "
            f"queries={len(self.queries)}, ignore_identical_ids={self.ignore_identical_ids})"
        )


def cap_corpus(task: Task, max_docs: int | None, seed: int = 0) -> Task:
    """The task on a smaller corpus, as MAIR samples for efficiency: every judged document plus
    seeded random others up to `max_docs` in all (corpus order kept). Judged documents are never
    dropped, so a task with more of them than the cap keeps just those. `None`: unchanged."""
    if max_docs is None or len(task.doc_ids) <= max_docs:
        return task
    judged = {doc_id for query in task.queries for doc_id in query.labels}
    is_judged = np.fromiter((doc_id in judged for doc_id in task.doc_ids), dtype=bool, count=len(task.doc_ids))
    others = np.flatnonzero(~is_judged)
    room = max(0, max_docs - int(is_judged.sum()))
    extra = np.random.default_rng([_STREAM_CORPUS, seed]).choice(others, min(room, len(others)), replace=False)
    rows = np.sort(np.concatenate([np.flatnonzero(is_judged), extra]))
    return dataclasses.replace(task, doc_ids=[task.doc_ids[row] for row in rows], docs=task.docs.select(rows))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_tasks(
    data: str | Path,
    tasks: Sequence[str] | None = None,
    *,
    cache_dir: str | Path | None = None,
    ignore_identical_ids: Mapping[str, bool] | None = None,
) -> list[Task]:
    """Load several tasks at once.

    `data` is a folder of task folders (like shared/data), a single task folder, or, when it is
    not an existing path, comma-separated MAIR task names fetched from the Hub. `tasks` picks a
    subset by name (in that order). `ignore_identical_ids` overrides the per-task default by name.
    `cache_dir` is where `datasets` keeps its Arrow files (default: the HF datasets cache).
    """
    options = {"cache_dir": cache_dir, "ignore_identical_ids": ignore_identical_ids}
    path = Path(data)
    if path.is_dir():
        folders = {path.name: path} if _is_task_folder(path) else _task_folders(path)
        return [load_task(folders[name], **options) for name in _pick(folders, tasks, str(path))]
    if isinstance(data, Path) or path.exists() or re.search(r"[/\\~]|^\.", str(data)):
        raise FileNotFoundError(
            f"{data}: not a folder of tasks. Pass a task folder, a folder of task folders, "
            f"or MAIR task names (e.g. 'SciFact,ArguAna') to load from the Hub."
        )
    names = [name.strip() for name in str(data).split(",") if name.strip()]
    return [load_hub_task(name, **options) for name in _pick(dict.fromkeys(names), tasks, "the Hub names")]


def load_task(
    folder: str | Path,
    *,
    cache_dir: str | Path | None = None,
    ignore_identical_ids: Mapping[str, bool] | None = None,
) -> Task:
    """Load one task folder in MAIR's layout (docs + queries) or BEIR's (corpus + queries + qrels)."""
    folder = Path(folder)
    name = folder.name
    if _find_file(folder, "docs"):
        doc_ids, docs, queries = _load_mair_folder(folder, cache_dir)
    elif _find_file(folder, "corpus"):
        doc_ids, docs, queries = _load_beir_folder(folder, cache_dir)
    else:
        raise DataError(
            f"{folder}: no docs.jsonl (MAIR layout) or corpus.jsonl (BEIR layout) found "
            f"(also accepted: .jsonl.gz, .parquet)."
        )
    return _make_task(name, _folder_domain(folder), doc_ids, docs, queries, str(folder), ignore_identical_ids)


def load_hub_task(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    ignore_identical_ids: Mapping[str, bool] | None = None,
) -> Task:
    """Load a MAIR task from the Hub by its task name (e.g. 'SciFact'): its main queries/docs split."""
    docs_source = _Source(f"{HUB_DOCS} (config {name!r}, split 'docs')")
    queries_source = _Source(f"{HUB_QUERIES} (config {name!r}, split 'queries')")
    try:
        raw_docs = datasets.load_dataset(HUB_DOCS, name, split="docs", cache_dir=_str(cache_dir))
        raw_queries = datasets.load_dataset(HUB_QUERIES, name, split="queries", cache_dir=_str(cache_dir))
    except Exception as error:  # network, unknown config, ...: say which task and what to try
        raise DataError(
            f"could not load MAIR task {name!r} from the Hub ({error}). Check the name (case-sensitive, "
            f"e.g. 'SciFact'), the network, or pass a local folder instead."
        ) from error
    doc_ids, docs = _checked_mair_docs(raw_docs, docs_source)
    queries = _mair_queries(raw_queries, queries_source, set(doc_ids))
    domain = _DOMAIN_OF_MAIR_TASK.get(name.lower(), "unknown")
    return _make_task(name, domain, doc_ids, docs, queries, f"{HUB_QUERIES}/{name}", ignore_identical_ids)


def _make_task(
    name: str,
    domain: str,
    doc_ids: list[str],
    docs: datasets.Dataset,
    queries: list[Query],
    source: str,
    ignore_identical_ids: Mapping[str, bool] | None,
) -> Task:
    unlabeled = sum(not query.has_positive for query in queries)
    if unlabeled:
        warnings.warn(
            f"task {name!r}: {unlabeled} of {len(queries)} queries have no positive label (score > 0); "
            f"they are kept for inference but excluded from training and evaluation.",
            stacklevel=3,
        )
    overrides = ignore_identical_ids or {}
    ignore = overrides.get(name, name in IGNORE_IDENTICAL_IDS_TASKS)
    return Task(name, domain, doc_ids, docs, queries, ignore, source)


def _pick(available: Mapping[str, Any], wanted: Sequence[str] | None, where: str) -> list[str]:
    if not available:
        raise DataError(f"{where}: no task folders found (a task folder holds docs.* or corpus.*).")
    if wanted is None:
        return list(available)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise DataError(f"{where}: no task named {missing}; available: {sorted(available)}.")
    return list(wanted)


def _is_task_folder(folder: Path) -> bool:
    return bool(_find_file(folder, "docs") or _find_file(folder, "corpus"))


def _task_folders(root: Path) -> dict[str, Path]:
    return {child.name: child for child in sorted(root.iterdir()) if child.is_dir() and _is_task_folder(child)}


def _find_file(folder: Path, stem: str) -> Path | None:
    """`stem`.jsonl, .jsonl.gz or .parquet; two of them at once would be ambiguous."""
    found = [folder / f"{stem}{suffix}" for suffix in _FILE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise DataError(f"{folder}: both {found[0].name} and {found[1].name} exist; keep only one.")
    return found[0] if found else None


def _folder_domain(folder: Path) -> str:
    """SOURCE.md's "Domain:" line (its coarse part: "medical / nutrition" -> "medical"), else MAIR's
    table looked up by SOURCE.md's "MAIR task:" line or the folder name, else "unknown"."""
    source_md = folder / "SOURCE.md"
    text = source_md.read_text(encoding="utf-8") if source_md.is_file() else ""
    domain = re.search(r"^\s*-\s*Domain:\s*(.+)$", text, re.MULTILINE | re.IGNORECASE)
    if domain:
        return re.split(r"\s*[/(,]", domain.group(1), maxsplit=1)[0].strip().lower()
    mair_task = re.search(r"^\s*-\s*MAIR task:\s*(\S+)", text, re.MULTILINE | re.IGNORECASE)
    for candidate in ([mair_task.group(1)] if mair_task else []) + [folder.name]:
        if candidate.lower() in _DOMAIN_OF_MAIR_TASK:
            return _DOMAIN_OF_MAIR_TASK[candidate.lower()]
    return "unknown"


# ---------------------------------------------------------------------------------------------
# Reading files, and pointing at the line (or row) behind a row index
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """Where a Dataset's rows came from, so that an error can name the line (JSONL) or row."""

    description: str
    path: Path | None = None

    def where(self, row: int) -> str:
        if self.path is not None and _is_jsonl(self.path):
            return f"{self.path}, line {_line_of_row(self.path, row)}"
        return f"{self.description}, row {row + 1}"

    def __str__(self) -> str:
        return self.description


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _open_text(path: Path) -> TextIO:
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def _line_of_row(path: Path, row: int) -> int:
    """Line number of the row-th record; the JSON reader skips blank lines, so count only others."""
    for index, (number, _) in enumerate(_numbered_records(path)):
        if index == row:
            return number
    raise AssertionError(f"{path} has fewer than {row + 1} records")


def _read_file(path: Path, cache_dir: str | Path | None) -> tuple[datasets.Dataset, _Source]:
    # Dataset.from_json/from_parquet, not load_dataset: the latter pings the Hub (download counts)
    # even for local files. glob.escape: the path is read as a glob pattern.
    read = datasets.Dataset.from_parquet if path.name.endswith(".parquet") else datasets.Dataset.from_json
    try:
        dataset = read(glob.escape(str(path)), cache_dir=_str(cache_dir))
    except Exception as error:  # the builder's own message rarely says where: find the line
        raise _explain_unreadable(path, error) from error
    return dataset, _Source(str(path), path)


def _explain_unreadable(path: Path, error: Exception) -> DataError:
    if not _is_jsonl(path):
        return DataError(f"{path}: not a readable parquet file ({error}); rewrite it, e.g. with pyarrow.")
    try:
        for number, line in _numbered_records(path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as bad:
                return DataError(
                    f"{path}, line {number}: malformed JSON ({bad.msg}, column {bad.colno}); "
                    f"each line must be one complete JSON object."
                )
            if not isinstance(record, dict):
                return DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}.")
    except (OSError, EOFError, UnicodeDecodeError) as bad:
        return DataError(f"{path}: cannot be read as UTF-8 JSON lines ({bad}); re-export or re-compress it.")
    return DataError(f"{path}: every line is valid JSON but the datasets reader failed ({error}).")


def _numbered_records(path: Path) -> Iterator[tuple[int, str]]:
    with _open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, line


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


# ---------------------------------------------------------------------------------------------
# Corpus validation (Arrow-level, so a large corpus never becomes Python objects)
# ---------------------------------------------------------------------------------------------


def _checked_mair_docs(raw: datasets.Dataset, source: _Source) -> tuple[list[str], datasets.Dataset]:
    _require_columns(raw, source, ("id", "doc"), "MAIR docs rows are {id, doc}")
    docs = _ids_as_strings(raw, "id", source).select_columns(["id", "doc"])
    return _checked_corpus(docs, source), docs


def _require_columns(dataset: datasets.Dataset, source: _Source, names: Sequence[str], hint: str) -> None:
    for name in names:
        if name not in dataset.column_names:
            raise DataError(f"{source}: missing required field {name!r} on every row ({hint}).")
        missing = _first_index(pc.is_null(dataset.data.column(name)))
        if missing is not None:
            raise DataError(f"{source.where(missing)}: missing required field {name!r} ({hint}).")


def _ids_as_strings(dataset: datasets.Dataset, name: str, source: _Source) -> datasets.Dataset:
    """Integer ids are read as strings, so that a label "7" matches the doc id 7."""
    if pa.types.is_integer(dataset.data.column(name).type):
        return dataset.cast_column(name, datasets.Value("string"))
    _require_strings(dataset, name, source)
    return dataset


def _require_strings(dataset: datasets.Dataset, name: str, source: _Source) -> None:
    column_type = dataset.data.column(name).type
    if pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
        return
    for row, value in enumerate(dataset[name]):  # only on the error path: find the culprit
        if not isinstance(value, str):
            raise DataError(
                f"{source.where(row)}: field {name!r} is {value!r}, not a string; "
                f"write it as a JSON string on every line."
            )


def _checked_corpus(docs: datasets.Dataset, source: _Source) -> list[str]:
    """Doc texts are strings, none blank; doc ids unique. Returns the ids in row order."""
    _require_strings(docs, "doc", source)
    texts = docs.data.column("doc")
    blank = _first_index(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0))
    doc_ids: list[str] = docs.data.column("id").to_pylist()
    if blank is not None:
        raise DataError(f"{source.where(blank)}: doc {doc_ids[blank]!r} has an empty text; fill it in or drop the doc.")
    if len(set(doc_ids)) != len(doc_ids):
        first_row: dict[str, int] = {}
        for row, doc_id in enumerate(doc_ids):
            if doc_id in first_row:
                raise DataError(
                    f"{source.where(row)}: duplicate doc id {doc_id!r} (first at {source.where(first_row[doc_id])}); "
                    f"doc ids must be unique: remove or rename one."
                )
            first_row[doc_id] = row
    return doc_ids


def _first_index(mask: pa.ChunkedArray | pa.Array) -> int | None:
    hits = pc.indices_nonzero(pc.fill_null(mask, False))
    return hits[0].as_py() if len(hits) else None


# ---------------------------------------------------------------------------------------------
# Queries (small: validated row by row in Python)
# ---------------------------------------------------------------------------------------------


# Where a record sits ("file, line N"), computed only when there is an error to report: finding a
# line means re-reading the file.
_Where = Callable[[], str]


def _mair_queries(raw: datasets.Dataset, source: _Source, doc_ids: set[str]) -> list[Query]:
    hint = "MAIR query rows are {qid, instruction, query, labels}"
    queries: list[Query] = []
    first_row: dict[str, int] = {}
    for row, record in enumerate(raw.to_list()):
        where = partial(source.where, row)
        values = _required_values(record, _MAIR_QUERY_FIELDS, where, hint)
        qid = _as_id(values["qid"], "qid", where)
        _check_unique_qid(qid, row, first_row, source)
        query = Query(
            qid=qid,
            query=_as_text(values["query"], "query", qid, where),
            instruction=_as_text(values["instruction"], "instruction", qid, where, allow_empty=True),
            labels=_mair_labels(values["labels"], qid, doc_ids, where),
            split=_as_split(record.get("split"), qid, where),
        )
        queries.append(query)
    return queries


def _required_values(record: Mapping[str, Any], names: Sequence[str], where: _Where, hint: str) -> dict[str, Any]:
    for name in names:
        if record.get(name) is None:
            qid = record.get("qid", record.get("_id"))
            about = f" (query {qid!r})" if qid is not None else ""
            raise DataError(f"{where()}: missing required field {name!r}{about}; {hint}.")
    return {name: record[name] for name in names}


def _as_id(value: Any, name: str, where: _Where) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise DataError(f"{where()}: field {name!r} is {value!r}; ids must be non-empty strings.")
    return str(value)


def _as_text(value: Any, name: str, qid: str, where: _Where, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where()}: query {qid!r}: field {name!r} must be a string, got {value!r}.")
    if not allow_empty and not value.strip():
        raise DataError(f"{where()}: query {qid!r} has an empty {name!r}; fill it in or drop the query.")
    return value


def _as_score(value: Any, qid: str, doc_id: str, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise DataError(f"{where()}: query {qid!r}, doc {doc_id!r}: score {value!r} is not an integer grade.")
    return int(value)


def _as_split(value: Any, qid: str, where: _Where) -> str | None:
    if value is None or value in SPLIT_NAMES:
        return value
    raise DataError(f"{where()}: query {qid!r} has split {value!r}; use one of {list(SPLIT_NAMES)} or omit it.")


def _check_unique_qid(qid: str, row: int, first_row: dict[str, int], source: _Source) -> None:
    if qid in first_row:
        raise DataError(
            f"{source.where(row)}: duplicate query id {qid!r} (first at {source.where(first_row[qid])}); "
            f"query ids must be unique: remove or rename one."
        )
    first_row[qid] = row


def _mair_labels(value: Any, qid: str, doc_ids: set[str], where: _Where) -> dict[str, int]:
    if not isinstance(value, list):
        raise DataError(f"{where()}: query {qid!r}: 'labels' must be a list of {{id, score}}, got {value!r}.")
    labels: dict[str, int] = {}
    for label in value:
        if not isinstance(label, dict) or label.get("id") is None or label.get("score") is None:
            raise DataError(f"{where()}: query {qid!r}: label {label!r} needs both 'id' and 'score'.")
        doc_id = _as_id(label["id"], "labels.id", where)
        _add_label(labels, qid, doc_id, _as_score(label["score"], qid, doc_id, where), doc_ids, where)
    return labels


def _add_label(labels: dict[str, int], qid: str, doc_id: str, score: int, doc_ids: set[str], where: _Where) -> None:
    if doc_id not in doc_ids:
        raise DataError(
            f"{where()}: query {qid!r} labels doc {doc_id!r}, which is not in the corpus; fix the id or add the doc."
        )
    if doc_id in labels:
        raise DataError(f"{where()}: query {qid!r} labels doc {doc_id!r} twice; keep one judgement.")
    labels[doc_id] = score


# ---------------------------------------------------------------------------------------------
# The two local layouts
# ---------------------------------------------------------------------------------------------


def _load_mair_folder(folder: Path, cache_dir: str | Path | None) -> tuple[list[str], datasets.Dataset, list[Query]]:
    queries_path = _find_file(folder, "queries")
    if queries_path is None:
        raise DataError(f"{folder}: has docs but no queries.jsonl (or .jsonl.gz, .parquet).")
    doc_ids, docs = _checked_mair_docs(*_read_file(_find_file(folder, "docs"), cache_dir))
    raw_queries, queries_source = _read_file(queries_path, cache_dir)
    return doc_ids, docs, _mair_queries(raw_queries, queries_source, set(doc_ids))


def _load_beir_folder(folder: Path, cache_dir: str | Path | None) -> tuple[list[str], datasets.Dataset, list[Query]]:
    queries_path = _find_file(folder, "queries")
    qrels_paths = [path for split in SPLIT_NAMES if (path := folder / "qrels" / f"{split}.tsv").is_file()]
    if queries_path is None or not qrels_paths:
        raise DataError(f"{folder}: BEIR layout needs corpus.jsonl, queries.jsonl and qrels/{{train,dev,test}}.tsv.")
    doc_ids, docs = _checked_beir_corpus(*_read_file(_find_file(folder, "corpus"), cache_dir))
    raw_queries, queries_source = _read_file(queries_path, cache_dir)
    texts = _beir_query_texts(raw_queries, queries_source)
    labels, splits = _read_qrels(qrels_paths, set(texts), set(doc_ids))
    queries = [Query(qid, text, "", labels.get(qid, {}), splits.get(qid)) for qid, text in texts.items()]
    return doc_ids, docs, queries


def _checked_beir_corpus(raw: datasets.Dataset, source: _Source) -> tuple[list[str], datasets.Dataset]:
    hint = "BEIR corpus rows are {_id, title, text}"
    _require_columns(raw, source, ("_id", "text"), hint)
    raw = _ids_as_strings(raw, "_id", source)
    docs = raw.map(
        _beir_doc_batch,
        batched=True,
        remove_columns=raw.column_names,
        features=datasets.Features({"id": datasets.Value("string"), "doc": datasets.Value("string")}),
    )
    return _checked_corpus(docs, source), docs


def _beir_doc_batch(batch: dict[str, list[Any]]) -> dict[str, list[str]]:
    titles = batch.get("title") or [None] * len(batch["_id"])
    return {
        "id": batch["_id"],
        "doc": [f"{title} {text}" if title else text for title, text in zip(titles, batch["text"])],
    }


def _beir_query_texts(raw: datasets.Dataset, source: _Source) -> dict[str, str]:
    texts: dict[str, str] = {}
    first_row: dict[str, int] = {}
    for row, record in enumerate(raw.to_list()):
        where = partial(source.where, row)
        values = _required_values(record, ("_id", "text"), where, "BEIR query rows are {_id, text}")
        qid = _as_id(values["_id"], "_id", where)
        _check_unique_qid(qid, row, first_row, source)
        texts[qid] = _as_text(values["text"], "text", qid, where)
    return texts


def _read_qrels(
    paths: Sequence[Path], qids: set[str], doc_ids: set[str]
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Labels per query, and each query's split: the name of the qrels file that judges it."""
    labels: dict[str, dict[str, int]] = {}
    splits: dict[str, str] = {}
    for path in paths:
        split = path.stem
        for number, (qid, doc_id, score) in _qrels_rows(path):
            where = partial(str, f"{path}, line {number}")
            if qid not in qids:
                raise DataError(f"{where()}: query {qid!r} is not in queries.jsonl; fix the id or add the query.")
            if splits.setdefault(qid, split) != split:
                raise DataError(
                    f"{where()}: query {qid!r} is also judged in qrels/{splits[qid]}.tsv; a query has one split."
                )
            _add_label(labels.setdefault(qid, {}), qid, doc_id, _as_score(score, qid, doc_id, where), doc_ids, where)
    return labels, splits


def _qrels_rows(path: Path) -> Iterator[tuple[int, tuple[str, str, float]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        for number, fields in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not fields or (number == 1 and fields == _QRELS_HEADER):
                continue
            if len(fields) != 3:
                raise DataError(
                    f"{path}, line {number}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                    f"got {fields!r}."
                )
            try:
                score = float(fields[2])
            except ValueError:
                raise DataError(f"{path}, line {number}: score {fields[2]!r} is not a number.") from None
            yield number, (fields[0], fields[1], score)


# ---------------------------------------------------------------------------------------------
# Seeded label-budget splits (DESIGN.md, "Evaluation protocol")
# ---------------------------------------------------------------------------------------------

# Independent random streams, so that e.g. the training order never depends on the test draw.


@dataclass(frozen=True)
class TaskSplit:
    """Which labeled queries are test, and per budget which train and validate. JSON-able."""

    task: str
    seed: int
    protocol: str  # "split-field": from the queries' split field; "seeded": carved by a permutation
    n_labeled: int
    test_fraction: float
    val_share: float
    test_qids: list[str]
    train_qids: dict[float, list[str]]
    val_qids: dict[float, list[str]]

    @property
    def budgets(self) -> list[float]:
        return sorted(self.train_qids)

    def train(self, budget: float) -> list[str]:
        return self.train_qids[self._key(budget)]

    def val(self, budget: float) -> list[str]:
        return self.val_qids[self._key(budget)]

    def _key(self, budget: float) -> float:
        for known in self.train_qids:
            if math.isclose(known, budget, abs_tol=1e-9):
                return known
        raise KeyError(f"task {self.task!r}: budget {budget} is not in this split (it has {self.budgets}).")

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "seed": self.seed,
            "protocol": self.protocol,
            "n_labeled": self.n_labeled,
            "test_fraction": self.test_fraction,
            "val_share": self.val_share,
            "test": self.test_qids,
            "budgets": [
                {
                    "budget": budget,
                    "n_labels": len(self.train(budget)) + len(self.val(budget)),
                    "train": self.train(budget),
                    "val": self.val(budget),
                }
                for budget in self.budgets
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSplit:
        return cls(
            task=data["task"],
            seed=data["seed"],
            protocol=data["protocol"],
            n_labeled=data["n_labeled"],
            test_fraction=data["test_fraction"],
            val_share=data["val_share"],
            test_qids=list(data["test"]),
            train_qids={entry["budget"]: list(entry["train"]) for entry in data["budgets"]},
            val_qids={entry["budget"]: list(entry["val"]) for entry in data["budgets"]},
        )


def make_split(
    task: Task,
    seed: int = 0,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    test_fraction: float = 0.5,
    val_share: float = 0.2,
) -> TaskSplit:
    """Split the task's labeled queries into a fixed test part and, per budget, nested train/val sets.

    A budget b is a fraction of ALL labeled queries: round(b * N) labels in total, of which
    max(1, round(val_share * that)) validate, the rest (at least 1) train; each capped by its pool.
    Sets are prefixes of fixed seeded permutations, so a smaller budget's sets lie inside a larger's.
    """
    _check_split_arguments(seed, budgets, test_fraction, val_share)
    labeled = sorted(task.labeled_queries, key=lambda query: query.qid)  # ids, not file order, decide
    if not labeled:
        raise DataError(f"task {task.name!r}: no query has a positive label, so there is nothing to split.")
    counts = {budget: _budget_counts(budget, len(labeled), val_share) for budget in sorted(set(budgets))}
    groups = _group_by_split(labeled, task.name)
    if groups["train"] or groups["dev"]:
        protocol = "split-field"
        test = [query.qid for query in groups["test"]]
        if not test:
            raise DataError(
                f"task {task.name!r}: labeled queries carry train/dev splits but none is 'test'; "
                f"mark the test queries, or drop the split field to carve a seeded test part."
            )
        train, val = _draw_from_split_field(groups["train"], groups["dev"], seed, counts)
    else:
        protocol = "seeded"
        order = _permuted([query.qid for query in labeled], seed, _TEST_STREAM)
        n_test = max(1, _round_half_up(test_fraction * len(order)))
        test = sorted(order[:n_test])
        train, val = _draw_shared(order[n_test:], counts)
    return TaskSplit(task.name, seed, protocol, len(labeled), test_fraction, val_share, test, train, val)


def _check_split_arguments(seed: int, budgets: Sequence[float], test_fraction: float, val_share: float) -> None:
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if not budgets or not all(0 < budget <= 1 for budget in budgets):
        raise ValueError(f"budgets must be fractions in (0, 1], got {list(budgets)}.")
    for name, value in (("test_fraction", test_fraction), ("val_share", val_share)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}.")


def _round_half_up(value: float) -> int:
    # Python's round() is banker's (2.5 -> 2); the inner round drops float noise (0.05 * 50 = 2.5000000000000004).
    return math.floor(round(value, 9) + 0.5)


def _budget_counts(budget: float, n_labeled: int, val_share: float) -> tuple[int, int]:
    """(validation, training) label counts for a budget, before capping by what the pools hold."""
    total = _round_half_up(budget * n_labeled)
    n_val = max(1, _round_half_up(val_share * total))
    return n_val, max(1, total - n_val)


def _group_by_split(labeled: list[Query], task_name: str) -> dict[str | None, list[Query]]:
    groups: dict[str | None, list[Query]] = {None: [], **{name: [] for name in SPLIT_NAMES}}
    for query in labeled:
        groups[query.split].append(query)
    if (groups["train"] or groups["dev"]) and groups[None]:
        raise DataError(
            f"task {task_name!r}: query {groups[None][0].qid!r} has no split while others are train/dev; "
            f"give every labeled query a split (or none)."
        )
    return groups


def _permuted(qids: list[str], seed: int, stream: int) -> list[str]:
    # numpy's PCG64 from a SeedSequence: identical in every process and on every platform.
    rng = np.random.default_rng([stream, seed])
    return [qids[index] for index in rng.permutation(len(qids))]


_Counts = Mapping[float, tuple[int, int]]
_Draw = tuple[dict[float, list[str]], dict[float, list[str]]]


def _draw_from_split_field(train_pool: list[Query], dev_pool: list[Query], seed: int, counts: _Counts) -> _Draw:
    """Training from `train`, validation from `dev`; when one of them is empty, both share the other."""
    train_order = _permuted([query.qid for query in train_pool], seed, _TRAIN_STREAM)
    dev_order = _permuted([query.qid for query in dev_pool], seed, _VAL_STREAM)
    if not train_order or not dev_order:
        return _draw_shared(train_order or dev_order, counts)
    train = {budget: train_order[:n_train] for budget, (_, n_train) in counts.items()}
    val = {budget: dev_order[:n_val] for budget, (n_val, _) in counts.items()}
    return train, val


def _draw_shared(pool: list[str], counts: _Counts) -> _Draw:
    """Training from the pool's front, validation from its back, so they never overlap.

    Validation's share is capped once, at what the largest budget needs (leaving at least one query
    for training), so that both counts still grow with the budget and the sets stay nested.
    """
    val_cap = min(max(n_val for n_val, _ in counts.values()), max(1, len(pool) - 1), len(pool))
    train_cap = len(pool) - val_cap
    back = pool[::-1]
    train = {budget: pool[: min(n_train, train_cap)] for budget, (_, n_train) in counts.items()}
    val = {budget: back[: min(n_val, val_cap)] for budget, (n_val, _) in counts.items()}
    return train, val
