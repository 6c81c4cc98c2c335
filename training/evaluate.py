"""Retrieval evaluation: ERA adapters and zero-shot baselines on the same test queries.

    python training/evaluate.py --data DIR [--tasks ...] --system doc2doc --system query2query \
        --system path/to/adapter --query-encoder Q --doc-encoder D --output OUT_DIR

A system is `doc2doc` (the doc encoder on both sides: what the index serves today), `query2query`
(the query encoder on both sides: the expensive re-index), `query2doc` (query encoder against the
doc index with no adapter: a sanity check, near zero), or the path / Hub id of a saved ERA adapter.
Every system is scored on the test part of the seeded split (DESIGN.md) with exact inner-product
search over the whole (optionally capped) corpus. Writes results.json, results.md, TREC runs and a
plot to OUT_DIR.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import AutoModel

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder
from training.artifacts import CARD_METRICS, query_side_encoder, record_evaluation
from training.cache import embed_documents, embed_queries
from training.data import Task, TaskSplit, cap_corpus, load_tasks, make_split
from training.encoders import BARE_QUERY_TEMPLATE, TextEncoder
from training.metrics import METRIC_NAMES, paired_test, per_query_metrics_ranked
from training.search import ann_search, build_ann_index, exact_search, recall_against_exact

logger = logging.getLogger("era.evaluate")
BASELINES = ("doc2doc", "query2query", "query2doc")
REFERENCE_SYSTEM = "doc2doc"


@dataclass
class System:
    """How one system embeds queries and documents."""

    name: str
    query_encoder: TextEncoder
    doc_encoder: TextEncoder
    adapter: EraAdapter | None = None
    info: dict[str, Any] = field(default_factory=dict)
    query_model: EraQueryEncoder | None = None  # adapters with a LoRA: text in, uncached

    def embed_queries(self, queries: Sequence[str], instructions: Sequence[str], **kwargs: Any) -> np.ndarray:
        if self.query_model is not None:  # the LoRA changes the backbone: no cached plain-Q vector applies
            return self.query_model.encode_queries(list(queries), instruction=list(instructions)).numpy()
        vectors = embed_queries(self.query_encoder, queries, instructions, **kwargs)
        if self.adapter is not None:
            with torch.no_grad():
                vectors = self.adapter(torch.from_numpy(vectors)).numpy()
        elif vectors.shape[1] != self.doc_encoder.dim:
            vectors = _fit_dimension(vectors, self.doc_encoder.dim)
        return vectors

    def embed_documents(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return embed_documents(self.doc_encoder, texts, **kwargs)


def _fit_dimension(vectors: np.ndarray, dim: int) -> np.ndarray:
    """query2doc across dimensions: truncate or zero-pad, then renormalise (the spaces are unrelated)."""
    fitted = np.zeros((len(vectors), dim), dtype=np.float32)
    width = min(dim, vectors.shape[1])
    fitted[:, :width] = vectors[:, :width]
    return fitted / np.maximum(np.linalg.norm(fitted, axis=1, keepdims=True), 1e-12)


class Encoders:
    """One TextEncoder per (model, settings), so every system that shares a model shares its weights."""

    def __init__(self, cache_dir: str | os.PathLike | None, batch_size: int) -> None:
        self.cache_dir, self.batch_size, self._made = cache_dir, batch_size, {}

    def get(self, model: str, **settings: Any) -> TextEncoder:
        key = (model, tuple(sorted(settings.items())))
        if key not in self._made:
            self._made[key] = TextEncoder(model, cache_dir=self.cache_dir, batch_size=self.batch_size, **settings)
        return self._made[key]


def build_system(spec: str, encoders: Encoders, query_encoder: str | None, doc_encoder: str | None) -> System:
    """Turn a command-line system name into a System (adapters bring their own encoders)."""
    if spec in BASELINES:
        query_model = {"doc2doc": doc_encoder, "query2query": query_encoder, "query2doc": query_encoder}[spec]
        doc_model = {"doc2doc": doc_encoder, "query2query": query_encoder, "query2doc": doc_encoder}[spec]
        if query_model is None or doc_model is None:
            raise ValueError(f"system {spec} needs --query-encoder and --doc-encoder.")
        query_side = encoders.get(query_model, query_template=BARE_QUERY_TEMPLATE)
        doc_side = encoders.get(doc_model, query_template=BARE_QUERY_TEMPLATE)
        info = {"kind": "baseline", "query_encoder": query_side.model_id, "doc_encoder": doc_side.model_id}
        return System(spec, query_side, doc_side, info=info)
    config = EraConfig.from_pretrained(spec)
    query_side = query_side_encoder(config, make=encoders.get)
    query_model = None
    if getattr(config, "lora_config", None):
        # A fresh backbone (the LoRA is injected into it), from the same resolved copy the encoders use.
        backbone = AutoModel.from_pretrained(query_side.path)
        query_model = EraQueryEncoder.from_pretrained(spec, backbone=backbone, tokenizer=query_side.tokenizer)
        query_model.to(query_side.device)
        adapter = query_model
    else:
        adapter = EraAdapter.from_pretrained(spec).eval()
    if doc_encoder is not None:
        adapter.check_doc_encoder(doc_encoder)
    doc_side = encoders.get(config.doc_encoder, revision=config.doc_encoder_revision, query_template=BARE_QUERY_TEMPLATE)
    adapter.check_doc_encoder(dim=doc_side.dim)
    metadata = config.training_metadata
    info = {
        "kind": "adapter",
        "path": str(spec),
        "query_encoder": config.query_encoder,
        "doc_encoder": config.doc_encoder,
        "adapter_type": config.adapter_type,
        "mode": metadata.get("mode"),
        "label_budget": metadata.get("label_budget"),
    }
    if query_model is not None:
        info["lora"] = config.lora_config
        return System(_adapter_name(spec), query_side, doc_side, None, info, query_model=query_model)
    return System(_adapter_name(spec), query_side, doc_side, adapter, info)


def _adapter_name(spec: str) -> str:
    return Path(str(spec).rstrip("/")).name or str(spec)


@dataclass
class TaskRun:
    """One task prepared for evaluation: capped corpus and sampled test queries."""

    task: Task
    split: TaskSplit
    test_qids: list[str]
    capped: bool

    @property
    def qrels(self) -> dict[str, dict[str, int]]:
        by_id = {query.qid: query for query in self.task.queries}
        return {qid: by_id[qid].labels for qid in self.test_qids}


def prepare_task(
    task: Task, split_seed: int, max_docs: int | None, max_queries: int | None, all_queries: bool = False
) -> TaskRun:
    split = make_split(task, seed=split_seed)
    # Zero-shot comparisons with published numbers score every labeled query; training needs the split.
    test_qids = [q.qid for q in task.labeled_queries] if all_queries else list(split.test_qids)
    if not test_qids:
        raise ValueError(f"task {task.name} has no labeled test queries: it cannot be evaluated.")
    if max_queries is not None and len(test_qids) > max_queries:
        picked = np.random.default_rng([4, split_seed]).choice(len(test_qids), max_queries, replace=False)
        test_qids = [test_qids[i] for i in sorted(picked)]
    capped = cap_corpus(task, max_docs, seed=split_seed)
    return TaskRun(capped, split, test_qids, capped is not task)


def search_task(
    system: System, run: TaskRun, k: int, ann: dict[str, Any] | None, embed_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Embed, search and score one system on one task; per-query metrics plus timings."""
    task = run.task
    by_id = {query.qid: query for query in task.queries}
    queries = [by_id[qid] for qid in run.test_qids]
    started = time.perf_counter()
    doc_vectors = system.embed_documents(task.doc_texts, **embed_kwargs)
    query_vectors = system.embed_queries([q.query for q in queries], [q.instruction for q in queries], **embed_kwargs)
    embedded = time.perf_counter()
    depth = min(k + int(task.ignore_identical_ids), len(task.doc_ids))
    scores, indices = exact_search(query_vectors, doc_vectors, depth)
    ann_recall = None
    if ann:
        index = build_ann_index(doc_vectors, **ann)
        ann_scores, ann_indices = ann_search(index, query_vectors, depth)
        ann_recall = recall_against_exact(ann_indices, indices, depth)
        scores, indices = ann_scores, ann_indices
    if task.ignore_identical_ids:
        scores, indices = _drop_identical_ids(scores, indices, run.test_qids, task.doc_ids, k)
    searched = time.perf_counter()
    per_query = per_query_metrics_ranked(indices, task.doc_ids, run.test_qids, run.qrels, scores)
    return {
        "per_query": per_query,
        "indices": indices,
        "scores": scores,
        "seconds_embed": embedded - started,
        "seconds_search": searched - embedded,
        "ann_recall": ann_recall,
    }


def _drop_identical_ids(scores, indices, qids, doc_ids, k):
    """BEIR's ignore_identical_ids: a retrieved doc whose id equals the query's id does not count."""
    retrieved_ids = np.asarray(doc_ids, dtype=object)[np.maximum(indices, 0)]
    keep = (indices >= 0) & (retrieved_ids != np.asarray(qids, dtype=object)[:, None])
    # Stable sort puts the kept columns first, in their ranked order; then cut to k.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, order, axis=1)
    return (
        np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32),
        np.where(kept, np.take_along_axis(indices, order, axis=1), -1),
    )


def evaluate(
    data: str | os.PathLike,
    systems: Sequence[str],
    *,
    tasks: Sequence[str] | None = None,
    query_encoder: str | None = None,
    doc_encoder: str | None = None,
    label_budget: float | None = None,
    split_seed: int = 0,
    max_docs: int | None = None,
    max_queries: int | None = None,
    k: int = 100,
    ann: dict[str, Any] | None = None,
    ignore_identical_ids: bool | None = None,
    all_queries: bool = False,
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    record: bool = False,
) -> dict[str, Any]:
    """Evaluate every system on every task's test queries; write the report to `output` if given.

    `ignore_identical_ids`: None keeps each task's default (on for ArguAna-like tasks); True/False
    forces it for every task. `all_queries` scores every labeled query instead of the test part (for
    zero-shot comparisons with published numbers; never for adapters trained on this data).
    `record`: write each local adapter's test metrics into its config.json and model card
    (`training.artifacts.record_evaluation`), so the card's table and the Hub's model-index show them.
    """
    if not systems:
        raise ValueError("name at least one --system (doc2doc, query2query, query2doc or an adapter path).")
    if record and all_queries:
        raise ValueError("--record stores test metrics in adapter cards; --all-queries scores training queries too. "
                         "Drop one of them.")
    encoders = Encoders(cache_dir, batch_size)
    built = [build_system(spec, encoders, query_encoder, doc_encoder) for spec in systems]
    names = [system.name for system in built]
    if len(set(names)) != len(names):
        raise ValueError(f"two systems share a name ({names}); put the adapters in folders with distinct names.")
    loaded = load_tasks(data, tasks)
    if ignore_identical_ids is not None:
        loaded = [dataclasses.replace(task, ignore_identical_ids=ignore_identical_ids) for task in loaded]
    runs = [prepare_task(task, split_seed, max_docs, max_queries, all_queries) for task in loaded]
    embed_kwargs = {"cache_dir": cache_dir, "batch_size": batch_size}
    raw: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for run in runs:
        for system in built:
            logger.info("evaluating %s on %s (%d docs, %d queries)", system.name, run.task.name,
                        len(run.task.doc_ids), len(run.test_qids))
            raw[system.name][run.task.name] = search_task(system, run, k, ann, embed_kwargs)
    report = _report(built, runs, raw, label_budget=label_budget, split_seed=split_seed, max_docs=max_docs,
                     max_queries=max_queries, k=k, ann=ann, all_queries=all_queries)
    if output is not None:
        write_outputs(Path(output), report, built, runs, raw)
    if record:
        record_in_adapters(report)
    return report


def record_in_adapters(report: dict[str, Any]) -> None:
    """Store each local adapter folder's per-task test metrics and the evaluation settings in the folder."""
    settings = {key: value for key, value in report["settings"].items() if key != "all_queries"}
    for result in report["results"].values():
        path = result["system"].get("path")
        if result["system"]["kind"] != "adapter" or not Path(path).is_dir():
            continue  # a Hub id: nothing local to write
        evaluation = {task: {metric: entry[metric] for metric in CARD_METRICS if metric in entry}
                      for task, entry in result["tasks"].items()}
        record_evaluation(path, evaluation, settings)


def _mean(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {metric: float(np.mean(array)) for metric, array in values.items()}


def _report(built, runs, raw, **settings) -> dict[str, Any]:
    results: dict[str, Any] = {}
    reference = raw.get(REFERENCE_SYSTEM)
    for system in built:
        per_task = {}
        for run in runs:
            outcome = raw[system.name][run.task.name]
            entry = _mean(outcome["per_query"])
            entry.update(
                n_queries=len(run.test_qids),
                n_docs=len(run.task.doc_ids),
                seconds_embed=outcome["seconds_embed"],
                seconds_search=outcome["seconds_search"],
                per_query={
                    qid: {m: float(outcome["per_query"][m][i]) for m in METRIC_NAMES}
                    for i, qid in enumerate(run.test_qids)
                },
            )
            if outcome["ann_recall"] is not None:
                entry["ann_recall"] = outcome["ann_recall"]
            if reference is not None and system.name != REFERENCE_SYSTEM:
                entry["vs_doc2doc"] = paired_test(
                    outcome["per_query"]["ndcg@10"], reference[run.task.name]["per_query"]["ndcg@10"]
                )
            per_task[run.task.name] = entry
        domains = defaultdict(list)
        for run in runs:
            domains[run.task.domain].append(per_task[run.task.name])
        results[system.name] = {
            "system": system.info,
            "macro": {m: float(np.mean([t[m] for t in per_task.values()])) for m in METRIC_NAMES},
            "domains": {d: {m: float(np.mean([t[m] for t in ts])) for m in METRIC_NAMES} for d, ts in domains.items()},
            "tasks": per_task,
        }
        if reference is not None and system.name != REFERENCE_SYSTEM:
            mine = np.concatenate([raw[system.name][r.task.name]["per_query"]["ndcg@10"] for r in runs])
            theirs = np.concatenate([reference[r.task.name]["per_query"]["ndcg@10"] for r in runs])
            results[system.name]["vs_doc2doc"] = paired_test(mine, theirs)
    return {
        "results": results,
        "settings": settings,
        "tasks": {
            run.task.name: {
                "domain": run.task.domain,
                "source": run.task.source,
                "ignore_identical_ids": run.task.ignore_identical_ids,
                "split": run.split.to_dict(),
                "test_qids": run.test_qids,
                "doc_ids": run.task.doc_ids if run.capped else None,  # the sampled corpus, when capped
            }
            for run in runs
        },
    }


# ---------------------------------------------------------------------------------------------
# Outputs: results.json, results.md, runs/<system>/<task>.trec, ndcg10.png
# ---------------------------------------------------------------------------------------------


def write_outputs(folder: Path, report: dict[str, Any], built, runs, raw) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / "results.json", json.dumps(report, indent=1))
    _atomic_write(folder / "results.md", markdown_table(report))
    for system in built:
        for run in runs:
            outcome = raw[system.name][run.task.name]
            _atomic_write(
                folder / "runs" / _safe(system.name) / f"{_safe(run.task.name)}.trec",
                trec_run(run.test_qids, run.task.doc_ids, outcome["indices"], outcome["scores"], system.name),
            )
    plot_ndcg(report, folder / "ndcg10.png")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def trec_run(qids, doc_ids, indices, scores, tag: str) -> str:
    lines = []
    for row, qid in enumerate(qids):
        for rank, (index, score) in enumerate(zip(indices[row], scores[row]), start=1):
            if index >= 0:
                lines.append(f"{qid} Q0 {doc_ids[index]} {rank} {score:.6f} {_safe(tag)}")
    return "\n".join(lines) + "\n"


def markdown_table(report: dict[str, Any], metric: str = "ndcg@10") -> str:
    """Per-task and macro `metric`, each system vs doc2doc with a paired test's p-value."""
    results = report["results"]
    tasks = list(report["tasks"])
    header = "| system | " + " | ".join(tasks) + f" | macro {metric} |"
    lines = [header, "|" + "---|" * (len(tasks) + 2)]
    for name, result in results.items():
        cells = [_cell(result["tasks"][task][metric], result["tasks"][task].get("vs_doc2doc")) for task in tasks]
        cells.append(_cell(result["macro"][metric], result.get("vs_doc2doc")))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    note = (
        f"\n{metric} on each task's test queries; (Δ vs doc2doc, paired sign-flip p-value; * p<0.05). "
        "Macro p-value pools the queries of all tasks.\n"
    )
    return "\n".join(lines) + "\n" + note


def _cell(value: float, test: dict[str, float] | None) -> str:
    if not test:
        return f"{value:.4f}"
    star = "*" if test["p_value"] < 0.05 else ""
    return f"{value:.4f} ({test['mean_diff']:+.3f}, p={test['p_value']:.3g}{star})"


def plot_ndcg(report: dict[str, Any], path: Path) -> None:
    """Macro nDCG@10 by label budget for adapters; zero-shot baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    singles = []
    for name, result in report["results"].items():
        budget, value = result["system"].get("label_budget"), result["macro"]["ndcg@10"]
        if budget is None:
            singles.append((name, value))
        else:
            curves[result["system"].get("mode") or name].append((float(budget), value))
    for label, points in curves.items():
        points.sort()
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    for index, (name, value) in enumerate(singles):
        if curves:
            axis.axhline(value, linestyle="--", color=f"C{(index + len(curves)) % 10}", label=name)
        else:
            axis.bar(index, value, label=name, color=f"C{index % 10}")
    if curves:
        axis.set_xlabel("label budget (fraction of labeled queries)")
        axis.set_xticks(sorted({b for points in curves.values() for b, _ in points}))
    else:
        axis.set_xticks(range(len(singles)), [name for name, _ in singles], rotation=20)
    axis.set_ylabel("macro nDCG@10 (test queries)")
    axis.set_title(f"{len(report['tasks'])} task(s): " + ", ".join(list(report["tasks"])[:4]))
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.stem + ".tmp.png")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _ann_settings(kind: str | None, params: Sequence[str]) -> dict[str, Any] | None:
    if kind is None:
        if params:
            raise ValueError("--ann-param needs --ann ivf|hnsw.")
        return None
    settings: dict[str, Any] = {"kind": kind}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--ann-param {item!r}: write it as key=value, e.g. nprobe=32.")
        settings[key] = int(value)
    return settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of MAIR/BEIR task folders, one task folder, or MAIR task names")
    parser.add_argument("--tasks", nargs="+", help="task names to evaluate (default: all under --data)")
    parser.add_argument("--system", action="append", required=True, dest="systems",
                        help="doc2doc, query2query, query2doc, or an adapter folder / Hub id (repeatable)")
    parser.add_argument("--query-encoder", help="query encoder for the baselines, e.g. sentence-transformers/all-mpnet-base-v2")
    parser.add_argument("--doc-encoder", help="doc encoder of the index, e.g. sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--label-budget", type=float, help="label budget the adapters were trained with (for the report)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the test/validation/train split")
    parser.add_argument("--max-docs", type=int, help="cap each corpus: every judged doc plus seeded random others")
    parser.add_argument("--max-queries", type=int, help="seeded sample of at most this many test queries per task")
    parser.add_argument("--k", type=int, default=100, help="search depth (metrics need 100)")
    parser.add_argument("--ann", choices=("ivf", "hnsw"), help="approximate search instead of exact; reports its recall")
    parser.add_argument("--ann-param", action="append", default=[], help="e.g. nlist=1024, nprobe=32, M=32, efSearch=128")
    parser.add_argument("--ignore-identical-ids", choices=("auto", "on", "off"), default="auto",
                        help="do not count a retrieved doc whose id is the query's (auto: per task, on for ArguAna)")
    parser.add_argument("--all-queries", action="store_true",
                        help="score every labeled query, not the test part (zero-shot baselines vs published numbers)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-dir", help="ERA cache (default: $ERA_CACHE_DIR or ~/.cache/era)")
    parser.add_argument("--output", required=True, help="folder for results.json, results.md, runs/ and the plot")
    parser.add_argument("--record", action="store_true",
                        help="write each adapter folder's test metrics into its config.json and model card")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    report = evaluate(
        args.data,
        args.systems,
        tasks=args.tasks,
        query_encoder=args.query_encoder,
        doc_encoder=args.doc_encoder,
        label_budget=args.label_budget,
        split_seed=args.split_seed,
        max_docs=args.max_docs,
        max_queries=args.max_queries,
        k=args.k,
        ann=_ann_settings(args.ann, args.ann_param),
        ignore_identical_ids={"auto": None, "on": True, "off": False}[args.ignore_identical_ids],
        all_queries=args.all_queries,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        output=args.output,
        record=args.record,
    )
    print(markdown_table(report))
    print(f"results: {Path(args.output) / 'results.json'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
