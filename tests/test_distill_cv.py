"""bench/distill_cv.py: variants parse into distillation settings, the folds never hold a test query, and the
teacher and ceiling rows are what they say (by hand, on the tiny synonym task)."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from era_adapters.cache import embed_texts
from era_adapters.data import load_tasks
from era_adapters.encoders import TextEncoder
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
        distill_cv.parse_variant("ridge:lr=1e-3")
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


def _ndcg_by_hand(scores: np.ndarray, positives: list[int]) -> np.ndarray:
    """nDCG@10 with one relevant document per query: 1 / log2(1 + its rank), 0 below rank 10."""
    ranks = (scores > scores[np.arange(len(scores)), positives][:, None]).sum(1) + 1
    return np.where(ranks <= 10, 1 / np.log2(1 + ranks), 0.0)


def test_teacher_and_ceiling_rows_by_hand(setup):
    pool = distill_cv.pool_task(load_tasks(setup / "data")[0], max_docs=None)
    args = argparse.Namespace(query_encoder=str(setup / "q"), doc_encoder=str(setup / "d"),
                              cache_dir=str(setup / "cache"))
    strong, light = TextEncoder(args.query_encoder), TextEncoder(args.doc_encoder)
    texts = [query.query for query in pool.queries]  # the bare query, as doc2doc and query2query embed it
    q2q = embed_texts(strong, texts) @ embed_texts(strong, list(pool.doc_texts)).T
    d2d = embed_texts(light, texts) @ embed_texts(light, list(pool.doc_texts)).T
    z = lambda s: (s - s.mean(1, keepdims=True)) / s.std(1, keepdims=True)  # noqa: E731
    positives = [pool.doc_ids.index(next(iter(query.labels))) for query in pool.queries]
    teacher = _ndcg_by_hand(0.5 * z(q2q) + 0.5 * z(d2d), positives)
    rows = distill_cv.teacher_ceiling(pool, args, steps=0)  # the vectors start at D(q): doc2doc's ranking
    qids = [query.qid for query in pool.queries]
    assert [rows["teacher"][qid] for qid in qids] == pytest.approx(teacher.tolist())
    assert [rows["ceiling"][qid] for qid in qids] == pytest.approx(_ndcg_by_hand(d2d, positives).tolist())


def test_ceiling_vectors_learn_a_ranking_the_space_can_express():
    generator = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)  # noqa: E731
    docs, targets, start = unit(200, 16), unit(20, 16), unit(20, 16)
    teacher = targets @ docs.T  # a ranking that vectors in this space can give exactly

    def top10_overlap(scores: np.ndarray) -> float:
        mine, theirs = np.argsort(-scores, 1)[:, :10], np.argsort(-teacher.numpy(), 1)[:, :10]
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(mine, theirs)]))

    settings = TeacherSettings()
    assert top10_overlap(distill_cv.ceiling_scores(teacher, start, docs, settings, steps=0)) < 0.3
    assert top10_overlap(distill_cv.ceiling_scores(teacher, start, docs, settings, steps=150)) > 0.8
