"""The distillation teacher: unlabeled queries (test queries never), the budgeted pool, candidates, the
teacher's scores and the listwise loss, each against a hand computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from era_adapters.data import Query, Task
from era_adapters.losses import distillation_loss
from era_adapters.readers import DataError, read_query_log
from era_adapters.teacher import (TeacherSettings, TeacherTargets, sample_candidates, teacher_pool, teacher_scores,
                                  unlabeled_queries)


def toy_task() -> Task:
    queries = [Query(f"q{i}", f"question number {i}", "find", {"d0": 1}) for i in range(6)]
    return Task("toy", "unknown", ["d0"], None, queries)


def test_unlabeled_queries_are_the_non_test_ones_without_labels():
    task = toy_task()
    unlabeled = unlabeled_queries(task, ["q0", "q1"], leave_out=["q2"])
    assert [q.qid for q in unlabeled] == ["q3", "q4", "q5"]
    assert all(q.labels == {} for q in unlabeled) and unlabeled[0].instruction == "find"


def test_a_non_test_query_with_a_test_querys_text_is_left_out(caplog):
    task = toy_task()
    twin = Query("q9", "  QUESTION number 1", "find", {"d0": 1})  # another id, the text of test query q1
    task = Task("toy", "unknown", ["d0"], None, task.queries + [twin])
    with caplog.at_level("WARNING"):
        unlabeled = unlabeled_queries(task, ["q0", "q1"])
    assert [q.qid for q in unlabeled] == ["q2", "q3", "q4", "q5"]
    assert "1 of its 5 non-test queries have a test query's text" in caplog.text
    assert [q.qid for q in unlabeled_queries(task, ["q0"])] == ["q1", "q2", "q3", "q4", "q5", "q9"]


def test_a_query_log_with_a_test_query_is_refused(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("a fresh question\n\n  Question   number 1 \n")
    queries = read_query_log(log)
    assert [q.query for q in queries] == ["a fresh question", "Question   number 1"]  # blank lines skipped
    with pytest.raises(DataError, match=r"1 of the 2 logged queries are test queries of task 'toy'"):
        unlabeled_queries(toy_task(), ["q1"], queries)
    assert unlabeled_queries(toy_task(), ["q2"], queries) == queries


def test_query_logs_in_jsonl_and_their_errors(tmp_path):
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"query": "how to sort", "instruction": "Find code"}\n{"qid": "x", "query": "parse json"}\n')
    assert [(q.qid, q.query, q.instruction) for q in read_query_log(jsonl)] == [
        ("log-1", "how to sort", "Find code"), ("x", "parse json", "")]
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="empty.txt is empty"):
        read_query_log(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"query": "ok"}\n{"instruction": "no query"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: .*'query' must be a string"):
        read_query_log(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="not found"):
        read_query_log(tmp_path / "missing.txt")


def test_the_pool_is_the_best_ranked_candidates_then_seeded_random_others():
    top = np.array([[2, 5], [5, 7]])
    assert teacher_pool(top, 10, budget=3, seed=0).tolist() == [2, 5, 7]
    assert teacher_pool(top, 10, budget=2, seed=0).tolist() == [2, 5]  # rank 0 before rank 1
    wide = teacher_pool(top, 10, budget=6, seed=0)
    assert len(wide) == 6 and {2, 5, 7} <= set(wide.tolist())
    assert wide.tolist() == teacher_pool(top, 10, budget=6, seed=0).tolist()  # seeded
    assert teacher_pool(np.array([[2, 0], [0, 3]]), 4, budget=100, seed=0).tolist() == [0, 1, 2, 3]  # the corpus at most


def targets_for(strong_q, strong_d, light_q, light_d, top, exclude=None, pools=((0, None),)) -> TeacherTargets:
    n, p = len(strong_q), len(strong_d)
    starts = np.array([start for start, _ in pools])
    sizes = np.array([size if size is not None else p for _, size in pools])
    return TeacherTargets(np.zeros((n, 1), np.float32), np.asarray(strong_q, np.float32), np.asarray(light_q, np.float32),
                          np.asarray(strong_d, np.float32), np.asarray(light_d, np.float32), np.asarray(top),
                          np.full(n, -1) if exclude is None else np.asarray(exclude), np.zeros(n, dtype=np.int64),
                          starts, sizes, [f"q{i}" for i in range(n)])


def test_candidates_are_the_top_plus_random_pool_rows_without_repeats_or_the_own_document():
    targets = targets_for(np.ones((2, 2)), np.ones((8, 2)), np.ones((2, 2)), np.ones((8, 2)),
                          top=[[0, 1, 2], [3, -1, -1]], exclude=[1, -1])
    settings = TeacherSettings(random_candidates=20)
    candidates = sample_candidates(targets, np.array([0, 1]), settings, np.random.default_rng(0))
    assert candidates.shape == (2, 23)
    for row, (top, own) in enumerate(zip(([0, 2], [3]), (1, -1))):
        real = candidates[row][candidates[row] >= 0]
        assert len(set(real.tolist())) == len(real) and own not in real and set(top) <= set(real.tolist())
        assert real.min() >= 0 and real.max() < 8


def test_teacher_scores_query2query_and_the_ensemble_by_hand():
    strong_q, strong_d = [[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    light_q, light_d = [[0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]]
    targets = targets_for(strong_q, strong_d, light_q, light_d, top=[[0, 1, 2]])
    candidates = np.array([[0, 1, 2]])
    q2q = teacher_scores(targets, np.array([0]), candidates, TeacherSettings(teacher="query2query"))
    assert q2q.numpy()[0].tolist() == pytest.approx([1.0, 0.0, 0.6])
    only_q = teacher_scores(targets, np.array([0]), candidates, TeacherSettings(teacher_weight=1.0))
    assert only_q.numpy()[0].tolist() == pytest.approx([1.0, 0.0, 0.6], abs=1e-6)  # z-score and back: unchanged
    mixed = teacher_scores(targets, np.array([0]), candidates, TeacherSettings(teacher_weight=0.5)).numpy()[0]
    q, d = np.array([1.0, 0.0, 0.6]), np.array([0.0, 1.0, 0.6])
    z = 0.5 * (q - q.mean()) / q.std() + 0.5 * (d - d.mean()) / d.std()
    assert mixed.tolist() == pytest.approx((z * q.std() + q.mean()).tolist(), abs=1e-6)


def test_distillation_loss_is_the_kl_by_hand_and_zero_at_the_teacher():
    student = torch.tensor([[0.5, 0.1, 0.0], [0.3, 0.2, 0.9]], requires_grad=True)
    teacher = torch.tensor([[0.9, 0.2, 0.0], [0.1, 0.5, 0.4]])
    mask = torch.tensor([[True, True, False], [False, False, False]])  # row 2: no candidates at all
    loss = distillation_loss(student, teacher, mask, student_temperature=0.5, teacher_temperature=0.25)
    p = [math.exp(0.9 / 0.25), math.exp(0.2 / 0.25)]
    p = [x / sum(p) for x in p]
    s = [math.exp(0.5 / 0.5), math.exp(0.1 / 0.5)]
    s = [x / sum(s) for x in s]
    expected = sum(pi * math.log(pi / si) for pi, si in zip(p, s)) / 2  # mean over both rows; row 2 adds 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad[1].abs().sum() == 0
    same = distillation_loss(teacher, teacher, mask, student_temperature=0.3, teacher_temperature=0.3)
    assert same.item() == pytest.approx(0.0, abs=1e-7)
