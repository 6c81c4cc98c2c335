"""The evaluation's report files: results.json, results.md (each system per task against doc2doc with a
paired sign-flip p-value), TREC run files (runs/<system>/<task>.trec) and a plot (ndcg10.png). Every
file is written crash-safely.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from modeling_era.modeling_era import atomic_path, atomic_write


def write_outputs(folder: Path, report: dict[str, Any], built, runs, raw) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "results.json", json.dumps(report, indent=1))
    atomic_write(folder / "results.md", markdown_table(report))
    for system in built:
        for run in runs:
            outcome = raw[system.name][run.task.name]
            atomic_write(
                folder / "runs" / _safe(system.name) / f"{_safe(run.task.name)}.trec",
                trec_run(run.test_qids, outcome.get("doc_ids", run.task.doc_ids), outcome["indices"], outcome["scores"],
                         system.name),
            )
    plot_ndcg(report, folder / "ndcg10.png")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def trec_run(qids, doc_ids, indices, scores, tag: str) -> str:
    """A TREC run file. Scores are written in full, as the shortest text that reads back as the very
    score searched with (numpy's round-trip repr of the float32): distinct scores stay distinct and in
    order, ties stay ties, so trec_eval ranks the run as the reported metrics did and reproduces them."""
    lines = []
    for row, qid in enumerate(qids):
        for rank, (index, score) in enumerate(zip(indices[row], np.asarray(scores[row])), start=1):
            if index >= 0:
                lines.append(f"{qid} Q0 {doc_ids[index]} {rank} {score!s} {_safe(tag)}")
    return "\n".join(lines) + "\n"


MAIN_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")


def markdown_table(report: dict[str, Any], metric: str = "ndcg@10") -> str:
    """Per-task and macro `metric` with each task's test-query count, each system vs doc2doc with a
    paired test's p-value; then the main metrics per system, and a line for each adapter below doc2doc."""
    results = report["results"]
    tasks = list(report["tasks"])
    counts = {task: len(report["tasks"][task]["test_qids"]) for task in tasks}
    header = "| system | " + " | ".join(f"{task} ({counts[task]} queries)" for task in tasks) + f" | macro {metric} |"
    lines = [header, "|" + "---|" * (len(tasks) + 2)]
    for name, result in results.items():
        cells = [_cell(result["tasks"][task][metric], result["tasks"][task].get("vs_doc2doc")) for task in tasks]
        cells.append(_cell(result["macro"][metric], result.get("vs_doc2doc")))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    note = (
        f"\n{metric} on each task's test queries; (Δ vs doc2doc, paired sign-flip p-value; * p<0.05). "
        "Macro p-value pools the queries of all tasks.\n"
    )
    settings = report.get("settings", {})
    for name, reason in settings.get("skipped", {}).items():
        note += f"\n{name} was not scored: {reason}\n"
    if settings.get("index"):
        recalls = {name: [entry["ann_recall"] for entry in result["tasks"].values() if "ann_recall" in entry]
                   for name, result in results.items()}
        note += f"\nSearched through {settings['index']}; recall@k against exact search: " + ", ".join(
            f"{name} {np.mean(values):.4f}" for name, values in recalls.items() if values) + "\n"
    return "\n".join(lines) + "\n" + note + "\n" + _main_metrics(report, sum(counts.values())) + _below_index(results)


def _main_metrics(report: dict[str, Any], queries: int) -> str:
    names = {"ndcg@10": "nDCG@10", "recall@100": "Recall@100", "mrr@10": "MRR@10", "map@100": "MAP@100"}
    lines = ["| system | test queries | " + " | ".join(names[m] for m in MAIN_METRICS) + " |",
             "|---|---:|" + "---|" * len(MAIN_METRICS)]
    for name, result in report["results"].items():
        lines.append(f"| {name} | {queries} | " + " | ".join(f"{result['macro'][m]:.4f}" for m in MAIN_METRICS) + " |")
    return "Main metrics (macro over tasks; the same test queries for every system):\n\n" + "\n".join(lines) + "\n"


def _below_index(results: dict[str, Any]) -> str:
    if "doc2doc" not in results:
        return ""
    reference = results["doc2doc"]["macro"]["ndcg@10"]
    lines = [f"\n**{name} is below doc2doc** (the index as it is): macro nDCG@10 {r['macro']['ndcg@10']:.4f} vs "
             f"{reference:.4f} (pooled p={r['vs_doc2doc']['p_value']:.3g}).\n"
             for name, r in results.items()
             if r["system"].get("kind") == "adapter" and r["macro"]["ndcg@10"] < reference and r.get("vs_doc2doc")]
    return "".join(lines)


def _cell(value: float, test: dict[str, float] | None) -> str:
    if not test:
        return f"{value:.4f}"
    star = "*" if test["p_value"] < 0.05 else ""
    return f"{value:.4f} ({test['mean_diff']:+.3f}, p={test['p_value']:.3g}{star})"


_MARKERS = "osD^vP*Xph<>"
_CORE_BASELINES = ("doc2doc", "query2query")  # the axis always shows them; others may fall off it


def ndcg_figure(report: dict[str, Any]) -> Any:
    """Macro nDCG@10: each adapter its own labelled mark at the number of labeled queries it used (0:
    stage 1 only), the zero-shot baselines as labelled horizontal lines; the y-axis spans the adapters,
    doc2doc and query2query, and a baseline far outside it is named in the legend instead of drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.8))
    adapters, baselines = [], []
    for name, result in report["results"].items():
        value = result["macro"]["ndcg@10"]
        (adapters if result["system"].get("kind") == "adapter" else baselines).append((name, value, result["system"]))
    core = [value for _, value, _ in adapters] + [v for n, v, _ in baselines if n in _CORE_BASELINES or not adapters]
    low, high = min(core), max(core)
    pad = max(0.01, 0.15 * (high - low))
    axis.set_ylim(low - pad, high + pad)
    for index, (name, value, info) in enumerate(adapters):
        x = _labels_used(info)
        axis.scatter([x], [value], marker=_MARKERS[index % len(_MARKERS)], s=70, color=f"C{index % 10}", zorder=3,
                     label=f"{name}: {value:.4f}")
        axis.annotate(name, (x, value), textcoords="offset points", xytext=(6, 4), fontsize=7)
    for index, (name, value, _) in enumerate(baselines):
        color = f"C{(index + len(adapters)) % 10}"
        if low - pad <= value <= high + pad:
            axis.axhline(value, linestyle="--", color=color, label=f"{name}: {value:.4f}")
        else:  # drawing it would squash every difference that matters
            axis.plot([], [], linestyle="none", label=f"{name}: {value:.4f} (off the axis)")
    axis.set_xlabel("labeled queries used in training (0: stage 1 only, no labels)")
    axis.set_ylabel("macro nDCG@10 (test queries)")
    axis.set_title(f"{len(report['tasks'])} task(s): " + ", ".join(list(report["tasks"])[:4]))
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def _labels_used(info: dict[str, Any]) -> float:
    total = info.get("labels_used")
    if total:
        return total["train_queries"] + total["validation_queries"]
    return 0.0


def plot_ndcg(report: dict[str, Any], path: Path) -> None:
    """Write `ndcg_figure(report)` as a PNG, crash-safely."""
    import matplotlib.pyplot as plt

    figure = ndcg_figure(report)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        figure.savefig(handle, dpi=120, format="png")
    plt.close(figure)
