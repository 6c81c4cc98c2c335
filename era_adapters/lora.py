"""LoRA on the query backbone during stage 2 (`--lora`): peft injects trainable low-rank layers into
the query encoder's attention projections (its base weights frozen); the backbone then runs every
training step on the prompts, instead of cached Q vectors. The adapter and the LoRA weights are saved
together in one EraQueryEncoder folder (`config.lora_config` + `lora.*` tensors, backbone by reference),
which `AutoModel.from_pretrained(folder, trust_remote_code=True)` loads without peft.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modeling_era import EraAdapter, EraQueryEncoder, pool
from era_adapters.artifacts import save_with_card
from era_adapters.encoders import TextEncoder
from era_adapters.supervision import AdaptData


class LoraQueryModel(nn.Module):
    """Query backbone with LoRA (peft) + pooling + the EraAdapter: prompts in, doc-space vectors out."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, adapter: EraAdapter) -> None:
        super().__init__()
        self.backbone, self.adapter, self.tokenizer = backbone, adapter, tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        config = self.adapter.config
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        vectors = pool(hidden, attention_mask, config.pooling).float()
        return self.adapter(F.normalize(vectors, dim=-1) if config.normalize_input else vectors)


class LoraQueries:
    """Texts through backbone + LoRA + adapter (the backbone runs every step)."""

    def __init__(self, data: AdaptData, device: torch.device, max_length: int, lowercase: bool,
                 batch_size: int = 32) -> None:
        self.device, self.max_length, self.batch_size = device, max_length, batch_size
        fix = (lambda texts: [t.lower() for t in texts]) if lowercase else (lambda texts: list(texts))
        self.train_texts, self.align_texts = fix(data.train_prompts), fix(data.align_texts)
        self.val_texts = [fix(view.val_prompts) for view in data.tasks]

    def _run(self, model: nn.Module, texts: list[str]) -> torch.Tensor:
        tokenizer = (model.module if hasattr(model, "module") else model).tokenizer
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return model(**{k: v.to(self.device) for k, v in inputs.items()})

    def encode(self, model: nn.Module, train_rows: torch.Tensor, align_rows: torch.Tensor | None):
        texts = [self.train_texts[i] for i in train_rows.tolist()]
        extra = [] if align_rows is None else [self.align_texts[i] for i in align_rows.tolist()]
        if not texts and not extra:  # an empty share still runs the model, so DDP sees every parameter
            texts = [self.train_texts[0]]
            out = self._run(model, texts)[:0]
            return out, (out if align_rows is not None else None)
        out = self._run(model, texts + extra)
        return out[: len(texts)], (out[len(texts):] if align_rows is not None else None)

    @torch.no_grad()
    def _all(self, model: nn.Module, texts: list[str]) -> np.ndarray:
        chunks = [self._run(model, texts[i: i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return torch.cat(chunks).float().cpu().numpy()

    def all_train(self, model: nn.Module) -> np.ndarray:
        return self._all(model, self.train_texts)

    def validation(self, model: nn.Module, task: int) -> np.ndarray:
        return self._all(model, self.val_texts[task])


def build_lora_model(adapter: EraAdapter, query_encoder: TextEncoder, lora: dict[str, Any], seed: int = 0) -> LoraQueryModel:
    """Load Q's backbone, inject LoRA layers (peft; base weights frozen) and put the adapter behind it."""
    from peft import LoraConfig, inject_adapter_in_model

    backbone = copy.deepcopy(query_encoder.model).float().train()
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(seed)  # LoRA's A matrices start random: the same start on every run and process
    backbone = inject_adapter_in_model(LoraConfig(**lora), backbone)
    return LoraQueryModel(backbone, query_encoder.tokenizer, adapter)


def default_lora_config(query_encoder: TextEncoder, r: int, alpha: int, dropout: float,
                        targets: Sequence[str] | None) -> dict[str, Any]:
    if not targets:
        names = {name.rsplit(".", 1)[-1] for name, module in query_encoder.model.named_modules()
                 if isinstance(module, nn.Linear)}
        preferred = [n for n in ("query", "value", "q", "v", "q_proj", "v_proj", "q_lin", "v_lin") if n in names]
        if not preferred:
            raise ValueError(f"no attention projections found for LoRA among {sorted(names)}; pass --lora-targets.")
        targets = preferred[:2]
    return {"r": int(r), "lora_alpha": int(alpha), "lora_dropout": float(dropout), "target_modules": sorted(targets),
            "bias": "none"}


def save_lora_query_encoder(trained: LoraQueryModel, output: str | os.PathLike) -> Path:
    """Save adapter + LoRA as one EraQueryEncoder folder: backbone by reference, the LoRA weights in
    model.safetensors under `lora.` and their peft config in `config.lora_config`."""
    adapter = trained.adapter
    config = copy.deepcopy(adapter.config)
    config.lora_config = dict(config.training_metadata["recipe"]["lora"])
    model = EraQueryEncoder(config)
    model.adapter.load_state_dict(adapter.adapter.state_dict())
    model.attach_backbone(trained.backbone, trained.tokenizer)
    count = sum(p.numel() for p in trained.parameters() if p.requires_grad)  # adapter + LoRA
    return save_with_card(model, output, num_parameters=count)
