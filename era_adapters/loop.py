"""The gradient-training loop shared by alignment (stage 1) and adaptation (stage 2).

AdamW with linear warmup (in steps), a seeded data order, early stopping on a validation score with
the best weights restored, a checkpoint after every epoch, and resume after a kill. Runs under
Accelerate: one process on a CPU, DDP over many GPUs or nodes.

Checkpoints live beside a stage's output (`checkpoint_folder`); `claim_checkpoint_folder` ties the
folder to one run (its settings, data and starting weights), so a resume never mixes two runs.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from accelerate import Accelerator

from modeling_era.modeling_era import atomic_path, atomic_write

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
RUN_RECORD_FILE = "run.json"


@dataclass
class LoopConfig:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    patience: int = 3  # epochs without a better validation score before stopping
    seed: int = 0
    max_grad_norm: float | None = 1.0


@dataclass
class LoopResult:
    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int | None = None


def seeded_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch's global batches of item indices: a permutation seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_items, generator=generator)
    return list(order.split(batch_size))


def local_rows(batch: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """This process's share of a global batch (rank::world), so DDP sees the same data as one process."""
    return batch[accelerator.process_index :: accelerator.num_processes]


def train(
    model: torch.nn.Module,
    *,
    batches_for_epoch: Callable[[int], Iterable[Any]],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    validate: Callable[[torch.nn.Module], float] | None,
    config: LoopConfig,
    accelerator: Accelerator,
    checkpoint_dir: str | os.PathLike | None = None,
    steps_per_epoch: int | None = None,
    on_epoch_start: Callable[[torch.nn.Module, int], None] | None = None,
    name: str = "train",
    metric: str = "validation",
) -> LoopResult:
    """Train `model` in place; on return it holds the weights of the best validation epoch.

    `validate` returns a score where higher is better (e.g. nDCG@10, or minus a loss); None: no
    validation, all `config.epochs` run and the last weights are kept. With a `checkpoint_dir`, every
    epoch ends with an atomic checkpoint; calling `train` again with the same directory resumes after
    the last finished epoch. Each epoch logs one line (`name`, train loss, `metric`, best so far).
    """
    validated = validate is not None
    if not validated:  # a fixed number of epochs (e.g. chosen by cross-validation): the last one is kept
        config = dataclasses.replace(config, patience=config.epochs + 1)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    total_steps = max(1, (steps_per_epoch or 1) * config.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_linear(config.warmup_steps, total_steps))
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    state = {"epoch": 0, "best_score": float("-inf"), "best_epoch": -1, "bad_epochs": 0, "history": []}
    best_weights = _copy_state(model)
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    resumed = None
    if path is not None and path.is_file():
        state, best_weights = _load_checkpoint(path, model, optimizer, scheduler, config)
        resumed = state["epoch"]
    if state["epoch"] == 0:
        state["best_epoch"] = 0
        if validated:
            state["best_score"] = validate(model)  # the starting point counts: training must beat it
            state["history"].append({"epoch": 0, "validation": state["best_score"]})
            logger.info("%s epoch 0 (start): %s %.4f", name, metric, state["best_score"])
    while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"] + 1
        if on_epoch_start is not None:
            on_epoch_start(model, epoch)
        wrapped.train()
        losses = []
        for batch in batches_for_epoch(epoch):
            loss = loss_fn(wrapped, batch)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(wrapped.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach().float().item())
        wrapped.eval()
        entry = {"epoch": epoch, "loss": sum(losses) / max(1, len(losses))}
        if validated:
            entry["validation"] = score = validate(model)
        state["history"].append(entry)
        if not validated or score > state["best_score"]:
            state.update(best_score=entry.get("validation", float("nan")), best_epoch=epoch, bad_epochs=0)
            best_weights = _copy_state(model)
        else:
            state["bad_epochs"] += 1
        _log_epoch(name, metric, epoch, config.epochs, state)
        state["epoch"] = epoch
        if path is not None and accelerator.is_main_process:
            _save_checkpoint(path, model, optimizer, scheduler, state, best_weights, config)
        accelerator.wait_for_everyone()
    model.load_state_dict(best_weights)
    return LoopResult(state["best_epoch"], state["best_score"], state["history"], resumed)


def _log_epoch(name: str, metric: str, epoch: int, epochs: int, state: dict[str, Any]) -> None:
    entry = state["history"][-1]
    line = f"{name} epoch {epoch}/{epochs}: train loss {entry['loss']:.4f}"
    if "validation" in entry:
        line += (f", {metric} {entry['validation']:.4f} (best {state['best_score']:.4f} at epoch "
                 f"{state['best_epoch']})")
    logger.info(line)


def _warmup_then_linear(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _save_checkpoint(path, model, optimizer, scheduler, state, best_weights, config) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "best_weights": best_weights,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": json.dumps(state),
        "config": json.dumps(asdict(config)),
    }
    with atomic_path(path) as temporary:  # a kill mid-write leaves the previous checkpoint intact
        torch.save(payload, temporary)


def _load_checkpoint(path, model, optimizer, scheduler, config):
    payload = torch.load(path, map_location="cpu", weights_only=True)  # our own file, still no pickle
    saved = json.loads(payload["config"])
    if saved != asdict(config):
        raise ValueError(
            f"{path} was written by a run with other settings ({saved}); use a new output folder "
            "or delete the checkpoint to start over."
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return json.loads(payload["state"]), copy.deepcopy(payload["best_weights"])


def checkpoint_folder(output: str | os.PathLike) -> Path:
    """Where a stage keeps its per-epoch checkpoints: beside its output (a hidden folder), removed when done."""
    output = Path(output)
    return output.parent / f".{output.name}.checkpoints"


def trainable_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of the trainable weights (what a run starts from; frozen parts are named by the config)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.named_parameters()):
        if tensor.requires_grad:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def claim_checkpoint_folder(folder: Path, record: dict[str, Any], accelerator: Accelerator) -> None:
    """Tie `folder` to the run described by `record` (settings, data, starting weights): a checkpoint of
    another run is refused, with the fields that differ; a folder without one is started afresh."""
    path = folder / RUN_RECORD_FILE
    record = json.loads(json.dumps(record))
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if saved is not None and saved != record and (folder / CHECKPOINT_NAME).is_file():
        changed = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
        raise ValueError(
            f"{folder} holds the checkpoint of a run with other settings ({', '.join(changed)}); "
            "use another --output or delete that folder to start over."
        )
    accelerator.wait_for_everyone()
    if saved != record and accelerator.is_main_process:  # nothing to resume: start this run's folder afresh
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(record, indent=1, sort_keys=True))
    accelerator.wait_for_everyone()
