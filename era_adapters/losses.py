"""Training losses of the stages, one implementation each: the contrastive InfoNCE loss of stage 2,
the alignment loss A(Q(t)) ≈ D(t) (stage 1's gradient fits and stage 2's regulariser), the L2 pull
toward the starting weights, and the listwise distillation loss (era_adapters.distill, and stage 2
with unlabeled queries).

Every loss is a sum over this process's rows divided by a `normaliser` (default: the rows' count, a
mean). Under DDP the stages pass the global row count divided by the world size, so that DDP's
gradient average equals the gradient of one process on the whole global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ALIGNMENT_LOSSES = ("cosine", "mse")


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


def alignment_loss(predicted: torch.Tensor, target: torch.Tensor, kind: str = "cosine",
                   normaliser: float | None = None) -> torch.Tensor:
    """A(Q(t)) ≈ D(t): per row 1 − cosine, or the mean squared error over dimensions; summed over rows
    and divided by `normaliser` (default: the number of rows)."""
    if kind == "cosine":
        per_row = 1 - F.cosine_similarity(predicted, target, dim=-1)
    elif kind == "mse":
        per_row = ((predicted - target) ** 2).mean(-1)
    else:
        raise ValueError(f"alignment loss {kind!r} is not supported; choose one of {', '.join(ALIGNMENT_LOSSES)}.")
    return per_row.sum() / (normaliser if normaliser is not None else max(1, len(per_row)))


def l2_to_start(model: nn.Module, start: dict[str, torch.Tensor]) -> torch.Tensor:
    """||θ − θ_start||² over the parameters named in `start` (the trainable ones when training began)."""
    return sum(((parameter - start[name]) ** 2).sum() for name, parameter in model.named_parameters() if name in start)


def distillation_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, mask: torch.Tensor, *,
                      student_temperature: float, teacher_temperature: float,
                      normaliser: float | None = None) -> torch.Tensor:
    """Listwise distillation: per query, KL(softmax(teacher/τ_t) ‖ softmax(student/τ_s)) over its
    candidates (`mask`: which columns are real); summed over queries and divided by `normaliser`
    (default: the number of queries). A query without candidates contributes 0."""
    count = len(mask)
    has_candidates = mask.any(1)  # an empty row would be all -inf: NaN in the softmax and its gradient
    student_scores, teacher_scores, mask = student_scores[has_candidates], teacher_scores[has_candidates], \
        mask[has_candidates]
    log_student = torch.log_softmax((student_scores / student_temperature).masked_fill(~mask, float("-inf")), 1)
    log_teacher = torch.log_softmax((teacher_scores / teacher_temperature).masked_fill(~mask, float("-inf")), 1)
    per_query = (log_teacher.exp() * (log_teacher - log_student)).masked_fill(~mask, 0.0).sum(1)
    return per_query.sum() / (normaliser if normaliser is not None else max(1, count))
