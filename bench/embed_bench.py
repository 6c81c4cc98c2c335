"""Embedding extraction throughput: this layer (cold and warm cache) vs a plain loop vs sentence-transformers.

    python bench/embed_bench.py                          # 2,000 SciFact passages, MiniLM and mpnet (long: see below)
    python bench/embed_bench.py --num-texts 200          # quick run

Texts: the first ``--num-texts`` documents of ``shared/data/scifact/docs.jsonl`` in file order
(deterministic); their token lengths per model are reported (SciFact abstracts average ~330 tokens,
so mpnet runs far slower than on short passages: ~2 texts/s on 2 shared cores).

Methods, all on CPU in float32 with the same batch size and ``--threads`` torch/OMP threads, each
model loaded before the clock starts:

* ``plain``: `AutoModel` + tokenizer, batches in input order (no sorting), padding to the batch's
  longest, truncation at the model's max length, mean pooling, L2 normalisation.
* ``sentence_transformers``: ``SentenceTransformer(path).encode(texts, batch_size, normalize_embeddings=True)``.
* ``era_cold``: `era_adapters.cache.embed_texts` into an empty cache (hashing, planning, length-sorted
  batches via `modeling_era.encode_texts`, shard writing and checksums included).
* ``era_warm``: a fresh process runs `embed_texts` on all the texts again with the filled cache:
  encoder set-up without loading the weights, manifest scan, checksum verification, memory-mapped
  gather. Its time is that call's.

Fairness on a shared machine: the texts are cut into ``--blocks`` contiguous blocks; for each block
every method runs in its own fresh subprocess, in an order that rotates from block to block, so a
burst of load from other programs hits all methods alike. A method's time is the sum over blocks
(each call embeds one block, sorted within the call for sentence-transformers and era alike). Peak
RSS is the largest ``VmHWM`` of the method's workers. Vectors are compared with sentence-transformers'.
Targets: ``era_cold`` at least as fast as sentence-transformers on both models; ``era_warm`` >= 100x
faster than ``era_cold``. Results: a Markdown table on stdout and JSON at ``--output``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact" / "docs.jsonl"
MODELS = ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-mpnet-base-v2")
METHODS = ("plain", "sentence_transformers", "era_cold")


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from era_adapters.models import resolve_model

    texts = json.loads(Path(args.texts_file).read_text())
    resolved = resolve_model(args.model, cache_dir=args.cache_dir)
    result: dict = {}
    if args.worker == "plain":
        import torch.nn.functional as F
        from transformers import AutoModel, AutoTokenizer

        from era_adapters.encoders import read_sentence_transformers_config

        max_length = read_sentence_transformers_config(resolved.path)["max_length"] or 512
        model = AutoModel.from_pretrained(resolved.path).eval()
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        start = time.perf_counter()
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                inputs = tokenizer(texts[i : i + args.batch_size], padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt")
                hidden = model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).float()
                chunks.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1))
        vectors = torch.cat(chunks).numpy()
        result["seconds"] = time.perf_counter() - start
    elif args.worker == "sentence_transformers":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(resolved.path), device="cpu")
        start = time.perf_counter()
        vectors = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)
        result["seconds"] = time.perf_counter() - start
    else:
        from era_adapters.cache import EmbeddingCache, embed_texts
        from era_adapters.encoders import TextEncoder

        start_setup = time.perf_counter()
        encoder = TextEncoder(resolved, batch_size=args.batch_size, cache_dir=args.cache_dir, device="cpu")
        if args.worker == "era_cold":
            encoder.model, encoder.tokenizer, encoder.identity  # weights loaded and fingerprinted before the clock
        cache = EmbeddingCache.for_encoder(encoder, args.embed_cache)
        start = time.perf_counter()
        vectors = embed_texts(encoder, texts, cache=cache, progress=args.progress)
        result["seconds"] = time.perf_counter() - start
        result["cache_stats"] = cache.last_stats.as_dict()
        if args.worker == "era_warm":
            result["setup_seconds"] = start - start_setup  # encoder identity (memoised fingerprint), cache object
            result["model_loaded"] = encoder._model is not None
            assert cache.last_stats.encoded == 0, cache.last_stats
        else:
            assert cache.last_stats.cached == 0, cache.last_stats
    np.save(args.out, vectors)
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    print("RESULT " + json.dumps(result))


def token_lengths(model: str, texts: list[str], cache_dir: str | None) -> dict:
    from transformers import AutoTokenizer

    from era_adapters.encoders import read_sentence_transformers_config
    from era_adapters.models import resolve_model

    path = resolve_model(model, cache_dir=cache_dir).path
    limit = read_sentence_transformers_config(path)["max_length"] or 512
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.model_max_length = 10**9  # count, do not warn
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    ordered = sorted(lengths)
    return {
        "max_length": limit,
        "mean": round(statistics.mean(lengths), 1),
        "median": statistics.median(lengths),
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "max": ordered[-1],
        "truncated": sum(n > limit for n in lengths),
    }


def run_worker(method: str, model: str, texts_file: Path, out: Path, embed_cache: Path, args, env) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--model", model, "--texts-file", str(texts_file),
               "--out", str(out), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--embed-cache", str(embed_cache)]
    if args.cache_dir:
        command += ["--cache-dir", args.cache_dir]
    if args.progress:
        command.append("--progress")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} on {model} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.split("RESULT ", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-texts", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch / OMP threads in every method")
    ap.add_argument("--blocks", type=int, default=4, help="interleaving blocks (see the module docstring)")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--data", type=Path, default=DATA, help="a docs.jsonl ({id, doc} per line)")
    ap.add_argument("--cache-dir", default=None, help="ERA cache the models come from (default: $ERA_CACHE_DIR or "
                    "~/.cache/era); the embeddings always go to a fresh temp cache")
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "embed_bench.json")
    ap.add_argument("--progress", action="store_true", help="show era's progress bar (stderr of the workers)")
    ap.add_argument("--worker", choices=METHODS + ("era_warm",), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--embed-cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import numpy as np
    import torch
    import transformers

    texts = []
    with open(args.data, encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["doc"])
            if len(texts) == args.num_texts:
                break
    n_blocks = max(1, min(args.blocks, len(texts)))
    bounds = [round(i * len(texts) / n_blocks) for i in range(n_blocks + 1)]
    blocks = [texts[bounds[i] : bounds[i + 1]] for i in range(n_blocks)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    report = {
        "command": " ".join(["python", "bench/embed_bench.py", *sys.argv[1:]]),
        "config": {"num_texts": len(texts), "data": str(args.data), "first_doc_ids_in_file_order": True,
                   "batch_size": args.batch_size, "threads": args.threads, "blocks": n_blocks,
                   "device": "cpu", "dtype": "float32"},
        "env": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "load_average_at_start": os.getloadavg()},
        "models": {},
    }
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        tmp = Path(tmp)
        block_files = []
        for b, block in enumerate(blocks):
            block_files.append(tmp / f"block{b}.json")
            block_files[-1].write_text(json.dumps(block))
        all_file = tmp / "all.json"
        all_file.write_text(json.dumps(texts))
        for model in args.models:
            entry = {"tokens": token_lengths(model, texts, args.cache_dir), "methods": {}}
            print(f"{model}: tokens {entry['tokens']}", file=sys.stderr, flush=True)
            embed_cache = tmp / f"cache-{model.replace('/', '--')}"
            runs: dict[str, list[dict]] = {m: [] for m in METHODS}
            vectors: dict[str, list] = {m: [] for m in METHODS}
            for b, block_file in enumerate(block_files):
                order = METHODS[b % len(METHODS):] + METHODS[: b % len(METHODS)]
                for method in order:
                    out = tmp / f"{method}-{b}.npy"
                    runs[method].append(run_worker(method, model, block_file, out, embed_cache, args, env))
                    vectors[method].append(np.load(out))
                    print(f"  block {b} {method}: {runs[method][-1]}", file=sys.stderr, flush=True)
            warm_out = tmp / "era_warm.npy"
            warm = run_worker("era_warm", model, all_file, warm_out, embed_cache, args, env)
            print(f"  era_warm: {warm}", file=sys.stderr, flush=True)
            stacked = {m: np.concatenate(v) for m, v in vectors.items()}
            stacked["era_warm"] = np.load(warm_out)
            if not np.array_equal(stacked["era_warm"], stacked["era_cold"]):
                raise SystemExit("the warm cache returned other vectors than the cold run wrote")
            for method in METHODS:
                entry["methods"][method] = {
                    "seconds": sum(r["seconds"] for r in runs[method]),
                    "block_seconds": [round(r["seconds"], 3) for r in runs[method]],
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in runs[method]),
                }
            keep = ("seconds", "setup_seconds", "model_loaded", "peak_rss_mib")
            entry["methods"]["era_warm"] = {k: warm[k] for k in keep}
            st_seconds = entry["methods"]["sentence_transformers"]["seconds"]
            for name, result in entry["methods"].items():
                result["texts_per_s"] = round(len(texts) / result["seconds"], 2)
                result["speed_vs_st"] = round(st_seconds / result["seconds"], 3)
                result["max_abs_diff_vs_st"] = float(np.abs(stacked[name] - stacked["sentence_transformers"]).max())
            entry["warm_speedup_vs_cold"] = round(entry["methods"]["era_cold"]["seconds"] / warm["seconds"], 1)
            report["models"][model] = entry
    report["env"]["load_average_at_end"] = os.getloadavg()
    report["wall_minutes"] = round((time.time() - started) / 60, 1)

    lines = [
        f"Embedding the first {len(texts)} SciFact passages: batch {args.batch_size}, {args.threads} threads, "
        f"CPU float32, {n_blocks} interleaved blocks",
        "",
        "| model | tokens mean / median / max (> max_length) | method | seconds | texts/s | vs ST | peak RSS MiB "
        "| max abs diff vs ST |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, entry in report["models"].items():
        t = entry["tokens"]
        tokens = f"{t['mean']} / {t['median']} / {t['max']} ({t['truncated']} > {t['max_length']})"
        for name, r in entry["methods"].items():
            lines.append(
                f"| {model.split('/')[-1]} | {tokens} | {name} | {r['seconds']:.3f} | {r['texts_per_s']:.1f} | "
                f"{r['speed_vs_st']:.2f}x | {r['peak_rss_mib']:.0f} | {r['max_abs_diff_vs_st']:.1e} |"
            )
            tokens = ""
        lines.append(f"| | | era warm vs cold | {entry['warm_speedup_vs_cold']}x faster | | | | |")
    table = "\n".join(lines)
    print(table)
    report["table"] = table
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
