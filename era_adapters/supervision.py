"""What stage 2 trains on: the labeled training queries of each task's split (their cached Q vectors,
positives and prompts), the validation queries that choose the epoch, the capped corpora's cached D
vectors, and optionally the unlabeled texts of the alignment regulariser. Test queries are never read.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from era_adapters.align import sample_texts
from era_adapters.data import Task, cap_corpus
from era_adapters.metrics import per_query_metrics_ranked
from era_adapters.search import rank_for_queries
from era_adapters.sides import as_side
from era_adapters.splits import DEFAULT_BUDGETS, TaskSplit, make_split

VALIDATION_METRIC = "ndcg@10"


@dataclass
class TaskView:
    """One task's share of the training data: its corpus rows and its validation queries."""

    name: str
    doc_ids: list[str]
    offset: int  # first row of this task's documents in AdaptData.doc_vectors
    ignore_identical_ids: bool
    split: TaskSplit
    val_qids: list[str]
    val_qrels: dict[str, dict[str, int]]
    val_queries: np.ndarray  # (n_val, query_dim) cached Q vectors
    val_prompts: list[str]

    @property
    def rows(self) -> slice:
        return slice(self.offset, self.offset + len(self.doc_ids))


@dataclass
class AdaptData:
    doc_vectors: np.ndarray  # (N, doc_dim): the capped corpora of all tasks, one after the other
    train_queries: np.ndarray  # (n, query_dim) cached Q vectors of the training queries
    train_prompts: list[str]  # what Q saw (for LoRA training, which runs the backbone)
    train_qids: list[str]
    train_task: np.ndarray  # (n,) index into `tasks`
    positives: np.ndarray  # (n, P) global doc rows, -1 padded
    grades: np.ndarray  # (n, P) relevance grades, 0 on padding
    own_doc: np.ndarray  # (n, 1) global row of the doc whose id is the qid (ignore_identical_ids), else -1
    tasks: list[TaskView]
    align_queries: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # Q(t)
    align_targets: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # D(t)
    align_texts: list[str] = field(default_factory=list)


def _padded(rows: list[list[int]], fill: int = -1, dtype: Any = np.int64) -> np.ndarray:
    width = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def load_adapt_data(
    tasks: Sequence[Task],
    *,
    label_budget: float,
    split_seed: int,
    query_encoder: Any,
    doc_encoder: Any,
    max_docs: int | None,
    cache_dir: str | os.PathLike | None,
    accelerator: Accelerator | None,
    align_texts: int = 0,
    align_seed: int = 0,
) -> AdaptData:
    """Split, cap and embed (through the cache, or read from stored vectors) what stage 2 needs; test
    queries stay untouched. `query_encoder` / `doc_encoder`: a `TextEncoder` or a side
    (`era_adapters.sides`): the query side gives the adapter's input, the doc side the corpus."""
    query_side, doc_side = as_side(query_encoder), as_side(doc_encoder)
    budgets = sorted(set(DEFAULT_BUDGETS) | {float(label_budget)})
    embed = {"cache_dir": cache_dir, "accelerator": accelerator}
    doc_blocks, views = [], []
    train_queries, train_prompts, train_qids, train_task, positives, grades, own = [], [], [], [], [], [], []
    offset = 0
    splits = [make_split(task, seed=split_seed, budgets=budgets) for task in tasks]  # the evaluation's split
    capped_tasks = [cap_corpus(task, max_docs, seed=split_seed) for task in tasks]  # the evaluation's cap
    capped_tasks = doc_side.prepare(query_side.prepare(capped_tasks))  # stored vectors checked against them
    for index, (task, split, capped) in enumerate(zip(tasks, splits, capped_tasks)):
        train_ids, val_ids = split.train(label_budget), split.val(label_budget)
        overlap = (set(train_ids) | set(val_ids)) & set(split.test_qids)
        if overlap:  # make_split guarantees this; a silent leak would void every number
            raise AssertionError(f"task {task.name}: test queries {sorted(overlap)[:3]} in the training split")
        by_id = {query.qid: query for query in task.queries}
        row_of = {doc_id: row for row, doc_id in enumerate(capped.doc_ids)}
        doc_blocks.append(doc_side.documents(capped, **embed))
        train = [by_id[qid] for qid in train_ids if _has_positive_in(by_id[qid], row_of)]
        if len(train) < len(train_ids):  # only when documents without a stored vector were left out
            warnings.warn(f"task {task.name}: {len(train_ids) - len(train)} training queries have no relevant document "
                          "left in the corpus and are not used.", stacklevel=2)
        val = [by_id[qid] for qid in val_ids]
        prompts = [query_side.format_query(q.query, q.instruction) for q in train + val]
        vectors = query_side.queries(capped, train + val, **embed)
        for query in train:
            labels = [(row_of[doc_id], grade) for doc_id, grade in query.labels.items() if grade > 0 and doc_id in row_of]
            positives.append([offset + row for row, _ in labels])
            grades.append([grade for _, grade in labels])
            identical = row_of.get(query.qid) if capped.ignore_identical_ids else None
            own.append([offset + identical] if identical is not None else [])
        train_queries.append(vectors[: len(train)])
        train_prompts += prompts[: len(train)]
        train_qids += [q.qid for q in train]
        train_task += [index] * len(train)
        views.append(TaskView(
            name=task.name, doc_ids=list(capped.doc_ids), offset=offset,
            ignore_identical_ids=capped.ignore_identical_ids, split=split, val_qids=[q.qid for q in val],
            val_qrels={q.qid: q.labels for q in val}, val_queries=vectors[len(train):],
            val_prompts=prompts[len(train):],
        ))
        offset += len(capped.doc_ids)
    data = AdaptData(
        doc_vectors=np.ascontiguousarray(np.concatenate(doc_blocks), dtype=np.float32),
        train_queries=np.concatenate(train_queries).astype(np.float32),
        train_prompts=train_prompts,
        train_qids=train_qids,
        train_task=np.asarray(train_task, dtype=np.int64),
        positives=_padded(positives),
        grades=_padded(grades, fill=0, dtype=np.float32),
        own_doc=_padded(own),
        tasks=views,
    )
    if not len(data.train_qids):
        raise ValueError(f"label budget {label_budget} gives no training queries; raise --label-budget.")
    if align_texts > 0:
        sample = sample_texts(capped_tasks, align_texts, align_seed, query_side)  # stage 1's: cache hits
        data.align_queries = query_side.texts(sample.query_side, sample.keys, **embed)
        data.align_targets = doc_side.texts(sample.doc_side, sample.keys, **embed)
        data.align_texts = list(sample.query_side)
    return data


def _has_positive_in(query: Any, row_of: dict[str, int]) -> bool:
    return any(grade > 0 and doc_id in row_of for doc_id, grade in query.labels.items())


def task_ndcg(view: TaskView, doc_vectors: np.ndarray, adapted: np.ndarray) -> float:
    """Mean nDCG@10 of a task's validation queries, searched exactly over its (capped) corpus."""
    scores, indices = rank_for_queries(adapted, doc_vectors[view.rows], 10, qids=view.val_qids,
                                       doc_ids=view.doc_ids, ignore_identical_ids=view.ignore_identical_ids)
    metrics = per_query_metrics_ranked(indices, view.doc_ids, view.val_qids, view.val_qrels, scores,
                                       metrics=[VALIDATION_METRIC])
    return float(np.mean(metrics[VALIDATION_METRIC]))


class CachedQueries:
    """Adapter on cached pooled Q vectors: row indices in, adapted vectors out."""

    def __init__(self, data: AdaptData, device: torch.device) -> None:
        self.train = torch.from_numpy(data.train_queries).to(device)
        self.align = torch.from_numpy(data.align_queries).to(device) if len(data.align_texts) else None
        self.val = [torch.from_numpy(view.val_queries).to(device) for view in data.tasks]

    def encode(self, model: nn.Module, train_rows: torch.Tensor, align_rows: torch.Tensor | None):
        inputs = self.train[train_rows]
        if align_rows is None:
            return model(inputs), None
        out = model(torch.cat([inputs, self.align[align_rows]]))  # one forward: one DDP reduction
        return out[: len(train_rows)], out[len(train_rows):]

    @torch.no_grad()
    def all_train(self, model: nn.Module) -> np.ndarray:
        return model(self.train).float().cpu().numpy()

    @torch.no_grad()
    def validation(self, model: nn.Module, task: int) -> np.ndarray:
        return model(self.val[task]).float().cpu().numpy()
