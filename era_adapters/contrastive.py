"""Stage 2's training routine: the contrastive loss over each (query, positive) pair against mined hard
negatives and in-batch negatives, with the alignment regulariser, the L2 pull and, optionally, the
distillation loss on unlabeled queries; DDP-exact, checkpointed, resumable. `era_adapters.adapt` runs
it (the stage: data, start, selection of the epoch, saving).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn

from era_adapters.loop import LoopResult, claim_checkpoint_folder, local_rows, seeded_batches, train, trainable_fingerprint
from era_adapters.losses import alignment_loss, contrastive_loss, l2_to_start, pair_weights
from era_adapters.mining import Negatives
from era_adapters.supervision import VALIDATION_METRIC, AdaptData, validation_score
from era_adapters.teacher import DistillBatch, Distillation

_ALIGN_SAMPLE_STREAM = 6  # numpy SeedSequence stream of the regulariser's per-step text sample
_DISTILL_SAMPLE_STREAM = 8  # and of the distillation loss's unlabeled queries (7: k-fold)


@dataclass
class StepBatch:
    global_rows: torch.Tensor  # the global batch's training queries
    local_rows: torch.Tensor  # this process's share
    align_global: int  # unlabeled texts in the global step (for the normaliser)
    align_local: torch.Tensor | None
    distill: DistillBatch | None = None  # unlabeled queries of the distillation loss


def train_adapter(
    model: nn.Module,
    data: AdaptData,
    settings: Any,
    *,
    accelerator: Accelerator,
    queries: Any,
    checkpoint_dir: Path | None = None,
    validate: bool = True,
    name: str = "adapt",
    distillation: Distillation | None = None,
) -> tuple[LoopResult, Negatives]:
    """Run the contrastive training of `model` (in place; best validation epoch restored; `validate=False`:
    all `settings.epochs`, the last kept); with `distillation`, plus `settings.distill_weight` × its loss on
    a batch of unlabeled queries per step."""
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
        unlabeled = np.random.default_rng([_DISTILL_SAMPLE_STREAM, settings.seed, epoch])
        for group in groups:
            align_global, align_local, distill = 0, None, None
            if use_align:
                sample = torch.from_numpy(generator.choice(n_align, min(n_align, settings.align_batch_size), replace=False))
                align_global, align_local = len(sample), local_rows(sample, accelerator).to(device)
            if distillation is not None:
                count = len(distillation.targets)
                items = np.sort(unlabeled.choice(count, min(count, settings.distill_batch_size), replace=False))
                distill = distillation.batch(items, unlabeled)
            yield StepBatch(group.to(device), local_rows(group, accelerator).to(device), align_global, align_local,
                            distill)

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
            loss = loss + settings.align_weight * alignment_loss(
                aligned, align_targets[batch.align_local], "cosine", normaliser=batch.align_global / world)
        if settings.l2_to_init > 0:  # the same value on every process, so DDP's average leaves it as is
            loss = loss + 0.5 * settings.l2_to_init * l2_to_start(accelerator.unwrap_model(wrapped), start)
        if batch.distill is not None:
            loss = loss + settings.distill_weight * distillation.loss(wrapped, batch.distill)
        return loss

    align_targets = torch.from_numpy(data.align_targets).to(device) if use_align else None

    def validation(model_: nn.Module) -> float:
        model_.eval()
        score = validation_score(data, lambda index, view: queries.validation(model_, index))
        if world > 1:
            score = broadcast_object_list([score])[0]
        return score

    if checkpoint_dir is not None:
        record = _run_record(settings, data, model)
        record["teacher"] = distillation.settings.to_dict() if distillation is not None else None
        claim_checkpoint_folder(checkpoint_dir, record, accelerator)
    result = train(model, batches_for_epoch=batches, loss_fn=loss_fn, validate=validation if validate else None,
                   config=settings.loop_config(), accelerator=accelerator, checkpoint_dir=checkpoint_dir,
                   steps_per_epoch=math.ceil(n_train / settings.batch_size), on_epoch_start=negatives.on_epoch_start,
                   name=name, metric=f"validation {VALIDATION_METRIC}")
    return result, negatives


def _run_record(settings: Any, data: AdaptData, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: settings, data and starting weights."""
    return {
        "settings": settings.to_dict(),
        "tasks": [view.name for view in data.tasks],
        "train_qids": hashlib.sha256(json.dumps(data.train_qids).encode()).hexdigest(),
        "val_qids": hashlib.sha256(json.dumps([v.val_qids for v in data.tasks]).encode()).hexdigest(),
        "docs": [len(view.doc_ids) for view in data.tasks],
        "start": trainable_fingerprint(model),
    }
