"""The evaluation's report files: results.json, results.md (each system per task against doc2doc with a
paired sign-flip p-value), TREC run files (runs/<system>/<task>.trec) and a plot (ndcg10.png). Every
file is written crash-safely.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
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
    for name, reason in report["settings"].get("skipped", {}).items():
        note += f"\n{name} was not scored: {reason}\n"
    if report["settings"].get("index"):
        recalls = {name: [entry["ann_recall"] for entry in result["tasks"].values() if "ann_recall" in entry]
                   for name, result in results.items()}
        note += f"\nSearched through {report['settings']['index']}; recall@k against exact search: " + ", ".join(
            f"{name} {np.mean(values):.4f}" for name, values in recalls.items() if values) + "\n"
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
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        figure.savefig(handle, dpi=120, format="png")
    plt.close(figure)


