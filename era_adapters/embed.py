"""Embed the documents and/or queries of tasks into the ERA embedding cache (resumable, distributed).

    accelerate launch training/embed.py --model sentence-transformers/all-MiniLM-L6-v2 \\
        --data DATA --tasks scifact arguana --what both [--cache-dir DIR] [--batch-size 64]
    python training/embed.py --data DATA --doc-vectors lancedb://index?table=docs   # check stored vectors

Stored vectors are not embedded: `--doc-vectors` (and the other stored sources) are validated and their
ids joined with the tasks' documents or queries, with counts (docs/stored_vectors.md).

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
from era_adapters.arguments import AT_LEAST_ONE, DataArguments, VectorArguments, option
from era_adapters.data import load_tasks
from era_adapters.encoders import DEFAULT_QUERY_TEMPLATE, TextEncoder
from era_adapters.models import cache_root
from era_adapters.vectors import VectorSource

__all__ = ["EmbedArguments", "check_stored_vectors", "embed_documents", "embed_queries", "embed_tasks", "embed_texts", "run_embedding"]

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
class EmbedArguments(VectorArguments, DataArguments):
    """Which encoders embed what; stored vectors (--doc-vectors etc.) are checked against the tasks instead."""

    model: list[str] = option(help="Hub id(s) or local folder(s) of the encoder(s)", default_factory=list)
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
        if not self.model and not self.stored_sources():
            raise ValueError("name an encoder to run (--model) or stored vectors to check (--doc-vectors, "
                             "--doc-query-vectors, --query-vectors, --query-doc-vectors).")

    def stored_sources(self) -> dict[str, str]:
        """The stored-vector sources given, by flag: their ids are joined with the tasks' documents or queries."""
        given = {"--doc-vectors": self.doc_vectors, "--doc-query-vectors": self.doc_query_vectors,
                 "--query-vectors": self.query_vectors, "--query-doc-vectors": self.query_doc_vectors}
        return {flag: spec for flag, spec in given.items() if spec is not None}


def check_stored_vectors(args: EmbedArguments, tasks: Sequence[Any]) -> list[dict[str, Any]]:
    """Validate each stored source once and join its ids with every task's documents (doc vectors) or
    queries (query vectors): one row per (source, task) with the counts. Nothing is embedded."""
    rows = []
    for flag, spec in args.stored_sources().items():
        source = VectorSource(spec, what=flag, id_column=args.id_column, vector_column=args.vector_column,
                              text_column=args.text_column if flag == "--doc-vectors" else None,
                              normalized=args.vectors_normalized)
        checked = {**source.check().as_dict(), "fingerprint": source.fingerprint()}
        of_documents = flag in ("--doc-vectors", "--query-doc-vectors")
        for task in tasks:
            ids = task.doc_ids if of_documents else [query.qid for query in task.queries]
            join = source.join(ids, where=f"task {task.name}")
            join.pop("has_vector")
            rows.append({"source": spec, "flag": flag, "task": task.name, "what": "docs" if of_documents else "queries",
                         **checked, **join})
    return rows


def run_embedding(args: EmbedArguments) -> list[dict[str, Any]]:
    """Fill the cache for every model and task of `args`; return one accounting row per (model, task, kind)."""
    from accelerate import Accelerator
    import torch

    # cpu=True without a GPU: under `accelerate launch --multi_gpu --num_processes N` (or torchrun) on a
    # CPU-only machine this gives N gloo processes (accelerate's own `--cpu` flag launches only one).
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    tasks = load_tasks(args.data, args.tasks, cache_dir=cache_root(args.cache_dir) / "datasets",
                       **args.load_options())
    rows: list[dict[str, Any]] = check_stored_vectors(args, tasks)
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
