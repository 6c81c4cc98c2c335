"""The budgets experiment: ERA (`both`) against its baselines at label budgets 5%, 10%, 20%, 40%, and the
distilled adapters (zero labels, and with labels).

    python bench/budgets_bench.py [--data DATA] [--tasks restbench_spotify gorilla_torchhub] \
        [--query-encoder sentence-transformers/all-mpnet-base-v2] \
        [--doc-encoder sentence-transformers/all-MiniLM-L6-v2] [--budgets 0.05 0.1 0.2 0.4] \
        [--max-docs 2000] [--max-queries 200] [--prompt-templates "{query}" "{instruction} {query}"] \
        [--no-symmetric] [--no-fusion] [--no-distill] [--adapt-arg lr=0.001 ...] [--distill-arg KEY=JSON ...] \
        [--distill-weight 1.0] [--output bench/results/budgets]

Systems, all scored per task on the same test queries (the fixed test part of the seeded split,
optionally a seeded sample of `--max-queries` of them) over the same capped corpus:

* `doc2doc`: D on both sides, zero-shot (what the index serves today) — the reference;
* `query2query`: Q on both sides, zero-shot (the expensive re-index);
* `align[T]`: stage 1 only (training/align.py), per task, with query prompt template T;
* `adapt[T]@b`: labels only from a neutral start (the "Embedding Adapter" baseline) at budget b;
* `both[T]@b`: ERA, stage 1 then stage 2 at budget b;
* `sym_both@b` (unless `--no-symmetric`): D→D with an adapter trained the same way (align + adapt);
* `fusion_align`, `fusion@b` (unless `--no-fusion`): the fusion adapter (issue 8) on [Q(q); D(q)], stage 1
  then stage 2 exactly like `both`, with the first prompt template;
* `distill[T]`, `fusion_distill` (unless `--no-distill`): stage 1, then distillation of the re-index's
  ranking from the unlabeled non-test queries (no labels); `both+distill[T]@b`, `fusion+distill@b`: stage
  2 from them with the distillation loss kept (`--distill-weight`). The teacher's cost per task
  (documents Q embedded, seconds, against the full corpus a re-index embeds) is reported.

With fusion, the extra query-time cost of running both backbones is measured in the same run: Q alone
versus Q + D on a sample of test queries (uncached), reported as a ratio.

Adapters are trained per task (one index per task). Budgets follow the paper's protocol: a budget is
a fraction of ALL of a task's labeled queries (test ones included), training + validation labels
counted together (`era_adapters.splits.make_split`). Stage 2's own `--label-budget` is a share of the
training pool instead, so each protocol budget is converted into the counts stage 2 takes
(`protocol_label_options`: `train_labels`, `val_labels`, with `validation="holdout"`), which select
exactly the protocol's queries; the counts are recorded in the output's settings. Every adapter folder is kept under `<work-dir>/<settings hash>/<task>/`
(default runs/budgets_bench); an existing one is reused, so an interrupted run continues where it
stopped. Output: `<output>.json`
(per-task and macro nDCG@10, per-query values, paired sign-flip tests against doc2doc per task and
pooled over all tasks' queries, the settings, timings, and which of the issue's targets hold) and
`<output>.md` (the table). The full experiment (mpnet on every shared dataset) takes hours on a
2-core CPU; `--tasks`, `--max-docs` and `--max-queries` size it down.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from modeling_era import EraConfig
from modeling_era.modeling_era import atomic_write
from era_adapters.adapt import adapt
from era_adapters.align import align
from era_adapters.data import DataError, load_tasks
from era_adapters.distill import distill
from era_adapters.teacher import TeacherSettings
from era_adapters.evaluate import evaluate
from era_adapters.metrics import paired_test
from era_adapters.splits import make_split, protocol_label_options

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
BUDGETS = (0.05, 0.1, 0.2, 0.4)
TEMPLATES = {"{query}": "q", "{instruction} {query}": "iq"}
METRIC = "ndcg@10"
TEACHER_FIELDS = {spec.name for spec in dataclasses.fields(TeacherSettings)}


def template_tag(template: str) -> str:
    return TEMPLATES.get(template, "t" + str(abs(hash(template)) % 10_000))


def pick_tasks(data: str, names: Sequence[str] | None, min_labeled: int) -> list[str]:
    """The requested tasks, or every task under `data` with at least `min_labeled` labeled queries."""
    tasks = load_tasks(data, names)
    if names:
        return [task.name for task in tasks]
    chosen = [task.name for task in tasks if len(task.labeled_queries) >= min_labeled]
    skipped = sorted(set(task.name for task in tasks) - set(chosen))
    if skipped:
        logger.warning("skipping tasks with fewer than %d labeled queries: %s", min_labeled, ", ".join(skipped))
    return chosen


def adapter_done(folder: Path) -> bool:
    """Whether `folder` already holds a saved adapter (benchmarks reuse it instead of retraining)."""
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def trained(folder: Path, fit: Callable[[Path], Any], timings: dict[str, float], label: str) -> Path:
    """`folder` once `fit` has written an adapter there (skipped when one is there already), timed as `label`."""
    if not adapter_done(folder):
        started = time.perf_counter()
        fit(folder)
        timings[label] = time.perf_counter() - started
        logger.info("%s trained in %.1fs", label, timings[label])
    return folder


def protocol_labels(data: str, task: str, budgets: Sequence[float]) -> dict[float, dict[str, Any]]:
    """Stage 2's options for each protocol budget of `task`: the counts that select the protocol's
    training and validation queries (split seed 0, as `evaluate`'s), early stopping on the latter."""
    split = make_split(load_tasks(data, [task])[0], seed=0, budgets=budgets)
    return {budget: {**protocol_label_options(split, budget), "validation": "holdout"} for budget in budgets}


def train_task_adapters(
    data: str, task: str, folder: Path, *, query_encoder: str, doc_encoder: str, budgets: Sequence[float],
    templates: Sequence[str], symmetric: bool, fusion: bool, num_texts: int, max_docs: int | None, cache_dir: str | None,
    adapt_args: dict[str, Any], timings: dict[str, float], labels: dict[float, dict[str, Any]],
    distill_args: dict[str, Any] | None = None, distill_weight: float = 0.0,
) -> list[Path]:
    """Train (or reuse) every adapter of one task; return their folders in table order. `labels`: stage 2's
    options per budget (`protocol_labels`). With `distill_args` (a dict, possibly empty), also the
    distilled adapters (issue 13): `distill[T]` and `fusion_distill` (no labels), and `both+distill[T]@b` /
    `fusion+distill@b` (stage 2 from them, plus `distill_weight` × the distillation loss)."""
    systems: list[Path] = []

    def timed(name: str, target: Path, fit) -> Path:
        return trained(target, fit, timings, f"{task}/{name}")

    common = {"tasks": [task], "max_docs": max_docs, "cache_dir": cache_dir}

    def distilled(name: str, init: Path) -> list[Path]:
        """The zero-label distillation of `init`, then stage 2 from it at every budget."""
        start = timed(name, folder / name, lambda out: distill(data, init=str(init), output=str(out), **common,
                                                               **distill_args))
        prefix = name.replace("_distill", "+distill").replace("distill[", "both+distill[")
        teacher = {key: value for key, value in distill_args.items() if key in TEACHER_FIELDS}  # stage 2's teacher
        return [start] + [timed(f"{prefix}@{budget:g}", folder / f"{prefix}@{budget:g}", lambda out: adapt(
            data, output=out, **labels[budget], mode="both", init=start, distill_weight=distill_weight, **common,
            **adapt_args, **teacher)) for budget in budgets]

    for template in templates:
        tag = template_tag(template)
        aligned = timed(f"align[{tag}]", folder / f"align[{tag}]", lambda out: align(
            data, query_encoder=query_encoder, doc_encoder=doc_encoder, output=out, num_texts=num_texts,
            prompt_template=template, **common))
        systems.append(aligned)
        for budget in budgets:
            systems.append(timed(f"adapt[{tag}]@{budget:g}", folder / f"adapt[{tag}]@{budget:g}", lambda out: adapt(
                data, output=out, **labels[budget], mode="adapt", query_encoder=query_encoder,
                doc_encoder=doc_encoder, prompt_template=template, **common, **adapt_args)))
            systems.append(timed(f"both[{tag}]@{budget:g}", folder / f"both[{tag}]@{budget:g}", lambda out: adapt(
                data, output=out, **labels[budget], mode="both", init=aligned, **common, **adapt_args)))
        if distill_args is not None:
            systems += distilled(f"distill[{tag}]", aligned)
    if symmetric:
        sym_align = timed("sym_align", folder / "sym_align", lambda out: align(
            data, query_encoder=doc_encoder, doc_encoder=doc_encoder, output=out, num_texts=num_texts,
            prompt_template="{query}", **common))
        for budget in budgets:
            systems.append(timed(f"sym_both@{budget:g}", folder / f"sym_both@{budget:g}", lambda out: adapt(
                data, output=out, **labels[budget], mode="both", init=sym_align, **common, **adapt_args)))
    if fusion:
        fusion_align = timed("fusion_align", folder / "fusion_align", lambda out: align(
            data, query_encoder=query_encoder, doc_encoder=doc_encoder, output=out, num_texts=num_texts,
            prompt_template=templates[0], adapter="fusion", **common))
        systems.append(fusion_align)
        for budget in budgets:
            systems.append(timed(f"fusion@{budget:g}", folder / f"fusion@{budget:g}", lambda out: adapt(
                data, output=out, **labels[budget], mode="both", init=fusion_align, **common, **adapt_args)))
        if distill_args is not None:
            systems += distilled("fusion_distill", fusion_align)
    return systems


def query_cost(data: str, task: str, query_encoder: str, doc_encoder: str, template: str, count: int,
               cache_dir: str | None, repeats: int = 3) -> dict[str, Any]:
    """Seconds to embed `count` queries of `task` with Q alone and with Q + D (fusion), uncached: the best
    of `repeats` alternating runs each, after a warm-up that loads both models."""
    from era_adapters.encoders import FusedEncoder, TextEncoder

    loaded = load_tasks(data, [task])[0]
    strong = TextEncoder(query_encoder, cache_dir=cache_dir, query_template=template)
    fused = FusedEncoder(strong, TextEncoder(doc_encoder, cache_dir=cache_dir, query_template=template))
    prompts = [fused.format_query(query.query, query.instruction) for query in loaded.queries[:count]]
    fused.encode(prompts[:8])
    timings: dict[str, list[float]] = {"query_encoder": [], "fusion": []}
    for _ in range(repeats):
        for name, encoder in (("query_encoder", strong), ("fusion", fused)):
            started = time.perf_counter()
            encoder.encode(prompts)
            timings[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in timings.items()}
    return {**best, "runs": timings, "task": task, "queries": len(prompts), "ratio": best["fusion"] / best["query_encoder"]}


def combine(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-task reports of `evaluate` -> per system: per-task nDCG@10, macro, pooled paired test."""
    systems: dict[str, dict[str, Any]] = defaultdict(lambda: {"tasks": {}, "per_query": {}})
    for task, report in reports.items():
        for name, result in report["results"].items():
            entry = result["tasks"][task]
            systems[name]["system"] = result["system"]
            systems[name]["tasks"][task] = {
                METRIC: entry[METRIC],
                "recall@100": entry.get("recall@100"),
                "n_queries": entry["n_queries"],
                "n_docs": entry["n_docs"],
                "vs_doc2doc": entry.get("vs_doc2doc"),
            }
            systems[name]["per_query"][task] = [entry["per_query"][qid][METRIC] for qid in report["tasks"][task]["test_qids"]]
    tasks = list(reports)
    for name, system in systems.items():
        present = [task for task in tasks if task in system["tasks"]]
        system["macro"] = float(np.mean([system["tasks"][t][METRIC] for t in present])) if present else float("nan")
        system["complete"] = len(present) == len(tasks)
        if name != "doc2doc" and "doc2doc" in systems and present:
            mine = np.concatenate([system["per_query"][t] for t in present])
            theirs = np.concatenate([systems["doc2doc"]["per_query"][t] for t in present])
            system["vs_doc2doc"] = paired_test(mine, theirs)
    return dict(systems)


def check_targets(systems: dict[str, Any], budgets: Sequence[float], templates: Sequence[str]) -> list[dict[str, Any]]:
    """The issue's targets on the macro-average, one line each (per prompt template)."""
    checks = []

    def macro(name: str) -> float | None:
        return systems[name]["macro"] if name in systems else None

    def add(claim: str, left: float | None, right: float | None, margin: float = 0.0) -> None:
        holds = None if left is None or right is None else bool(left > right - margin)
        checks.append({"target": claim, "left": left, "right": right, "holds": holds})

    for template in templates:
        tag = template_tag(template)
        for budget in budgets:
            both = macro(f"both[{tag}]@{budget:g}")
            add(f"both[{tag}] > adapt[{tag}] at {budget:g}", both, macro(f"adapt[{tag}]@{budget:g}"))
            add(f"both[{tag}] > align[{tag}] at {budget:g}", both, macro(f"align[{tag}]"))
            add(f"both[{tag}] > doc2doc at {budget:g}", both, macro("doc2doc"))
        if 0.4 in budgets:
            add(f"both[{tag}]@0.4 within 1 point of query2query (or above)", macro(f"both[{tag}]@0.4"),
                macro("query2query"), margin=0.01)
    if "fusion_align" in systems:  # issue 8, against the first template's ERA
        tag = template_tag(templates[0])
        for budget in budgets:
            fusion = macro(f"fusion@{budget:g}")
            add(f"fusion ≥ sym_both at {budget:g}", fusion, macro(f"sym_both@{budget:g}"), margin=1e-12)
            add(f"fusion ≥ both[{tag}] at {budget:g}", fusion, macro(f"both[{tag}]@{budget:g}"), margin=1e-12)
            if budget >= 0.2:
                add(f"fusion ≥ query2query at {budget:g}", fusion, macro("query2query"), margin=1e-12)
    tag = template_tag(templates[0])
    if f"distill[{tag}]" in systems:  # issue 13
        add(f"distill[{tag}] ≥ doc2doc + 2 points (no labels)", macro(f"distill[{tag}]"), macro("doc2doc"),
            margin=-0.02 + 1e-12)
        if "fusion_distill" in systems:
            add("fusion_distill ≥ query2query (no labels)", macro("fusion_distill"), macro("query2query"), margin=1e-12)
            below = [t for t, entry in systems["fusion_distill"]["tasks"].items()
                     if entry.get("vs_doc2doc") and entry["vs_doc2doc"]["p_value"] < 0.05
                     and entry["vs_doc2doc"]["mean_diff"] < 0]
            checks.append({"target": "fusion_distill: no task significantly below doc2doc", "left": len(below),
                           "right": 0, "holds": not below, "tasks_below": below})
        for budget in budgets:
            name = f"both+distill[{tag}]@{budget:g}"
            add(f"{name} > both[{tag}]@{budget:g}", macro(name), macro(f"both[{tag}]@{budget:g}"))
        if budgets:
            add(f"both+distill[{tag}]@{budgets[0]:g} ≥ query2query", macro(f"both+distill[{tag}]@{budgets[0]:g}"),
                macro("query2query"), margin=1e-12)
        if 0.2 in budgets and "fusion+distill@0.2" in systems:
            add("fusion+distill@0.2 ≥ 0.50", macro("fusion+distill@0.2"), 0.50, margin=1e-12)
    return checks


def teacher_costs(folders: dict[str, list[Path]]) -> dict[str, Any]:
    """Per task, what the distillation teacher cost: documents Q embedded (≤ the budget), seconds, and the
    full corpus a re-index embeds (read from the distilled adapters' metadata)."""
    costs = {}
    for task, paths in folders.items():
        for path in paths:
            if path.name.startswith("distill["):
                record = EraConfig.from_pretrained(path).training_metadata["distillation"]["teacher_cost"][task]
                costs[task] = record
    return costs


def markdown(systems: dict[str, Any], tasks: Sequence[str], checks: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    def cell(value: float, test: dict[str, float] | None) -> str:
        if test is None:
            return f"{value:.4f}"
        star = "*" if test["p_value"] < 0.05 else ""
        return f"{value:.4f} ({test['mean_diff']:+.3f}{star})"

    header = "| system | " + " | ".join(tasks) + " | macro nDCG@10 | pooled p vs doc2doc |"
    lines = [header, "|" + "---|" * (len(tasks) + 3)]
    for name, system in systems.items():
        cells = [cell(system["tasks"][t][METRIC], system["tasks"][t].get("vs_doc2doc")) if t in system["tasks"] else "–"
                 for t in tasks]
        test = system.get("vs_doc2doc")
        p_value = f"{test['p_value']:.3g}" if test else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {system['macro']:.4f} | {p_value} |")
    lines.append("")
    lines.append("nDCG@10 on each task's test queries (Δ vs doc2doc; * paired sign-flip p < 0.05). "
                 "Pooled p: the test over all tasks' queries together.")
    lines.append(f"Q = {settings['query_encoder']}, D = {settings['doc_encoder']}, max_docs = {settings['max_docs']}, "
                 f"max_queries = {settings['max_queries']}, budgets = {settings['budgets']}.")
    lines.append("")
    lines.append("| target (macro nDCG@10) | left | right | holds |")
    lines.append("|---|---|---|---|")
    for check in checks:
        left = "–" if check["left"] is None else f"{check['left']:.4f}"
        right = "–" if check["right"] is None else f"{check['right']:.4f}"
        lines.append(f"| {check['target']} | {left} | {right} | {check['holds']} |")
    return "\n".join(lines) + "\n"


def model_reference(name: str) -> str:
    """Local model folders by absolute path (adapters record them so), Hub ids as they are."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    args.query_encoder, args.doc_encoder = model_reference(args.query_encoder), model_reference(args.doc_encoder)
    output = Path(args.output)
    tasks = pick_tasks(args.data, args.tasks, args.min_labeled)
    if not tasks:
        raise DataError(f"no task under {args.data} has {args.min_labeled} labeled queries; pass --tasks.")
    adapt_args = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.adapt_arg)}
    distill_args = None if not args.distill else \
        {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.distill_arg)}
    timings: dict[str, float] = {}
    reports = {}
    # Adapters trained with other settings live elsewhere: a reused folder always matches this run.
    key = json.dumps([args.query_encoder, args.doc_encoder, args.max_docs, args.num_texts, adapt_args]
                     + ([distill_args, args.distill_weight] if distill_args is not None else []), sort_keys=True)
    work_dir = Path(args.work_dir) / hashlib.sha256(key.encode()).hexdigest()[:10]
    label_options, task_folders = {}, {}
    for task in tasks:
        logger.info("task %s", task)
        label_options[task] = protocol_labels(args.data, task, args.budgets)
        folders = train_task_adapters(
            args.data, task, work_dir / task, query_encoder=args.query_encoder,
            doc_encoder=args.doc_encoder, budgets=args.budgets, templates=args.prompt_templates,
            symmetric=args.symmetric, fusion=args.fusion, num_texts=args.num_texts, max_docs=args.max_docs, cache_dir=args.cache_dir,
            adapt_args=adapt_args, timings=timings, labels=label_options[task], distill_args=distill_args,
            distill_weight=args.distill_weight,
        )
        task_folders[task] = folders
        clock = time.perf_counter()
        reports[task] = evaluate(
            args.data, ["doc2doc", "query2query", *[str(f) for f in folders]], tasks=[task],
            query_encoder=args.query_encoder, doc_encoder=args.doc_encoder, max_docs=args.max_docs,
            max_queries=args.max_queries, cache_dir=args.cache_dir,
        )
        timings[f"{task}/evaluate"] = time.perf_counter() - clock
    systems = combine(reports)
    settings = {
        "data": str(args.data), "tasks": tasks, "query_encoder": args.query_encoder, "doc_encoder": args.doc_encoder,
        "budgets": list(args.budgets), "prompt_templates": list(args.prompt_templates), "symmetric": args.symmetric,
        "fusion": args.fusion,
        "num_texts": args.num_texts, "max_docs": args.max_docs, "max_queries": args.max_queries,
        "adapt_args": adapt_args, "distill_args": distill_args, "distill_weight": args.distill_weight, "split_seed": 0, "machine": platform.platform(), "work_dir": str(work_dir),
        "budget_protocol": "fractions of all labeled queries (validation included), passed to stage 2 as counts",
        "stage2_label_options": {task: {str(b): o for b, o in options.items()} for task, options in label_options.items()},
    }
    checks = check_targets(systems, args.budgets, args.prompt_templates)
    cost_task = args.cost_task or ("scifact" if "scifact" in tasks else tasks[0])
    cost = query_cost(args.data, cost_task, args.query_encoder, args.doc_encoder, args.prompt_templates[0],
                      args.cost_queries, args.cache_dir) if args.fusion and args.cost_queries else None
    result = {
        "settings": settings,
        "systems": {name: {k: v for k, v in s.items() if k != "per_query"} for name, s in systems.items()},
        "per_query": {name: s["per_query"] for name, s in systems.items()},
        "test_qids": {task: report["tasks"][task]["test_qids"] for task, report in reports.items()},
        "targets": checks,
        "fusion_query_cost": cost,
        "teacher_cost": teacher_costs(task_folders) if distill_args is not None else None,
        "seconds": {"total": time.perf_counter() - started, **timings},
    }
    table = markdown(systems, tasks, checks, settings)
    if cost:
        table += (f"\nQuery-time cost of fusion (Q + D backbones) vs Q alone, {cost['queries']} {cost['task']} queries, "
                  f"uncached, best of 3 alternating runs: {cost['fusion']:.2f} s vs {cost['query_encoder']:.2f} s "
                  f"= {cost['ratio']:.2f}×.\n")
    if result["teacher_cost"]:
        table += "\n| task | documents Q embedded for the teacher | budget | seconds | full corpus (a re-index) |\n"
        table += "|---|---:|---:|---:|---:|\n" + "".join(
            f"| {task} | {c['documents_embedded_by_q']} | {c['teacher_docs_budget']} | {c['seconds']:.1f} | "
            f"{c['full_corpus']} |\n" for task, c in result["teacher_cost"].items())
    write_results(output, result, table)
    return result


def write_results(output: Path, result: dict[str, Any], table: str) -> None:
    """`<output>.json` and `<output>.md`, each written whole or not at all; the table is also printed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output.with_suffix(".json"), json.dumps(result, indent=1))
    atomic_write(output.with_suffix(".md"), table)
    print(table)
    print(f"results: {output.with_suffix('.json')} and {output.with_suffix('.md')}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--tasks", nargs="+", help="default: every task with at least --min-labeled labeled queries")
    parser.add_argument("--min-labeled", type=int, default=50)
    parser.add_argument("--query-encoder", default=MPNET)
    parser.add_argument("--doc-encoder", default=MINILM)
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--prompt-templates", nargs="+", default=["{query}", "{instruction} {query}"],
                        help="query prompts of the adapters (each gets its own align/adapt/both systems)")
    parser.add_argument("--no-symmetric", dest="symmetric", action="store_false", help="skip D→D + adapter")
    parser.add_argument("--no-fusion", dest="fusion", action="store_false", help="skip the fusion adapter")
    parser.add_argument("--cost-queries", type=int, default=200,
                        help="queries timed for fusion's query cost (0: skip)")
    parser.add_argument("--cost-task", help="task whose queries are timed (default: scifact if run, else the first)")
    parser.add_argument("--num-texts", type=int, default=1000, help="unlabeled documents per task for stage 1")
    parser.add_argument("--max-docs", type=int, help="corpus cap, the same for every system")
    parser.add_argument("--max-queries", type=int, help="seeded sample of test queries per task")
    parser.add_argument("--adapt-arg", action="append", default=[], metavar="KEY=JSON",
                        help="extra keyword of era_adapters.adapt.adapt, e.g. lr=0.001 or l2_to_init=0.1")
    parser.add_argument("--no-distill", dest="distill", action="store_false",
                        help="skip the distilled adapters (issue 13)")
    parser.add_argument("--distill-arg", action="append", default=[], metavar="KEY=JSON",
                        help="extra keyword of era_adapters.distill.distill (and of stage 2's teacher), e.g. "
                             "teacher_docs=1000")
    parser.add_argument("--distill-weight", type=float, default=1.0,
                        help="weight of the distillation loss in stage 2 of both+distill / fusion+distill")
    parser.add_argument("--cache-dir")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "budgets"),
                        help="results go to OUTPUT.json and OUTPUT.md")
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "budgets_bench"),
                        help="adapter folders, per task (reused when present: delete to retrain)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
