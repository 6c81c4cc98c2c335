"""Distillation's defaults chosen by K-fold cross-validation over each task's non-test labeled queries.

    python bench/distill_cv.py [--data DATA] [--tasks restbench_tmdb birco_clinical_trial] \
        [--variants "linear:lr=3e-4" "fusion:teacher=query2query,lr=1e-4" ...] [--folds 3] [--fold-seed 0] \
        [--max-docs 500] [--num-texts 1000] [--cache-dir DIR] [--output bench/results/distill_cv] \
        [--work-dir runs/distill_cv] [--ceiling]

What it measures: for each variant of the distillation stage (an adapter family, `linear`, `mlp` or `fusion`, and
keywords of `era_adapters.distill.distill`), the nDCG@10 of the distilled adapter on held-out folds of the
queries that the evaluation does NOT test on, next to doc2doc (the index as it is), query2query (the
re-index) and the aligned adapter it starts from. Why: the library's distillation defaults (learning rate,
teacher) must be picked without looking at the test queries that every reported number is computed on;
picking them on those would make the reported gains optimistic.

Protocol, per task: the test part of the evaluation's split (`make_split`, seed 0) is dropped entirely; the
other labeled queries (the pool) are sorted by id and dealt into `--folds` seeded folds. Fold k is an
in-memory task whose queries are the pool, with split "test" for fold k and "train" for the rest, so
`distill` reads only the other folds' queries (unlabeled, labels ignored) and `evaluate` scores fold k. Its
corpus is the evaluation's capped corpus (`cap_corpus(task, max_docs, seed 0)`: the index the evaluation
searches, which keeps every document any query judges, test queries' included; no test result enters), given
already capped (the library calls get `max_docs=None`, so it is not re-capped by the pool's judgements).
Stage 1 (`align`, which reads no labels) runs once per task and family on that corpus; each variant is
distilled from it once per fold. A task whose pool holds fewer than 2 × folds queries is skipped (logged).

With `--ceiling`, two rows say how far distillation could go on the same queries (`teacher_ceiling`):
`teacher`, the default ensemble teacher ranking the whole capped corpus (Q embeds all of it, so this is a
re-index, for measurement only), and `ceiling`, one free vector per query in D's space trained to rank like
that teacher. No adapter scored against the index ranks better than its best such vector, so a variant far
below `ceiling` failed to learn the map from its few queries; the index's space is not what limits it.

Output: `<output>.json` (per system: per-task and macro nDCG@10 over all folds' queries, Δ vs doc2doc and
vs the aligned start, tasks above doc2doc, pooled paired sign-flip tests (`era_adapters.metrics.paired_test`);
the per-query values, the folds, the variants' resolved settings, seeds and timings) and `<output>.md` (the
tables, also printed). Adapter folders live under `<work-dir>/<settings hash>/<task>/` (a variant's folder
name carries a hash of its resolved settings, so a changed library default trains afresh); an existing one
is reused, so an interrupted run resumes (only the evaluations run again: seconds per task).

Runtime on a 2-core CPU with a warm embedding cache (~/.cache/era): on restbench_tmdb and birco_clinical_trial
a distillation takes 1–2 s, stage 1 under 1 s and a fold's evaluation about 1 s, so the default 7 variants ×
3 folds take about 40 s per small task; tasks with large pools (nfcorpus: ~1,900 queries to distil on per
fold, scifact, gorilla_torchhub: ~550) take longer, so a run on all 19 shared tasks is expected to take
roughly an hour (an estimate). Queries the cache has not seen yet are embedded on first use.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from budgets_bench import MINILM, MPNET, model_reference, trained, write_results  # this folder's helpers
from era_adapters.align import align
from era_adapters.arguments import split_options
from era_adapters.data import Task, cap_corpus, load_tasks
from era_adapters.distill import DistillSettings, distill
from era_adapters.encoders import TextEncoder
from era_adapters.evaluate import evaluate
from era_adapters.losses import distillation_loss
from era_adapters.metrics import paired_test, per_query_metrics_ranked
from era_adapters.search import drop_identical_ids
from era_adapters.sides import EncoderSide
from era_adapters.splits import make_split
from era_adapters.supervision import doc2doc_queries
from era_adapters.teacher import TeacherSettings, ensemble_scores

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)
METRIC = "ndcg@10"
REFERENCE = "doc2doc"
FAMILIES = ("linear", "mlp", "fusion")
DEFAULT_VARIANTS = ("linear:lr=1e-3", "linear:lr=3e-4", "linear:lr=1e-4", "linear:teacher=query2query,lr=3e-4",
                    "fusion:lr=1e-3", "fusion:lr=3e-4", "fusion:lr=1e-4")
SPLIT_SEED = 0  # the evaluation's split and corpus cap


@dataclasses.dataclass(frozen=True)
class Variant:
    """One setting of the distillation stage: `family:key=value,key=value` (values JSON, else strings)."""

    name: str
    family: str
    options: dict[str, Any]  # keywords of `distill`
    settings: dict[str, Any]  # every optimisation and teacher setting, the library's defaults filled in

    @property
    def folder_name(self) -> str:
        digest = hashlib.sha256(json.dumps([self.family, self.settings], sort_keys=True).encode()).hexdigest()[:8]
        return re.sub(r"[^\w.=+-]+", "_", self.name) + "-" + digest

    @property
    def start(self) -> str:
        return start_name(self.family)


def start_name(family: str) -> str:
    return f"align:{family}"


def parse_variant(spec: str) -> Variant:
    """`linear:lr=3e-4,teacher=query2query` -> Variant; unknown keys and out-of-range values are refused."""
    family, _, rest = spec.partition(":")
    if family not in FAMILIES:
        raise ValueError(f"variant {spec!r}: the family before ':' must be one of {FAMILIES}.")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant {spec!r}: write each setting as key=value, got {item!r}.")
        options[key.strip()] = _value(value.strip())
    loop, teacher = split_options(options, DistillSettings, TeacherSettings)
    return Variant(spec, family, options, {**DistillSettings(**loop).to_dict(), **TeacherSettings(**teacher).to_dict()})


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def deal_folds(qids: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """The qids, sorted, dealt into `folds` seeded folds of near-equal size (each sorted)."""
    ordered = sorted(qids)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [sorted(ordered[i] for i in order[k::folds]) for k in range(folds)]


def pool_task(task: Task, max_docs: int | None) -> Task:
    """The task on the evaluation's capped corpus, with its non-test labeled queries only."""
    test = set(make_split(task, seed=SPLIT_SEED).test_qids)
    pool = [query for query in task.labeled_queries if query.qid not in test]
    return dataclasses.replace(cap_corpus(task, max_docs, seed=SPLIT_SEED), queries=pool)


def fold_task(pool: Task, test_qids: Sequence[str]) -> Task:
    """The pool with `test_qids` as its test part and every other query as training (unlabeled) queries."""
    test = set(test_qids)
    queries = [dataclasses.replace(query, split="test" if query.qid in test else "train") for query in pool.queries]
    return dataclasses.replace(pool, queries=queries)


def align_starts(pool: Task, families: Sequence[str], folder: Path, args: argparse.Namespace,
                 timings: dict[str, float]) -> dict[str, Path]:
    """Stage 1 of each family on the task's capped corpus (no labels), by family."""
    return {family: trained(folder / f"align-{family}", lambda out, family=family: align(
        [pool], query_encoder=args.query_encoder, doc_encoder=args.doc_encoder, output=str(out), adapter=family,
        num_texts=args.num_texts, cache_dir=args.cache_dir), timings, f"{pool.name}/align-{family}")
        for family in families}


def fold_scores(fold: Task, starts: dict[str, Path], variants: Sequence[Variant], folder: Path,
                args: argparse.Namespace, timings: dict[str, float]) -> dict[str, dict[str, float]]:
    """Distil every variant on `fold`'s training queries, then score it, the baselines and the aligned starts
    on the fold's test queries: {system: {qid: nDCG@10}}."""
    names = {REFERENCE: REFERENCE, "query2query": "query2query"}
    names.update({path.name: start_name(family) for family, path in starts.items()})
    for variant in variants:
        out = trained(folder / variant.folder_name, lambda out, variant=variant: distill(
            [fold], init=str(starts[variant.family]), output=str(out), max_docs=None, cache_dir=args.cache_dir,
            **variant.options), timings, f"{fold.name}/{folder.name}/{variant.name}")
        names[out.name] = variant.name
    systems = [REFERENCE, "query2query", *[str(path) for path in starts.values()],
               *[str(folder / variant.folder_name) for variant in variants]]
    started = time.perf_counter()
    report = evaluate([fold], systems, query_encoder=args.query_encoder, doc_encoder=args.doc_encoder,
                      max_docs=None, cache_dir=args.cache_dir)
    timings[f"{fold.name}/{folder.name}/evaluate"] = time.perf_counter() - started
    return {names[system]: {qid: values[METRIC] for qid, values in result["tasks"][fold.name]["per_query"].items()}
            for system, result in report["results"].items()}


def teacher_ceiling(pool: Task, args: argparse.Namespace, steps: int = 150) -> dict[str, dict[str, float]]:
    """What distillation could reach, per pool query ({system: {qid: nDCG@10}}): `teacher`, the default ensemble
    teacher ranking the whole capped corpus (Q embeds it all: a re-index); `ceiling`, one free vector per query
    in D's space, optimised to rank the corpus like that teacher (the distillation loss and temperatures) — no
    adapter scored against the index can rank better than its best such vector, so `ceiling` minus a distilled
    adapter is what the adapter failed to learn from its few queries, not what the index cannot express."""
    settings, embed = TeacherSettings(), {"cache_dir": args.cache_dir}
    strong, light = (EncoderSide(TextEncoder(name, cache_dir=args.cache_dir)) for name in (args.query_encoder,
                                                                                              args.doc_encoder))
    docs = torch.from_numpy(light.documents(pool, **embed))
    light_queries = torch.from_numpy(doc2doc_queries(light, pool, pool.queries, embed))
    strong_queries = doc2doc_queries(strong, pool, pool.queries, embed)  # the bare query, as query2query sees it
    strong_scores = torch.from_numpy(strong_queries @ strong.documents(pool, **embed).T)
    mask = torch.ones_like(strong_scores, dtype=torch.bool)
    teacher = ensemble_scores(strong_scores, light_queries @ docs.T, mask, settings.teacher_weight)
    ceiling = ceiling_scores(teacher, light_queries, docs, settings, steps)
    return {"teacher": _ndcg(pool, teacher.numpy()), "ceiling": _ndcg(pool, ceiling)}


def ceiling_scores(teacher: torch.Tensor, start: torch.Tensor, docs: torch.Tensor, settings: TeacherSettings,
                   steps: int) -> np.ndarray:
    """Scores over `docs` of one free unit vector per query, from `start`, after `steps` of Adam on the
    distillation loss toward `teacher`'s scores of every document."""
    vectors = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([vectors], lr=0.02)
    mask = torch.ones_like(teacher, dtype=torch.bool)
    for _ in range(steps):
        student = torch.nn.functional.normalize(vectors, dim=-1) @ docs.T
        loss = distillation_loss(student, teacher, mask, student_temperature=settings.student_temperature,
                                 teacher_temperature=settings.teacher_temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (torch.nn.functional.normalize(vectors, dim=-1) @ docs.T).detach().numpy()


def _ndcg(pool: Task, scores: np.ndarray, depth: int = 100) -> dict[str, float]:
    """nDCG@10 of each pool query from its scores over the corpus, ranked and scored as `evaluate` does (its
    own document left out where the task says)."""
    qids = [query.qid for query in pool.queries]
    indices = np.argsort(-scores, axis=1, kind="stable")[:, :depth + int(pool.ignore_identical_ids)]
    top = np.take_along_axis(scores, indices, 1)
    if pool.ignore_identical_ids:
        top, indices = drop_identical_ids(top, indices, qids, pool.doc_ids, depth)
    values = per_query_metrics_ranked(indices, pool.doc_ids, qids, {query.qid: query.labels for query in pool.queries},
                                      top, metrics=[METRIC])
    return dict(zip(qids, map(float, values[METRIC])))


def task_scores(task: Task, variants: Sequence[Variant], folder: Path, args: argparse.Namespace,
                timings: dict[str, float]) -> tuple[dict[str, dict[str, float]], list[list[str]]] | None:
    """{system: {qid: nDCG@10}} over every fold's queries, and the folds; None when the pool is too small."""
    pool = pool_task(task, args.max_docs)
    if len(pool.queries) < 2 * args.folds:
        logger.warning("skipping %s: %d non-test labeled queries, fewer than 2 × %d folds", task.name,
                       len(pool.queries), args.folds)
        return None
    folds = deal_folds([query.qid for query in pool.queries], args.folds, args.fold_seed)
    families = [family for family in FAMILIES if any(variant.family == family for variant in variants)]
    starts = align_starts(pool, families, folder, args, timings)
    scores: dict[str, dict[str, float]] = {}
    for number, test_qids in enumerate(folds):
        logger.info("%s fold %d: %d test queries, %d to distil on", task.name, number, len(test_qids),
                    len(pool.queries) - len(test_qids))
        for system, values in fold_scores(fold_task(pool, test_qids), starts, variants, folder / f"fold{number}",
                                          args, timings).items():
            scores.setdefault(system, {}).update(values)
    if args.ceiling:
        scores.update(teacher_ceiling(pool, args))
    return scores, folds


def compare(mine: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per-task scores {task: {qid: value}} of two systems: macro Δ, tasks above, pooled paired test."""
    tasks = list(theirs)
    a = np.concatenate([[mine[task][qid] for qid in theirs[task]] for task in tasks])
    b = np.concatenate([list(theirs[task].values()) for task in tasks])
    means = {task: (np.mean(list(mine[task].values())), np.mean(list(theirs[task].values()))) for task in tasks}
    return {"macro_delta": float(np.mean([m - t for m, t in means.values()])),
            "tasks_above": int(sum(m > t for m, t in means.values())), "tasks": len(tasks), "pooled": paired_test(a, b)}


def summarise(scores: dict[str, dict[str, dict[str, float]]], starts: dict[str, str]) -> dict[str, Any]:
    """scores {system: {task: {qid: value}}} -> per system: per-task means, macro, comparisons."""
    systems = {}
    for name, by_task in scores.items():
        per_task = {task: float(np.mean(list(values.values()))) for task, values in by_task.items()}
        entry: dict[str, Any] = {"start": starts.get(name), "tasks": per_task,
                                 "macro": float(np.mean(list(per_task.values())))}
        if name != REFERENCE:
            entry["vs_doc2doc"] = compare(by_task, scores[REFERENCE])
        if name in starts:
            entry["vs_start"] = compare(by_task, scores[starts[name]])
        systems[name] = entry
    return systems


def best_variants(systems: dict[str, Any]) -> dict[str, str]:
    """The variant of each family with the highest macro nDCG@10."""
    best: dict[str, str] = {}
    for name, system in systems.items():
        family = next((f for f in FAMILIES if system["start"] == start_name(f)), None)
        if family and (family not in best or system["macro"] > systems[best[family]]["macro"]):
            best[family] = name
    return best


def _versus(test: dict[str, Any] | None, with_count: bool) -> list[str]:
    if test is None:
        return ["–"] * (3 if with_count else 2)
    count = [f"{test['tasks_above']}/{test['tasks']}"] if with_count else []
    return [f"{test['macro_delta']:+.4f}", *count, f"{test['pooled']['p_value']:.3g}"]


def markdown(systems: dict[str, Any], tasks: Sequence[str], sizes: dict[str, int], settings: dict[str, Any]) -> str:
    header = ("| system | macro nDCG@10 | Δ vs doc2doc | tasks > doc2doc | pooled p vs doc2doc | Δ vs start | "
              "pooled p vs start |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {system['macro']:.4f} | " + " | ".join(
        _versus(system.get("vs_doc2doc"), True) + _versus(system.get("vs_start"), False)) + " |"
        for name, system in systems.items()]
    best = best_variants(systems)
    lines += ["", "Best variant per family (macro): " + "; ".join(f"{f} → {name}" for f, name in best.items()), "",
              "| system | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks),
              "| queries | " + " | ".join(str(sizes[task]) for task in tasks) + " |"]
    lines += [f"| {name} | " + " | ".join(f"{system['tasks'][task]:.4f}" for task in tasks) + " |"
              for name, system in systems.items()]
    note = (f"nDCG@10 on held-out folds of each task's non-test labeled queries ({settings['folds']} folds, seed "
            f"{settings['fold_seed']}; the evaluation's test queries never enter). Macro: mean over tasks of the "
            "per-task mean over all folds' queries. Pooled p: paired sign-flip test over all tasks' queries. "
            "Start: the aligned adapter a variant is distilled from.")
    models = f"Q = {settings['query_encoder']}, D = {settings['doc_encoder']}, max_docs = {settings['max_docs']}."
    lines += ["", note, models]
    if "ceiling" in systems:
        lines.append("teacher: the default ensemble teacher over the whole capped corpus; ceiling: one free vector per "
                     "query in D's space trained to rank like it (no adapter scored against the index ranks better "
                     "than its best such vector); both on the same queries, with no training across queries.")
    if settings["skipped_tasks"]:
        lines.append("Skipped (pool too small): " + ", ".join(settings["skipped_tasks"]) + ".")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    args.query_encoder, args.doc_encoder = model_reference(args.query_encoder), model_reference(args.doc_encoder)
    variants = [parse_variant(spec) for spec in dict.fromkeys(args.variants)]  # a repeated one: once
    key = json.dumps([args.query_encoder, args.doc_encoder, args.max_docs, args.num_texts, args.folds, args.fold_seed])
    work_dir = Path(args.work_dir) / hashlib.sha256(key.encode()).hexdigest()[:10]
    scores: dict[str, dict[str, dict[str, float]]] = {}
    folds, timings, skipped = {}, {}, []
    for task in load_tasks(args.data, args.tasks):
        logger.info("task %s", task.name)
        outcome = task_scores(task, variants, work_dir / task.name, args, timings)
        if outcome is None:
            skipped.append(task.name)
            continue
        for system, values in outcome[0].items():
            scores.setdefault(system, {})[task.name] = values
        folds[task.name] = outcome[1]
    if not folds:
        raise ValueError(f"no task has 2 × {args.folds} non-test labeled queries; nothing to cross-validate.")
    systems = summarise(scores, {variant.name: variant.start for variant in variants})
    settings = {
        "data": str(args.data), "tasks": list(folds), "skipped_tasks": skipped, "query_encoder": args.query_encoder,
        "doc_encoder": args.doc_encoder, "max_docs": args.max_docs, "num_texts": args.num_texts, "folds": args.folds,
        "fold_seed": args.fold_seed, "split_seed": SPLIT_SEED, "work_dir": str(work_dir),
        "machine": platform.platform(),
        "variants": {v.name: {"family": v.family, "options": v.options, "settings": v.settings, "folder": v.folder_name}
                     for v in variants},
        "corpus": "the evaluation's capped corpus, cap_corpus(task, max_docs, seed 0), passed already capped",
    }
    result = {"settings": settings, "systems": systems, "folds": folds, "per_query": scores,
              "seconds": {"total": time.perf_counter() - started, **timings}}
    sizes = {task: sum(map(len, task_folds)) for task, task_folds in folds.items()}
    write_results(Path(args.output), result, markdown(systems, list(folds), sizes, settings))
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--tasks", nargs="+", help="default: every task under --data")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="FAMILY:KEY=VALUE,...",
                        help="distillation settings to compare: an adapter family (linear, mlp, fusion), then "
                             "keywords of era_adapters.distill.distill (values JSON, else strings), e.g. "
                             "'linear:teacher=query2query,lr=3e-4' (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=3, help="folds of each task's non-test labeled queries")
    parser.add_argument("--ceiling", action="store_true",
                        help="also score the ensemble teacher over the whole capped corpus and the best query "
                             "vectors in D's space (what distillation could reach; see teacher_ceiling)")
    parser.add_argument("--fold-seed", type=int, default=0, help="seed of the folds")
    parser.add_argument("--query-encoder", default=MPNET)
    parser.add_argument("--doc-encoder", default=MINILM)
    parser.add_argument("--max-docs", type=int, default=500, help="corpus cap, as the evaluation's")
    parser.add_argument("--num-texts", type=int, default=1000, help="unlabeled documents per task for stage 1")
    parser.add_argument("--cache-dir")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "distill_cv"),
                        help="results go to OUTPUT.json and OUTPUT.md")
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "distill_cv"),
                        help="adapter folders, per task and fold (reused when present: delete to retrain)")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2.")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
