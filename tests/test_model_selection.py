"""era_adapters.model_selection: the k-fold assignment and the verdict a stage-2 result gets."""
from __future__ import annotations

import numpy as np

from era_adapters.model_selection import fold_of_rows, verdict


def test_folds_are_seeded_balanced_and_cover_every_row():
    folds = fold_of_rows(23, seed=4)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 5, 5, 5]  # 5 folds, sizes differing by at most one
    assert np.array_equal(folds, fold_of_rows(23, seed=4)) and not np.array_equal(folds, fold_of_rows(23, seed=5))
    assert sorted(set(fold_of_rows(3, seed=0).tolist())) == [0, 1, 2]  # never more folds than rows


def test_verdict_warns_when_stage_two_kept_its_start_or_ends_below_the_index():
    assert verdict(7, 0.61, 0.55, "the 40 validation queries") == []
    kept, below = verdict(0, 0.5246, 0.5554, "the 40 validation queries")
    assert kept.startswith("stage 2 kept epoch 0: no training epoch beat the starting adapter on the 40 validation "
                           "queries (nDCG@10 0.5246), so the saved adapter equals its start.")
    assert below.startswith("the adapter is below doc2doc (the index as it is, D on both sides) on the 40 "
                            "validation queries: nDCG@10 0.5246 vs 0.5554")
    assert verdict(3, 0.40, 0.45, "x")[0].startswith("the adapter is below doc2doc")
    assert verdict(3, 0.40, float("nan"), "x") == []  # nothing to compare with
