"""Tasks from Python objects, the way sentence-transformers users hold their data: `corpus` / `queries` /
`relevant_docs` dicts (the arguments of its `InformationRetrievalEvaluator`), (query, positive) pairs,
a `datasets.Dataset` with `anchor` / `positive` columns, or plain texts for stage 1.

Each builder returns a `Task`, the object the folder readers give, so every stage runs on it through
the same code (`align(texts=...)`, `adapt(pairs=..., corpus=...)`, `evaluate(task, ...)`).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets

from era_adapters.data import DataError, Query, Task, load_tasks
from era_adapters.readers import SPLIT_NAMES

__all__ = ["describe", "given_tasks", "gives_pairs", "stage_tasks", "task_from_dicts", "task_from_pairs", "task_from_texts"]


def task_from_dicts(
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    relevant_docs: Mapping[str, Mapping[str, int] | Iterable[str]],
    *,
    name: str = "task",
    roles: Mapping[str, str] | None = None,
    instruction: str = "",
    roles_from: str = "",
) -> Task:
    """A task from dicts: `corpus` {doc_id: text}, `queries` {qid: text}, `relevant_docs` {qid: {doc_id:
    grade}} (or {qid: set of doc ids}, grade 1, as sentence-transformers takes them). `roles` {qid: "train" |
    "dev" | "test"} marks the queries' roles; without it the split is seeded (`--test-fraction`)."""
    doc_ids = [str(doc_id) for doc_id in corpus]
    blank = [doc_id for doc_id, text in corpus.items() if not isinstance(text, str) or not text.strip()]
    if blank:
        raise DataError(f"corpus: doc {blank[0]!r} has an empty or non-string text; fill it in or drop it.")
    known = set(doc_ids)
    built = []
    for qid, text in queries.items():
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"queries: query {qid!r} has an empty or non-string text.")
        labels = _grades(relevant_docs.get(qid, {}))
        unknown = sorted(set(labels) - known)
        if unknown:
            raise DataError(f"relevant_docs: query {qid!r} labels doc {unknown[0]!r}, which is not in the corpus.")
        role = (roles or {}).get(qid)
        if role is not None and role not in SPLIT_NAMES:
            raise DataError(f"roles: query {qid!r} has role {role!r}; use one of {list(SPLIT_NAMES)}.")
        built.append(Query(str(qid), text, instruction, labels, role))
    stray = sorted(set(map(str, relevant_docs)) - {query.qid for query in built})
    if stray:
        raise DataError(f"relevant_docs: query {stray[0]!r} is not in queries; add its text or drop its labels.")
    docs = datasets.Dataset.from_dict({"id": doc_ids, "doc": [corpus[doc_id] for doc_id in corpus]})
    source = roles_from or ("the roles given in Python" if roles else "")
    return Task(name, "unknown", doc_ids, docs, built, source=f"in-memory task {name!r}", roles_from=source)


def _grades(labels: Mapping[str, int] | Iterable[str]) -> dict[str, int]:
    if isinstance(labels, Mapping):
        return {str(doc_id): int(grade) for doc_id, grade in labels.items()}
    return {str(doc_id): 1 for doc_id in labels}


def task_from_pairs(
    pairs: Sequence[tuple[str, str]] | datasets.Dataset,
    corpus: Mapping[str, str] | None = None,
    *,
    name: str = "pairs",
    role: str = "train",
    instruction: str = "",
) -> Task:
    """A task from (query, positive) pairs; the positive is a doc id of `corpus` or a document's text
    (added to the corpus). A `datasets.Dataset` with `anchor` and `positive` columns works too. The same
    query text in several pairs is one query with several positives. Every query gets `role`."""
    if isinstance(pairs, datasets.Dataset):
        missing = {"anchor", "positive"} - set(pairs.column_names)
        if missing:
            raise DataError(f"the dataset needs 'anchor' and 'positive' columns (sentence-transformers' pair "
                            f"format); it has {pairs.column_names}.")
        pairs = list(zip(pairs["anchor"], pairs["positive"]))
    documents = dict(corpus or {})
    by_text = {text: doc_id for doc_id, text in documents.items()}
    queries: dict[str, str] = {}
    relevant: dict[str, dict[str, int]] = {}
    qid_of: dict[str, str] = {}
    for number, pair in enumerate(pairs, start=1):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DataError(f"pair {number}: expected (query, positive doc id or text), got {pair!r}.")
        query, positive = pair
        if not isinstance(query, str) or not isinstance(positive, str) or not query.strip() or not positive.strip():
            raise DataError(f"pair {number}: query and positive must be non-empty strings, got {pair!r}.")
        if positive in documents:
            doc_id = positive
        else:  # a text: one document per distinct text
            doc_id = by_text.get(positive) or "doc-" + hashlib.blake2b(positive.encode(), digest_size=6).hexdigest()
            documents.setdefault(doc_id, positive)
            by_text.setdefault(positive, doc_id)
        qid = qid_of.setdefault(query, f"q{len(qid_of)}")
        queries[qid] = query
        relevant.setdefault(qid, {})[doc_id] = 1
    if not queries:
        raise DataError("no pairs given: pass at least two (query, positive) pairs.")
    return task_from_dicts(documents, queries, relevant, name=name, roles={qid: role for qid in queries},
                           instruction=instruction, roles_from=f"(query, positive) pairs given in Python, all {role}")


def task_from_texts(texts: Sequence[str], *, name: str = "texts") -> Task:
    """A task of unlabeled texts only (stage 1 aligns on them; there is nothing to evaluate)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string.")
    return task_from_dicts({f"t{i}": text for i, text in enumerate(texts)}, {}, {}, name=name)


def given_tasks(data: Any = None, *, texts: Sequence[str] | None = None, pairs: Any = None,
                corpus: Mapping[str, str] | None = None) -> list[Task] | None:
    """The in-memory tasks a Python call passes (`Task`s, a pairs `Dataset`, `pairs`, `texts`), or None
    when `data` names files (a path or Hub task names) for `load_tasks`."""
    if texts is not None:
        return [task_from_texts(texts)]
    if pairs is not None:
        return [task_from_pairs(pairs, corpus)]
    if isinstance(data, datasets.Dataset):
        return [task_from_pairs(data, corpus)]
    if isinstance(data, Task):
        return [data]
    if isinstance(data, (list, tuple)) and data and all(isinstance(task, Task) for task in data):
        return list(data)
    if data is None:
        raise TypeError("pass the data: a folder or Hub task names, Task objects, texts=[...] or pairs=[...].")
    return None


def gives_pairs(data: Any = None, pairs: Any = None) -> bool:
    """Whether a Python call passes training pairs (`pairs=` or an anchor/positive `Dataset`)."""
    return pairs is not None or isinstance(data, datasets.Dataset)


def describe(tasks: Sequence[Task]) -> str:
    """What `data` records for in-memory tasks (the arguments' `data` field is a string)."""
    return "in-memory: " + ", ".join(task.name for task in tasks)


def stage_tasks(args: Any, given: Sequence[Task] | None = None) -> list[Task]:
    """The tasks a stage runs on: the in-memory ones given (filtered by `args.tasks`), else those
    `args.data` names, with the qrels files of `args` (`DataArguments`)."""
    if given is None:
        return load_tasks(args.data, args.tasks, **args.load_options())
    if args.tasks is None:
        return list(given)
    by_name = {task.name: task for task in given}
    missing = [name for name in args.tasks if name not in by_name]
    if missing:
        raise DataError(f"no in-memory task named {missing}; available: {sorted(by_name)}.")
    return [by_name[name] for name in args.tasks]
