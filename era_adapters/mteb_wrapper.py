"""Run MTEB (or MAIR through MTEB) on an ERA pair: queries through the query encoder + adapter, documents
through the doc encoder, routed by mteb's `prompt_type`.

    import mteb
    from era_adapters.mteb_wrapper import EraMtebModel

    model = EraMtebModel("someone/era-mpnet-to-minilm")          # adapter folder or Hub id (+ revision=...)
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))

`EraMtebModel` implements mteb's `EncoderProtocol` (mteb 2.x) by duck typing, so this module does not
import mteb (`pip install mteb` to run benchmarks; it installs on the CPU torch without pulling CUDA).
The interface:

* `__init__(model_name, revision=None, *, device=None, **kwargs)`: mteb's loader signature, so it can be
  a `ModelMeta(loader=EraMtebModel, ...)` loader too.
* `encode(inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs)`: `inputs` is an
  iterable of batches (mteb passes a `DataLoader`), each a dict of lists with a `"text"` key.
  - `prompt_type == "query"`: the ERA query encoder. A batch with `"query"` and `"instruction"` columns
    (mteb's instruction-retrieval tasks, whose `"text"` is query + " " + instruction) is re-formed with
    the adapter's own prompt template from those columns, one instruction per query; otherwise `"text"`
    is the query and the task-level instruction is, in order: `instructions[task name]`, the task's
    metadata prompt (when `use_task_prompt`), the adapter's default instruction.
  - `prompt_type == "document"`, and `None` (symmetric tasks: STS, clustering...): the doc encoder,
    documents as they are (the space of the existing index). `default_route="query"` changes the latter.
* `similarity` / `similarity_pairwise`: the adapter's similarity (cosine or dot).
* `mteb_model_meta`: a `mteb.ModelMeta` (needs mteb) naming the adapter, revision, dimension.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modeling_era import EraQueryEncoder
from era_adapters.encoders import TextEncoder

__all__ = ["EraMtebModel"]

_ROUTES = ("query", "document")


def _route_name(prompt_type: Any) -> str | None:
    """'query' / 'document' / None from mteb's PromptType (a str enum) or a plain string."""
    if prompt_type is None:
        return None
    value = getattr(prompt_type, "value", prompt_type)
    if value not in _ROUTES:
        raise ValueError(f"prompt_type={prompt_type!r} is neither 'query' nor 'document'.")
    return value


class EraMtebModel:
    """An mteb encoder for an ERA adapter and its doc encoder (see the module docstring)."""

    def __init__(
        self,
        model_name: str,
        revision: str | None = None,
        *,
        device: str | None = None,
        doc_encoder: str | os.PathLike | TextEncoder | None = None,
        instructions: Mapping[str, str] | None = None,
        use_task_prompt: bool = True,
        default_route: str = "document",
        batch_size: int = 32,
        era_cache_dir: str | os.PathLike | None = None,
        **from_pretrained_kwargs: Any,
    ) -> None:
        """Load the adapter `model_name` (folder or Hub id) at `revision`, and its doc encoder.

        `doc_encoder`: a local copy (path) or a `TextEncoder`; default: the id and revision the adapter's
        config names (packaged offline copies as fallback, from the ERA cache `era_cache_dir`).
        `from_pretrained_kwargs` go to `EraQueryEncoder.from_pretrained` (e.g. `cache_dir`, `local_files_only`;
        offline with the packaged models: `cache_dir=era_adapters.models.offline_hub_cache(), local_files_only=True`).
        """
        query_encoder = EraQueryEncoder.from_pretrained(model_name, revision=revision, **from_pretrained_kwargs)
        if device is not None:
            query_encoder.to(device)
        config = query_encoder.config
        if not isinstance(doc_encoder, TextEncoder):
            explicit = doc_encoder is not None
            doc_encoder = TextEncoder(
                str(doc_encoder) if explicit else config.doc_encoder,
                revision=None if explicit else config.doc_encoder_revision,
                device=device,
                batch_size=batch_size,
                cache_dir=era_cache_dir,
            )
        self._setup(query_encoder, doc_encoder, name=str(model_name), revision=revision, instructions=instructions,
                    use_task_prompt=use_task_prompt, default_route=default_route, batch_size=batch_size)

    @classmethod
    def from_models(
        cls,
        query_encoder: EraQueryEncoder,
        doc_encoder: TextEncoder,
        *,
        name: str | None = None,
        revision: str | None = None,
        instructions: Mapping[str, str] | None = None,
        use_task_prompt: bool = True,
        default_route: str = "document",
        batch_size: int = 32,
    ) -> EraMtebModel:
        """Wrap an already loaded query encoder and doc encoder."""
        self = cls.__new__(cls)
        self._setup(query_encoder, doc_encoder, name=name or str(query_encoder.config.name_or_path or "era-adapter"),
                    revision=revision, instructions=instructions, use_task_prompt=use_task_prompt,
                    default_route=default_route, batch_size=batch_size)
        return self

    def _setup(self, query_encoder: EraQueryEncoder, doc_encoder: TextEncoder, *, name: str, revision: str | None,
               instructions: Mapping[str, str] | None, use_task_prompt: bool, default_route: str,
               batch_size: int) -> None:
        if default_route not in _ROUTES:
            raise ValueError(f"default_route={default_route!r}: choose 'query' or 'document'.")
        config = query_encoder.config
        # The index side must be the adapter's doc encoder: by dimension always, by id unless it is a local copy.
        query_encoder.check_doc_encoder(dim=doc_encoder.dim)
        if doc_encoder.resolved.source != "local":
            query_encoder.check_doc_encoder(doc_encoder.model_id, revision=doc_encoder.revision)
        self.query_encoder = query_encoder.eval()
        self.doc_encoder = doc_encoder
        self.config = config
        self.name = name
        self.revision = revision
        self.instructions = dict(instructions or {})
        self.use_task_prompt = use_task_prompt
        self.default_route = default_route
        self.batch_size = int(batch_size)

    # ------------------------------------------------------------------ routing

    def instruction_for(self, task_metadata: Any) -> str:
        """The task-level instruction for queries of this task (see the module docstring)."""
        name = getattr(task_metadata, "name", None)
        if name in self.instructions:
            return self.instructions[name]
        if self.use_task_prompt:
            prompt = getattr(task_metadata, "prompt", None)
            if isinstance(prompt, Mapping):
                prompt = prompt.get("query")
            if isinstance(prompt, str) and prompt.strip():
                return prompt
        return self.config.default_instruction

    def encode(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed mteb's batches: `(n, doc_dim)` float32, queries or documents by `prompt_type`."""
        route = _route_name(prompt_type) or self.default_route
        batch_size = int(kwargs.get("batch_size") or self.batch_size)
        if route == "document":
            texts = [text for batch in inputs for text in batch["text"]]
            return self.doc_encoder.encode(texts, batch_size=batch_size).astype(np.float32, copy=False)
        default = self.instruction_for(task_metadata)
        queries: list[str] = []
        instructions: list[str] = []
        for batch in inputs:
            if "query" in batch and "instruction" in batch:  # per-query instructions: mteb joined them after the text
                queries += list(batch["query"])
                instructions += [inst if isinstance(inst, str) and inst.strip() else default
                                 for inst in batch["instruction"]]
            else:
                queries += list(batch["text"])
                instructions += [default] * len(batch["text"])
        return self.encode_queries(queries, instructions, batch_size=batch_size)

    def encode_queries(self, queries: list[str], instructions: list[str], *, batch_size: int | None = None) -> np.ndarray:
        """Queries with one instruction each, through the adapter; input order kept."""
        vectors = self.query_encoder.encode_queries(queries, instruction=instructions,
                                                    batch_size=batch_size or self.batch_size)
        return vectors.numpy().astype(np.float32, copy=False)

    # ------------------------------------------------------------------ scoring

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        a, b = _as_2d(embeddings1), _as_2d(embeddings2)
        if self.config.similarity == "cosine":
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        return a @ b.T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        a, b = _as_2d(embeddings1), _as_2d(embeddings2)
        if self.config.similarity == "cosine":
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        return (a * b).sum(-1)

    @property
    def mteb_model_meta(self) -> Any:
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        local = os.path.exists(self.name) or "/" not in self.name  # mteb names are "org/name"
        return ModelMeta.create_empty(overwrites={
            "name": f"local/{os.path.basename(os.path.normpath(self.name))}" if local else self.name,
            "revision": self.revision or "local",
            "embed_dim": self.config.doc_dim,
            "max_tokens": self.config.max_seq_length,
            "similarity_fn_name": ScoringFunction.COSINE if self.config.similarity == "cosine" else ScoringFunction.DOT_PRODUCT,
            "framework": ["PyTorch"],
            "use_instructions": "{instruction}" in self.config.prompt_template,
            "adapted_from": self.config.query_encoder,
            "open_weights": True,
        })

    def __repr__(self) -> str:
        return (f"EraMtebModel({self.name!r}, query={self.config.query_encoder!r} + {self.config.adapter_type} adapter, "
                f"doc={self.doc_encoder.model_id!r})")


def _as_2d(embeddings: Any) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
    tensor = tensor.float()
    return tensor.unsqueeze(0) if tensor.ndim == 1 else tensor

