"""The training losses: InfoNCE against a hand computation, in-batch masking, the alignment loss."""
from __future__ import annotations

import math

import pytest
import torch

from era_adapters.losses import alignment_loss, contrastive_loss, in_batch_mask, pair_weights


DOCS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
POSITIVES = torch.tensor([[0, -1], [1, 3]])  # query 1 has two positives
NEGATIVES = torch.tensor([[2, -1], [4, 2]])
POOL = torch.tensor([0, 1, 3])  # the batch's positives


def nll(positive: float, others: list[float], tau: float) -> float:
    return -math.log(math.exp(positive / tau) / (math.exp(positive / tau) + sum(math.exp(s / tau) for s in others)))


def test_loss_equals_a_hand_computation():
    tau = 0.5
    # Query 0, positive d0 (score 1): hard negative d2 (0.6); in-batch d1 (0), d3 (0.8); d0 is its own.
    pair_00 = nll(1.0, [0.6, 0.0, 0.8], tau)
    # Query 1, positives d1 (1) and d3 (0.6): hard negatives d4 (0), d2 (0.8); in-batch d0 (0) only.
    pair_11 = nll(1.0, [0.0, 0.8, 0.0], tau)
    pair_13 = nll(0.6, [0.0, 0.8, 0.0], tau)
    uniform = contrastive_loss(QUERIES, DOCS, POSITIVES, NEGATIVES, POOL, pair_weights(POSITIVES), temperature=tau)
    assert uniform.item() == pytest.approx((pair_00 + 0.5 * pair_11 + 0.5 * pair_13) / 2, rel=1e-6)
    grades = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    graded = contrastive_loss(QUERIES, DOCS, POSITIVES, NEGATIVES, POOL, pair_weights(POSITIVES, grades),
                              temperature=tau)
    assert graded.item() == pytest.approx((pair_00 + 2 / 3 * pair_11 + 1 / 3 * pair_13) / 2, rel=1e-6)
    # Without in-batch negatives only the hard ones remain; the normaliser divides the weighted sum.
    alone = contrastive_loss(QUERIES, DOCS, POSITIVES, NEGATIVES, None, pair_weights(POSITIVES), temperature=tau,
                             normaliser=4.0)
    expected = (nll(1.0, [0.6], tau) + 0.5 * nll(1.0, [0.0, 0.8], tau) + 0.5 * nll(0.6, [0.0, 0.8], tau)) / 4
    assert alone.item() == pytest.approx(expected, rel=1e-6)


def test_in_batch_masking_never_uses_a_querys_own_positive():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        positives = torch.randint(0, 12, (6, 4), generator=generator)
        positives[torch.rand(6, 4, generator=generator) < 0.4] = -1
        positives[:, 0] = torch.randint(0, 12, (6,), generator=generator)  # at least one each
        negatives = torch.randint(-1, 12, (6, 3), generator=generator)
        pool = torch.unique(positives[positives >= 0])
        allowed = in_batch_mask(positives, negatives, pool)
        for i in range(6):
            own = set(positives[i][positives[i] >= 0].tolist())
            used = set(pool[allowed[i]].tolist())
            assert not used & own
            assert not used & set(negatives[i].tolist())  # nor counted twice
            assert used == set(pool.tolist()) - own - set(negatives[i].tolist())
    # Behaviour: a document shared as a positive by both queries never acts as a negative of either,
    # so moving it in space changes each pair's loss only through its own positive term.
    positives = torch.tensor([[0, -1], [0, 1]])
    pool = torch.tensor([0, 1])
    none = torch.full((2, 0), -1, dtype=torch.long)
    loss = contrastive_loss(QUERIES, DOCS, positives, none, pool, pair_weights(positives), temperature=0.5)
    by_hand = (nll(1.0, [0.0], 0.5) + 0.5 * nll(0.0, [], 0.5) + 0.5 * nll(1.0, [], 0.5)) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_alignment_loss_is_one_minus_cosine_or_mse_over_the_normaliser():
    predicted = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert alignment_loss(predicted, target).item() == pytest.approx((0.0 + 1.0) / 2)
    assert alignment_loss(predicted, target, normaliser=4).item() == pytest.approx(1.0 / 4)
    assert alignment_loss(predicted, target, "mse").item() == pytest.approx((0.0 + (1 + 4) / 2) / 2)
    with pytest.raises(ValueError, match="cosine, mse"):
        alignment_loss(predicted, target, "l1")
