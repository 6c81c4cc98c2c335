"""What stage 2 trains on: the labeled training queries each task's split selects (their cached Q
vectors, positives and prompts), the validation queries that choose the epoch (or, for cross-validation,
the folds cut from the training queries: `fold_data`), the capped corpora's cached D vectors, the D
vectors of those queries (doc2doc, the index as it is, scored on the same validation queries), and
optionally the unlabeled texts of the alignment regulariser. Test queries are never read.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from era_adapters.align import sample_texts
from era_adapters.data import Query, Task, cap_corpus
from era_adapters.encoders import BARE_QUERY_TEMPLATE
from era_adapters.metrics import per_query_metrics_ranked
from era_adapters.search import rank_for_queries
from era_adapters.sides import as_side
from era_adapters.splits import LabelSelection, TaskSplit, make_split, resolve_validation, select_labels
from modeling_era.modeling_era import format_prompt

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
    val_doc2doc: np.ndarray | None = None  # (n_val, doc_dim) D vectors of the bare queries: doc2doc's queries
    selection: LabelSelection | None = None

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
    train_qrels: list[dict[str, int]] = field(default_factory=list)  # each training query's labels
    train_doc2doc: np.ndarray | None = None  # (n, doc_dim) D vectors of the training queries (cross-validation)
    validation: str = "holdout"  # "holdout" (the views' validation queries) or "kfold" (folds of the training ones)

    @property
    def train_pairs(self) -> int:
        return int((self.positives >= 0).sum())


def _padded(rows: list[list[int]], fill: int = -1, dtype: Any = np.int64) -> np.ndarray:
    width = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def load_adapt_data(
    tasks: Sequence[Task],
    *,
    labels: dict[str, Any],
    validation: str = "auto",
    split_seed: int,
    test_fraction: float = 0.5,
    query_encoder: Any,
    doc_encoder: Any,
    max_docs: int | None,
    cache_dir: str | os.PathLike | None,
    accelerator: Accelerator | None,
    align_texts: int = 0,
    align_seed: int = 0,
) -> AdaptData:
    """Split, select (`labels`: the options of `select_labels`), cap and embed (through the cache, or read
    from stored vectors) what stage 2 needs; test queries stay untouched. `validation` as
    `resolve_validation` takes it: with "kfold" the held-out queries train too, and the folds are cut later
    (`fold_data`). `query_encoder` / `doc_encoder`: a `TextEncoder` or a side (`era_adapters.sides`): the
    query side gives the adapter's input, the doc side the corpus."""
    query_side, doc_side = as_side(query_encoder), as_side(doc_encoder)
    splits = [make_split(task, seed=split_seed, test_fraction=test_fraction) for task in tasks]  # the evaluation's
    selections = [select_labels(split, **labels) for split in splits]
    strategy = resolve_validation(validation, selections)
    embed = {"cache_dir": cache_dir, "accelerator": accelerator}
    doc_blocks, views = [], []
    train_queries, train_prompts, train_qids, train_task, positives, grades, own = [], [], [], [], [], [], []
    train_qrels: list[dict[str, int]] = []
    offset = 0
    capped_tasks = [cap_corpus(task, max_docs, seed=split_seed) for task in tasks]  # the evaluation's cap
    capped_tasks = doc_side.prepare(query_side.prepare(capped_tasks))  # stored vectors checked against them
    for index, (task, split, selection, capped) in enumerate(zip(tasks, splits, selections, capped_tasks)):
        train_ids = selection.train_qids + (selection.val_qids if strategy == "kfold" else [])
        val_ids = [] if strategy == "kfold" else selection.val_qids
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
            labels_ = [(row_of[doc_id], grade) for doc_id, grade in query.labels.items()
                       if grade > 0 and doc_id in row_of]
            positives.append([offset + row for row, _ in labels_])
            grades.append([grade for _, grade in labels_])
            identical = row_of.get(query.qid) if capped.ignore_identical_ids else None
            own.append([offset + identical] if identical is not None else [])
        train_queries.append(vectors[: len(train)])
        train_prompts += prompts[: len(train)]
        train_qids += [q.qid for q in train]
        train_qrels += [q.labels for q in train]
        train_task += [index] * len(train)
        views.append(TaskView(
            name=task.name, doc_ids=list(capped.doc_ids), offset=offset,
            ignore_identical_ids=capped.ignore_identical_ids, split=split, val_qids=[q.qid for q in val],
            val_qrels={q.qid: q.labels for q in val}, val_queries=vectors[len(train):],
            val_prompts=prompts[len(train):], val_doc2doc=doc2doc_queries(doc_side, capped, val, embed),
            selection=selection,
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
        train_qrels=train_qrels,
        validation=strategy,
    )
    if strategy == "kfold":
        data.train_doc2doc = _train_doc2doc(doc_side, tasks, capped_tasks, train_qids, data.train_task, embed)
    if align_texts > 0:
        sample = sample_texts(capped_tasks, align_texts, align_seed, query_side)  # stage 1's: cache hits
        data.align_queries = query_side.texts(sample.query_side, sample.keys, **embed)
        data.align_targets = doc_side.texts(sample.doc_side, sample.keys, **embed)
        data.align_texts = list(sample.query_side)
    return data


def doc2doc_queries(doc_side: Any, task: Task, queries: Sequence[Query], embed: dict[str, Any]) -> np.ndarray | None:
    """D's vectors of the queries as the doc2doc baseline sees them (the bare query, as evaluate embeds
    it; stored: the index's own query vectors); None when D cannot give them (stored doc vectors without
    --doc-query-vectors): doc2doc is then not scored."""
    doc_side = as_side(doc_side)
    if doc_side.kind == "model":
        prompts = [format_prompt(BARE_QUERY_TEMPLATE, q.query, q.instruction) for q in queries]
        return doc_side.texts(prompts, [("query", q.qid) for q in queries], **embed)
    if getattr(doc_side, "queries_source", None) is None:
        return None
    return doc_side.queries(task, queries, **embed)


def fold_data(data: AdaptData, val_rows: np.ndarray) -> AdaptData:
    """`data` with the training rows `val_rows` moved to validation (one cross-validation fold)."""
    keep = np.setdiff1d(np.arange(len(data.train_qids)), val_rows)
    views = []
    for index, view in enumerate(data.tasks):
        rows = [row for row in val_rows if data.train_task[row] == index]
        qids = [data.train_qids[row] for row in rows]
        views.append(dataclasses.replace(
            view, val_qids=qids, val_qrels={data.train_qids[row]: data.train_qrels[row] for row in rows},
            val_queries=data.train_queries[rows], val_prompts=[data.train_prompts[row] for row in rows],
            val_doc2doc=None if data.train_doc2doc is None else data.train_doc2doc[rows]))
    return dataclasses.replace(
        data, train_queries=data.train_queries[keep], train_prompts=[data.train_prompts[row] for row in keep],
        train_qids=[data.train_qids[row] for row in keep], train_task=data.train_task[keep],
        positives=data.positives[keep], grades=data.grades[keep], own_doc=data.own_doc[keep], tasks=views,
        train_qrels=[data.train_qrels[row] for row in keep],
        train_doc2doc=None if data.train_doc2doc is None else data.train_doc2doc[keep], validation="holdout")


def validation_score(data: AdaptData, vectors_of: Any) -> float:
    """Mean over tasks of the validation nDCG@10 of `vectors_of(task index, view)` (each task's validation
    queries, searched over its capped corpus); NaN without validation queries."""
    scores = [task_ndcg(view, data.doc_vectors, vectors_of(index, view))
              for index, view in enumerate(data.tasks) if view.val_qids]
    return float(np.mean(scores)) if scores else float("nan")


def doc2doc_validation(data: AdaptData) -> float:
    """doc2doc (the index as it is: D on both sides) on the same validation queries; NaN when D's query
    vectors are not available (stored doc vectors without --doc-query-vectors)."""
    if any(view.val_qids and view.val_doc2doc is None for view in data.tasks):
        return float("nan")
    return validation_score(data, lambda index, view: view.val_doc2doc)


def _train_doc2doc(doc_side: Any, tasks: Sequence[Task], capped_tasks: Sequence[Task], train_qids: list[str],
                   train_task: np.ndarray, embed: dict[str, Any]) -> np.ndarray | None:
    """doc2doc's query vectors of every training query (cross-validation scores it on each fold)."""
    blocks = []
    for index, (task, capped) in enumerate(zip(tasks, capped_tasks)):
        by_id = {query.qid: query for query in task.queries}
        block = doc2doc_queries(doc_side, capped, [by_id[qid] for qid, t in zip(train_qids, train_task) if t == index],
                                embed)
        if block is None:
            return None
        blocks.append(block)
    return np.concatenate(blocks)


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
