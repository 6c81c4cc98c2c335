"""Embed the documents and/or queries of tasks into the ERA embedding cache (resumable, distributed).

    accelerate launch training/embed.py --model sentence-transformers/all-MiniLM-L6-v2 \\
        --data DATA --tasks scifact arguana --what both [--cache-dir DIR] [--batch-size 64]

Any number of processes (``accelerate launch --num_processes N``, GPUs or ``--cpu``) write one coherent
cache; the vectors are the same as a single process's. Killed halfway, it resumes where it stopped.
From Python, use `embed_texts` (re-exported here) with the same cache.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from era_adapters.cache import (
    DEFAULT_SHARD_SIZE,
    EmbeddingCache,
    embed_documents,
    embed_queries,
    embed_texts,
    ensure_embedded,
)
from era_adapters.arguments import AT_LEAST_ONE, DataArguments, option
from era_adapters.data import load_tasks
from era_adapters.encoders import DEFAULT_QUERY_TEMPLATE, TextEncoder
from era_adapters.models import cache_root

__all__ = ["EmbedArguments", "embed_documents", "embed_queries", "embed_tasks", "embed_texts", "run_embedding"]

logger = logging.getLogger(__name__)


def task_texts(task: Any, encoder: TextEncoder, what: str, instructions: str) -> dict[str, list[str]]:
    """The exact texts to embed for one task: {"docs": [...], "queries": [...]} as the encoder shows them."""
    out: dict[str, list[str]] = {}
    if what in ("docs", "both"):
        out["docs"] = [encoder.format_document(text) for text in task.doc_texts]
    if what in ("queries", "both"):
        prompted = []
        for query in task.queries:
            if instructions in ("with", "both"):
                prompted.append(encoder.format_query(query.query, query.instruction))
            if instructions in ("without", "both"):
                prompted.append(encoder.format_query(query.query, ""))
        out["queries"] = list(dict.fromkeys(prompted))
    return out


def embed_tasks(
    encoder: TextEncoder,
    tasks: Sequence[Any],
    *,
    what: str = "both",
    instructions: str = "with",
    accelerator: Any = None,
    batch_size: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    cache_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Fill the cache for every task; return one accounting row per (task, docs|queries)."""
    cache = EmbeddingCache.for_encoder(encoder, cache_dir)
    rows = []
    for task in tasks:
        for kind, texts in task_texts(task, encoder, what, instructions).items():
            stats = ensure_embedded(
                encoder, texts, cache, accelerator=accelerator, batch_size=batch_size, shard_size=shard_size
            )
            rows.append({"model": encoder.model_id, "task": task.name, "what": kind, **stats.as_dict()})
    return rows


@dataclass(kw_only=True)
class EmbedArguments(DataArguments):
    """Which encoders embed what."""

    model: list[str] = option(help="Hub id(s) or local folder(s) of the encoder(s)")
    revision: str | None = option(None, help="Hub revision (with a single --model)")
    what: Literal["docs", "queries", "both"] = option("both", help="what to embed")
    instructions: Literal["with", "without", "both"] = option(
        "with", help="queries embedded with their instruction, without it (plain query), or both")
    batch_size: int = option(32, help="texts per batch", valid=AT_LEAST_ONE)
    shard_size: int = option(DEFAULT_SHARD_SIZE, help="texts per cache shard (the resume unit)", valid=AT_LEAST_ONE)
    pooling: Literal["mean", "cls", "last_token"] | None = option(None, help="override the model's pooling")
    max_length: int | None = option(None, help="override the model's token limit", valid=AT_LEAST_ONE)
    no_normalize: bool = option(False, help="do not L2-normalise (override the model's)")
    dtype: Literal["float32", "float16", "bfloat16"] | None = option(None, help="default: float32 on CPU, half on GPU")
    query_template: str = option(DEFAULT_QUERY_TEMPLATE, help="how queries are prompted")
    doc_template: str | None = option(None, help="e.g. 'passage: {text}' (default: documents as they are)")
    trust_remote_code: bool = option(False, help="allow the model's own code (transformers' trust_remote_code)")
    cpu: bool = option(False, help="run on CPU even if a GPU is present")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.revision is not None and len(self.model) > 1:
            raise ValueError("--revision applies to a single --model; embed the models one at a time.")


def run_embedding(args: EmbedArguments) -> list[dict[str, Any]]:
    """Fill the cache for every model and task of `args`; return one accounting row per (model, task, kind)."""
    from accelerate import Accelerator
    import torch

    # cpu=True without a GPU: under `accelerate launch --multi_gpu --num_processes N` (or torchrun) on a
    # CPU-only machine this gives N gloo processes (accelerate's own `--cpu` flag launches only one).
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    tasks = load_tasks(args.data, args.tasks, cache_dir=cache_root(args.cache_dir) / "datasets", qrels=args.qrels_files())
    rows: list[dict[str, Any]] = []
    for model in args.model:
        encoder = TextEncoder(
            model, revision=args.revision, pooling=args.pooling, normalize=False if args.no_normalize else None,
            max_length=args.max_length, dtype=args.dtype, device=accelerator.device,
            query_template=args.query_template, doc_template=args.doc_template, batch_size=args.batch_size,
            cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code,
        )
        rows += embed_tasks(
            encoder, tasks, what=args.what, instructions=args.instructions, accelerator=accelerator,
            batch_size=args.batch_size, shard_size=args.shard_size, cache_dir=args.cache_dir,
        )
    return rows
