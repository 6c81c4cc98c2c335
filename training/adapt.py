"""Stage 2, supervised adaptation: train the adapter further on a few (query, relevant document) pairs.

    accelerate launch training/adapt.py --data DIR [--tasks ...] --label-budget 0.2 \
        --mode both --init OUT_ALIGN --output OUT                      # ERA: aligned start
    accelerate launch training/adapt.py --data DIR [--tasks ...] --label-budget 0.2 \
        --mode adapt --query-encoder Q --doc-encoder D --output OUT    # labels only, neutral start

What it does (DESIGN.md "The two stages", stage 2):

* Labels come from the seeded split of `training.data.make_split` (the split evaluation uses): the
  training part at `--label-budget` gives the pairs, its validation part drives early stopping on
  nDCG@10, the test part is never read (its queries are not even embedded).
* Queries go through Q with the adapter config's prompt template (instruction filled) and documents
  through D, both via the embedding cache; the corpus is capped with `--max-docs` exactly as
  `training/evaluate.py` caps it. Training runs on the cached pooled Q vectors, so an epoch costs
  only adapter math (with `--lora` the backbone runs too, see below).
* Loss: InfoNCE with temperature τ (0.05). Every (query, positive) pair is one example whose
  candidates are the positive, the query's mined hard negatives and the in-batch negatives: the
  positives of the other queries of the global batch, minus the query's own positives (and minus
  its hard negatives, so that no document counts twice). Pairs of a query share weight 1 (uniform,
  or by relevance grade with `--graded`), so every query counts the same.
* Hard negatives: exact faiss search over the whole (capped) corpus of the query's task with the
  current adapter (the starting adapter at epoch 1), dropping the positives, the query's own
  document on tasks that ignore identical ids, and near-duplicates: documents scoring at least
  `--near-duplicate-ratio` (0.95) × the score of the query's weakest positive. Re-mined at the
  start of every `--remine-every` K-th epoch (default 1; 0: mined once). Vectorised (no loop over
  documents).
* Regularisation against forgetting the alignment (`both`): an L2 penalty toward the starting
  weights (`--l2-to-init`, λ of 0.5·λ·||θ − θ_start||²) and/or a cosine alignment loss
  A(Q(t)) ≈ D(t) on the unlabeled documents stage 1 samples (`training.align.sample_texts`, same
  seed: cache hits), `--align-weight`. Measured (Q = all-mpnet-base-v2, D = all-MiniLM-L6-v2,
  linear adapter, test nDCG@10 macro over restbench_spotify, restbench_tmdb, gorilla_torchhub and
  mbpp × budgets 0.05/0.1/0.2/0.4; small test sets, so ±0.5 point is noise):
      mined once, no regulariser 0.5508 | + L2 λ=0.1 0.5518, λ=1 0.5302 | + align 2.0 0.5522
      re-mined every 2 epochs   0.5681 | + L2 λ=0.1 0.5716 | + align 2.0 0.5748
      re-mined every epoch      0.5761 | + L2 λ=0.1 0.5731 | + align 2.0 0.5774 (the defaults)
      (align only 0.4458, adapt 0.3573, doc2doc 0.4376, query2query 0.5125)
  Re-mining is what helps (+2.5 points); with early stopping on validation nDCG the adapter barely
  drifts, so the regularisers matter little: the alignment loss never hurt the macro (+0.1 to +0.7)
  and is the `both` default (weight 2); L2-to-init is neutral at λ ≤ 0.1 and hurts at λ = 1 (it
  only helped where training over-fits at once, mbpp at 0.4), so it is off. `adapt` (the
  labels-only baseline) uses neither: nothing of stage 1 may leak into it.
* `training.loop.train`: AdamW with warmup in steps, seeded batches, early stopping with the best
  weights restored, an atomic checkpoint after every epoch (next to the output), resume after a
  kill; the mined negatives are checkpointed too, so a resumed run equals an uninterrupted one.
* DDP through Accelerate: every process holds the (frozen, cached) document vectors and the global
  batch's indices, so the in-batch negatives of the *global* batch are read from the cache on every
  process (what gathering them would give, without communication); each process computes the loss
  of its share of the queries, scaled so that DDP's gradient average equals the one-process gradient.
  Several CPU processes: `accelerate launch --multi_gpu --num_processes N` (torchrun; gloo without
  GPUs). `accelerate launch --cpu --num_processes N` starts a single process (accelerate wants mpirun
  for multi-CPU).

`--lora` also trains a LoRA (peft, query/value projections by default, `--lora-r/--lora-alpha/
--lora-targets`) on the query backbone; the backbone then runs every step (no cached Q vectors). The
adapter and the LoRA weights are saved together in one EraQueryEncoder folder: `config.lora_config`
holds the peft LoraConfig arguments, model.safetensors the adapter and the LoRA tensors (prefix
`lora.`), the backbone stays referenced by id. `AutoModel.from_pretrained(folder,
trust_remote_code=True)` loads the backbone, injects the LoRA (needs `peft`) and fills it;
`encode_queries` then works as for any adapter. Such a folder cannot be used as an `EraAdapter` on
precomputed plain-Q vectors (that is refused with a message); `training/evaluate.py` scores it through
its LoRA backbone, uncached. The doc side never changes: no re-indexing.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):  # run as a script (accelerate launch training/adapt.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import broadcast_object_list  # noqa: E402

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder, pool  # noqa: E402
from modeling_era.configuration_era import ADAPTER_TYPES  # noqa: E402
from training.artifacts import adapter_input_dim, era_config, query_side_encoder, save_query_encoder  # noqa: E402
from training.cache import embed_documents, embed_texts  # noqa: E402
from training.data import DEFAULT_BUDGETS, Task, TaskSplit, cap_corpus, load_tasks, make_split  # noqa: E402
from training.encoders import TextEncoder, choose_prompt_template  # noqa: E402
from training.loop import CHECKPOINT_NAME, LoopConfig, LoopResult, local_rows, seeded_batches, train  # noqa: E402
from training.metrics import per_query_metrics_ranked  # noqa: E402
from training.search import exact_search  # noqa: E402

logger = logging.getLogger("era.adapt")

MODES = ("both", "adapt")
# Regularisation toward the alignment, per mode, unless asked otherwise (measured: see the module
# docstring). `adapt` is the labels-only baseline: nothing from stage 1 may leak into it.
MODE_DEFAULTS: dict[str, dict[str, float]] = {"both": {"align_weight": 2.0}, "adapt": {"align_weight": 0.0}}
VALIDATION_METRIC = "ndcg@10"
NEGATIVES_FILE = "negatives-epoch{epoch}.npy"
SETTINGS_FILE = "adapt-settings.json"
_ALIGN_SAMPLE_STREAM = 6  # numpy SeedSequence stream of the regulariser's per-step text sample (data.py 0-4, align 5)


# ---------------------------------------------------------------------------------------------
# Hyper-parameters
# ---------------------------------------------------------------------------------------------


@dataclass
class AdaptSettings:
    """Everything that shapes training (recorded in the metadata; a resumed run must match it)."""

    temperature: float = 0.05
    batch_size: int = 32  # queries per global batch (all their positives are used)
    num_negatives: int = 8  # mined hard negatives per query
    remine_every: int = 1  # re-mine at the start of every K-th epoch; 0: mine once (1 measured best)
    near_duplicate_ratio: float = 0.95
    mine_depth: int = 1000  # deepest faiss search when many candidates are excluded
    in_batch_negatives: bool = True
    graded: bool = False  # weight a query's positives by relevance grade instead of uniformly
    l2_to_init: float = 0.0  # λ of 0.5·λ·||θ − θ_start||²
    align_weight: float = 0.0  # weight of the cosine alignment loss on unlabeled texts
    align_texts: int = 1000  # unlabeled documents per task for that loss (stage 1's sample)
    align_batch_size: int = 64  # of them per step
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW's decay toward zero (the L2 above decays toward the start)
    warmup_steps: int = 0
    patience: int = 5  # tiny validation sets are noisy: 3 stopped runs that were still improving
    max_grad_norm: float | None = 1.0
    seed: int = 0

    def loop_config(self) -> LoopConfig:
        return LoopConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                          warmup_steps=self.warmup_steps, patience=self.patience, seed=self.seed,
                          max_grad_norm=self.max_grad_norm)

    def check(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")
        if not 0 < self.near_duplicate_ratio <= 1:
            raise ValueError(f"near_duplicate_ratio must be in (0, 1], got {self.near_duplicate_ratio}.")
        for name in ("batch_size", "epochs", "patience", "align_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("num_negatives", "remine_every", "warmup_steps", "align_texts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.l2_to_init < 0 or self.align_weight < 0 or self.weight_decay < 0:
            raise ValueError("l2_to_init, align_weight and weight_decay must be >= 0.")


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def pair_weights(positives: torch.Tensor, grades: torch.Tensor | None = None) -> torch.Tensor:
    """Weight of each (query, positive) slot, `(b, P)`: a query's weights sum to 1, padding gets 0.

    Uniform over a query's positives, or proportional to their grades when `grades` is given.
    """
    valid = positives >= 0
    raw = valid.float() if grades is None else torch.where(valid, grades.float(), torch.zeros_like(grades, dtype=torch.float))
    return raw / raw.sum(1, keepdim=True).clamp(min=1e-12)


def in_batch_mask(positives: torch.Tensor, negatives: torch.Tensor, pool_rows: torch.Tensor) -> torch.Tensor:
    """`(b, m)`: may pool document j serve as an in-batch negative of query i?

    Not when it is one of i's own positives (whoever brought it into the batch), nor when it is
    already one of i's hard negatives (it would count twice). Padding (-1) never matches.
    """
    own = (pool_rows[None, :, None] == positives[:, None, :]).any(-1)
    twice = (pool_rows[None, :, None] == negatives[:, None, :]).any(-1)
    return ~(own | twice)


def contrastive_loss(
    query_vectors: torch.Tensor,
    doc_vectors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    pool_rows: torch.Tensor | None,
    weights: torch.Tensor,
    *,
    temperature: float,
    normaliser: float | None = None,
) -> torch.Tensor:
    """InfoNCE over every (query, positive) pair: −log softmax of the positive among its candidates.

    Args:
        query_vectors: `(b, d)` adapted query vectors (normalised for a cosine index).
        doc_vectors: `(N, d)` frozen document vectors; the row arguments index it.
        positives: `(b, P)` rows of each query's positives, -1 padded.
        negatives: `(b, H)` rows of each query's hard negatives, -1 padded.
        pool_rows: `(m,)` rows of the in-batch candidates (the global batch's positives), or None.
        weights: `(b, P)` pair weights (see `pair_weights`).
        normaliser: the weighted sum is divided by it (default `b`: mean over queries).

    Candidates of pair (i, p): p itself, i's hard negatives, and the pool minus `in_batch_mask`.
    """
    pair_query, pair_slot = (positives >= 0).nonzero(as_tuple=True)
    positive_scores = (query_vectors[pair_query] * doc_vectors[positives[pair_query, pair_slot]]).sum(-1)
    columns, masks = [positive_scores[:, None]], [torch.ones_like(positive_scores, dtype=torch.bool)[:, None]]
    if negatives.shape[1]:
        negative_scores = torch.einsum("bd,bhd->bh", query_vectors, doc_vectors[negatives.clamp(min=0)])
        columns.append(negative_scores[pair_query])
        masks.append((negatives >= 0)[pair_query])
    if pool_rows is not None and pool_rows.numel():
        pool_scores = query_vectors @ doc_vectors[pool_rows].T
        columns.append(pool_scores[pair_query])
        masks.append(in_batch_mask(positives, negatives, pool_rows)[pair_query])
    logits = (torch.cat(columns, 1) / temperature).masked_fill(~torch.cat(masks, 1), float("-inf"))
    per_pair = torch.logsumexp(logits, 1) - logits[:, 0]
    total = (weights[pair_query, pair_slot] * per_pair).sum()
    return total / (normaliser if normaliser is not None else max(1, query_vectors.shape[0]))


# ---------------------------------------------------------------------------------------------
# Hard-negative mining
# ---------------------------------------------------------------------------------------------


def mine_hard_negatives(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    positives: np.ndarray,
    num_negatives: int,
    *,
    near_duplicate_ratio: float = 0.95,
    excluded: np.ndarray | None = None,
    max_depth: int = 1000,
) -> np.ndarray:
    """The `num_negatives` best-scoring documents of each query that are not positives, `(n, H)`.

    Exact faiss search over `doc_vectors` (rows of one corpus). Dropped: the query's positives
    (`(n, P)` rows, -1 padded), the rows in `excluded` (same layout, e.g. the query's own document),
    and near-duplicates of a positive: documents scoring at least `near_duplicate_ratio` × the
    score of the query's weakest positive (for a negative score s the cut is s − (1 − ratio)·|s|,
    the same 5% margin). The search starts shallow and deepens (×4, up to `max_depth` or the
    corpus) only for the queries that lack candidates; slots left empty are -1. Vectorised.
    """
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    docs = np.ascontiguousarray(doc_vectors, dtype=np.float32)
    positives = np.asarray(positives, dtype=np.int64).reshape(len(queries), -1)
    blocked = positives if excluded is None else np.concatenate(
        [positives, np.asarray(excluded, dtype=np.int64).reshape(len(queries), -1)], axis=1
    )
    n, n_docs = len(queries), len(docs)
    out = np.full((n, num_negatives), -1, dtype=np.int64)
    if n == 0 or num_negatives == 0 or n_docs == 0:
        return out
    valid = positives >= 0
    scores_of_positives = np.einsum("nd,npd->np", queries, docs[np.maximum(positives, 0)])
    weakest = np.where(valid, scores_of_positives, np.inf).min(1)
    threshold = np.where(np.isfinite(weakest), weakest - (1 - near_duplicate_ratio) * np.abs(weakest), np.inf)
    # Membership of (query, doc) in the blocked set by integer keys: no (n, k, P) comparison.
    blocked_keys = np.unique((np.arange(n)[:, None] * n_docs + blocked)[blocked >= 0])
    cap = min(n_docs, max(max_depth, num_negatives))
    depth = min(cap, num_negatives + int((blocked >= 0).sum(1).max()) + 16)
    todo = np.arange(n)
    while todo.size:
        scores, rows = exact_search(queries[todo], docs, depth)
        keep = ~np.isin(todo[:, None] * n_docs + rows, blocked_keys) & (scores < threshold[todo, None])
        done = (keep.sum(1) >= num_negatives) | (depth >= cap)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :num_negatives]  # kept first, in rank order
        picked = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(rows, order, 1), -1)
        out[todo[done], : picked.shape[1]] = picked[done]
        todo, depth = todo[~done], min(cap, depth * 4)
    return out


# ---------------------------------------------------------------------------------------------
# Data: cached vectors of the training and validation queries, the documents, the unlabeled texts
# ---------------------------------------------------------------------------------------------


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
    query_encoder: TextEncoder,
    doc_encoder: TextEncoder,
    max_docs: int | None,
    cache_dir: str | os.PathLike | None,
    accelerator: Accelerator | None,
    align_texts: int = 0,
    align_seed: int = 0,
) -> AdaptData:
    """Split, cap and embed (through the cache) what stage 2 needs; test queries stay untouched."""
    budgets = sorted(set(DEFAULT_BUDGETS) | {float(label_budget)})
    embed = {"cache_dir": cache_dir, "accelerator": accelerator}
    doc_blocks, views, capped_tasks = [], [], []
    train_queries, train_prompts, train_qids, train_task, positives, grades, own = [], [], [], [], [], [], []
    offset = 0
    for index, task in enumerate(tasks):
        split = make_split(task, seed=split_seed, budgets=budgets)  # the evaluation's split
        capped = cap_corpus(task, max_docs, seed=split_seed)  # the evaluation's cap
        capped_tasks.append(capped)
        train_ids, val_ids = split.train(label_budget), split.val(label_budget)
        overlap = (set(train_ids) | set(val_ids)) & set(split.test_qids)
        if overlap:  # make_split guarantees this; a silent leak would void every number
            raise AssertionError(f"task {task.name}: test queries {sorted(overlap)[:3]} in the training split")
        by_id = {query.qid: query for query in task.queries}
        row_of = {doc_id: row for row, doc_id in enumerate(capped.doc_ids)}
        doc_blocks.append(embed_documents(doc_encoder, capped.doc_texts, **embed))
        train = [by_id[qid] for qid in train_ids]
        val = [by_id[qid] for qid in val_ids]
        prompts = [query_encoder.format_query(q.query, q.instruction) for q in train + val]
        vectors = embed_texts(query_encoder, prompts, **embed)
        for query in train:
            labels = [(row_of[doc_id], grade) for doc_id, grade in query.labels.items() if grade > 0]
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
        from training.align import sample_texts  # stage 1's sample: same texts, cache hits

        sample = sample_texts(capped_tasks, align_texts, align_seed, query_encoder)
        data.align_queries = embed_texts(query_encoder, sample.query_side, **embed)
        data.align_targets = embed_texts(doc_encoder, sample.doc_side, **embed)
        data.align_texts = list(sample.query_side)
    return data


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def task_ndcg(view: TaskView, doc_vectors: np.ndarray, adapted: np.ndarray) -> float:
    """Mean nDCG@10 of a task's validation queries, searched exactly over its (capped) corpus."""
    from training.evaluate import _drop_identical_ids  # the evaluation's own rule

    docs = doc_vectors[view.rows]
    depth = min(10 + int(view.ignore_identical_ids), len(view.doc_ids))
    scores, indices = exact_search(adapted, docs, depth)
    if view.ignore_identical_ids:
        scores, indices = _drop_identical_ids(scores, indices, view.val_qids, view.doc_ids, 10)
    metrics = per_query_metrics_ranked(indices, view.doc_ids, view.val_qids, view.val_qrels, scores,
                                       metrics=[VALIDATION_METRIC])
    return float(np.mean(metrics[VALIDATION_METRIC]))


# ---------------------------------------------------------------------------------------------
# What is trained: the adapter on cached Q vectors, or (LoRA) the backbone + adapter on texts
# ---------------------------------------------------------------------------------------------


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


class LoraQueryModel(nn.Module):
    """Query backbone with LoRA (peft) + pooling + the EraAdapter: prompts in, doc-space vectors out."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, adapter: EraAdapter) -> None:
        super().__init__()
        self.backbone, self.adapter, self.tokenizer = backbone, adapter, tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        config = self.adapter.config
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        vectors = pool(hidden, attention_mask, config.pooling).float()
        return self.adapter(F.normalize(vectors, dim=-1) if config.normalize_input else vectors)


class LoraQueries:
    """Texts through backbone + LoRA + adapter (the backbone runs every step)."""

    def __init__(self, data: AdaptData, device: torch.device, max_length: int, lowercase: bool,
                 batch_size: int = 32) -> None:
        self.device, self.max_length, self.batch_size = device, max_length, batch_size
        fix = (lambda texts: [t.lower() for t in texts]) if lowercase else (lambda texts: list(texts))
        self.train_texts, self.align_texts = fix(data.train_prompts), fix(data.align_texts)
        self.val_texts = [fix(view.val_prompts) for view in data.tasks]

    def _run(self, model: nn.Module, texts: list[str]) -> torch.Tensor:
        tokenizer = (model.module if hasattr(model, "module") else model).tokenizer
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return model(**{k: v.to(self.device) for k, v in inputs.items()})

    def encode(self, model: nn.Module, train_rows: torch.Tensor, align_rows: torch.Tensor | None):
        texts = [self.train_texts[i] for i in train_rows.tolist()]
        extra = [] if align_rows is None else [self.align_texts[i] for i in align_rows.tolist()]
        if not texts and not extra:  # an empty share still runs the model, so DDP sees every parameter
            texts = [self.train_texts[0]]
            out = self._run(model, texts)[:0]
            return out, (out if align_rows is not None else None)
        out = self._run(model, texts + extra)
        return out[: len(texts)], (out[len(texts):] if align_rows is not None else None)

    @torch.no_grad()
    def _all(self, model: nn.Module, texts: list[str]) -> np.ndarray:
        chunks = [self._run(model, texts[i: i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return torch.cat(chunks).float().cpu().numpy()

    def all_train(self, model: nn.Module) -> np.ndarray:
        return self._all(model, self.train_texts)

    def validation(self, model: nn.Module, task: int) -> np.ndarray:
        return self._all(model, self.val_texts[task])


def build_lora_model(adapter: EraAdapter, query_encoder: TextEncoder, lora: dict[str, Any], seed: int = 0) -> LoraQueryModel:
    """Load Q's backbone, inject LoRA layers (peft; base weights frozen) and put the adapter behind it."""
    from peft import LoraConfig, inject_adapter_in_model

    backbone = copy.deepcopy(query_encoder.model).float().train()
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(seed)  # LoRA's A matrices start random: the same start on every run and process
    backbone = inject_adapter_in_model(LoraConfig(**lora), backbone)
    return LoraQueryModel(backbone, query_encoder.tokenizer, adapter)


def default_lora_config(query_encoder: TextEncoder, r: int, alpha: int, dropout: float,
                        targets: Sequence[str] | None) -> dict[str, Any]:
    if not targets:
        names = {name.rsplit(".", 1)[-1] for name, module in query_encoder.model.named_modules()
                 if isinstance(module, nn.Linear)}
        preferred = [n for n in ("query", "value", "q", "v", "q_proj", "v_proj", "q_lin", "v_lin") if n in names]
        if not preferred:
            raise ValueError(f"no attention projections found for LoRA among {sorted(names)}; pass --lora-targets.")
        targets = preferred[:2]
    return {"r": int(r), "lora_alpha": int(alpha), "lora_dropout": float(dropout), "target_modules": sorted(targets),
            "bias": "none"}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class StepBatch:
    global_rows: torch.Tensor  # the global batch's training queries
    local_rows: torch.Tensor  # this process's share
    align_global: int  # unlabeled texts in the global step (for the normaliser)
    align_local: torch.Tensor | None


class Negatives:
    """The hard negatives of the current mining round; persisted so that a resume re-uses them."""

    def __init__(self, settings: AdaptSettings, data: AdaptData, queries: Any, accelerator: Accelerator,
                 folder: Path | None) -> None:
        self.settings, self.data, self.queries, self.accelerator, self.folder = settings, data, queries, accelerator, folder
        self.rows = np.full((len(data.train_qids), settings.num_negatives), -1, dtype=np.int64)
        self.mined_at: int | None = None
        self.rounds: list[dict[str, Any]] = []

    def mining_epoch(self, epoch: int) -> int:
        every = self.settings.remine_every
        return 1 + ((epoch - 1) // every) * every if every else 1

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        due = self.mining_epoch(epoch)
        if self.mined_at == due:
            return
        path = self.folder / NEGATIVES_FILE.format(epoch=due) if self.folder is not None else None
        if epoch != due:  # resumed in the middle of a round: its negatives were saved when it began
            if path is None or not path.is_file():
                raise FileNotFoundError(f"resuming at epoch {epoch} needs the negatives mined at epoch {due} ({path}).")
            self.rows, self.mined_at = np.load(path), due
            return
        model.eval()
        rows = self.mine(model)
        if self.accelerator.num_processes > 1:  # one truth for every process
            rows = broadcast_object_list([rows])[0]
        if path is not None and self.accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp.npy")
            np.save(temporary, rows)
            os.replace(temporary, path)
        self.accelerator.wait_for_everyone()
        self.rows, self.mined_at = rows, due
        found = (rows >= 0).sum(1)
        self.rounds.append({"epoch": due, "mean_negatives": float(found.mean()) if len(found) else 0.0})

    def mine(self, model: nn.Module) -> np.ndarray:
        """Every task's training queries against its own corpus with the current adapter."""
        settings, data = self.settings, self.data
        adapted = self.queries.all_train(model)
        rows = np.full((len(data.train_qids), settings.num_negatives), -1, dtype=np.int64)
        for index, view in enumerate(data.tasks):
            mine = np.flatnonzero(data.train_task == index)
            if not mine.size:
                continue
            local = lambda a: np.where(a >= 0, a - view.offset, -1)  # noqa: E731
            found = mine_hard_negatives(
                adapted[mine], data.doc_vectors[view.rows], local(data.positives[mine]), settings.num_negatives,
                near_duplicate_ratio=settings.near_duplicate_ratio, excluded=local(data.own_doc[mine]),
                max_depth=settings.mine_depth,
            )
            rows[mine] = np.where(found >= 0, found + view.offset, -1)
        return rows


def _state_fingerprint(module: nn.Module) -> str:
    """sha256 of the trainable weights (the frozen backbone of a LoRA run is named by the config)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.named_parameters()):
        if tensor.requires_grad:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_resume_settings(folder: Path, record: dict[str, Any], accelerator: Accelerator) -> None:
    """A checkpoint belongs to one run: refuse to resume it with other data, settings or start."""
    path = folder / SETTINGS_FILE
    record = json.loads(json.dumps(record))
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if saved is not None and saved != record and (folder / CHECKPOINT_NAME).is_file():
        changed = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
        raise ValueError(
            f"{folder} holds the checkpoint of a run with other settings ({', '.join(changed)}); "
            "use another --output or delete that folder to start over."
        )
    accelerator.wait_for_everyone()
    if saved != record and accelerator.is_main_process:  # nothing to resume: start this run's folder afresh
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)
    accelerator.wait_for_everyone()


def checkpoint_folder(output: str | os.PathLike) -> Path:
    """Where the per-epoch checkpoints live: beside the output (which is replaced atomically at the end)."""
    output = Path(output)
    return output.parent / f".{output.name}.checkpoints"


def train_adapter(
    model: nn.Module,
    data: AdaptData,
    settings: AdaptSettings,
    *,
    accelerator: Accelerator,
    queries: Any,
    checkpoint_dir: Path | None = None,
) -> tuple[LoopResult, Negatives]:
    """Run the contrastive training of `model` (in place; best validation epoch restored)."""
    device = accelerator.device
    docs = torch.from_numpy(data.doc_vectors).to(device)
    positives = torch.from_numpy(data.positives).to(device)
    weights = pair_weights(positives, torch.from_numpy(data.grades).to(device) if settings.graded else None)
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    negatives = Negatives(settings, data, queries, accelerator, checkpoint_dir)
    n_train, n_align = len(data.train_qids), len(data.align_texts)
    use_align = settings.align_weight > 0 and n_align > 0
    world = accelerator.num_processes

    def batches(epoch: int):
        groups = seeded_batches(n_train, settings.batch_size, settings.seed, epoch)
        generator = np.random.default_rng([_ALIGN_SAMPLE_STREAM, settings.seed, epoch])
        for group in groups:
            align_global, align_local = 0, None
            if use_align:
                sample = torch.from_numpy(generator.choice(n_align, min(n_align, settings.align_batch_size), replace=False))
                align_global, align_local = len(sample), local_rows(sample, accelerator).to(device)
            yield StepBatch(group.to(device), local_rows(group, accelerator).to(device), align_global, align_local)

    def loss_fn(wrapped: nn.Module, batch: StepBatch) -> torch.Tensor:
        local = batch.local_rows
        adapted, aligned = queries.encode(wrapped, local, batch.align_local)
        negative_rows = torch.from_numpy(negatives.rows).to(device)[local]
        pool_rows = None
        if settings.in_batch_negatives:
            pool_rows = torch.unique(positives[batch.global_rows][positives[batch.global_rows] >= 0])
        # Local sums over the global count, times the world size: DDP's average is the global mean.
        loss = contrastive_loss(adapted, docs, positives[local], negative_rows, pool_rows, weights[local],
                                temperature=settings.temperature, normaliser=len(batch.global_rows) / world)
        if aligned is not None:
            cosine = F.cosine_similarity(aligned, align_targets[batch.align_local], dim=-1)
            loss = loss + settings.align_weight * (1 - cosine).sum() * world / batch.align_global
        if settings.l2_to_init > 0:
            # The same value on every process, so DDP's average leaves it as is.
            unwrapped = accelerator.unwrap_model(wrapped)
            drift = sum(((p - start[name]) ** 2).sum() for name, p in unwrapped.named_parameters() if name in start)
            loss = loss + 0.5 * settings.l2_to_init * drift
        return loss

    align_targets = torch.from_numpy(data.align_targets).to(device) if use_align else None

    def validate(model_: nn.Module) -> float:
        model_.eval()
        scores = [task_ndcg(view, data.doc_vectors, queries.validation(model_, index))
                  for index, view in enumerate(data.tasks) if view.val_qids]
        score = float(np.mean(scores)) if scores else float("nan")
        if world > 1:
            score = broadcast_object_list([score])[0]
        return score

    if checkpoint_dir is not None:
        _check_resume_settings(checkpoint_dir, _run_record(settings, data, model), accelerator)
    result = train(model, batches_for_epoch=batches, loss_fn=loss_fn, validate=validate,
                   config=settings.loop_config(), accelerator=accelerator, checkpoint_dir=checkpoint_dir,
                   steps_per_epoch=math.ceil(n_train / settings.batch_size), on_epoch_start=negatives.on_epoch_start)
    return result, negatives


def _run_record(settings: AdaptSettings, data: AdaptData, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: settings, data and starting weights."""
    return {
        "settings": asdict(settings),
        "tasks": [view.name for view in data.tasks],
        "train_qids": hashlib.sha256(json.dumps(data.train_qids).encode()).hexdigest(),
        "val_qids": hashlib.sha256(json.dumps([v.val_qids for v in data.tasks]).encode()).hexdigest(),
        "docs": [len(view.doc_ids) for view in data.tasks],
        "start": _state_fingerprint(model),
    }


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _starting_adapter(
    mode: str, init: str | os.PathLike | None, query_encoder: str | None, doc_encoder: str | None, *,
    adapter: str, adapter_rank: int, adapter_hidden_dim: int, prompt_template: str | None, default_instruction: str,
    seed: int, cache_dir: str | os.PathLike | None, embed_batch_size: int,
) -> tuple[EraAdapter, TextEncoder, TextEncoder, dict[str, Any]]:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose 'both' (from --init) or 'adapt' (labels only).")
    if mode == "both":
        if init is None:
            raise ValueError("--mode both starts from the stage-1 adapter: pass --init OUT_ALIGN.")
        config = EraConfig.from_pretrained(init)
        model = EraAdapter.from_pretrained(init)
        for given, expected, side in ((query_encoder, config.query_encoder, "query"), (doc_encoder, config.doc_encoder, "doc")):
            if given is not None and str(given) != str(expected):
                raise ValueError(f"--{side}-encoder {given} differs from the {side} encoder of {init} ({expected}).")
        q_encoder = query_side_encoder(config, cache_dir=cache_dir, batch_size=embed_batch_size)
        d_encoder = TextEncoder(config.doc_encoder, revision=config.doc_encoder_revision, cache_dir=cache_dir,
                                batch_size=embed_batch_size)
        start = {"init": str(init), "init_mode": config.training_metadata.get("mode"),
                 "init_recipe": config.training_metadata.get("recipe", {}).get("summary"),
                 "prompt": config.training_metadata.get("prompt", {"template": config.prompt_template,
                                                                   "chosen_by": f"stage 1 ({init})"})}
    else:
        if init is not None:
            raise ValueError("--mode adapt starts from a neutral adapter; --init belongs to --mode both.")
        if query_encoder is None or doc_encoder is None:
            raise ValueError("--mode adapt needs --query-encoder and --doc-encoder.")
        q_encoder = TextEncoder(query_encoder, cache_dir=cache_dir, batch_size=embed_batch_size)
        prompt = choose_prompt_template(q_encoder, prompt_template)
        q_encoder.query_template = prompt_template = prompt["template"]
        d_encoder = TextEncoder(doc_encoder, cache_dir=cache_dir, batch_size=embed_batch_size)
        config = era_config(q_encoder, d_encoder, adapter_type=adapter, prompt_template=prompt_template,
                            default_instruction=default_instruction, adapter_rank=adapter_rank,
                            adapter_hidden_dim=adapter_hidden_dim)  # fusion: gate 0, i.e. starts as D(q)
        torch.manual_seed(seed)  # the seeded random init when the dims differ
        model = EraAdapter(config)
        start = {"init": "identity" if config.query_dim == config.doc_dim else f"random (torch seed {seed})",
                 "prompt": prompt}
        if adapter == "fusion":
            q_encoder = query_side_encoder(config, cache_dir=cache_dir, batch_size=embed_batch_size)
            start["init"] = f"fusion: light branch identity, gate 0, Q branch random (torch seed {seed})"
    if d_encoder.dim != model.config.doc_dim or q_encoder.dim != adapter_input_dim(model.config):
        raise ValueError(
            f"the adapter maps {adapter_input_dim(model.config)}->{model.config.doc_dim} but the encoders give "
            f"{q_encoder.dim} and {d_encoder.dim} dims."
        )
    return model, q_encoder, d_encoder, start


def _summary(mode: str, config: EraConfig, settings: AdaptSettings, data: AdaptData, result: LoopResult,
             lora: dict[str, Any] | None, budget: float) -> str:
    start = "the stage-1 (aligned) adapter" if mode == "both" else "a neutral adapter (identity, or seeded random init)"
    mining = f"re-mined every {settings.remine_every} epochs" if settings.remine_every else "mined once"
    regs = []
    if settings.l2_to_init:
        regs.append(f"L2 toward the starting weights (λ={settings.l2_to_init:g})")
    if settings.align_weight:
        regs.append(f"alignment loss on {len(data.align_texts)} unlabeled texts (weight {settings.align_weight:g})")
    n_val = sum(len(view.val_qids) for view in data.tasks)
    text = (
        f"{mode}: {config.adapter_type} adapter from {start}"
        + (f" plus LoRA (r={lora['r']}) on the query backbone" if lora else "")
        + f", trained with InfoNCE (τ={settings.temperature:g}) over all positives, {settings.num_negatives} "
        f"faiss-mined hard negatives ({mining})" + (" and in-batch negatives" if settings.in_batch_negatives else "")
        + (f"; {' and '.join(regs)}" if regs else "")
        + f"; AdamW lr {settings.lr:g}, early stopping on validation nDCG@10 (best epoch {result.best_epoch}); "
        f"{len(data.train_qids)} training + {n_val} validation labeled queries (label budget {budget:g})"
    )
    return text


def adapt(
    data: str | os.PathLike,
    *,
    output: str | os.PathLike,
    label_budget: float,
    mode: str = "both",
    init: str | os.PathLike | None = None,
    query_encoder: str | None = None,
    doc_encoder: str | None = None,
    tasks: Sequence[str] | None = None,
    adapter: str = "linear",
    adapter_rank: int = 64,
    adapter_hidden_dim: int = 1024,
    prompt_template: str | None = None,
    default_instruction: str = "",
    split_seed: int = 0,
    max_docs: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    embed_batch_size: int = 32,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_targets: Sequence[str] | None = None,
    accelerator: Accelerator | None = None,
    **hyperparameters: Any,
) -> EraAdapter:
    """Run stage 2 and save the adapted query encoder to `output`; returns the trained adapter.

    `hyperparameters` are the fields of `AdaptSettings` (temperature, batch_size, num_negatives,
    remine_every, l2_to_init, align_weight, epochs, lr, patience, seed, ...).
    `split_seed` and `max_docs` must be those of the evaluation (same split, same capped corpus).
    With `lora`, the returned adapter is the adapter part; the LoRA weights are in the saved folder.
    """
    unknown = set(hyperparameters) - {f for f in AdaptSettings.__dataclass_fields__}
    if unknown:
        raise TypeError(f"unknown hyper-parameters {sorted(unknown)}; see AdaptSettings.")
    settings = AdaptSettings(**{**MODE_DEFAULTS.get(mode, {}), **hyperparameters})
    settings.check()
    if not 0 < label_budget <= 1:
        raise ValueError(f"label_budget must be a fraction in (0, 1], got {label_budget}.")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(settings.seed)
    model, q_encoder, d_encoder, start = _starting_adapter(
        mode, init, query_encoder, doc_encoder, adapter=adapter, adapter_rank=adapter_rank,
        adapter_hidden_dim=adapter_hidden_dim, prompt_template=prompt_template,
        default_instruction=default_instruction, seed=settings.seed, cache_dir=cache_dir,
        embed_batch_size=embed_batch_size,
    )
    if lora and model.config.adapter_type == "fusion":
        raise ValueError("--lora is not supported with a fusion adapter (two query backbones); drop --lora.")
    init_metadata = dict(model.config.training_metadata)
    align_seed = int(init_metadata.get("seeds", {}).get("sample", settings.seed)) if mode == "both" else settings.seed
    loaded = load_tasks(data, tasks)
    adapt_data = load_adapt_data(
        loaded, label_budget=label_budget, split_seed=split_seed, query_encoder=q_encoder, doc_encoder=d_encoder,
        max_docs=max_docs, cache_dir=cache_dir, accelerator=accelerator,
        align_texts=settings.align_texts if settings.align_weight > 0 else 0, align_seed=align_seed,
    )
    lora_config = None
    if lora:
        lora_config = default_lora_config(q_encoder, lora_r, lora_alpha, lora_dropout, lora_targets)
        trained = build_lora_model(model, q_encoder, lora_config, settings.seed).to(accelerator.device)
        queries = LoraQueries(adapt_data, accelerator.device, q_encoder.max_length, q_encoder.do_lower_case,
                              batch_size=embed_batch_size)
    else:
        trained = model.to(accelerator.device)
        queries = CachedQueries(adapt_data, accelerator.device)
    folder = checkpoint_folder(output)
    result, negatives = train_adapter(trained, adapt_data, settings, accelerator=accelerator, queries=queries,
                                      checkpoint_dir=folder)
    model = (trained.adapter if lora else trained).cpu().eval()
    config = model.config
    metadata: dict[str, Any] = {
        "mode": mode,
        "prompt": start.pop("prompt"),
        "label_budget": label_budget,
        "tasks": [view.name for view in adapt_data.tasks],
        "seeds": {"split": split_seed, "train": settings.seed, "alignment_sample": align_seed},
        "max_docs": max_docs,
        "split": {
            view.name: {
                "protocol": view.split.protocol,
                "n_labeled": view.split.n_labeled,
                "train": [qid for qid, t in zip(adapt_data.train_qids, adapt_data.train_task) if t == index],
                "val": view.val_qids,
                "n_test": len(view.split.test_qids),
                "test_sha256": hashlib.sha256(json.dumps(sorted(view.split.test_qids)).encode()).hexdigest(),
            }
            for index, view in enumerate(adapt_data.tasks)
        },
        "recipe": {
            "summary": _summary(mode, config, settings, adapt_data, result, lora_config, label_budget),
            "stage": "supervised adaptation (training/adapt.py)",
            "start": start,
            "hyperparameters": asdict(settings),
            "lora": lora_config,
            "validation_metric": VALIDATION_METRIC,
            "curve": result.history,
            "best_epoch": result.best_epoch,
            "best_validation": result.best_score,
            "mining_rounds": negatives.rounds,
            "resumed_from_epoch": result.resumed_from_epoch,
            "processes": accelerator.num_processes,
        },
    }
    if mode == "both":
        metadata["alignment"] = init_metadata.get("alignment", {})
        metadata["alignment_recipe"] = init_metadata.get("recipe", {})
    config.training_metadata = metadata
    if accelerator.is_main_process:
        if lora:
            save_lora_query_encoder(trained, output)
        else:
            save_query_encoder(model, output)
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("adapted query encoder saved to %s (validation nDCG@10 %.4f -> %.4f at epoch %d)", output,
                    result.history[0]["validation"], result.best_score, result.best_epoch)
    accelerator.wait_for_everyone()
    return model


def save_lora_query_encoder(trained: LoraQueryModel, output: str | os.PathLike) -> Path:
    """Save adapter + LoRA as one EraQueryEncoder folder: backbone by reference, the LoRA weights in
    model.safetensors under `lora.` and their peft config in `config.lora_config`."""
    from training.artifacts import _replace_folder, render_model_card

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.staging-lora-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    adapter = trained.adapter
    config = copy.deepcopy(adapter.config)
    config.lora_config = dict(config.training_metadata["recipe"]["lora"])
    model = EraQueryEncoder(config)
    model.adapter.load_state_dict(adapter.adapter.state_dict())
    model.attach_backbone(trained.backbone, trained.tokenizer)
    model.save_pretrained(staging, bundle_backbone=False)
    count = sum(p.numel() for p in trained.parameters() if p.requires_grad)  # adapter + LoRA
    render_model_card(config, num_parameters=count, repo_id=output.name).save(staging / "README.md")
    _replace_folder(staging, output)
    return output


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = AdaptSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of MAIR/BEIR tasks, one task folder, or MAIR task names")
    parser.add_argument("--tasks", nargs="+", help="task names (default: all under --data); one adapter for all")
    parser.add_argument("--label-budget", type=float, required=True, help="fraction of the labeled queries (train + val)")
    parser.add_argument("--mode", choices=MODES, default="both")
    parser.add_argument("--init", help="stage-1 adapter folder (training/align.py --output), for --mode both")
    parser.add_argument("--query-encoder", help="for --mode adapt (both: taken from --init)")
    parser.add_argument("--doc-encoder", help="for --mode adapt (both: taken from --init)")
    parser.add_argument("--output", required=True, help="folder for the adapted EraQueryEncoder")
    parser.add_argument("--adapter", choices=ADAPTER_TYPES, default="linear", help="family (--mode adapt)")
    parser.add_argument("--adapter-rank", type=int, default=64)
    parser.add_argument("--adapter-hidden-dim", type=int, default=1024)
    parser.add_argument("--prompt-template",
                        help="query prompt (--mode adapt; default as training/align.py: by the encoder's kind)")
    parser.add_argument("--default-instruction", default="")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split and the corpus cap (as evaluate)")
    parser.add_argument("--max-docs", type=int, help="cap each corpus exactly as training/evaluate.py does")
    parser.add_argument("--cache-dir")
    parser.add_argument("--embed-batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="queries per global batch")
    parser.add_argument("--num-negatives", type=int, default=defaults.num_negatives)
    parser.add_argument("--remine-every", type=int, default=defaults.remine_every, help="epochs; 0 = mine once")
    parser.add_argument("--near-duplicate-ratio", type=float, default=defaults.near_duplicate_ratio)
    parser.add_argument("--mine-depth", type=int, default=defaults.mine_depth)
    parser.add_argument("--no-in-batch-negatives", dest="in_batch_negatives", action="store_false")
    parser.add_argument("--graded", action="store_true", help="weight positives by relevance grade")
    parser.add_argument("--l2-to-init", type=float, help=f"L2 toward the starting weights (default {defaults.l2_to_init})")
    parser.add_argument("--align-weight", type=float,
                        help=f"alignment loss on unlabeled texts (default: {MODE_DEFAULTS})")
    parser.add_argument("--align-texts", type=int, default=defaults.align_texts)
    parser.add_argument("--align-batch-size", type=int, default=defaults.align_batch_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--lora", action="store_true", help="also train a LoRA on the query backbone (peft)")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--lora-targets", nargs="+", help="module names (default: the attention query/value projections)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> EraAdapter:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = {key: value for key, value in vars(parse_args(argv)).items() if value is not None or key in _NULLABLE}
    data = args.pop("data")
    return adapt(data, **args)


_NULLABLE = ("init", "query_encoder", "doc_encoder", "tasks", "max_docs", "cache_dir", "lora_targets")


if __name__ == "__main__":
    main(sys.argv[1:])
