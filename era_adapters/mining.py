"""Hard negatives for stage 2: the best-scoring documents of each training query that are not its
positives, found by exact search over the frozen index with the current adapter, and re-mined as the
adapter changes (`Negatives`, which persists each round so that a resumed run mines nothing twice).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn

from modeling_era.modeling_era import atomic_path
from era_adapters.search import exact_search

NEGATIVES_FILE = "negatives-epoch{epoch}.npy"


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


class Negatives:
    """The hard negatives of the current mining round; persisted so that a resume re-uses them."""

    def __init__(self, settings: Any, data: Any, queries: Any, accelerator: Accelerator, folder: Path | None) -> None:
        """`settings`: num_negatives, remine_every, near_duplicate_ratio, mine_depth (stage 2's
        `AdaptSettings`); `data`: the training queries' rows (`supervision.AdaptData`); `queries`: what
        embeds them with the current model (`all_train`)."""
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
            with atomic_path(path) as temporary, open(temporary, "wb") as handle:
                np.save(handle, rows)
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
