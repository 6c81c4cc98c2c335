"""Stage 1 from a large stored-vector index: time and peak memory, streamed vs the matrix loaded whole.

    python bench/stored_vectors_bench.py                    # 1,000,000 x 384 (writes ~4.6 GB under --work)
    python bench/stored_vectors_bench.py --rows 100000      # quick run

The index is synthetic (seeded random unit vectors, float32) but everything after it is the real code
path: a task folder with one document per vector (short texts, ids `doc-<i>`), and
`era_adapters.align.run_alignment` with `--doc-vectors` (`--num-texts` sampled documents; the query
encoder all-MiniLM-L6-v2 embeds them through the embedding cache, warmed before anything is timed, so
no model is loaded in the timed runs). Stage 1 then checks the source (one streaming pass: duplicate
ids, NaN rows, norms), joins its ids with the corpus, fingerprints it and looks up the sampled rows.

Methods, each in a fresh process, the same index written three ways:

* `lancedb`: a LanceDB table, scanned in batches and read by offset;
* `parquet`: Parquet with 65,536-row row groups, decoded batch by batch;
* `npy`: a `.npy` matrix, memory-mapped;
* `whole`: the same `.npy` read into memory first (`np.load` without mmap) and handed to the same
  code: what the stage would cost if it loaded the matrix whole.

Reported: wall time of `run_alignment`, the process's RSS just before it (imports, nothing loaded),
its peak RSS (VmHWM) and the difference. Results: a Markdown table on stdout and JSON at `--output`.
The work folder (vectors, task, caches) is deleted at the end unless `--keep` (which also reuses an
index a previous `--keep` run left there).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from modeling_era.modeling_era import atomic_write  # noqa: E402

METHODS = ("lancedb", "parquet", "npy", "whole")
QUERY_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
CHUNK = 65536


def memory_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def chunks(rows: int, dim: int, seed: int):
    """Seeded unit vectors, CHUNK rows at a time: the same index for every writer."""
    for index, start in enumerate(range(0, rows, CHUNK)):
        count = min(CHUNK, rows - start)
        block = np.random.default_rng([seed, index]).standard_normal((count, dim), dtype=np.float32)
        yield start, block / np.linalg.norm(block, axis=1, keepdims=True)


def build(work: Path, rows: int, dim: int, seed: int) -> dict[str, str]:
    """The task folder and the index in three stores; returns each method's --doc-vectors spec."""
    import lancedb
    import pyarrow as pa
    import pyarrow.parquet as pq

    task = work / "data" / "synthetic"
    task.mkdir(parents=True, exist_ok=True)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    with open(task / "docs.jsonl", "w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"id": f"doc-{i}", "doc": f"document {i} about {words[i % 10]} and "
                                                               f"{words[(i // 10) % 10]}"}) + "\n")
    with open(task / "queries.jsonl", "w") as handle:
        for i in range(10):
            handle.write(json.dumps({"qid": f"q{i}", "query": f"about {words[i]}", "instruction": "",
                                     "labels": [{"id": f"doc-{i}", "score": 1}]}) + "\n")
    matrix = np.lib.format.open_memmap(work / "index.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), dim))])
    table = None
    with pq.ParquetWriter(work / "index.parquet", schema) as parquet:
        for start, block in chunks(rows, dim, seed):
            matrix[start:start + len(block)] = block
            batch = pa.record_batch([pa.array([f"doc-{i}" for i in range(start, start + len(block))]),
                                     pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), dim)], schema=schema)
            parquet.write_batch(batch, row_group_size=CHUNK)
            if table is None:
                table = lancedb.connect(str(work / "lancedb")).create_table("docs", pa.Table.from_batches([batch]),
                                                                           mode="overwrite")
            else:
                table.add(pa.Table.from_batches([batch]))
    matrix.flush()
    del matrix
    (work / "index.ids.txt").write_text("".join(f"doc-{i}\n" for i in range(rows)))
    return index_specs(work)


def index_specs(work: Path) -> dict[str, str]:
    return {"lancedb": f"lancedb://{work / 'lancedb'}?table=docs", "parquet": str(work / "index.parquet"),
            "npy": str(work / "index.npy"), "whole": str(work / "index.npy")}


def worker(args: argparse.Namespace) -> None:
    """One measured run of stage 1 in this (fresh) process."""
    from era_adapters import sides
    from era_adapters.align import AlignArguments, run_alignment
    from era_adapters.vectors import VectorSource

    if args.method == "whole":  # the same source, its matrix read into memory before the stage starts
        def preloaded(spec, what, **options):
            if spec is None:
                return None
            source = VectorSource(spec, what=what, **options)
            source.store.matrix = np.load(spec)
            return source

        sides.open_source = preloaded
    before = memory_mib("VmRSS")
    started = time.perf_counter()
    run_alignment(AlignArguments(data=str(args.work / "data"), query_encoder=QUERY_ENCODER, doc_vectors=args.spec,
                                 doc_encoder_name="synthetic-384", num_texts=args.num_texts,
                                 output=str(args.work / f"adapter-{args.method}"), cache_dir=str(args.work / "cache")))
    seconds = time.perf_counter() - started
    peak = memory_mib("VmHWM")
    print("RESULT " + json.dumps({"method": args.method, "seconds": seconds, "rss_before_mib": before,
                                  "peak_rss_mib": peak, "peak_above_start_mib": peak - before}))


def run_worker(method: str, spec: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    command = [sys.executable, __file__, "--worker", "--method", method, "--spec", spec, "--work", str(args.work),
               "--num-texts", str(args.num_texts)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--num-texts", type=int, default=1000, help="documents stage 1 samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/era-stored-vectors-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (and reuse the index it holds)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "stored_vectors_bench.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_DATASETS_CACHE": str(args.work / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
    try:
        started = time.perf_counter()
        stamp, wanted = args.work / "index.json", {"rows": args.rows, "dim": args.dim, "seed": args.seed}
        if args.keep and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
            specs = index_specs(args.work)  # the index a --keep run left, written with these settings
        else:
            specs = build(args.work, args.rows, args.dim, args.seed)
            atomic_write(stamp, json.dumps(wanted))
        built = time.perf_counter() - started
        sizes = {method: sum(f.stat().st_size for f in Path(spec.split("?")[0].removeprefix("lancedb://")).rglob("*"))
                 if Path(spec.split("?")[0].removeprefix("lancedb://")).is_dir() else Path(spec).stat().st_size
                 for method, spec in specs.items()}
        warm = run_worker("npy", specs["npy"], args, env)  # fills the query cache and the task's Arrow cache
        results = [run_worker(method, specs[method], args, env) for method in METHODS]
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    lines = [f"Stage 1 from a {args.rows:,} x {args.dim} stored-vector index ({args.num_texts} sampled documents, "
             f"query cache warm)", "", "| method | on disk | time (s) | RSS before (MiB) | peak RSS (MiB) | peak above "
             "start (MiB) |", "|---|---|---|---|---|---|"]
    for row in results:
        lines.append(f"| {row['method']} | {sizes[row['method']] / 2**30:.2f} GiB | {row['seconds']:.1f} | "
                     f"{row['rss_before_mib']:.0f} | {row['peak_rss_mib']:.0f} | {row['peak_above_start_mib']:.0f} |")
    print("\n".join(lines))
    record = {"rows": args.rows, "dim": args.dim, "num_texts": args.num_texts, "seed": args.seed,
              "seconds_to_write_the_index": built, "warm_up": warm, "results": results, "bytes_on_disk": sizes,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "command": " ".join(sys.argv)}
    atomic_write(args.output, json.dumps(record, indent=1))
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
