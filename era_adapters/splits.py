"""Seeded label-budget splits (docs/protocol.md, "Splits and label budgets"): a fixed test part of each
task's labeled queries, and per label budget a nested validation slice and training set, counted
together against the budget. Every choice comes from a numpy `SeedSequence` stream of its own, so e.g.
the training order never depends on the test draw.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from era_adapters.data import Query, Task
from era_adapters.readers import SPLIT_NAMES, DataError

DEFAULT_BUDGETS = (0.05, 0.1, 0.2, 0.4)
MIN_LABELS = 2  # a training budget must give one query to train on and one to validate with
_TEST_STREAM, _TRAIN_STREAM, _VAL_STREAM = 0, 1, 2  # numpy SeedSequence streams (data.py: 3, align: 5, adapt: 6)


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


def labels_for_budget(task_name: str, budget: float, n_labeled: int) -> int:
    """The number of labels (training + validation) `budget` gives a task with `n_labeled` labeled queries.
    Fewer than `MIN_LABELS` is refused with that count: a budget that rounds to none must not quietly
    train on the one-train, one-validation minimum `make_split` would still hand out."""
    count = _round_half_up(budget * n_labeled)
    if count < MIN_LABELS:
        raise DataError(
            f"task {task_name!r}: --label-budget {budget:g} of its {n_labeled} labeled queries rounds to {count} "
            f"label{'s' * (count != 1)}; training needs at least {MIN_LABELS} (one to train on, one to validate "
            f"with). Use --label-budget {MIN_LABELS / max(n_labeled, 1):.3g} or more."
        )
    return count


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
