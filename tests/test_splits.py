"""era_adapters.splits: the seeded label-budget splits of docs/protocol.md ("Splits and label budgets")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import pytest

from era_adapters.data import DataError, Query, Task
from era_adapters.splits import (MIN_VALIDATION_QUERIES, TaskSplit, make_split, protocol_label_options,
                                  resolve_validation, select_labels)
from task_files import assert_nested_and_disjoint

BUDGETS = (0.05, 0.1, 0.2, 0.4)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


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


def test_train_roles_without_test_ones_carve_a_seeded_test_part() -> None:
    task = synthetic_task(40, ["train"] * 40)
    split = make_split(task, seed=2)
    assert len(split.test_qids) == 20 and len(split.train_pool) == 20 and not split.dev_pool
    assert not set(split.test_qids) & set(split.train_pool)
    assert "no test queries given: a seeded 0.5 of them test (seed 2)" in split.source
    assert len(make_split(task, test_fraction=0.25).test_qids) == 10
    unsplit = make_split(task, test_fraction=0.0)  # pairs given to train on: no test part
    assert unsplit.test_qids == [] and sorted(unsplit.train_pool) == sorted(q.qid for q in task.queries)


def test_split_field_errors() -> None:
    mixed = synthetic_task(3, ["train", "test", "test"]).queries + [Query("q9", "x", "", {"d0": 1}, None)]
    with pytest.raises(DataError, match="query 'q9' has no split while others are train/dev"):
        make_split(Task("toy", "unknown", ["d0"], None, mixed))
    with pytest.raises(DataError, match="no query has a positive label"):
        make_split(synthetic_task(0, n_unlabeled=3))


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"budgets": (0.0,)}, {"budgets": ()}, {"test_fraction": 1.0},
                                    {"test_fraction": -0.1}, {"val_share": 0}])
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
# The labels stage 2 uses
# ---------------------------------------------------------------------------------------------


def test_label_budget_is_a_share_of_the_training_pool() -> None:
    split = make_split(synthetic_task(200), seed=3)  # 100 test, a training pool of 100
    chosen = select_labels(split, label_budget=0.4)  # 40 queries: 8 held out for validation, 32 train
    assert (len(chosen.train_qids), len(chosen.val_qids)) == (32, 8)
    assert chosen.train_qids == split.train_pool[:32] and chosen.val_qids == split.train_pool[::-1][:8]
    assert chosen.record == {
        "selection": "--label-budget 0.4 × the 100-query training pool of task 'toy' = 40 queries",
        "split_source": split.source, "training_pool": 100, "dev_pool": 0, "train_queries": 32,
        "validation_queries": 8, "validation_from": "held out of the training labels", "test_queries": 100}
    assert not (set(chosen.train_qids) | set(chosen.val_qids)) & set(split.test_qids)
    counted = select_labels(split, train_labels=40)  # the same as a count
    assert (counted.train_qids, counted.val_qids) == (chosen.train_qids, chosen.val_qids)
    everything = select_labels(split, all_train_labels=True)  # every pool query trains, nothing held out
    assert everything.train_qids == split.train_pool and everything.val_qids == []
    assert len(select_labels(split, label_budget=0.4, val_fraction=0.5).val_qids) == 20
    assert len(select_labels(split, label_budget=0.4, val_labels=3).val_qids) == 3


def test_a_dev_pool_validates_and_every_selected_label_trains() -> None:
    task = synthetic_task(100, ["test"] * 40 + ["train"] * 50 + ["dev"] * 10)
    split = make_split(task, seed=1)
    chosen = select_labels(split, label_budget=0.5)
    dev = {q.qid for q in task.queries if q.split == "dev"}
    assert len(chosen.train_qids) == 25 and set(chosen.val_qids) == dev
    assert chosen.record["validation_from"] == "dev"
    assert select_labels(split, all_train_labels=True).train_qids == split.train_pool
    assert len(select_labels(split, train_labels=5, val_labels=4).val_qids) == 4


def test_too_few_labels_are_refused_with_the_count() -> None:
    split = make_split(synthetic_task(80), seed=0)  # a training pool of 40
    with pytest.raises(ValueError, match=r"--label-budget 0.02 × the 40-query training pool of task 'toy' = 1 "
                                         r"queries gives 1 training query; stage 2 needs at least 2"):
        select_labels(split, label_budget=0.02)
    with pytest.raises(ValueError, match=r"gives 1 training query once 1 are held out for validation"):
        select_labels(split, train_labels=2, val_labels=1)
    with pytest.raises(ValueError, match="the pool holds only 40"):
        select_labels(split, train_labels=41)
    with pytest.raises(ValueError, match="exactly one of --label-budget"):
        select_labels(split, label_budget=0.5, train_labels=3)
    with pytest.raises(ValueError, match="exactly one of --label-budget"):
        select_labels(split)


def test_validation_falls_back_to_kfold_with_few_validation_queries() -> None:
    split = make_split(synthetic_task(400), seed=0)  # a training pool of 200
    big = select_labels(split, label_budget=0.5)  # 20 held out
    small = select_labels(split, label_budget=0.4)  # 16 held out
    assert len(big.val_qids) == MIN_VALIDATION_QUERIES and len(small.val_qids) < MIN_VALIDATION_QUERIES
    assert resolve_validation("auto", [big]) == "holdout"
    assert resolve_validation("auto", [small]) == "kfold"
    assert resolve_validation("auto", [small, small]) == "holdout"  # 32 across tasks
    assert resolve_validation("holdout", [small]) == "holdout"  # asked for: kept
    with pytest.raises(ValueError, match="--validation holdout needs validation queries"):
        resolve_validation("holdout", [select_labels(split, all_train_labels=True)])


@pytest.mark.parametrize("splits", [None, ["test"] * 40 + ["train"] * 50 + ["dev"] * 10,
                                    ["test"] * 40 + ["train"] * 60, ["test"] * 94 + ["dev"] * 6,
                                    ["test"] * 90 + ["train"] * 10])
def test_protocol_budgets_convert_to_the_same_queries(splits) -> None:
    """The benchmark passes its budgets (fractions of ALL labeled queries) as counts: same queries."""
    split = make_split(synthetic_task(100, splits), seed=5)
    for budget in split.budgets:
        if len(split.train(budget)) < 2:  # the protocol's floor is one; stage 2 refuses fewer than two
            with pytest.raises(ValueError, match="stage 2 needs at least 2"):
                select_labels(split, **protocol_label_options(split, budget))
            continue
        chosen = select_labels(split, **protocol_label_options(split, budget))
        assert (chosen.train_qids, chosen.val_qids) == (split.train(budget), split.val(budget))
