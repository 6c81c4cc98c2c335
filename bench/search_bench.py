"""Exact top-k search over a large corpus: our chunked memmap search vs. the in-memory ways.

    python bench/search_bench.py                                   # 1M x 384 docs, 1000 queries, k=100
    python bench/search_bench.py --num-docs 100000 --num-queries 200   # quick run

Synthetic data (seeded): unit-norm float32 vectors, written once with `np.lib.format.open_memmap`
to ``<work-dir>/docs.npy`` (a temporary dir unless ``--work-dir`` is given; reused when it already
holds a file of the same size and seed). Three methods, each in its own fresh subprocess so that
its peak memory is its own:

* ``ours``: `era_adapters.search.exact_search` over ``np.load(path, mmap_mode="r")``, streamed in
  chunks of ``--chunk-size`` rows.
* ``faiss_loaded``: ``np.load`` of the whole matrix, ``faiss.IndexFlatIP.add`` (which copies it),
  ``index.search``.
* ``naive``: ``np.load`` of the whole matrix, ``S = Q @ D.T`` (n x N float32), then ``np.argsort``
  of the full score matrix (negated in place) and its first k columns. This is what the
  reference code does; it is run once and skipped, with a note, when available RAM is too small.

What is measured, per method:

* ``search_s``: wall time of the search itself, the best of ``--repeats`` runs in the same worker
  for ours and faiss_loaded (the machine may be shared; every run is in ``search_runs_s``), one
  run for naive. For ``ours`` that includes reading the corpus
  through the memmap; for the in-memory methods the corpus is already in RAM (and, for faiss,
  in the index). ``total_s`` = load + index build + search.
* ``peak_rss_mib``: the worker's ``VmHWM`` from ``/proc/self/status`` at exit, i.e. the largest
  resident set its address space ever had, anonymous memory and mapped file pages alike.
  (``getrusage(RUSAGE_SELF).ru_maxrss`` is not used: Linux carries it over fork and exec, so a
  worker would report at least its parent's RSS; ``ru_maxrss_mib`` is recorded for reference.)
  ``base_rss_mib`` is the worker's RSS after the imports, before any data is touched.
* Page cache: the corpus file was just written, so it normally sits in the kernel's page cache
  ("warm"), and ``ours`` reads it at memory speed. The page cache is the kernel's and counts
  toward no process's RSS; the pages a process maps do count while mapped, which is why
  `exact_search` hands each chunk's pages back (``madvise``) once searched. Without that, a full
  scan of a memmap would end with the whole file in the process's RSS (still reclaimable by the
  kernel, unlike the anonymous copies the in-memory methods make). ``--cold`` asks the kernel to
  drop the file from the page cache (``posix_fadvise DONTNEED``) before each method, so each then
  reads from disk.

Checks against faiss_loaded: ``ours`` must return bit-identical scores (same faiss kernel) and the
same indices once both lists are put in (-score, index) order; the one allowed difference is
which of several documents tied at exactly the k-th score are kept (we keep the lower indices,
faiss does not promise any). Random float32 scores do tie exactly now and then at 1M x 1000,
and faiss lists equal scores in its own order, so raw equality is reported too but not required.
For ``naive`` (numpy's BLAS, last-bit differences) the top-k overlap with faiss is reported.
Targets: ours peak RSS < 1/3 of naive's; ours search time <= 1.5x faiss_loaded's.
Results: a Markdown table on stdout and JSON at ``--output``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = ("ours", "faiss_loaded", "naive")
MiB = 2**20


def write_data(work: Path, n_docs: int, n_queries: int, dim: int, seed: int) -> tuple[Path, Path]:
    docs_path, q_path, meta_path = work / "docs.npy", work / "queries.npy", work / "data.json"
    meta = {"num_docs": n_docs, "num_queries": n_queries, "dim": dim, "seed": seed}
    if meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        return docs_path, q_path
    rng = np.random.default_rng(seed)
    docs = np.lib.format.open_memmap(docs_path, mode="w+", dtype=np.float32, shape=(n_docs, dim))
    for start in range(0, n_docs, 65536):
        block = rng.standard_normal((min(65536, n_docs - start), dim), dtype=np.float32)
        docs[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    docs.flush()
    del docs
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    np.save(q_path, queries / np.linalg.norm(queries, axis=1, keepdims=True))
    meta_path.write_text(json.dumps(meta))
    return docs_path, q_path


def proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak of this address space)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def worker(method: str, docs_path: Path, q_path: Path, k: int, chunk_size: int, repeats: int, out: Path) -> dict:
    """Run one method in this (fresh) process; save its top-k; return timings and memory."""
    import faiss

    from era_adapters.search import exact_search

    base = proc_status_mib("VmRSS")
    queries = np.load(q_path)
    t0 = time.perf_counter()
    build_s = 0.0
    if method == "ours":
        docs = np.load(docs_path, mmap_mode="r")

        def search():
            return exact_search(queries, docs, k, chunk_size=chunk_size)

    elif method == "faiss_loaded":
        docs = np.load(docs_path)
        tb = time.perf_counter()
        index = faiss.IndexFlatIP(docs.shape[1])
        index.add(docs)
        build_s = time.perf_counter() - tb

        def search():
            return index.search(queries, k)

    elif method == "naive":
        docs = np.load(docs_path)
        repeats = 1

        def search():
            sim = queries @ docs.T
            np.negative(sim, out=sim)  # in place: spares the naive way a second n x N matrix
            top = np.argsort(sim, axis=1)[:, :k]
            return -np.take_along_axis(sim, top, axis=1), top

    else:
        raise ValueError(method)
    t1 = time.perf_counter()
    runs = []
    for _ in range(max(1, repeats)):
        ts = time.perf_counter()
        scores, idx = search()
        runs.append(time.perf_counter() - ts)
    np.save(out / f"{method}_idx.npy", idx)
    np.save(out / f"{method}_scores.npy", scores)
    peak = proc_status_mib("VmHWM")
    ru_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "method": method,
        "load_s": round(t1 - t0 - build_s, 3),
        "build_s": round(build_s, 3),
        "search_s": round(min(runs), 3),
        "search_runs_s": [round(r, 3) for r in runs],
        "total_s": round(t1 - t0 + min(runs), 3),
        "peak_rss_mib": round(peak, 1),
        "base_rss_mib": round(base, 1),
        "ru_maxrss_mib": round(ru_maxrss_kib / 1024, 1),
    }


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def compare_to_faiss(got, ref) -> dict:
    (s, i), (rs, ri) = got, ref
    hit = np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(i, ri)])
    out = {"topk_overlap_vs_faiss": round(float(hit), 6),
           "identical_to_faiss": bool(np.array_equal(s, rs) and np.array_equal(i, ri))}
    if np.array_equal(s, rs):
        canon = [np.take_along_axis(x, np.lexsort((x, -s), axis=1), axis=1) for x in (i, ri)]
        diff = canon[0] != canon[1]
        at_kth = s == s[:, -1:]  # tied with the k-th score
        out["rows_with_tie_order_diffs"] = int((i != ri).any(axis=1).sum())
        out["same_up_to_tie_order"] = bool((at_kth | ~diff).all())
    else:
        out["same_up_to_tie_order"] = False
    return out


def naive_bytes_needed(n_docs: int, n_queries: int, dim: int, k: int) -> int:
    # loaded corpus + score matrix + argsort's int64 output (+ its small per-row buffers)
    return n_docs * dim * 4 + n_queries * n_docs * (4 + 8) + 256 * MiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-docs", type=int, default=1_000_000)
    ap.add_argument("--num-queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="searches per worker for ours/faiss_loaded (best counts)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--work-dir", type=Path, help="where docs.npy goes (kept); default: a temp dir, removed")
    ap.add_argument("--cold", action="store_true", help="drop the corpus from the page cache before each method")
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "search_bench.json")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:  # child process: one method, result as JSON on the last stdout line
        work = args.work_dir
        res = worker(args.worker, work / "docs.npy", work / "queries.npy", args.k, args.chunk_size, args.repeats, work)
        print(json.dumps(res))
        return

    import faiss
    import psutil

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    temp = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="search_bench_")) if temp else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        docs_path, _ = write_data(work, args.num_docs, args.num_queries, args.dim, args.seed)
        print(f"data ready in {time.perf_counter() - t:.1f} s: {docs_path} "
              f"({docs_path.stat().st_size / MiB:.0f} MiB)", file=sys.stderr)
        results, notes = {}, []
        for method in methods:
            if method == "naive":
                need = naive_bytes_needed(args.num_docs, args.num_queries, args.dim, args.k)
                avail = psutil.virtual_memory().available
                if need > 0.9 * avail:
                    notes.append(f"naive skipped: needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available")
                    print(notes[-1], file=sys.stderr)
                    continue
            if args.cold:
                drop_from_page_cache(docs_path)
            cmd = [sys.executable, __file__, "--worker", method, "--work-dir", str(work),
                   "--k", str(args.k), "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                sys.exit(f"{method} failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
            results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{method}: {results[method]}", file=sys.stderr)

        checks = {}
        if "faiss_loaded" in results:
            ref = np.load(work / "faiss_loaded_scores.npy"), np.load(work / "faiss_loaded_idx.npy")
            for m in results:
                got = np.load(work / f"{m}_scores.npy"), np.load(work / f"{m}_idx.npy")
                results[m].update(compare_to_faiss(got, ref))
        if "ours" in results and "naive" in results:
            checks["rss_ours_over_naive"] = round(results["ours"]["peak_rss_mib"] / results["naive"]["peak_rss_mib"], 4)
            checks["rss_target_met"] = checks["rss_ours_over_naive"] < 1 / 3
        if "ours" in results and "faiss_loaded" in results:
            o, f = results["ours"], results["faiss_loaded"]
            checks["time_ours_over_faiss_search"] = round(o["search_s"] / f["search_s"], 4)
            checks["time_ours_over_faiss_total"] = round(o["total_s"] / f["total_s"], 4)
            checks["time_target_met"] = checks["time_ours_over_faiss_search"] <= 1.5
            checks["ours_matches_faiss"] = o["same_up_to_tie_order"]

        config = {k: v for k, v in vars(args).items() if k not in ("worker", "output", "work_dir")}
        env = {
            "python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__,
            "cpus": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "page_cache": "dropped before each method" if args.cold else "warm",
        }
        report = {"config": config, "env": env, "results": results, "checks": checks, "notes": notes}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(markdown(report))
        print(f"\nJSON written to {args.output}", file=sys.stderr)
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [
        f"Exact top-{c['k']} inner-product search: {c['num_queries']} queries x {c['num_docs']:,} docs, "
        f"dim {c['dim']}, float32; {report['env']['cpus']} CPUs, page cache {report['env']['page_cache']}.",
        "",
        "| method | load s | build s | search s | total s | peak RSS MiB | base RSS MiB | top-k overlap vs faiss | same as faiss (up to tie order) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m, r in report["results"].items():
        lines.append(
            f"| {m} | {r['load_s']:.2f} | {r['build_s']:.2f} | {r['search_s']:.2f} | {r['total_s']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {r['base_rss_mib']:.0f} | {r.get('topk_overlap_vs_faiss', '-')} | "
            f"{r.get('same_up_to_tie_order', '-')} |"
        )
    ch = report["checks"]
    lines.append("")
    if "rss_ours_over_naive" in ch:
        lines.append(f"- peak RSS ours / naive = {ch['rss_ours_over_naive']:.3f} (target < 0.333: "
                     f"{'met' if ch['rss_target_met'] else 'NOT met'})")
    if "time_ours_over_faiss_search" in ch:
        lines.append(f"- search time ours / faiss_loaded = {ch['time_ours_over_faiss_search']:.2f} (target <= 1.5: "
                     f"{'met' if ch['time_target_met'] else 'NOT met'}); total time ratio "
                     f"{ch['time_ours_over_faiss_total']:.2f}")
    lines += [f"- {n}" for n in report["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
