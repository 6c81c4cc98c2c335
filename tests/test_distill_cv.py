"""bench/distill_cv.py: variants parse into distillation settings, and the folds never hold a test query."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from era_adapters.inputs import task_from_dicts
from era_adapters.splits import make_split
from era_adapters.teacher import TeacherSettings, task_unlabeled_queries

_SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "distill_cv.py"
sys.path.insert(0, str(_SCRIPT.parent))  # as when run as a script: it imports its folder's budgets_bench
_SPEC = importlib.util.spec_from_file_location("distill_cv", _SCRIPT)
distill_cv = sys.modules["distill_cv"] = importlib.util.module_from_spec(_SPEC)  # dataclasses look the module up
_SPEC.loader.exec_module(distill_cv)


def _task(roles: dict[str, str] | None, count: int = 30):
    corpus = {f"d{i}": f"document {i}" for i in range(count)}
    queries = {f"q{i}": f"query {i}" for i in range(count)}
    return task_from_dicts(corpus, queries, {f"q{i}": {f"d{i}": 1} for i in range(count)}, name="toy", roles=roles)


def test_variants_parse_into_distillation_settings():
    variant = distill_cv.parse_variant("linear:teacher=query2query,lr=3e-4")
    assert (variant.family, variant.options) == ("linear", {"teacher": "query2query", "lr": 3e-4})
    assert variant.settings["lr"] == 3e-4 and variant.settings["teacher"] == "query2query"
    assert variant.start == "align:linear"
    assert distill_cv.parse_variant("fusion").settings["epochs"] > 0  # library defaults
    names = {distill_cv.parse_variant(spec).folder_name for spec in distill_cv.DEFAULT_VARIANTS}
    assert len(names) == len(distill_cv.DEFAULT_VARIANTS)
    with pytest.raises(ValueError, match="family"):
        distill_cv.parse_variant("mlp:lr=1e-3")
    with pytest.raises(TypeError, match="unknown option"):
        distill_cv.parse_variant("linear:learning_rate=1e-3")


def test_folds_partition_the_sorted_qids():
    qids = [f"q{i}" for i in range(11)]
    folds = distill_cv.deal_folds(qids, 3, seed=0)
    assert sorted(qid for fold in folds for qid in fold) == sorted(qids)
    assert sorted(map(len, folds)) == [3, 4, 4]
    assert distill_cv.deal_folds(qids[::-1], 3, seed=0) == folds
    assert distill_cv.deal_folds(qids, 3, seed=1) != folds


@pytest.mark.parametrize("roles", [None, {f"q{i}": "test" if i < 10 else "train" for i in range(30)}])
def test_fold_tasks_test_one_fold_and_distil_on_the_others(roles):
    task = _task(roles)
    test = set(make_split(task, seed=0).test_qids)
    pool = distill_cv.pool_task(task, max_docs=None)
    assert {q.qid for q in pool.queries} == {q.qid for q in task.queries} - test
    for fold in distill_cv.deal_folds([q.qid for q in pool.queries], 3, seed=0):
        split_task = distill_cv.fold_task(pool, fold)
        assert make_split(split_task, seed=0).test_qids == fold
        unlabeled = task_unlabeled_queries([split_task], split_seed=0, test_fraction=0.5,
                                           settings=TeacherSettings())[0]
        assert {q.qid for q in unlabeled} == {q.qid for q in pool.queries} - set(fold)
