"""Stage-1 benchmark: closed-form ridge vs the reference recipe, side by side on the same texts.

    python bench/align_bench.py [--tasks ...] [--num-texts 500] [--max-docs 500] [--output JSON]

Q = all-mpnet-base-v2, D = all-MiniLM-L6-v2 on tasks from the shared datasets (docs/protocol.md; default ../shared/data). Embeddings come from the
cache (computed first if missing; that time is reported apart), so only fitting is timed:
- ridge: closed-form ridge with bias, strength chosen on the held-out slice (our `linear` default);
- ridge+refine: the same, then 20 epochs of AdamW on the cosine loss;
- reference: the authors' recipe — a linear layer from a random init, 1 − cosine loss, AdamW lr 1e-3,
  weight decay 0.01, batch 256, 100 epochs.
Reports held-out mean cosine, twin Recall@1/10, fit time and the speed-up; the adapter's share of
`encode_queries` time; and nDCG@10 on each task's test queries for doc2doc, query2query and `align`.
Prints a Markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from modeling_era import EraAdapter, EraQueryEncoder
from era_adapters.align import alignment_quality, fit_gradient, sample_texts
from era_adapters.ridge import choose_ridge, ridge_statistics, set_from_linear
from era_adapters.artifacts import era_config, save_query_encoder
from era_adapters.cache import embed_texts
from era_adapters.data import cap_corpus, load_tasks
from era_adapters.encoders import TextEncoder
from era_adapters.evaluate import evaluate
from era_adapters.loop import LoopConfig

QUERY_ENCODER = "sentence-transformers/all-mpnet-base-v2"
DOC_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_TASKS = ["restbench_spotify", "restbench_tmdb", "gorilla_torchhub", "aila2019_statutes", "legalquad", "mbpp"]
PROMPT = "{query}"


def fit(name: str, adapter: EraAdapter, x, y, train_rows, held_rows, accelerator) -> dict:
    started = time.perf_counter()
    if name.startswith("ridge"):
        stats = ridge_statistics(x[train_rows], y[train_rows])
        weight, bias, _ = choose_ridge(stats, x[held_rows], y[held_rows])
        set_from_linear(adapter, weight, bias)
    if name != "ridge":
        epochs = 100 if name == "reference" else 20
        loop = LoopConfig(epochs=epochs, lr=1e-3, weight_decay=0.01, patience=epochs + 1, max_grad_norm=None)
        fit_gradient(adapter, x[train_rows], y[train_rows], x[held_rows], y[held_rows], loop=loop, batch_size=256,
                     loss="cosine", accelerator=accelerator, checkpoint_dir=None)
    seconds = time.perf_counter() - started
    return {"fit_seconds": seconds, **alignment_quality(adapter, x[held_rows], y[held_rows], y, held_rows)}


def adapter_share(adapter: EraAdapter, queries: list[str]) -> dict:
    """Time of the adapter vs the backbone inside `encode_queries`, on the same queries."""
    query_side = TextEncoder(QUERY_ENCODER)
    model = EraQueryEncoder.from_backbone(adapter.config, query_side.model, query_side.tokenizer)
    model.adapter.load_state_dict(adapter.adapter.state_dict())
    started = time.perf_counter()
    model.encode_queries(queries)
    total = time.perf_counter() - started
    pooled = torch.nn.functional.normalize(torch.randn(len(queries), adapter.config.query_dim), dim=-1)
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(10):
            model._finish(pooled)
    head = (time.perf_counter() - started) / 10
    return {"queries": len(queries), "encode_seconds": total, "adapter_seconds": head, "adapter_share": head / total}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--num-texts", type=int, default=500)
    parser.add_argument("--max-docs", type=int, default=500)
    parser.add_argument("--max-queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir")
    parser.add_argument("--output", default="bench/results/align_bench.json")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    accelerator = Accelerator(cpu=True)
    q_encoder = TextEncoder(QUERY_ENCODER, cache_dir=args.cache_dir, query_template=PROMPT)
    d_encoder = TextEncoder(DOC_ENCODER, cache_dir=args.cache_dir)
    tasks = [cap_corpus(task, args.max_docs, args.seed) for task in load_tasks(args.data, args.tasks)]
    texts = sample_texts(tasks, args.num_texts, args.seed, q_encoder)
    started = time.perf_counter()
    x = embed_texts(q_encoder, texts.query_side, cache_dir=args.cache_dir)
    y = embed_texts(d_encoder, texts.doc_side, cache_dir=args.cache_dir)
    embed_seconds = time.perf_counter() - started
    train_rows, held_rows = np.flatnonzero(~texts.held_out), np.flatnonzero(texts.held_out)
    config = era_config(q_encoder, d_encoder, prompt_template=PROMPT)
    results, adapters = {}, {}
    for name in ("ridge", "ridge+refine", "reference"):
        torch.manual_seed(args.seed)
        adapters[name] = EraAdapter(config)
        results[name] = fit(name, adapters[name], x, y, train_rows, held_rows, accelerator)
    for name in results:
        results[name]["speedup_vs_reference"] = results["reference"]["fit_seconds"] / results[name]["fit_seconds"]
    test_queries = [q.query for task in tasks for q in task.queries][:200]
    share = adapter_share(adapters["ridge"], test_queries)
    with tempfile.TemporaryDirectory() as folder:
        adapter_dir = Path(folder) / "align"
        adapters["ridge"].config.training_metadata = {"mode": "align"}
        save_query_encoder(adapters["ridge"], adapter_dir)
        report = evaluate(args.data, ["doc2doc", "query2query", str(adapter_dir)], tasks=args.tasks,
                          query_encoder=QUERY_ENCODER, doc_encoder=DOC_ENCODER, max_docs=args.max_docs,
                          max_queries=args.max_queries, cache_dir=args.cache_dir)
    ndcg = {name: {task: r["tasks"][task]["ndcg@10"] for task in args.tasks} | {"macro": r["macro"]["ndcg@10"]}
            for name, r in report["results"].items()}
    summary = {
        "settings": vars(args) | {"query_encoder": QUERY_ENCODER, "doc_encoder": DOC_ENCODER,
                                  "train_texts": int(len(train_rows)), "held_out_texts": int(len(held_rows)),
                                  "embedding_seconds": embed_seconds, "torch_threads": torch.get_num_threads()},
        "fits": results,
        "adapter_share_of_encode_queries": share,
        "ndcg@10": ndcg,
    }
    print(f"\n{len(train_rows)} training / {len(held_rows)} held-out texts from {len(tasks)} tasks\n")
    print("| fit | seconds | speed-up vs reference | held-out cosine | twin R@1 | twin R@10 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['fit_seconds']:.3f} | {r['speedup_vs_reference']:.0f}x | {r['held_out_cosine']:.4f} "
              f"| {r['twin_recall@1']:.4f} | {r['twin_recall@10']:.4f} |")
    print(f"\nadapter share of encode_queries: {share['adapter_share']:.5%} "
          f"({share['adapter_seconds'] * 1e3:.2f} ms of {share['encode_seconds']:.1f} s for {share['queries']} queries)")
    print("\n| system | " + " | ".join(args.tasks) + " | macro |")
    print("|---|" + "---:|" * (len(args.tasks) + 1))
    for name, values in ndcg.items():
        print(f"| {name} | " + " | ".join(f"{values[t]:.4f}" for t in args.tasks) + f" | {values['macro']:.4f} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {args.output}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
