"""Hard-negative mining: positives and near-duplicates skipped, brute force matched, depth grows as needed."""
from __future__ import annotations

import math

import numpy as np

from era_adapters.mining import mine_hard_negatives



def test_mined_negatives_skip_positives_and_near_duplicates():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    scores = [0.8, 0.8, 0.78, 0.9, 0.75, 0.5, 0.3, 0.2]  # d0 positive, d1 its duplicate, d2/d3 within 5%
    docs = np.array([[s, math.sqrt(1 - s * s)] for s in scores], dtype=np.float32)
    mined = mine_hard_negatives(query, docs, np.array([[0]]), 3)
    assert mined.tolist() == [[4, 5, 6]]
    # With a ratio of 1 only scores at or above the positive's count as duplicates: d2 (0.78) comes back.
    assert mine_hard_negatives(query, docs, np.array([[0]]), 2, near_duplicate_ratio=1.0).tolist() == [[2, 4]]
    # Excluded rows (e.g. the query's own document) are skipped as well; too few candidates leave -1.
    assert mine_hard_negatives(query, docs, np.array([[0]]), 5, excluded=np.array([[5]])).tolist() == [[4, 6, 7, -1, -1]]


def test_mining_matches_brute_force_and_deepens_when_needed():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(25, 8)).astype(np.float32)
    positives = np.full((25, 40), -1)
    for i in range(25):  # many positives among the top documents: the first, shallow search runs short
        top = np.argsort(-(docs @ queries[i]))
        positives[i, : 5 + i] = rng.choice(top[:60], size=5 + i, replace=False)
    mined = mine_hard_negatives(queries, docs, positives, 10, max_depth=300)
    for i in range(25):
        scores = docs @ queries[i]
        own = positives[i][positives[i] >= 0]
        weakest = scores[own].min()
        cut = weakest - 0.05 * abs(weakest)
        allowed = [j for j in np.argsort(-scores, kind="stable") if j not in set(own) and scores[j] < cut]
        assert mined[i].tolist() == allowed[:10]
        assert not set(mined[i].tolist()) & set(own.tolist())
