"""The teacher of distillation: how the strong encoder Q ranks documents for unlabeled queries, over a
budgeted sample of each corpus, as targets the adapter learns to reproduce (docs/method.md,
"Distillation").

For each task:

1. Unlabeled queries: the task's queries outside the test part of its split, labels ignored (or a
   user's query log). A query with a test query's text never enters under any id: a logged one is
   refused, the task's own are left out. Stage 2 also leaves out its validation queries, which only
   choose the epoch.
2. Candidates of a query: its top `candidates` documents in the index as it is, D(q)·D(d), plus
   `random_candidates` seeded random documents of the teacher pool (fresh at every draw); a query's
   own document is never one on tasks that ignore identical ids.
3. The teacher pool, the only documents Q embeds: the union of the queries' top candidates (best ranks
   first when it exceeds the budget), topped up with seeded random others to `teacher_docs` — never
   the whole corpus unless it is that small: re-embedding the corpus is what ERA avoids.
4. Teacher scores over a query's candidates: Q(q)·Q(d) (`query2query`, the re-index's ranking), or the
   `ensemble` of the re-index and the index itself: each z-scored over the candidates, mixed with
   `teacher_weight` on Q, and put back on Q's scale so that the temperatures mean the same.

Every vector comes from the embedding cache; `TeacherTargets.cost` records, per task, how many
documents Q embedded (≤ `teacher_docs`), how long that took, and the corpus size a re-index embeds.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from era_adapters.arguments import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, Settings, option
from era_adapters.data import Query, Task, cap_corpus, select_docs
from era_adapters.encoders import FusedEncoder
from era_adapters.losses import distillation_loss
from era_adapters.readers import DataError, read_query_log
from era_adapters.search import exact_search
from era_adapters.sides import EncoderSide, FusedSide, as_side
from era_adapters.splits import make_split, queries_outside_test, query_texts, text_key
from era_adapters.supervision import doc2doc_queries

logger = logging.getLogger(__name__)
_POOL_STREAM = 11  # numpy SeedSequence stream of the pool's random documents (data: 3, align: 5, adapt: 6, 7)


@dataclass(kw_only=True)
class TeacherSettings(Settings):
    """What the adapter is distilled from (recorded in the metadata)."""

    query_log: str | None = option(None, help="unlabeled queries: a text file, one query a line, or JSON lines "
                                              '{"query", "instruction"} (default: each task\'s queries outside its '
                                              "test part, labels ignored)")
    teacher: Literal["ensemble", "query2query"] = option(
        "ensemble", help="query2query: Q(q)·Q(d), the re-index's ranking; ensemble: it mixed with the index's own "
                         "D(q)·D(d) (each z-scored over the candidates)")
    teacher_weight: float = option(0.5, help="weight of Q in the ensemble teacher", valid=Range(0, 1))
    teacher_docs: int = option(1000, help="most documents of each corpus Q embeds for the teacher (the budget)",
                               valid=AT_LEAST_ONE)
    candidates: int = option(50, help="each query's top documents in the index, ranked by the teacher",
                             valid=AT_LEAST_ONE)
    random_candidates: int = option(50, help="seeded random documents of the teacher pool added to each query's "
                                             "candidates, drawn afresh every time", valid=NON_NEGATIVE)
    teacher_temperature: float = option(0.05, help="temperature of the teacher's softmax", valid=POSITIVE)
    student_temperature: float = option(0.05, help="temperature of the adapter's softmax", valid=POSITIVE)


def unlabeled_queries(task: Task, test_qids: Sequence[str], log: Sequence[Query] | None = None,
                      leave_out: Sequence[str] = ()) -> list[Query]:
    """The queries a task distils on: `log` if given, else its queries outside the test part and
    `leave_out`, labels ignored. No query with a test query's text enters, whatever its id: the teacher
    ranks by text alone. A log holding one is refused; the task's own are left out
    (`splits.queries_outside_test`)."""
    if log is None:
        return [Query(q.qid, q.query, q.instruction, {}) for q in queries_outside_test(task, test_qids, leave_out)]
    forbidden = query_texts(task, test_qids)
    leaked = [q for q in log if text_key(q.query) in forbidden]
    if leaked:
        raise DataError(
            f"{len(leaked)} of the {len(log)} logged queries are test queries of task {task.name!r} (e.g. "
            f"{leaked[0].query[:80]!r}); remove them from the log: training on test queries voids the evaluation."
        )
    return list(log)


@dataclass
class TeacherTargets:
    """Distillation targets of every task's unlabeled queries, side by side; the teacher pools of all tasks
    are stacked, and candidates are rows of that stack."""

    inputs: np.ndarray  # (n, in_dim) what the adapter reads for each query (cached)
    strong_queries: np.ndarray  # (n, q_dim) Q(q)
    light_queries: np.ndarray  # (n, d_dim) D(q), as the index's own query side (bare query)
    pool_strong: np.ndarray  # (P, q_dim) Q(d) of the teacher pools
    pool_light: np.ndarray  # (P, d_dim) D(d) of the teacher pools
    top: np.ndarray  # (n, K) each query's top candidates in the index, as pool rows (-1: none)
    exclude: np.ndarray  # (n,) pool row of the query's own document (identical ids), or -1
    task_of: np.ndarray  # (n,) task index
    pool_start: np.ndarray  # (T,) first pool row of each task
    pool_size: np.ndarray  # (T,)
    qids: list[str]
    cost: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.qids)

    def subset(self, items: np.ndarray) -> TeacherTargets:
        """The targets of these queries only (pools unchanged)."""
        return TeacherTargets(self.inputs[items], self.strong_queries[items], self.light_queries[items],
                              self.pool_strong, self.pool_light, self.top[items], self.exclude[items],
                              self.task_of[items], self.pool_start, self.pool_size,
                              [self.qids[i] for i in items], self.cost)


def build_targets(
    tasks: Sequence[Task],
    queries: Sequence[Sequence[Query]],
    *,
    student_side: Any,
    strong_side: Any,
    doc_side: Any,
    settings: TeacherSettings,
    max_docs: int | None,
    split_seed: int,
    seed: int,
    cache_dir: str | os.PathLike | None = None,
    accelerator: Any = None,
) -> TeacherTargets:
    """Embed (through the cache) or read (stored vectors) and assemble the targets of `queries[i]` over
    task i's capped corpus. Sides (`era_adapters.sides`, or encoders): `student_side` gives what the
    adapter reads, `strong_side` is Q as the teacher uses it (queries and pool documents), `doc_side` is
    D, the index (documents and, for the candidates, the queries as doc2doc sees them)."""
    embed = {"cache_dir": cache_dir, "accelerator": accelerator}
    student_side, strong_side, doc_side = as_side(student_side), as_side(strong_side), as_side(doc_side)
    doc_side.require("query", "distillation (each query's candidates come from the index, D(q)·D(d))")
    strong_side.require("doc", "the teacher (Q(q)·Q(d) over the teacher pool)")
    parts: dict[str, list[Any]] = {name: [] for name in ("inputs", "strong", "light", "pool_strong", "pool_light",
                                                         "top", "exclude", "task_of", "qids")}
    pool_start, pool_size, cost, offset = [], [], {}, 0
    for index, (task, task_queries) in enumerate(zip(tasks, queries)):
        if not task_queries:
            continue
        capped = doc_side.prepare([cap_corpus(task, max_docs, seed=split_seed)])[0]
        docs = doc_side.documents(capped, **embed)
        inputs = student_side.queries(capped, task_queries, **embed)
        strong = strong_side.queries(capped, task_queries, **embed)
        light = doc2doc_queries(doc_side, capped, task_queries, embed)  # D(q) as the index's own query side
        own = _own_documents(capped, task_queries)
        top = _top_documents(light, docs, own, settings.candidates)
        pool = teacher_pool(top, len(capped.doc_ids), settings.teacher_docs, seed)
        started = time.perf_counter()
        pool_strong = strong_side.documents(select_docs(capped, pool), **embed)
        cost[task.name] = {"documents_embedded_by_q": int(len(pool)), "seconds": time.perf_counter() - started,
                           "teacher_docs_budget": settings.teacher_docs, "capped_corpus": len(capped.doc_ids),
                           "full_corpus": len(task.doc_ids), "unlabeled_queries": len(task_queries)}
        if len(pool) == len(capped.doc_ids):
            cost[task.name]["note"] = "the budget covers the whole (capped) corpus: the teacher re-indexes it"
            logger.warning("teacher for %s: --teacher-docs %d covers all %d documents, so Q embeds the whole "
                           "corpus (a re-index's cost; the card says so). Lower --teacher-docs to stay below it.",
                           task.name, settings.teacher_docs, len(capped.doc_ids))
        position = np.full(len(capped.doc_ids), -1, dtype=np.int64)
        position[pool] = offset + np.arange(len(pool))
        parts["inputs"].append(inputs)
        parts["strong"].append(strong)
        parts["light"].append(light)
        parts["pool_strong"].append(pool_strong)
        parts["pool_light"].append(docs[pool])
        parts["top"].append(np.where(top >= 0, position[np.maximum(top, 0)], -1))
        parts["exclude"].append(np.where(own >= 0, position[np.maximum(own, 0)], -1))
        parts["task_of"].append(np.full(len(task_queries), index, dtype=np.int64))
        parts["qids"] += [f"{task.name}/{q.qid}" for q in task_queries]
        pool_start.append(offset)
        pool_size.append(len(pool))
        offset += len(pool)
        logger.info("teacher for %s: %d unlabeled queries, %d of %d documents through %s", task.name,
                    len(task_queries), len(pool), len(capped.doc_ids), strong_side.name)
    if not parts["qids"]:
        raise DataError("no unlabeled queries to distil on: every task's queries are test queries (or left out); "
                        "pass a query log with --query-log.")
    stack = {name: np.ascontiguousarray(np.concatenate(values), dtype=np.float32)
             for name, values in parts.items() if name in ("inputs", "strong", "light", "pool_strong", "pool_light")}
    return TeacherTargets(
        stack["inputs"], stack["strong"], stack["light"], stack["pool_strong"], stack["pool_light"],
        np.concatenate(parts["top"]), np.concatenate(parts["exclude"]), np.concatenate(parts["task_of"]),
        np.asarray(pool_start, dtype=np.int64), np.asarray(pool_size, dtype=np.int64), parts["qids"], cost,
    )


def strong_side_of(query_side: Any) -> Any:
    """Q alone, as the teacher uses it, from the side that gives an adapter its input (a fusion adapter's
    input also holds D(q): its strong half is Q)."""
    query_side = as_side(query_side)
    if isinstance(query_side, FusedSide):
        return query_side.parts[0]
    encoder = getattr(query_side, "encoder", None)
    if isinstance(encoder, FusedEncoder):
        return EncoderSide(encoder.strong)
    return query_side


def _own_documents(capped: Task, queries: Sequence[Query]) -> np.ndarray:
    """Row of each query's own document when the task ignores identical ids (ArguAna), else -1."""
    if not capped.ignore_identical_ids:
        return np.full(len(queries), -1, dtype=np.int64)
    row_of = {doc_id: row for row, doc_id in enumerate(capped.doc_ids)}
    return np.array([row_of.get(q.qid, -1) for q in queries], dtype=np.int64)


def _top_documents(light_queries: np.ndarray, docs: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each query's top-k corpus rows in the index D(q)·D(d), its own document left out (-1 padded)."""
    depth = min(k + 1, len(docs))
    _, found = exact_search(light_queries, docs, depth)
    keep = found != own[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    top = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(found, order, 1), -1)
    # k columns even for a corpus smaller than k, so several tasks' candidates stack into one array
    return np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)


def teacher_pool(top: np.ndarray, n_docs: int, budget: int, seed: int) -> np.ndarray:
    """The documents Q embeds (sorted corpus rows): the union of the queries' top candidates, best ranks
    first when it exceeds `budget`, topped up with seeded random others to `budget`."""
    budget = min(budget, n_docs)
    never = np.iinfo(np.int64).max
    best_rank = np.full(n_docs, never)
    for rank in range(top.shape[1]):
        column = top[:, rank]
        column = column[column >= 0]
        best_rank[column] = np.minimum(best_rank[column], rank)
    union = np.flatnonzero(best_rank < never)
    if len(union) >= budget:
        return np.sort(union[np.lexsort((union, best_rank[union]))[:budget]])
    rest = np.setdiff1d(np.arange(n_docs), union)
    extra = np.random.default_rng([_POOL_STREAM, seed]).choice(rest, budget - len(union), replace=False)
    return np.sort(np.concatenate([union, extra]))


def sample_candidates(targets: TeacherTargets, items: np.ndarray, settings: TeacherSettings,
                      rng: np.random.Generator) -> np.ndarray:
    """(b, K + C) pool rows: each query's top candidates plus `random_candidates` random rows of its own
    task's pool; duplicates and the query's own document become -1."""
    top = targets.top[items]
    task = targets.task_of[items]
    random = rng.random((len(items), settings.random_candidates))
    extra = targets.pool_start[task][:, None] + (random * targets.pool_size[task][:, None]).astype(np.int64)
    candidates = np.concatenate([top, extra], axis=1)
    candidates = np.where(candidates == targets.exclude[items][:, None], -1, candidates)
    order = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, 1)
    repeated = np.zeros_like(ranked, dtype=bool)
    repeated[:, 1:] = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)
    np.put_along_axis(candidates, order, np.where(repeated, -1, ranked), 1)
    return candidates


def teacher_scores(targets: TeacherTargets, items: np.ndarray, candidates: np.ndarray,
                   settings: TeacherSettings) -> torch.Tensor:
    """The teacher's scores (before 1/τ_t) of each query's candidates (-1 columns: anything)."""
    rows = np.maximum(candidates, 0)
    strong = np.einsum("bd,bcd->bc", targets.strong_queries[items], targets.pool_strong[rows])
    scores = torch.from_numpy(strong)
    if settings.teacher == "query2query":
        return scores
    light = torch.from_numpy(np.einsum("bd,bcd->bc", targets.light_queries[items], targets.pool_light[rows]))
    return ensemble_scores(scores, light, torch.from_numpy(candidates >= 0), settings.teacher_weight)


def ensemble_scores(strong: torch.Tensor, light: torch.Tensor, mask: torch.Tensor, weight: float) -> torch.Tensor:
    """The ensemble teacher: Q's and D's scores of the same candidates (`mask`: the real ones), each z-scored
    over a query's candidates, mixed with `weight` on Q, and put back on Q's scale."""
    strong_mean, strong_std = _masked_stats(strong, mask)
    light_mean, light_std = _masked_stats(light, mask)
    mixed = weight * (strong - strong_mean) / strong_std + (1 - weight) * (light - light_mean) / light_std
    return mixed * strong_std + strong_mean


def _masked_stats(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = mask.to(scores.dtype)
    count = m.sum(1, keepdim=True).clamp(min=1)
    mean = (scores * m).sum(1, keepdim=True) / count
    std = (((scores - mean) ** 2 * m).sum(1, keepdim=True) / count).sqrt().clamp(min=1e-6)
    return mean, std


@dataclass
class DistillBatch:
    """One step's queries (this process's share), their candidates and the teacher's scores."""

    local_items: torch.Tensor
    candidates: torch.Tensor
    teacher: torch.Tensor
    global_count: int


class Distillation:
    """The distillation loss on the targets: batches of (query, candidates, teacher scores), and the
    loss of a model on one (normalised so that DDP's gradient average is the one-process gradient)."""

    def __init__(self, targets: TeacherTargets, settings: TeacherSettings, device: torch.device, world: int = 1,
                 rank: int = 0) -> None:
        self.targets, self.settings, self.device, self.world, self.rank = targets, settings, device, world, rank
        self.inputs = torch.from_numpy(targets.inputs).to(device)
        self.pool_light = torch.from_numpy(targets.pool_light).to(device)

    def unsharded(self) -> Distillation:
        """The same loss over whole batches, on every process (validation); the device tensors are shared."""
        whole = copy.copy(self)
        whole.world, whole.rank = 1, 0
        return whole

    def batch(self, items: np.ndarray, rng: np.random.Generator) -> DistillBatch:
        """The batch of the global `items` (every process draws the same candidates from the same `rng`)."""
        candidates = sample_candidates(self.targets, items, self.settings, rng)
        teacher = teacher_scores(self.targets, items, candidates, self.settings)
        local = np.arange(self.rank, len(items), self.world)
        return DistillBatch(torch.from_numpy(items[local]).to(self.device),
                            torch.from_numpy(candidates[local]).to(self.device), teacher[local].to(self.device),
                            len(items))

    def loss(self, model: torch.nn.Module, batch: DistillBatch) -> torch.Tensor:
        student = model(self.inputs[batch.local_items])
        rows = batch.candidates.clamp(min=0)
        scores = torch.einsum("bd,bcd->bc", student, self.pool_light[rows])
        return distillation_loss(scores, batch.teacher.to(scores.dtype), batch.candidates >= 0,
                                 student_temperature=self.settings.student_temperature,
                                 teacher_temperature=self.settings.teacher_temperature,
                                 normaliser=batch.global_count / self.world)


def read_log(settings: TeacherSettings) -> list[Query] | None:
    """The query log named by the settings, read and checked (None: none given)."""
    return None if settings.query_log is None else read_query_log(settings.query_log)


def task_unlabeled_queries(tasks: Sequence[Task], *, split_seed: int, test_fraction: float,
                           settings: TeacherSettings, leave_out: Sequence[Sequence[str]] | None = None,
                           ) -> list[list[Query]]:
    """Each task's unlabeled queries (see `unlabeled_queries`), its test part from the evaluation's split."""
    log = read_log(settings)
    out = []
    for index, task in enumerate(tasks):
        split = make_split(task, seed=split_seed, test_fraction=test_fraction)
        out.append(unlabeled_queries(task, split.test_qids, log, leave_out[index] if leave_out else ()))
    return out
