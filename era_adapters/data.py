"""Retrieval tasks (MAIR or BEIR layout, local or from the Hub): `load_tasks` gives `Task`s, each with
its corpus as an Arrow-backed `datasets.Dataset` (memory-mapped, columns `id` and `doc`) and its
queries as `Query` objects. The files are read and validated by `era_adapters.readers` (every problem
is a `DataError` naming file, line and id); the layouts are described in docs/protocol.md.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from era_adapters.readers import (SPLIT_NAMES, DataError, Query, beir_qrels_files, blank_rows, find_file,
                                  read_beir_folder, read_mair_folder, read_mair_hub)

HUB_QUERIES = "MAIR-Bench/MAIR-Queries"
HUB_DOCS = "MAIR-Bench/MAIR-Docs"

# Tasks whose queries are themselves documents of the corpus: a retrieved doc whose id equals the
# qid must not count (BEIR's `ignore_identical_ids`).
# Independent random streams (numpy SeedSequence entropy [stream, seed]) for each seeded choice.
_STREAM_CORPUS = 3  # streams 0-2: era_adapters.splits
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



@dataclass
class Task:
    name: str
    domain: str
    doc_ids: list[str]
    docs: datasets.Dataset  # columns "id", "doc"; row i is doc_ids[i]
    queries: list[Query]
    ignore_identical_ids: bool = False
    source: str = ""  # folder or Hub dataset it came from, for reports
    # Documents with an empty text in the files: {"count", "handling", "labels_dropped"} (reports show it).
    empty_docs: dict[str, Any] = field(default_factory=lambda: {"count": 0})
    roles_from: str = ""  # where the queries' train/dev/test roles came from, in words (cards, reports)

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
    return select_docs(task, rows)


def select_docs(task: Task, rows: Sequence[int] | np.ndarray) -> Task:
    """The task on the documents at these corpus rows only (in that order); queries and labels unchanged."""
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
    drop_empty_docs: bool = False,
    skip_bad_tasks: bool = False,
    qrels: Mapping[str, str | Path | None] | None = None,
) -> list[Task]:
    """Load several tasks at once.

    `data` is a folder of task folders (docs/protocol.md), a single task folder, or, when it is
    not an existing path, comma-separated MAIR task names fetched from the Hub. `tasks` picks a
    subset by name (in that order). `ignore_identical_ids` overrides the per-task default by name.
    `cache_dir` is where `datasets` keeps its Arrow files (default: the HF datasets cache).
    `drop_empty_docs`: drop documents whose text is empty, and their labels (default: keep them and
    embed them as empty, as BEIR and MTEB do); either way they are counted in `Task.empty_docs`.
    Every folder under `data` must be a readable task (hidden ones and ones starting with "_" aside);
    `skip_bad_tasks` skips those that are not, with a warning that lists them (tasks named in `tasks`
    must load in any case). `qrels` ({"train": path, "dev": path, "test": path}, any subset) gives the
    qrels file of each role of one BEIR task folder explicitly, instead of its qrels/<role>.tsv.
    """
    options = {"cache_dir": cache_dir, "ignore_identical_ids": ignore_identical_ids, "drop_empty_docs": drop_empty_docs}
    qrels = {role: path for role, path in (qrels or {}).items() if path is not None}
    path = Path(data)
    if path.is_dir():
        if _is_task_folder(path):
            return [load_task(path, qrels=qrels, **options)]
        folders = _task_folders(path)
        if not folders and any(path.iterdir()):
            raise DataError(_not_a_task(path))
        names = _pick(folders, tasks, str(path))
        task_names = [name for name in names if _is_task_folder(folders[name])]
        if qrels and len(task_names) != 1:
            raise ValueError(f"--train/--dev/--test-qrels name the files of one task, but {path} holds "
                             f"{len(task_names)} tasks ({', '.join(task_names)}); pick one with --tasks or point "
                             f"--data at its folder.")
        loaders = {name: (lambda folder=folders[name]: load_task(folder, qrels=qrels, **options)) for name in names}
        return _load_all(loaders, str(path), skip_bad_tasks, chosen=tasks is not None)
    if qrels:
        raise ValueError("--train/--dev/--test-qrels apply to a local BEIR task folder, not to Hub task names.")
    if isinstance(data, Path) or path.exists() or re.search(r"[/\\~]|^\.", str(data)):
        raise FileNotFoundError(
            f"{data}: not a folder of tasks. Pass a task folder, a folder of task folders, "
            f"or MAIR task names (e.g. 'SciFact,ArguAna') to load from the Hub."
        )
    names = [name.strip() for name in str(data).split(",") if name.strip()]
    loaders = {name: (lambda name=name: load_hub_task(name, **options))
               for name in _pick(dict.fromkeys(names), tasks, "the Hub names")}
    return _load_all(loaders, "the Hub names", skip_bad_tasks, chosen=tasks is not None)


def _load_all(loaders: Mapping[str, Callable[[], Task]], where: str, skip_bad_tasks: bool, chosen: bool) -> list[Task]:
    """Every task, in order. One that cannot be read stops the run, or with `skip_bad_tasks` is left out
    and listed in a warning (a silently missing task would change every macro average); tasks `chosen`
    by name must load."""
    loaded, skipped = [], []
    for name, load in loaders.items():
        try:
            loaded.append(load())
        except DataError as error:
            if chosen or not skip_bad_tasks:
                hint = "" if chosen or len(loaders) == 1 else " (--skip-bad-tasks leaves out tasks that cannot be read)"
                raise DataError(f"task {name!r} cannot be read: {error}{hint}") from error
            skipped.append(f"{name}: {error}")
    if skipped:
        message = f"{where}: skipped {len(skipped)} of {len(loaders)} tasks that cannot be read (--skip-bad-tasks):\n  "
        warnings.warn(message + "\n  ".join(skipped), stacklevel=3)
    if not loaded:
        raise DataError(f"{where}: none of the {len(loaders)} tasks can be read; see the warning above.")
    return loaded


def load_task(
    folder: str | Path,
    *,
    cache_dir: str | Path | None = None,
    ignore_identical_ids: Mapping[str, bool] | None = None,
    drop_empty_docs: bool = False,
    qrels: Mapping[str, str | Path | None] | None = None,
) -> Task:
    """Load one task folder in MAIR's layout (docs + queries) or BEIR's (corpus + queries + qrels; `qrels`
    gives a role's file explicitly, see `load_tasks`)."""
    folder = Path(folder)
    name = folder.name
    qrels = {role: path for role, path in (qrels or {}).items() if path is not None}
    if find_file(folder, "docs"):
        if qrels:
            raise ValueError(f"{folder} is in MAIR layout (labels inside queries.jsonl, roles in its 'split' field); "
                             f"--train/--dev/--test-qrels apply to BEIR folders (corpus.jsonl + queries.jsonl).")
        doc_ids, docs, queries = read_mair_folder(folder, cache_dir)
        roles_from = f"the 'split' field of {find_file(folder, 'queries')}"
    elif find_file(folder, "corpus"):
        doc_ids, docs, queries = read_beir_folder(folder, cache_dir, qrels)
        files = beir_qrels_files(folder, qrels)
        roles_from = "your qrels files (" + ", ".join(f"{role}: {path}" for role, path in files.items()) + ")"
    else:
        raise DataError(_not_a_task(folder))
    task = _make_task(name, _folder_domain(folder), doc_ids, docs, queries, str(folder), ignore_identical_ids,
                      drop_empty_docs)
    return dataclasses.replace(task, roles_from=roles_from)


def _not_a_task(folder: Path) -> str:
    held = sorted(child.name + "/" * child.is_dir() for child in folder.iterdir()) if folder.is_dir() else []
    shown = f"it holds {', '.join(held[:8])}{', ...' if len(held) > 8 else ''}" if held else "it is empty"
    return (f"{folder}: not a task folder: no docs.jsonl (MAIR layout) or corpus.jsonl (BEIR layout) found "
            f"(also accepted: .jsonl.gz, .parquet); {shown}.")


def load_hub_task(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    ignore_identical_ids: Mapping[str, bool] | None = None,
    drop_empty_docs: bool = False,
) -> Task:
    """Load a MAIR task from the Hub by its task name (e.g. 'SciFact'): its main queries/docs split."""
    docs_source = f"{HUB_DOCS} (config {name!r}, split 'docs')"
    queries_source = f"{HUB_QUERIES} (config {name!r}, split 'queries')"
    try:
        hub_cache = None if cache_dir is None else str(cache_dir)
        raw_docs = datasets.load_dataset(HUB_DOCS, name, split="docs", cache_dir=hub_cache)
        raw_queries = datasets.load_dataset(HUB_QUERIES, name, split="queries", cache_dir=hub_cache)
    except Exception as error:  # network, unknown config, ...: say which task and what to try
        raise DataError(
            f"could not load MAIR task {name!r} from the Hub ({error}). Check the name (case-sensitive, "
            f"e.g. 'SciFact'), the network, or pass a local folder instead."
        ) from error
    doc_ids, docs, queries = read_mair_hub(raw_docs, raw_queries, name, docs_source, queries_source)
    domain = _DOMAIN_OF_MAIR_TASK.get(name.lower(), "unknown")
    task = _make_task(name, domain, doc_ids, docs, queries, f"{HUB_QUERIES}/{name}", ignore_identical_ids,
                      drop_empty_docs)
    return dataclasses.replace(task, roles_from=f"the 'split' field of {HUB_QUERIES} ({name})")


def _make_task(
    name: str,
    domain: str,
    doc_ids: list[str],
    docs: datasets.Dataset,
    queries: list[Query],
    source: str,
    ignore_identical_ids: Mapping[str, bool] | None,
    drop_empty_docs: bool = False,
) -> Task:
    doc_ids, docs, queries, empty_docs = _handle_empty_docs(name, doc_ids, docs, queries, drop_empty_docs)
    unlabeled = sum(not query.has_positive for query in queries)
    if unlabeled:
        warnings.warn(
            f"task {name!r}: {unlabeled} of {len(queries)} queries have no positive label (score > 0); "
            f"they are kept for inference but excluded from training and evaluation.",
            stacklevel=3,
        )
    overrides = ignore_identical_ids or {}
    ignore = overrides.get(name, name in IGNORE_IDENTICAL_IDS_TASKS)
    return Task(name, domain, doc_ids, docs, queries, ignore, source, empty_docs)


def _handle_empty_docs(
    name: str, doc_ids: list[str], docs: datasets.Dataset, queries: list[Query], drop: bool
) -> tuple[list[str], datasets.Dataset, list[Query], dict[str, Any]]:
    """Keep documents with an empty text (embedded as empty, as BEIR and MTEB do) or drop them and their
    labels; either way count them, with a warning that names a few."""
    rows, total = blank_rows(docs), len(doc_ids)
    if not rows:
        return doc_ids, docs, queries, {"count": 0}
    empty = {doc_ids[row] for row in rows}
    record: dict[str, Any] = {"count": len(rows), "handling": "dropped" if drop else "embedded as empty"}
    shown = ", ".join(repr(doc_ids[row]) for row in rows[:5]) + (", ..." if len(rows) > 5 else "")
    if drop:
        if len(rows) == len(doc_ids):
            raise DataError(f"task {name!r}: every one of its {len(rows)} documents has an empty text.")
        keep = np.setdiff1d(np.arange(len(doc_ids)), rows)
        doc_ids, docs = [doc_ids[row] for row in keep], docs.select(keep)
        kept = [dataclasses.replace(q, labels={d: s for d, s in q.labels.items() if d not in empty}) for q in queries]
        dropped = record["labels_dropped"] = sum(len(q.labels) for q in queries) - sum(len(q.labels) for q in kept)
        queries = kept
        what = f"dropped with their {dropped} label{'s' * (dropped != 1)} (--drop-empty-docs)"
    else:
        what = "embedded as empty texts, as BEIR and MTEB do (--drop-empty-docs drops them and their labels)"
    warnings.warn(f"task {name!r}: {len(rows)} of {total} documents have an empty text ({shown}); {what}.",
                  stacklevel=4)
    return doc_ids, docs, queries, record


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
    return bool(find_file(folder, "docs") or find_file(folder, "corpus"))


def _task_folders(root: Path) -> dict[str, Path]:
    """Every folder under `root` (hidden ones and ones starting with "_", e.g. __pycache__, aside)."""
    return {child.name: child for child in sorted(root.iterdir())
            if child.is_dir() and not child.name.startswith((".", "_"))}


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


__all__ = ["SPLIT_NAMES", "DataError", "Query", "Task", "cap_corpus", "load_hub_task", "load_task", "load_tasks",
           "select_docs"]
