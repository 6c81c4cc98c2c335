"""Which labeled queries test, validate and train: seeded splits (docs/protocol.md, "Splits and label
budgets") and the selection of the labels stage 2 uses.

`make_split` fixes each task's **roles**: the test part (the queries the data marks `test` — a
`qrels/test.tsv`, `--test-qrels` or a `split` field — else a seeded `test_fraction` of the labeled
queries), the **training pool** (marked `train`, else the labeled queries outside the test part) and
the **dev pool** (marked `dev`). Each pool is kept in a fixed seeded order.

`select_labels` takes what a user asks for (`--label-budget`, a fraction of the training pool;
`--train-labels`, a count; or `--all-train-labels`) and returns the training and validation queries as
prefixes of those orders. The paper's protocol (budgets as fractions of ALL labeled queries, the
validation labels counted in; `TaskSplit.train(budget)` / `.val(budget)`) draws from the same orders,
and `protocol_label_options` turns one of its budgets into the counts `select_labels` takes, so the
benchmark passes counts and gets exactly the protocol's queries.

Every choice comes from a numpy `SeedSequence` stream of its own, so e.g. the training order never
depends on the test draw.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from era_adapters.data import Query, Task
from era_adapters.readers import SPLIT_NAMES, DataError

logger = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.05, 0.1, 0.2, 0.4)
DEFAULT_TEST_FRACTION = 0.5
DEFAULT_VAL_FRACTION = 0.2
# Fewer validation queries than this make early stopping a coin toss: `validation="auto"` then
# cross-validates instead (docs/training.md, "Which labels train and which validate").
MIN_VALIDATION_QUERIES = 20
KFOLD_FOLDS = 5
_TEST_STREAM, _TRAIN_STREAM, _VAL_STREAM = 0, 1, 2  # numpy SeedSequence streams (data.py: 3, align: 5, adapt: 6, 7)
Validation = Literal["auto", "holdout", "kfold"]


@dataclass(frozen=True)
class TaskSplit:
    """A task's roles (test part, training pool, dev pool, in seeded order) and, per protocol budget,
    the nested train/val sets of the paper's protocol. JSON-able."""

    task: str
    seed: int
    protocol: str  # "split-field": roles from the data (qrels files, split field); "seeded": carved by a permutation
    n_labeled: int
    test_fraction: float
    val_share: float
    test_qids: list[str]
    train_qids: dict[float, list[str]]
    val_qids: dict[float, list[str]]
    train_pool: list[str] = field(default_factory=list)  # seeded order; training sets are its prefixes
    dev_pool: list[str] = field(default_factory=list)  # seeded order of the `dev` queries; empty: validation
    # comes from the back of the training pool
    source: str = ""  # where the roles came from, in words (cards, reports)

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
            "source": self.source,
            "n_labeled": self.n_labeled,
            "test_fraction": self.test_fraction,
            "val_share": self.val_share,
            "test": self.test_qids,
            "train_pool": self.train_pool,
            "dev_pool": self.dev_pool,
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
            train_pool=list(data.get("train_pool", [])),
            dev_pool=list(data.get("dev_pool", [])),
            source=data.get("source", ""),
        )


def make_split(
    task: Task,
    seed: int = 0,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_share: float = DEFAULT_VAL_FRACTION,
) -> TaskSplit:
    """Fix the task's roles (test part, training pool, dev pool) and the protocol's nested sets.

    Roles from the data (a `split` field, or the qrels file that judges a query) are honoured: the
    test part is exactly the `test` queries; when there are none, a seeded `test_fraction` of the
    `train` queries is carved off (`test_fraction=0`: no test part). Without roles, a seeded
    `test_fraction` of all labeled queries is the test part and the rest the training pool.

    Protocol budget b (the paper's): a fraction of ALL labeled queries, round(b * N) labels in total,
    of which max(1, round(val_share * that)) validate, the rest (at least 1) train; each capped by
    its pool. Sets are prefixes of the pools' seeded orders, so a smaller budget's lie inside a larger's.
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
        train_ids = [query.qid for query in groups["train"]]
        source = getattr(task, "roles_from", "") or "the queries' split field"
        if not test and test_fraction > 0:
            test, train_ids = _carve(train_ids or [query.qid for query in groups["dev"]], seed, test_fraction)
            if not groups["train"]:  # the test part came out of the dev queries
                groups["dev"] = [query for query in groups["dev"] if query.qid in set(train_ids)]
                train_ids = []
            source += f"; no test queries given: a seeded {test_fraction:g} of them test (seed {seed})"
        train_order = _permuted(train_ids, seed, _TRAIN_STREAM)
        dev_order = _permuted([query.qid for query in groups["dev"]], seed, _VAL_STREAM)
        train_pool, dev_pool = (train_order, dev_order) if train_order and dev_order else (train_order or dev_order, [])
    else:
        protocol = "seeded"
        test, train_pool = _carve([query.qid for query in labeled], seed, test_fraction)
        dev_pool = []
        source = f"seeded split (seed {seed}): a {test_fraction:g} share of the labeled queries test"
    train, val = _draw_protocol(train_pool, dev_pool, counts)
    return TaskSplit(task.name, seed, protocol, len(labeled), test_fraction, val_share, test, train, val,
                     train_pool, dev_pool, source)


def text_key(text: str) -> str:
    """A query's text as the test-query rule compares it: lowercased, spaces collapsed."""
    return " ".join(text.lower().split())


def query_texts(task: Task, qids: Sequence[str]) -> set[str]:
    """The texts (`text_key`) of these queries of the task."""
    chosen = set(qids)
    return {text_key(query.query) for query in task.queries if query.qid in chosen}


def queries_outside_test(task: Task, test_qids: Sequence[str], leave_out: Sequence[str] = ()) -> list[Query]:
    """The task's queries a stage may read without their labels (distillation, stage 1's
    `--with-queries`): neither a test query nor in `leave_out`, and with no test query's text under
    another id, which would carry that test query into training; such twins are left out, with a warning."""
    skip = set(test_qids) | set(leave_out)
    outside = [query for query in task.queries if query.qid not in skip]
    forbidden = query_texts(task, test_qids)
    kept = [query for query in outside if text_key(query.query) not in forbidden]
    if len(kept) < len(outside):
        logger.warning("%s: %d of its %d non-test queries have a test query's text (under another id); they are "
                       "left out so that no test query enters training.", task.name, len(outside) - len(kept),
                       len(outside))
    return kept


def _check_split_arguments(seed: int, budgets: Sequence[float], test_fraction: float, val_share: float) -> None:
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if not budgets or not all(0 < budget <= 1 for budget in budgets):
        raise ValueError(f"budgets must be fractions in (0, 1], got {list(budgets)}.")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}.")
    if not 0 < val_share < 1:
        raise ValueError(f"val_share must be in (0, 1), got {val_share}.")


def _round_half_up(value: float) -> int:
    # Python's round() is banker's (2.5 -> 2); the inner round drops float noise (0.05 * 50 = 2.5000000000000004).
    return math.floor(round(value, 9) + 0.5)


def _carve(qids: list[str], seed: int, test_fraction: float) -> tuple[list[str], list[str]]:
    """(test part, rest in seeded order): a seeded `test_fraction` of `qids` (at least one if > 0)."""
    order = _permuted(qids, seed, _TEST_STREAM)
    n_test = max(1, _round_half_up(test_fraction * len(order))) if test_fraction > 0 else 0
    return sorted(order[:n_test]), order[n_test:]


def _budget_counts(budget: float, n_labeled: int, val_share: float) -> tuple[int, int]:
    """(validation, training) label counts for a protocol budget, before capping by what the pools hold."""
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


def _draw_protocol(train_pool: list[str], dev_pool: list[str], counts: _Counts) -> _Draw:
    """Training from the training pool, validation from the dev pool (or, without one, the training
    pool's back); see `_protocol_caps`."""
    train, val = {}, {}
    for budget in counts:
        n_train, n_val = _protocol_caps(len(train_pool), len(dev_pool), counts, budget)
        train[budget] = train_pool[:n_train]
        val[budget] = (dev_pool or train_pool[::-1])[:n_val]
    return train, val


def _protocol_caps(pool: int, dev: int, counts: _Counts, budget: float) -> tuple[int, int]:
    """(training, validation) counts of a protocol budget, capped by the pools.

    With a shared pool, validation's share is capped once, at what the largest budget needs (leaving at
    least one query for training), so that both counts still grow with the budget and the sets stay nested.
    """
    n_val, n_train = counts[budget]
    if dev:
        return min(n_train, pool), min(n_val, dev)
    val_cap = min(max(v for v, _ in counts.values()), max(1, pool - 1), pool)
    return min(n_train, pool - val_cap), min(n_val, val_cap)


def protocol_label_options(split: TaskSplit, budget: float) -> dict[str, int]:
    """The `select_labels` options (`train_labels`, `val_labels`) that give exactly the protocol's
    `split.train(budget)` and `split.val(budget)` (with `validation="holdout"`): how the benchmark
    passes its budgets, which are fractions of ALL labeled queries, to stage 2."""
    n_train, n_val = len(split.train(budget)), len(split.val(budget))
    # Without a dev pool the validation queries are held out of the training pool's labels.
    return {"train_labels": n_train if split.dev_pool else n_train + n_val, "val_labels": n_val}


# ---------------------------------------------------------------------------------------------
# The labels stage 2 uses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSelection:
    """One task's training and validation queries for stage 2, and how they were chosen (JSON-able
    `record`: the counts per role the card and `training_metadata` show)."""

    train_qids: list[str]
    val_qids: list[str]
    record: dict[str, Any]


def select_labels(
    split: TaskSplit,
    *,
    label_budget: float | None = None,
    train_labels: int | None = None,
    all_train_labels: bool = False,
    val_labels: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> LabelSelection:
    """The queries stage 2 trains and validates on; exactly one of `label_budget`, `train_labels`,
    `all_train_labels` says how many labels of the training pool to use:

    * `label_budget=b`: round(b × |training pool|) queries; `train_labels=n`: n of them. Validation:
      the dev pool when the data has one (all of it, or `val_labels`), else `val_labels` (default
      round(val_fraction × n)) of those n are held out from training.
    * `all_train_labels`: every training-pool query trains; validation is the dev pool if any, else
      none here (cross-validation then chooses the epochs: `resolve_validation`).

    Training queries are the front of the pool's seeded order, held-out ones its back. Fewer than 2
    training queries is refused, with the count and how it was computed.
    """
    chosen = [name for name, value in (("label_budget", label_budget), ("train_labels", train_labels),
                                       ("all_train_labels", all_train_labels or None)) if value is not None]
    if len(chosen) != 1:
        raise ValueError(f"task {split.task!r}: say how many labels to use with exactly one of --label-budget "
                         f"(a fraction of the training pool), --train-labels N or --all-train-labels; got "
                         f"{chosen or 'none'}.")
    pool, dev = split.train_pool, split.dev_pool
    where = f"the {len(pool)}-query training pool of task {split.task!r}"
    if label_budget is not None:
        if not 0 < label_budget <= 1:
            raise ValueError(f"--label-budget must be in (0, 1], got {label_budget}.")
        used = _round_half_up(label_budget * len(pool))
        how = f"--label-budget {label_budget:g} × {where} = {used} queries"
    elif train_labels is not None:
        used = int(train_labels)
        how = f"--train-labels {used} of {where}"
    else:
        used = len(pool)
        how = f"--all-train-labels: all of {where}"
    if used > len(pool):
        raise ValueError(f"{how}: the pool holds only {len(pool)}; lower --train-labels.")
    if dev:
        n_val = len(dev) if val_labels is None else val_labels
        if n_val > len(dev):
            raise ValueError(f"--val-labels {n_val}: task {split.task!r} has only {len(dev)} dev queries.")
        train, val, val_from = pool[:used], dev[:n_val], "dev"
    else:
        n_val = 0 if all_train_labels else (_round_half_up(val_fraction * used) if val_labels is None else val_labels)
        if n_val > used:
            raise ValueError(f"--val-labels {n_val} is more than the {used} labels used ({how}).")
        train, val, val_from = pool[: used - n_val], pool[::-1][:n_val], "held out of the training labels"
    if len(train) < 2:
        raise ValueError(
            f"{how} gives {len(train)} training quer{'y' if len(train) == 1 else 'ies'}"
            f"{f' once {n_val} are held out for validation' if n_val and not dev else ''}; stage 2 needs at "
            f"least 2: raise --label-budget, or pass --train-labels N or --all-train-labels."
        )
    record = {
        "selection": how,
        "split_source": split.source,
        "training_pool": len(pool),
        "dev_pool": len(dev),
        "train_queries": len(train),
        "validation_queries": len(val),
        "validation_from": val_from if val else None,
        "test_queries": len(split.test_qids),
    }
    return LabelSelection(train, val, record)


def resolve_validation(requested: Validation, selections: Sequence[LabelSelection]) -> str:
    """`holdout` (early stopping on the validation queries) or `kfold` (cross-validation over training +
    validation queries chooses the epoch count; the final adapter trains on all of them). `auto`:
    holdout when the tasks hold at least MIN_VALIDATION_QUERIES validation queries together."""
    n_val = sum(len(selection.val_qids) for selection in selections)
    if requested == "holdout" and n_val == 0:
        raise ValueError("--validation holdout needs validation queries, but none are held out (--all-train-labels "
                         "without a dev pool); use --validation kfold or auto.")
    if requested == "auto":
        return "holdout" if n_val >= MIN_VALIDATION_QUERIES else "kfold"
    return requested
