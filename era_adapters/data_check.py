"""Check data before training: `era-validate DIR` (or `python training/validate_data.py DIR`) reads every
task folder as the stages would and prints, per task, its layout, counts (documents, queries, labeled
queries, query-document pairs), the queries' roles and where they come from, the split the stages will
use (test part, training pool, dev pool), and every problem found (a `DataError` naming file, line and
id) or worth knowing (unlabeled queries, a test part carved by seed, too few labels to hold out).
Exit status 0 when every task can be used, 2 otherwise.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from era_adapters.data import DataError, Task, _is_task_folder, _task_folders, load_task, load_tasks
from era_adapters.readers import find_file
from era_adapters.splits import DEFAULT_VAL_FRACTION, MIN_VALIDATION_QUERIES, make_split

__all__ = ["TaskCheck", "check_data", "format_checks"]


@dataclass
class TaskCheck:
    """What one task holds and what is wrong with it."""

    name: str
    source: str
    layout: str = "?"
    counts: dict[str, int] = field(default_factory=dict)
    roles: dict[str, int] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


def check_data(data: str | Path, tasks: list[str] | None = None, *, qrels: Mapping[str, str | None] | None = None,
               test_fraction: float = 0.5, seed: int = 0) -> list[TaskCheck]:
    """Check every task under `data` (as `--data` takes it); `qrels`, `test_fraction` and `seed` as the
    stages' `--train/--dev/--test-qrels`, `--test-fraction` and `--split-seed`."""
    path = Path(data)
    if not path.is_dir():
        return [_check_loaded(lambda: load_tasks(str(data), tasks)[0], str(data), str(data), test_fraction, seed)]
    folders = {path.name: path} if _is_task_folder(path) else _task_folders(path)
    if not folders:
        check = TaskCheck(path.name, str(path))
        check.problems.append(f"{path}: no task folder found: a task folder holds docs.jsonl + queries.jsonl (MAIR) "
                              f"or corpus.jsonl + queries.jsonl + qrels/*.tsv (BEIR); see docs/protocol.md.")
        return [check]
    names = tasks or list(folders)
    missing = [name for name in names if name not in folders]
    checks = [TaskCheck(name, str(path), problems=[f"no task named {name!r} under {path}"]) for name in missing]
    for name in (name for name in names if name in folders):
        folder = folders[name]
        check = _check_loaded(lambda: load_task(folder, qrels=qrels), name, str(folder), test_fraction, seed)
        check.layout = "MAIR" if find_file(folder, "docs") else "BEIR"
        checks.append(check)
    return checks


def _check_loaded(load: Any, name: str, source: str, test_fraction: float, seed: int) -> TaskCheck:
    check = TaskCheck(name, source)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            task: Task = load()
        check.notes += [str(warning.message) for warning in caught if "positive label" in str(warning.message)]
        _describe(check, task, test_fraction, seed)
    except (DataError, ValueError, OSError) as error:
        check.problems.append(str(error))
    return check


def _describe(check: TaskCheck, task: Task, test_fraction: float, seed: int) -> None:
    labeled = task.labeled_queries
    check.counts = {"documents": len(task.doc_ids), "queries": len(task.queries), "labeled queries": len(labeled),
                    "positive pairs": sum(len(query.positive_ids) for query in labeled)}
    check.roles = dict(Counter(query.split or "none" for query in labeled))
    if not labeled:
        check.problems.append("no query has a positive label (grade >= 1): nothing to train on or evaluate.")
        return
    split = make_split(task, seed=seed, test_fraction=test_fraction)
    check.split = {"from": split.source, "test": len(split.test_qids), "training pool": len(split.train_pool),
                   "dev pool": len(split.dev_pool)}
    if split.protocol == "seeded":
        check.notes.append(f"no train/dev roles: a seeded {test_fraction:g} of the labeled queries is the test part, "
                           f"the rest the training pool (--test-fraction, --split-seed).")
    if not split.test_qids:
        check.notes.append("no test part: train on it, but evaluate elsewhere.")
    if len(split.train_pool) < 2:
        check.problems.append(f"the training pool holds {len(split.train_pool)} queries; stage 2 needs at least 2.")
    elif not split.dev_pool and round(DEFAULT_VAL_FRACTION * len(split.train_pool)) < MIN_VALIDATION_QUERIES:
        check.notes.append(f"no dev pool and a {len(split.train_pool)}-query training pool: fewer than "
                           f"{MIN_VALIDATION_QUERIES} validation queries to hold out, so stage 2 cross-validates "
                           f"(--validation auto) and every selected label trains.")


def format_checks(checks: list[TaskCheck]) -> str:
    """The report `era-validate` prints."""
    lines = []
    for check in checks:
        status = "ok" if check.usable else "PROBLEMS"
        lines.append(f"{check.name} ({check.layout} layout, {check.source}): {status}")
        if check.counts:
            lines.append("  " + ", ".join(f"{count} {what}" for what, count in check.counts.items()))
        if check.roles:
            lines.append("  roles of the labeled queries: " + ", ".join(f"{role} {n}" for role, n in check.roles.items()))
        if check.split:
            lines.append(f"  split: test {check.split['test']}, training pool {check.split['training pool']}, dev pool "
                         f"{check.split['dev pool']} (from {check.split['from']})")
        lines += [f"  problem: {problem}" for problem in check.problems]
        lines += [f"  note: {note}" for note in check.notes]
    usable = sum(check.usable for check in checks)
    lines.append(f"{usable} of {len(checks)} task(s) usable.")
    return "\n".join(lines)
