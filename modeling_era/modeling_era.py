"""ERA adapters as Hugging Face models: a strong query encoder searching a light doc encoder's index.

This file travels to the Hugging Face Hub with every adapter (``trust_remote_code``). It imports only
torch, transformers and the standard library, makes no network calls of its own (only the explicit
``from_pretrained`` of the named backbone), and does nothing at import time.

Reading order: prompt and pooling helpers -> ``encode_texts`` (shared with the training pipeline) ->
adapter families -> ``EraAdapter`` (precomputed query vectors) -> ``EraQueryEncoder`` (text in,
doc-space vectors out) -> import of the authors' released linear checkpoints.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import cached_file

from .configuration_era import EraConfig

WEIGHTS_NAME = "model.safetensors"
BACKBONE_PREFIX = "backbone."
LORA_PREFIX = "lora."  # LoRA weights of the query backbone (config.lora_config), stored with the adapter
# Keyword arguments of `from_pretrained` that also apply when fetching the backbone by reference.
_BACKBONE_HUB_KWARGS = ("cache_dir", "token", "local_files_only", "proxies", "dtype", "device_map")


class IncompatibleDocEncoderError(ValueError):
    """An adapter was used next to a doc encoder (or index) other than the one it was trained for."""


def format_prompt(template: str, query: str, instruction: str = "") -> str:
    """Fill a prompt template; an empty instruction leaves no stray whitespace."""
    return template.format(instruction=instruction, query=query).strip()


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Turn token states `(batch, seq, dim)` into one vector per text, ignoring padding."""
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden_states[:, 0]
    if mode == "last_token":
        # Position of the last real token, correct for left and right padding alike.
        seq_len = attention_mask.shape[1]
        last = seq_len - 1 - attention_mask.flip(1).argmax(1)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
    raise ValueError(f"pooling={mode!r} is not supported; choose mean, cls or last_token.")


def _check_texts(texts: Sequence[str], what: str) -> None:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, not a single string; wrap it: [{texts[:30]!r}].")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{what}[{i}] is empty or not a string ({text!r}); remove it or give it text.")


@torch.no_grad()
def encode_texts(
    backbone: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str,
    max_length: int,
    batch_size: int = 32,
    normalize: bool = True,
    head: nn.Module | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Embed texts with a transformer backbone: tokenize, length-sorted batches, pool, normalise.

    `head` (e.g. an adapter) is applied to the pooled vectors of each batch. Returns float32 on CPU
    in the input order. Shared by `EraQueryEncoder.encode_queries` and the training pipeline's
    encoders, so both embed texts identically. `on_batch(n)` is called after each batch of n texts
    (progress bars).
    """
    device = next(backbone.parameters()).device
    if not texts:  # let the head give the empty result its output width
        empty = torch.empty(0, backbone.config.hidden_size, device=device)
        return (head(empty) if head is not None else empty).float().cpu()
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    # Longest first: similar lengths share a batch (little padding) and memory peaks show up at once.
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    chunks = []
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        inputs = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
        hidden = backbone(**inputs).last_hidden_state
        vectors = pool(hidden, inputs["attention_mask"], pooling).float()
        if normalize:
            vectors = F.normalize(vectors, dim=-1)
        if head is not None:
            vectors = head(vectors)
        chunks.append(vectors.float().cpu())
        if on_batch is not None:
            on_batch(len(batch))
    stacked = torch.cat(chunks)
    result = torch.empty_like(stacked)
    result[torch.tensor(order)] = stacked
    return result


# ---------------------------------------------------------------------------------------------
# Adapter families. Each starts neutral: identity where the dims match, so an untrained adapter
# does no harm; `nn.Linear`'s seeded default init otherwise.
# ---------------------------------------------------------------------------------------------


class LinearAdapter(nn.Module):
    """The paper's adapter: y = W·x + b."""

    def __init__(self, config: EraConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.query_dim, config.doc_dim)
        if config.query_dim == config.doc_dim:
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(config.doc_dim))
                self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class LowRankAdapter(nn.Module):
    """y = B·A·x + b (+ x when the dims match): few parameters for large dims."""

    def __init__(self, config: EraConfig) -> None:
        super().__init__()
        self.residual = config.query_dim == config.doc_dim
        self.down = nn.Linear(config.query_dim, config.adapter_rank, bias=False)
        self.up = nn.Linear(config.adapter_rank, config.doc_dim)
        if self.residual:
            with torch.no_grad():
                self.up.weight.zero_()
                self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.down(x))
        return out + x if self.residual else out


class MlpAdapter(nn.Module):
    """y = W·x + b + MLP(x): a linear map plus a small residual MLP that starts at zero."""

    def __init__(self, config: EraConfig) -> None:
        super().__init__()
        self.proj = LinearAdapter(config).proj
        self.hidden = nn.Linear(config.query_dim, config.adapter_hidden_dim)
        self.out = nn.Linear(config.adapter_hidden_dim, config.doc_dim)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.out(F.gelu(self.hidden(x)))


ADAPTER_CLASSES = {"linear": LinearAdapter, "low_rank": LowRankAdapter, "mlp": MlpAdapter}


def build_adapter(config: EraConfig) -> nn.Module:
    return ADAPTER_CLASSES[config.adapter_type](config)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class EraPreTrainedModel(PreTrainedModel):
    """Shared loading rules: safetensors only, every weight present, the doc-encoder guard."""

    config_class = EraConfig
    base_model_prefix = "era"
    _auto_class = "AutoModel"

    def _init_weights(self, module: nn.Module) -> None:
        # The adapter modules initialise themselves (identity / zero residual); loading fills the rest.
        pass

    @classmethod
    def _load_adapter_checked(cls, path: str | os.PathLike, *model_args: Any, **kwargs: Any) -> PreTrainedModel:
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, WEIGHTS_NAME)):
            raise FileNotFoundError(
                f"{path} has no {WEIGHTS_NAME}: an ERA adapter folder holds config.json and {WEIGHTS_NAME}. "
                "Save the adapter with save_pretrained(...) or point at the folder that holds its weights."
            )
        kwargs["use_safetensors"] = True  # never unpickle a checkpoint
        kwargs["ignore_mismatched_sizes"] = True  # we raise below, with a message that names the shapes
        try:
            model, info = super().from_pretrained(path, *model_args, output_loading_info=True, **kwargs)
        except Exception as error:
            if "deserializ" in str(error).lower() or "header" in str(error).lower():
                raise OSError(
                    f"the weights file of {path} is corrupt or truncated ({error}); re-download or re-save it."
                ) from error
            raise
        lora = getattr(model.config, "lora_config", None)
        if lora and cls is not EraQueryEncoder:
            raise ValueError(
                f"{path} was trained with a LoRA on its query backbone, so vectors of the plain query encoder do "
                "not fit it; load it with EraQueryEncoder (AutoModel.from_pretrained(..., trust_remote_code=True))."
            )
        problems = [f"missing {k}" for k in info["missing_keys"]]
        problems += [f"unexpected {k}" for k in info["unexpected_keys"] if not (lora and k.startswith(LORA_PREFIX))]
        problems += [f"{k}: checkpoint {tuple(a)} vs config {tuple(b)}" for k, a, b in info["mismatched_keys"]]
        if problems:
            raise ValueError(
                f"the weights in {path} do not fit its config ({model.config.adapter_type}, "
                f"{model.config.query_dim}->{model.config.doc_dim}): {'; '.join(problems[:5])}. "
                "The config and model.safetensors come from different adapters; re-save them together."
            )
        return model

    def check_doc_encoder(
        self, doc_encoder: str | None = None, *, revision: str | None = None, dim: int | None = None
    ) -> None:
        """Raise `IncompatibleDocEncoderError` unless the given doc encoder / index fits this adapter.

        Pass the doc encoder's id (and revision) and/or the dimension of the index's vectors.
        """
        expected = self.config.doc_encoder
        advice = (
            f"This adapter maps queries into the space of {expected}@{self.config.doc_encoder_revision or 'any'} "
            f"({self.config.doc_dim}-d). Search an index built with that encoder, or train an adapter for yours."
        )
        if dim is not None and int(dim) != self.config.doc_dim:
            raise IncompatibleDocEncoderError(f"the index has {dim}-d vectors. {advice}")
        if doc_encoder is not None and expected is not None and doc_encoder.lower() != expected.lower():
            raise IncompatibleDocEncoderError(f"the index was built with {doc_encoder}. {advice}")
        wanted_revision = self.config.doc_encoder_revision
        if revision is not None and wanted_revision is not None and revision != wanted_revision:
            raise IncompatibleDocEncoderError(f"the index was built with revision {revision}. {advice}")

    def _finish(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = self.adapter(vectors)
        return F.normalize(vectors, dim=-1) if self.config.normalize_output else vectors


class EraAdapter(EraPreTrainedModel):
    """Maps precomputed query embeddings `(n, query_dim)` into the doc encoder's space `(n, doc_dim)`.

    Use it when the query encoder is an API (e.g. OpenAI vectors) or its embeddings are cached.
    """

    main_input_name = "query_embeddings"

    def __init__(self, config: EraConfig) -> None:
        super().__init__(config)
        self.adapter = build_adapter(config)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
        return cls._load_adapter_checked(pretrained_model_name_or_path, *model_args, **kwargs)

    def forward(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        if query_embeddings.ndim != 2 or query_embeddings.shape[1] != self.config.query_dim:
            raise ValueError(
                f"expected query embeddings of shape (n, {self.config.query_dim}) from "
                f"{self.config.query_encoder}, got {tuple(query_embeddings.shape)}."
            )
        vectors = query_embeddings.to(self.dtype)
        if self.config.normalize_input:
            vectors = F.normalize(vectors, dim=-1)
        return self._finish(vectors)

    @classmethod
    def from_reference_checkpoint(
        cls, path: str | os.PathLike, *, query_encoder: str, doc_encoder: str, **config_kwargs: Any
    ) -> EraAdapter:
        """Import a linear adapter released with the authors' research code (a `.pt` state dict).

        The file must hold exactly `proj.weight` `(doc_dim, query_dim)` and `proj.bias` `(doc_dim,)`;
        it is read with `weights_only=True`, so no code in it can run. Name the encoders it was
        trained for: the file itself does not say.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or set(state) != {"proj.weight", "proj.bias"}:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"{path} is not a linear adapter state dict: expected keys proj.weight and proj.bias, found {found}."
            )
        weight, bias = state["proj.weight"], state["proj.bias"]
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"{path}: proj.weight {tuple(weight.shape)} and proj.bias {tuple(bias.shape)} do not form "
                "a (doc_dim, query_dim) linear map."
            )
        config = EraConfig(
            query_encoder=query_encoder,
            doc_encoder=doc_encoder,
            query_dim=weight.shape[1],
            doc_dim=weight.shape[0],
            adapter_type="linear",
            **config_kwargs,
        )
        config.training_metadata.setdefault("imported_from", os.path.basename(str(path)))
        model = cls(config)
        model.adapter.proj.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        return model


class EraQueryEncoder(EraPreTrainedModel):
    """Query backbone + pooling + adapter: text in, vectors in the doc encoder's space out.

    By default only the adapter is saved and the backbone is named by `config.query_encoder` and
    `config.query_encoder_revision` (like a PEFT adapter); `save_pretrained(..., bundle_backbone=True)`
    stores the backbone and tokenizer too, for a self-contained folder.
    """

    _keys_to_ignore_on_load_unexpected = [r"^lora\."]  # LoRA weights: injected after the backbone loads

    def __init__(self, config: EraConfig) -> None:
        super().__init__(config)
        self.adapter = build_adapter(config)
        # Only a bundled backbone is built here, empty, for `from_pretrained` to fill; a referenced one
        # is loaded explicitly afterwards (no nested from_pretrained inside __init__).
        self.backbone = None
        if config.bundle_backbone and config.backbone_config:
            backbone_config = AutoConfig.for_model(**config.backbone_config)
            self.backbone = AutoModel.from_config(backbone_config)
        self.tokenizer = None
        self.post_init()

    @classmethod
    def from_backbone(cls, config: EraConfig, backbone: PreTrainedModel, tokenizer: Any) -> EraQueryEncoder:
        """Assemble a query encoder from a loaded backbone and tokenizer (training and tests use this)."""
        model = cls(config)
        model.attach_backbone(backbone, tokenizer)
        return model

    def attach_backbone(self, backbone: PreTrainedModel, tokenizer: Any) -> None:
        hidden = backbone.config.hidden_size
        if hidden != self.config.query_dim:
            raise ValueError(
                f"the backbone's hidden size is {hidden} but the adapter expects query_dim={self.config.query_dim}; "
                f"load the query encoder the adapter was trained with ({self.config.query_encoder})."
            )
        self.backbone = backbone
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        backbone: PreTrainedModel | None = None,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> EraQueryEncoder:
        """Load the adapter, then its backbone: bundled in the folder, given, or by reference.

        `backbone` / `tokenizer` override the referenced ones (e.g. a local copy of the query encoder).
        Hub keyword arguments such as `cache_dir`, `token` and `local_files_only` apply to both loads.
        """
        model = cls._load_adapter_checked(pretrained_model_name_or_path, *model_args, **kwargs)
        config = model.config
        hub_kwargs = {key: kwargs[key] for key in _BACKBONE_HUB_KWARGS if key in kwargs}
        if config.bundle_backbone:
            source, revision = pretrained_model_name_or_path, kwargs.get("revision")
        else:
            source, revision = config.query_encoder, config.query_encoder_revision
        if model.backbone is None:
            if backbone is None and source is None:
                raise ValueError(
                    f"{pretrained_model_name_or_path} names no query encoder and bundles none; pass backbone=... "
                    "or load it with EraAdapter for precomputed query embeddings."
                )
            # AutoModel's probe for a PEFT adapter ignores the hub kwargs unless handed them again.
            probe_kwargs = {key: hub_kwargs[key] for key in ("cache_dir", "local_files_only", "proxies") if key in hub_kwargs}
            backbone = backbone or AutoModel.from_pretrained(
                source, revision=revision, adapter_kwargs=probe_kwargs, **hub_kwargs
            )
        else:
            backbone = model.backbone
        hub_kwargs.pop("dtype", None), hub_kwargs.pop("device_map", None)
        # Handing over the backbone's config keeps AutoTokenizer from reading our config.json (custom code).
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(
            source, revision=revision, config=backbone.config, **hub_kwargs
        )
        model.attach_backbone(backbone.eval(), tokenizer)
        if getattr(config, "lora_config", None):
            weights = cached_file(pretrained_model_name_or_path, WEIGHTS_NAME, revision=kwargs.get("revision"), **hub_kwargs)
            model._load_lora(weights)
        return model.eval()

    def _load_lora(self, weights_file: str) -> None:
        """Inject the LoRA of `config.lora_config` into the backbone and fill it from the weights file."""
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as error:
            raise ImportError("this ERA adapter carries a LoRA for its query backbone: pip install peft to load it.") from error
        from safetensors.torch import load_file

        state = {k[len(LORA_PREFIX):]: v for k, v in load_file(weights_file).items() if k.startswith(LORA_PREFIX)}
        self.backbone = inject_adapter_in_model(LoraConfig(**self.config.lora_config), self.backbone)
        expected = {k for k in self.backbone.state_dict() if "lora_" in k}
        if set(state) != expected:
            raise ValueError(
                f"the LoRA weights in {weights_file} do not fit lora_config {self.config.lora_config} on this backbone "
                f"(missing {sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]})."
            )
        self.backbone.load_state_dict(state, strict=False)

    def save_pretrained(self, save_directory: str | os.PathLike, *, bundle_backbone: bool | None = None, **kwargs: Any):
        """Save the adapter (by default) or adapter + backbone + tokenizer (`bundle_backbone=True`)."""
        bundle = self.config.bundle_backbone if bundle_backbone is None else bundle_backbone
        self.config.bundle_backbone = bundle
        self.config.backbone_config = self.backbone.config.to_dict() if bundle else None
        state = self.state_dict()
        lora = {key: value for key, value in state.items() if key.startswith(BACKBONE_PREFIX) and "lora_" in key}
        if not bundle:
            state = {key: value for key, value in state.items() if not key.startswith(BACKBONE_PREFIX)}
        if getattr(self.config, "lora_config", None):
            if bundle:
                raise ValueError("a LoRA backbone is saved by reference only: bundle_backbone=False (or merge it first).")
            if not lora:
                raise ValueError("config.lora_config is set but the backbone has no LoRA layers to save.")
            state.update({LORA_PREFIX + key[len(BACKBONE_PREFIX):]: value for key, value in lora.items()})
        super().save_pretrained(save_directory, state_dict=state, **kwargs)
        if bundle:
            self.tokenizer.save_pretrained(save_directory)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token ids of prompted queries in, `(batch, doc_dim)` doc-space embeddings out."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**inputs).last_hidden_state
        vectors = pool(hidden, attention_mask, self.config.pooling).float()
        if self.config.normalize_input:
            vectors = F.normalize(vectors, dim=-1)
        return self._finish(vectors)

    def encode_queries(
        self, queries: Sequence[str], instruction: str | None = None, batch_size: int = 32
    ) -> torch.Tensor:
        """Embed queries for search against the doc encoder's index: `(n, doc_dim)` float32 on CPU.

        `instruction` fills the prompt template's `{instruction}` slot (default: the config's).
        """
        if self.backbone is None or self.tokenizer is None:
            raise RuntimeError("no query backbone attached; load with from_pretrained or use from_backbone.")
        _check_texts(queries, "queries")
        instruction = self.config.default_instruction if instruction is None else instruction
        prompts = [format_prompt(self.config.prompt_template, query, instruction) for query in queries]
        return encode_texts(
            self.backbone,
            self.tokenizer,
            prompts,
            pooling=self.config.pooling,
            max_length=self.config.max_seq_length,
            batch_size=batch_size,
            normalize=self.config.normalize_input,
            head=self._finish,
        )
