"""How stage 2 chooses its epoch, and what it says about the result.

* **holdout**: early stopping on the validation queries (a dev pool, or labels held out of the training
  pool); the best epoch's weights are kept (`era_adapters.loop.train`).
* **kfold**: with too few labels to hold out (`era_adapters.splits.resolve_validation`), k-fold
  cross-validation over the training queries chooses the number of epochs: each fold trains a fresh
  copy on the other folds for every epoch, the mean validation curve over the folds picks the epoch
  (epoch 0, the start, included), and the final adapter trains on all the queries for that many epochs.

Either way the result is compared with doc2doc (the index as it is) on the same validation queries;
`verdict` returns the warnings a run must print and record when stage 2 kept its start (epoch 0) or
ends below the index, and `BelowIndexError` is what `--fail-below-index` raises then.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from era_adapters.loop import LoopResult
from era_adapters.splits import KFOLD_FOLDS
from era_adapters.supervision import AdaptData, doc2doc_validation, fold_data

logger = logging.getLogger(__name__)
_KFOLD_STREAM = 7  # numpy SeedSequence stream of the fold assignment (splits: 0-2, data: 3, align: 5, adapt: 6)


class BelowIndexError(RuntimeError):
    """Stage 2 kept its starting adapter or ended below doc2doc on validation (`--fail-below-index`)."""


def fold_of_rows(count: int, seed: int, folds: int = KFOLD_FOLDS) -> np.ndarray:
    """Each training row's fold (seeded, sizes differing by at most one); min(folds, count) folds."""
    order = np.random.default_rng([_KFOLD_STREAM, seed]).permutation(count)
    assignment = np.empty(count, dtype=np.int64)
    assignment[order] = np.arange(count) % min(folds, count)
    return assignment


def cross_validate(data: AdaptData, run_fold: Callable[[AdaptData, str], LoopResult], seed: int,
                   folds: int = KFOLD_FOLDS) -> dict[str, Any]:
    """Run every fold (`run_fold(fold data, name)` trains a fresh copy for all epochs and returns its
    curve); return the mean curve, the epoch it picks and doc2doc on the same folds."""
    assignment = fold_of_rows(len(data.train_qids), seed, folds)
    count = int(assignment.max()) + 1
    curves, doc2doc = [], []
    for fold in range(count):
        held = np.flatnonzero(assignment == fold)
        logger.info("cross-validation fold %d/%d: %d training queries, %d held out", fold + 1, count,
                    len(data.train_qids) - len(held), len(held))
        fold_set = fold_data(data, held)
        result = run_fold(fold_set, f"adapt fold {fold + 1}/{count}")
        curves.append([entry["validation"] for entry in result.history])
        doc2doc.append(doc2doc_validation(fold_set))
    mean = np.mean(np.asarray(curves, dtype=np.float64), axis=0)
    best = int(np.argmax(mean))  # the first best: fewer epochs on a tie, epoch 0 (the start) included
    return {
        "folds": count,
        "seed": seed,
        "curve": [{"epoch": epoch, "validation": float(value)} for epoch, value in enumerate(mean)],
        "fold_curves": curves,
        "best_epoch": best,
        "best_validation": float(mean[best]),
        "doc2doc_validation": float(np.mean(doc2doc)),
        "queries": len(data.train_qids),
        "how": f"{count}-fold cross-validation over the {len(data.train_qids)} training queries",
        "on": f"the {count} cross-validation folds of the {len(data.train_qids)} training queries",
    }


def verdict(best_epoch: int, best_validation: float, doc2doc: float, on: str) -> list[str]:
    """The warnings a stage-2 result deserves (empty when it beat both its start and doc2doc); `on`: the
    validation queries, in words (e.g. "40 validation queries")."""
    warnings = []
    if best_epoch == 0:
        warnings.append(
            f"stage 2 kept epoch 0: no training epoch beat the starting adapter on {on} (nDCG@10 "
            f"{best_validation:.4f}), so the saved adapter equals its start. More labels, another --lr or --epochs "
            f"may help."
        )
    if np.isfinite(doc2doc) and best_validation < doc2doc:
        warnings.append(
            f"the adapter is below doc2doc (the index as it is, D on both sides) on {on}: nDCG@10 "
            f"{best_validation:.4f} vs {doc2doc:.4f}; serving the index alone is better there. Check it on your "
            f"test queries (era-evaluate) before using it."
        )
    return warnings
