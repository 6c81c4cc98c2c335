"""Reading task files: MAIR's layout (docs + queries with labels) and BEIR's (corpus + queries + qrels),
as JSONL, gzipped JSONL or parquet, into validated `Query` objects and an Arrow-backed corpus.

Every problem in the input is a `DataError` that names the file, the line (or row) and the id, and
says how to fix it: bytes that are not UTF-8 (with their byte offset), lone surrogate escapes, empty
files, malformed JSON, missing fields, duplicates, dangling labels. The data layouts are described in
docs/protocol.md. (A little longer than most modules: one concept, reading and validating task files.)
"""
from __future__ import annotations

import csv
import glob
import gzip
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

SPLIT_NAMES = ("train", "dev", "test")
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
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


def find_file(folder: Path, stem: str) -> Path | None:
    """`stem`.jsonl, .jsonl.gz or .parquet; two of them at once would be ambiguous."""
    found = [folder / f"{stem}{suffix}" for suffix in FILE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise DataError(f"{folder}: both {found[0].name} and {found[1].name} exist; keep only one.")
    return found[0] if found else None


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


def _decoded_lines(path: Path) -> Iterator[str]:
    """Every line of a (gzipped) text file, decoded one at a time from its bytes, so that bytes which are
    not UTF-8 are a DataError naming the line and the byte offset, not a bare UnicodeDecodeError."""
    offset = 0
    with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                of = " of the uncompressed text" if path.name.endswith(".gz") else ""
                raise DataError(
                    f"{path}, line {number} (byte {offset + bad.start}{of}): not valid UTF-8 "
                    f"({raw[bad.start:bad.end]!r}: {bad.reason}); save the file as UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8`."
                ) from None
            offset += len(raw)


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
        dataset.data.validate(full=True)  # the JSON reader lets bytes that are not UTF-8 through
    except Exception as error:  # the builder's own message rarely says where: find the line
        raise _explain_unreadable(path, error) from error
    if len(dataset) == 0:
        raise DataError(f"{path} is empty: it holds no rows; a task file needs at least one.")
    return dataset, _Source(str(path), path)


def _explain_unreadable(path: Path, error: Exception) -> DataError:
    if not _is_jsonl(path):
        return DataError(f"{path}: not a readable parquet file ({error}); rewrite it, e.g. with pyarrow.")
    records, kinds = 0, {}  # field -> (JSON type, line) of its first value
    try:
        for number, line in _numbered_records(path):
            records += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as bad:
                return DataError(
                    f"{path}, line {number}: malformed JSON ({bad.msg}, column {bad.colno}); "
                    f"each line must be one complete JSON object."
                )
            if not isinstance(record, dict):
                return DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}.")
            for name, value in record.items():
                kind = _JSON_KINDS.get(type(value))
                first = kinds.setdefault(name, (kind, number)) if kind else None
                if first and first[0] != kind:
                    return DataError(
                        f"{path}, line {number}: field {name!r} is {kind} here but {first[0]} on line {first[1]}; "
                        f"give a field one type on every line (ids as strings, say)."
                    )
            surrogate = _lone_surrogate(record)
            if surrogate is not None:
                return DataError(
                    f"{path}, line {number}: field {surrogate[0]!r} holds a lone surrogate escape "
                    f"({surrogate[1][:60]!r}), which is not Unicode text; remove it or write the full pair."
                )
        if not records:
            lines = sum(1 for _ in _decoded_lines(path))
            blank = f" (its {lines} line{'s' * (lines != 1)} are blank)" if lines else ""
            return DataError(f"{path} is empty{blank}: write one JSON object per line.")
    except DataError as bad:
        return bad
    except (OSError, EOFError) as bad:
        return DataError(f"{path}: cannot be read ({bad}); re-export or re-compress it.")
    return DataError(f"{path}: every line is valid JSON but the datasets reader failed ({error}).")


_JSON_KINDS = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list", dict: "an object"}


def _lone_surrogate(value: Any, field: str = "") -> tuple[str, str] | None:
    """(field, text) of the first string in a JSON value that holds a lone surrogate ("\\ud800")."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return field, value
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(item, f"{field}.{key}" if field else str(key))
        if found is not None:
            return found
    return None


def _numbered_records(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(_decoded_lines(path), start=1):
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
    """Doc texts are strings (empty ones are allowed: `blank_rows`), doc ids unique. Returns the ids in row order."""
    _require_strings(docs, "doc", source)
    doc_ids: list[str] = docs.data.column("id").to_pylist()
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


def blank_rows(docs: datasets.Dataset) -> list[int]:
    """Rows of a corpus whose text is empty or whitespace only (real collections have a few)."""
    texts = docs.data.column("doc")
    return pc.indices_nonzero(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0)).to_pylist()


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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
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


def read_mair_folder(folder: Path, cache_dir: str | Path | None) -> tuple[list[str], datasets.Dataset, list[Query]]:
    queries_path = find_file(folder, "queries")
    if queries_path is None:
        raise DataError(f"{folder}: has docs but no queries.jsonl (or .jsonl.gz, .parquet).")
    doc_ids, docs = _checked_mair_docs(*_read_file(find_file(folder, "docs"), cache_dir))
    raw_queries, queries_source = _read_file(queries_path, cache_dir)
    return doc_ids, docs, _mair_queries(raw_queries, queries_source, set(doc_ids))


def beir_qrels_files(folder: Path, given: Mapping[str, str | Path | None] | None = None) -> dict[str, Path]:
    """The qrels file of each role (train, dev, test): `given` ones (e.g. --train-qrels) as they are,
    else the folder's qrels/<role>.tsv when it exists."""
    given = {role: Path(path) for role, path in (given or {}).items() if path is not None}
    for role, path in given.items():
        if role not in SPLIT_NAMES:
            raise ValueError(f"qrels role {role!r}: use one of {list(SPLIT_NAMES)}.")
        if not path.is_file():
            raise DataError(f"{path}: the {role} qrels file given does not exist.")
    found = {role: path for role in SPLIT_NAMES if (path := folder / "qrels" / f"{role}.tsv").is_file()}
    return {role: given.get(role, found.get(role)) for role in SPLIT_NAMES if role in given or role in found}


def read_beir_folder(folder: Path, cache_dir: str | Path | None, qrels: Mapping[str, str | Path | None] | None = None,
                     ) -> tuple[list[str], datasets.Dataset, list[Query]]:
    """A BEIR folder; `qrels` gives a role's qrels file explicitly (else qrels/<role>.tsv)."""
    queries_path = find_file(folder, "queries")
    qrels_paths = beir_qrels_files(folder, qrels)
    if queries_path is None or not qrels_paths:
        raise DataError(f"{folder}: BEIR layout needs corpus.jsonl, queries.jsonl and qrels/{{train,dev,test}}.tsv "
                        f"(or qrels files given with --train-qrels/--dev-qrels/--test-qrels).")
    doc_ids, docs = _checked_beir_corpus(*_read_file(find_file(folder, "corpus"), cache_dir))
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
    paths: Mapping[str, Path], qids: set[str], doc_ids: set[str]
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Labels per query, and each query's split: the role of the qrels file that judges it."""
    labels: dict[str, dict[str, int]] = {}
    splits: dict[str, str] = {}
    for split, path in paths.items():
        for number, (qid, doc_id, score) in _qrels_rows(path):
            where = partial(str, f"{path}, line {number}")
            if qid not in qids:
                raise DataError(f"{where()}: query {qid!r} is not in queries.jsonl; fix the id or add the query.")
            if splits.setdefault(qid, split) != split:
                raise DataError(
                    f"{where()}: query {qid!r} is also judged in {_shown(paths[splits[qid]])}; a query has one split."
                )
            _add_label(labels.setdefault(qid, {}), qid, doc_id, _as_score(score, qid, doc_id, where), doc_ids, where)
    return labels, splits


def _shown(path: Path) -> str:
    return f"qrels/{path.name}" if path.parent.name == "qrels" else str(path)


def _qrels_rows(path: Path) -> Iterator[tuple[int, tuple[str, str, float]]]:
    for number, fields in enumerate(csv.reader(_decoded_lines(path), delimiter="\t"), start=1):
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


def read_mair_hub(raw_docs: datasets.Dataset, raw_queries: datasets.Dataset,
                  name: str, docs_description: str, queries_description: str) -> tuple[list[str], datasets.Dataset, list[Query]]:
    """A MAIR task fetched from the Hub (its docs and queries splits), validated like a local folder."""
    doc_ids, docs = _checked_mair_docs(raw_docs, _Source(docs_description))
    return doc_ids, docs, _mair_queries(raw_queries, _Source(queries_description), set(doc_ids))


def read_query_log(path: str | Path) -> list[Query]:
    """Unlabeled queries from a user's query log: a text file with one query a line, or JSON lines
    `{"query": ..., "instruction": ...}` (instruction and `qid` optional). Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"query log {path} not found: pass a text file (one query a line) or JSONL "
                        f'({{"query": ..., "instruction": ...}}).')
    queries, as_json = [], path.name.endswith((".jsonl", ".jsonl.gz"))
    for number, line in _numbered_records(path):
        where = partial(str, f"{path}, line {number}")
        if as_json:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as bad:
                raise DataError(f"{where()}: not valid JSON ({bad.msg}); write one object per line.") from None
            if not isinstance(record, dict):
                raise DataError(f"{where()}: expected a JSON object with a 'query' field, got {type(record).__name__}.")
            qid = str(record.get("qid", f"log-{number}"))
            text = _as_text(record.get("query"), "query", qid, where)
            instruction = _as_text(record.get("instruction", ""), "instruction", qid, where, allow_empty=True)
        else:
            qid, text, instruction = f"log-{number}", line.strip(), ""
        queries.append(Query(qid, text, instruction, {}))
    if not queries:
        raise DataError(f"query log {path} is empty: write one query a line (or one JSON object a line).")
    return queries
