"""What stage 2 records in an adapter's `training_metadata` (and so in its model card): the labels used
per role and how they were chosen, where the split came from, how the epoch was chosen and how the
result compares with doc2doc on validation (with any warning), and the recipe with its curves.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from modeling_era import EraConfig
from era_adapters.loop import LoopResult
from era_adapters.supervision import VALIDATION_METRIC, AdaptData


def labels_record(data: AdaptData, label_options: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """The labels actually used, per task and in total (what the card shows)."""
    tasks = {}
    for index, view in enumerate(data.tasks):
        rows = data.train_task == index
        record = dict(view.selection.record)
        record.update(train_queries=int(rows.sum()), train_pairs=int((data.positives[rows] >= 0).sum()),
                      validation_queries=len(view.val_qids))
        if data.validation == "kfold":
            record["validation_from"] = f"{chosen['folds']}-fold cross-validation over the training queries"
        tasks[view.name] = record
    keys = ("train_queries", "train_pairs", "validation_queries", "test_queries")
    return {
        "options": label_options,
        "validation": data.validation,
        "tasks": tasks,
        "total": {key: sum(record[key] for record in tasks.values()) for key in keys},
    }


def recipe_summary(mode: str, config: EraConfig, settings: Any, data: AdaptData, chosen: dict[str, Any],
                   lora: dict[str, Any] | None, labels: dict[str, Any]) -> str:
    """One paragraph: start, loss, negatives, regularisers, optimiser, how the epoch was chosen, labels."""
    start = "the stage-1 (aligned) adapter" if mode == "both" else "a neutral adapter (identity, or seeded random init)"
    mining = f"re-mined every {settings.remine_every} epochs" if settings.remine_every else "mined once"
    regs = []
    if settings.l2_to_init:
        regs.append(f"L2 toward the starting weights (λ={settings.l2_to_init:g})")
    if settings.align_weight:
        regs.append(f"alignment loss on {len(data.align_texts)} unlabeled texts (weight {settings.align_weight:g})")
    total = labels["total"]
    return (
        f"{mode}: {config.adapter_type} adapter from {start}"
        + (f" plus LoRA (r={lora['r']}) on the query backbone" if lora else "")
        + f", trained with InfoNCE (τ={settings.temperature:g}) over all positives, {settings.num_negatives} "
        f"faiss-mined hard negatives ({mining})" + (" and in-batch negatives" if settings.in_batch_negatives else "")
        + (f"; {' and '.join(regs)}" if regs else "")
        + f"; AdamW lr {settings.lr:g}, epoch chosen by {chosen['how']} (best epoch {chosen['best_epoch']}); "
        f"{total['train_queries']} training queries ({total['train_pairs']} pairs) + {total['validation_queries']} "
        f"validation queries"
    )


def stage_metadata(args: Any, settings: Any, data: AdaptData, chosen: dict[str, Any], result: LoopResult,
                   negatives: Any, *, config: EraConfig, start: dict[str, Any], lora: dict[str, Any] | None,
                   align_seed: int, init_metadata: dict[str, Any], warnings: list[str], processes: int,
                   ) -> dict[str, Any]:
    """The `training_metadata` of a stage-2 adapter. `chosen`: how the epoch was chosen (`best_epoch`,
    `best_validation`, `curve`, `doc2doc_validation`, `how`, `queries`, and for k-fold `folds`, `fold_curves`)."""
    labels = labels_record(data, args.label_options(), chosen)
    start = dict(start)
    metadata: dict[str, Any] = {
        "mode": args.mode,
        "prompt": start.pop("prompt"),
        "label_budget": args.label_budget,
        "labels": labels,
        "tasks": [view.name for view in data.tasks],
        "seeds": {"split": args.split_seed, "train": settings.seed, "alignment_sample": align_seed},
        "max_docs": args.max_docs,
        "arguments": args.to_dict(),
        "split": {
            view.name: {
                "protocol": view.split.protocol,
                "source": view.split.source,
                "n_labeled": view.split.n_labeled,
                "test_fraction": view.split.test_fraction,
                "train": [qid for qid, t in zip(data.train_qids, data.train_task) if t == index],
                "val": view.val_qids,
                "n_test": len(view.split.test_qids),
                "test_sha256": hashlib.sha256(json.dumps(sorted(view.split.test_qids)).encode()).hexdigest(),
            }
            for index, view in enumerate(data.tasks)
        },
        "validation": {
            "strategy": data.validation,
            "how": chosen["how"],
            "queries": chosen["queries"],
            "best_epoch": chosen["best_epoch"],
            "best": chosen["best_validation"],
            "start": chosen["curve"][0]["validation"] if chosen["curve"] else None,
            "doc2doc": chosen["doc2doc_validation"],
            "warnings": warnings,
            **({"folds": chosen["folds"], "fold_curves": chosen["fold_curves"]} if "folds" in chosen else {}),
        },
        "recipe": {
            "summary": recipe_summary(args.mode, config, settings, data, chosen, lora, labels),
            "stage": "supervised adaptation (era_adapters.adapt)",
            "start": start,
            "hyperparameters": settings.to_dict(),
            "lora": lora,
            "validation_metric": VALIDATION_METRIC,
            "curve": chosen["curve"],
            "final_training_curve": result.history if data.validation == "kfold" else None,
            "best_epoch": chosen["best_epoch"],
            "best_validation": chosen["best_validation"],
            "mining_rounds": negatives.rounds if negatives is not None else [],
            "resumed_from_epoch": result.resumed_from_epoch,
            "processes": processes,
        },
    }
    if args.mode == "both":
        metadata["alignment"] = init_metadata.get("alignment", {})
        metadata["alignment_recipe"] = init_metadata.get("recipe", {})
    return metadata
