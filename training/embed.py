"""Embed the documents and/or queries of tasks into the ERA embedding cache (resumable, distributed).

    accelerate launch training/embed.py --model sentence-transformers/all-MiniLM-L6-v2 \\
        --data ../shared/data --tasks scifact arguana --what both [--cache-dir DIR] [--batch-size 64]

Any number of processes (``accelerate launch --num_processes N``, GPUs or ``--cpu``) write one coherent
cache; the vectors are the same as a single process's. Killed halfway, it resumes where it stopped.
From Python, use `embed_texts` (re-exported here) with the same cache.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.cache import (  # noqa: E402
    DEFAULT_SHARD_SIZE,
    EmbeddingCache,
    embed_documents,
    embed_queries,
    embed_texts,
    ensure_embedded,
)
from training.encoders import DEFAULT_QUERY_TEMPLATE, TextEncoder  # noqa: E402

__all__ = ["embed_texts", "embed_documents", "embed_queries", "embed_tasks", "main"]

logger = logging.getLogger("training.embed")


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="Hub id(s) or local folder(s) of the encoder(s)")
    parser.add_argument("--revision", default=None, help="Hub revision (with a single --model)")
    parser.add_argument("--data", required=True, help="a task folder, a folder of task folders, or MAIR task names")
    parser.add_argument("--tasks", nargs="*", default=None, help="task names to pick (default: all)")
    parser.add_argument("--what", choices=("docs", "queries", "both"), default="both")
    parser.add_argument(
        "--instructions", choices=("with", "without", "both"), default="with",
        help="queries embedded with their instruction, without it (plain query), or both",
    )
    parser.add_argument("--cache-dir", default=None, help="ERA cache root (default: $ERA_CACHE_DIR or ~/.cache/era)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="texts per cache shard (resume unit)")
    parser.add_argument("--pooling", choices=("mean", "cls", "last_token"), default=None, help="override the model's")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's token limit")
    parser.add_argument("--no-normalize", action="store_true", help="do not L2-normalise (override the model's)")
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="default: float32 on CPU, half on GPU"
    )
    parser.add_argument("--query-template", default=DEFAULT_QUERY_TEMPLATE)
    parser.add_argument("--doc-template", default=None, help="e.g. 'passage: {text}' (default: documents as they are)")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    from accelerate import Accelerator

    from training.data import load_tasks

    import torch

    # cpu=True without a GPU: under `accelerate launch --multi_gpu --num_processes N` (or torchrun) on a
    # CPU-only machine this gives N gloo processes (accelerate's own `--cpu` flag launches only one).
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING, format="%(message)s")
    from training.models import cache_root

    tasks = load_tasks(args.data, args.tasks, cache_dir=cache_root(args.cache_dir) / "datasets")
    rows: list[dict[str, Any]] = []
    for model in args.model:
        encoder = TextEncoder(
            model,
            revision=args.revision,
            pooling=args.pooling,
            normalize=False if args.no_normalize else None,
            max_length=args.max_length,
            dtype=args.dtype,
            device=accelerator.device,
            query_template=args.query_template,
            doc_template=args.doc_template,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            trust_remote_code=args.trust_remote_code,
        )
        rows += embed_tasks(
            encoder, tasks, what=args.what, instructions=args.instructions, accelerator=accelerator,
            batch_size=args.batch_size, shard_size=args.shard_size, cache_dir=args.cache_dir,
        )
    if accelerator.is_main_process:
        for row in rows:
            print(
                f"{row['model']} {row['task']} {row['what']}: {row['unique']} texts, {row['cached']} cached, "
                f"{row['encoded']} encoded ({row['shards_written']} shards, {row['corrupt_shards']} corrupt replaced) "
                f"in {row['seconds']:.1f}s"
            )
        print("EMBED_SUMMARY " + json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
