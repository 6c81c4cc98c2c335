"""Distillation, with no labels: train the adapter to rank documents as the strong encoder does, on
unlabeled queries (a query log, or the tasks' queries outside their test part, labels ignored).

    accelerate launch training/distill.py --init OUT_ALIGN --data DIR [--tasks ...] [--query-log FILE] \\
        --output OUT

Stage 1 matches vectors point by point, A(Q(t)) ≈ D(t); retrieval needs the strong model's ranking.
The teacher (`era_adapters.teacher`) ranks each query's candidates with Q on both sides (or with the
ensemble of Q→Q and the index's own D→D), over a budgeted pool of at most `--teacher-docs` documents
per corpus; the student, normalize(A(Q(q)))·D(d) (any family, fusion included), learns that ranking
through the listwise KL loss (`era_adapters.losses.distillation_loss`). A seeded share of the unlabeled
queries is held out: the epoch with the lowest KL on them is kept (no labels anywhere). Stage 2 can
start from the distilled adapter and keep the same loss on its unlabeled queries (`--distill-weight`).

Everything the other stages have: the embedding cache (the teacher's Q(d) lands in it), DDP under
Accelerate equal to one process, a checkpoint after every epoch and resume after a kill, and the
teacher's cost recorded in the adapter's metadata and card.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from modeling_era import EraAdapter
from era_adapters.arguments import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, DataArguments, Range, Settings,
                                    VectorArguments, option, split_options)
from era_adapters.artifacts import adapter_doc_side, adapter_query_side, save_query_encoder
from era_adapters.inputs import describe, given_tasks, stage_tasks
from era_adapters.loop import LoopConfig, checkpoint_folder, claim_checkpoint_folder, seeded_batches, train, \
    trainable_fingerprint
from era_adapters.sides import query_side_from
from era_adapters.teacher import Distillation, TeacherSettings, build_targets, strong_side_of, task_unlabeled_queries

logger = logging.getLogger(__name__)
_HELD_OUT_STREAM, _CANDIDATE_STREAM = 13, 14  # numpy SeedSequence streams (teacher pool: 11)


@dataclass(kw_only=True)
class DistillArguments(VectorArguments, DataArguments):
    """What distillation runs on and where its adapter goes."""

    init: str = option(help="the adapter to start from: a stage-1 folder (training/align.py --output)")
    output: str = option(help="folder for the distilled EraQueryEncoder")
    split_seed: int = option(0, help="seed of the split (its test part never enters) and the corpus cap, as "
                                     "evaluate's", valid=NON_NEGATIVE)
    max_docs: int | None = option(None, help="cap each corpus exactly as training/evaluate.py does",
                                  valid=AT_LEAST_ONE)
    embed_batch_size: int = option(32, help="texts per batch when embedding", valid=AT_LEAST_ONE)


@dataclass(kw_only=True)
class DistillSettings(Settings):
    """The optimisation (recorded in the metadata; a resumed run must match it)."""

    epochs: int = option(30, help="most training epochs", valid=AT_LEAST_ONE)
    lr: float = option(3e-4, help="AdamW learning rate (chosen by cross-validation over non-test queries: "
                                   "docs/method.md)", valid=NON_NEGATIVE)
    weight_decay: float = option(0.0, help="AdamW's decay toward zero", valid=NON_NEGATIVE)
    batch_size: int = option(64, help="unlabeled queries per global batch", valid=AT_LEAST_ONE)
    patience: int = option(5, help="epochs without a lower held-out KL before stopping", valid=AT_LEAST_ONE)
    held_out: float = option(0.2, help="share of the unlabeled queries kept aside to choose the epoch",
                             valid=Range(0, 1, open_high=True))
    max_grad_norm: float | None = option(1.0, help="gradient clipping norm (None: off)", valid=POSITIVE)
    seed: int = option(0, help="seed of the batches, the held-out queries, the teacher pool and the candidates",
                       valid=NON_NEGATIVE)

    def loop_config(self) -> LoopConfig:
        return LoopConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, patience=self.patience,
                          seed=self.seed, max_grad_norm=self.max_grad_norm)


def distill(data: Any = None, *, accelerator: Accelerator | None = None, **options: Any) -> EraAdapter:
    """Run distillation from Python; returns the distilled adapter (also saved to `output`). `data` as for
    `align` / `adapt` (a folder, Hub task names or `Task`s); `init` may be the `EraAdapter` that `align`
    returned. `options` are the fields of `DistillArguments`, `DistillSettings` and `TeacherSettings`."""
    tasks = given_tasks(data)
    init_model = options.get("init") if isinstance(options.get("init"), EraAdapter) else None
    if init_model is not None:
        options["init"] = f"an in-memory EraAdapter ({init_model.config.training_metadata.get('mode', 'untrained')})"
    run, loop, teacher = split_options(options, DistillArguments, DistillSettings, TeacherSettings)
    args = DistillArguments(data=describe(tasks) if tasks is not None else data, **run)
    return run_distillation(args, DistillSettings(**loop), TeacherSettings(**teacher), accelerator=accelerator,
                            tasks=tasks, init_model=init_model)


def held_out_split(count: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (training, held-out) item indices; no held-out part when there are too few queries to spare."""
    n_held = round(share * count)
    if n_held < 2 or count - n_held < 2:
        return np.arange(count), np.arange(0)
    order = np.random.default_rng([_HELD_OUT_STREAM, seed]).permutation(count)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def run_distillation(args: DistillArguments, settings: DistillSettings | None = None,
                     teacher: TeacherSettings | None = None, accelerator: Accelerator | None = None,
                     tasks: list | None = None, init_model: EraAdapter | None = None) -> EraAdapter:
    """Distil and save the query encoder to `args.output`; returns the trained adapter."""
    settings, teacher = settings or DistillSettings(), teacher or TeacherSettings()
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(settings.seed)
    model = copy.deepcopy(init_model) if init_model is not None else EraAdapter.from_pretrained(args.init)
    config = model.config
    init_metadata = dict(config.training_metadata)
    loaded = stage_tasks(args, tasks)
    queries = task_unlabeled_queries(loaded, split_seed=args.split_seed, test_fraction=args.test_fraction,
                                     settings=teacher)
    encoder = {"cache_dir": args.cache_dir, "batch_size": args.embed_batch_size}
    doc_side = adapter_doc_side(model, args, where=str(args.init), **encoder)
    query_side = adapter_query_side(config, stored_queries=query_side_from(args), doc_side=doc_side, **encoder)
    targets = build_targets(loaded, queries, student_side=query_side, strong_side=strong_side_of(query_side),
                            doc_side=doc_side, settings=teacher, max_docs=args.max_docs, split_seed=args.split_seed,
                            seed=settings.seed, cache_dir=args.cache_dir, accelerator=accelerator)
    train_items, held_items = held_out_split(len(targets), settings.held_out, settings.seed)
    device, world = accelerator.device, accelerator.num_processes
    distillation = Distillation(targets, teacher, device, world, accelerator.process_index)
    whole = distillation.unsharded()  # validation: every process scores all held-out queries
    held = whole.batch(held_items if len(held_items) else train_items,
                       np.random.default_rng([_CANDIDATE_STREAM, settings.seed]))
    model = model.to(device)

    def batches(epoch: int):
        rng = np.random.default_rng([_CANDIDATE_STREAM, settings.seed, epoch])
        for group in seeded_batches(len(train_items), settings.batch_size, settings.seed, epoch):
            yield distillation.batch(train_items[group.numpy()], rng)

    @torch.no_grad()
    def validate(net: torch.nn.Module) -> float:
        net.eval()
        score = -float(whole.loss(net, held))  # the held-out KL, lower is better
        return broadcast_object_list([score])[0] if world > 1 else score

    folder = checkpoint_folder(args.output)
    record = {"settings": settings.to_dict(), "teacher": teacher.to_dict(), "start": trainable_fingerprint(model),
              "queries": hashlib.sha256(json.dumps(targets.qids).encode()).hexdigest()}
    claim_checkpoint_folder(folder, record, accelerator)
    result = train(model, batches_for_epoch=batches, loss_fn=distillation.loss, validate=validate,
                   config=settings.loop_config(), accelerator=accelerator, checkpoint_dir=folder,
                   steps_per_epoch=math.ceil(len(train_items) / settings.batch_size), name="distill",
                   metric="held-out KL (negated)")
    model = model.cpu().eval()
    config.training_metadata = _metadata(args, settings, teacher, targets, train_items, held_items, result,
                                         init_metadata, loaded, processes=world)
    if accelerator.is_main_process:
        save_query_encoder(model, args.output)
        shutil.rmtree(folder, ignore_errors=True)
        start, best = -result.history[0]["validation"], -result.best_score
        logger.info("distill: saved %s; %d unlabeled queries (%d held out), held-out KL %.4f -> %.4f at epoch %d",
                    args.output, len(targets), len(held_items), start, best, result.best_epoch)
    accelerator.wait_for_everyone()
    return model


def _metadata(args: DistillArguments, settings: DistillSettings, teacher: TeacherSettings, targets: Any,
              train_items: np.ndarray, held_items: np.ndarray, result: Any, init_metadata: dict[str, Any],
              tasks: list, processes: int) -> dict[str, Any]:
    source = f"query log {teacher.query_log}" if teacher.query_log else \
        "each task's queries outside its test part (labels ignored)"
    documents = sum(cost["documents_embedded_by_q"] for cost in targets.cost.values())
    teacher_text = ("Q(q)·Q(d), the re-index's ranking" if teacher.teacher == "query2query" else
                    f"the ensemble of Q(q)·Q(d) (weight {teacher.teacher_weight:g}) and the index's D(q)·D(d)")
    summary = (f"distill: {init_metadata.get('recipe', {}).get('family', 'the')} adapter from "
               f"{init_metadata.get('mode', 'its start')}, trained to rank like {teacher_text} over each query's "
               f"{teacher.candidates} top index documents + {teacher.random_candidates} random pool documents "
               f"(listwise KL, τ_teacher {teacher.teacher_temperature:g}, τ_student {teacher.student_temperature:g}); "
               f"{len(train_items)} unlabeled queries from {source}, {len(held_items)} held out to choose the epoch "
               f"(best epoch {result.best_epoch}); Q embedded {documents} documents (at most "
               f"{teacher.teacher_docs} per corpus); no labels")
    return {
        "mode": "distill",
        "prompt": init_metadata.get("prompt"),
        "label_budget": None,
        "tasks": [task.name for task in tasks],
        "seeds": {"split": args.split_seed, "train": settings.seed, "teacher_pool": settings.seed},
        "max_docs": args.max_docs,
        "arguments": args.to_dict(),
        "distillation": {
            "teacher": teacher.to_dict(),
            "queries": {"source": source, "unlabeled": len(targets), "train": int(len(train_items)),
                        "held_out": int(len(held_items))},
            "teacher_cost": targets.cost,
        },
        "recipe": {
            "summary": summary,
            "stage": "distillation (era_adapters.distill)",
            "start": {"init": args.init, "init_mode": init_metadata.get("mode"),
                      "init_recipe": init_metadata.get("recipe", {}).get("summary")},
            "hyperparameters": settings.to_dict(),
            "validation_metric": "held-out KL to the teacher (negated: higher is better)",
            "curve": result.history,
            "best_epoch": result.best_epoch,
            "best_validation": result.best_score,
            "resumed_from_epoch": result.resumed_from_epoch,
            "processes": processes,
        },
        "alignment": init_metadata.get("alignment", {}),
        "alignment_recipe": init_metadata.get("recipe", {}),
    }
