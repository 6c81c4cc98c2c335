"""Retrieval evaluation: ERA adapters and zero-shot baselines on the same test queries.

    python training/evaluate.py --data DIR [--tasks ...] --system doc2doc --system query2query \
        --system path/to/adapter --query-encoder Q --doc-encoder D --output OUT_DIR

A system is `doc2doc` (the doc encoder on both sides: what the index serves today), `query2query`
(the query encoder on both sides: the expensive re-index), `query2doc` (query encoder against the
doc index with no adapter: a sanity check, near zero), or the path / Hub id of a saved ERA adapter.
Every system is scored on the test part of the split (your test qrels, else a seeded `--test-fraction`;
docs/protocol.md) with exact inner-product search over the whole (optionally capped) corpus. An adapter
trained on any of those test queries is refused. Writes results.json, results.md, TREC runs and a plot
to OUT_DIR (`era_adapters.reports`). `--record` stores each adapter's test metrics in its folder,
next to doc2doc's and query2query's on the same queries (added to the systems when missing). With stored
vectors (docs/stored_vectors.md) a system's sides are read by id, and `--index` searches through the
user's vector database. (Longer than most modules: systems, settings, the search and the report belong
to one command.)
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from transformers import AutoModel

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder
from era_adapters.arguments import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, DataArguments, VectorArguments, option
from era_adapters.artifacts import adapter_doc_side, adapter_query_side, query_side_encoder, record_in_adapters
from era_adapters.data import Query, Task, cap_corpus
from era_adapters.encoders import BARE_QUERY_TEMPLATE, TextEncoder
from era_adapters.inputs import describe, given_tasks, stage_tasks
from era_adapters.metrics import METRIC_NAMES, paired_test, per_query_metrics_ranked
from era_adapters.reports import write_outputs
from era_adapters.search import ann_search, build_ann_index, drop_identical_ids, exact_search, recall_against_exact
from era_adapters.sides import EncoderSide, doc_side_from, query_side_from
from era_adapters.vectors import VectorSource, VectorSourceError, open_source, search_index
from era_adapters.splits import TaskSplit, make_split

logger = logging.getLogger(__name__)
BASELINES = ("doc2doc", "query2query", "query2doc")
REFERENCE_SYSTEM = "doc2doc"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name, as the Hub spells repo ids


@dataclass
class System:
    """How one system embeds queries and documents: its query side (plus an adapter) and its doc side,
    each an encoder run through the cache or stored vectors (`era_adapters.sides`)."""

    name: str
    query_side: Any
    doc_side: Any
    adapter: EraAdapter | None = None
    info: dict[str, Any] = field(default_factory=dict)
    query_model: EraQueryEncoder | None = None  # adapters with a LoRA: text in, uncached

    def embed_queries(self, task: Task, queries: Sequence[Query], **kwargs: Any) -> np.ndarray:
        if self.query_model is not None:  # the LoRA changes the backbone: no cached plain-Q vector applies
            return self.query_model.encode_queries([q.query for q in queries],
                                                   instruction=[q.instruction for q in queries]).numpy()
        vectors = self.query_side.queries(task, queries, **kwargs)
        if self.adapter is not None:
            with torch.no_grad():
                vectors = self.adapter(torch.from_numpy(vectors)).numpy()
        elif vectors.shape[1] != self.doc_side.dim:
            vectors = _fit_dimension(vectors, self.doc_side.dim)
        return vectors

    def embed_documents(self, task: Task, **kwargs: Any) -> np.ndarray:
        return self.doc_side.documents(task, **kwargs)


class SkippedSystem(Exception):
    """A system that cannot be scored with what was given (e.g. doc2doc without the index's query vectors)."""


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


def build_system(spec: str, encoders: Encoders, args: Any, stored_doc: Any = None, stored_query: Any = None,
                 model: EraAdapter | None = None) -> System:
    """Turn a command-line system name into a System (adapters bring their own encoders; `model`: the
    in-memory adapter that `spec` names). Stored sides (`--doc-vectors`, `--query-vectors`) replace the
    encoders they stand for; a baseline that needs vectors nobody stored raises `SkippedSystem` with the
    reason."""
    if spec in BASELINES:
        def side(model: str | None, stored: Any, flag: str) -> Any:
            if stored is not None:
                return stored
            if model is None:
                raise ValueError(f"system {spec} needs --{flag}-encoder (or stored vectors: see --help).")
            return EncoderSide(encoders.get(model, query_template=BARE_QUERY_TEMPLATE))

        query_space = None if spec == "doc2doc" else side(args.query_encoder, stored_query, "query")
        doc_space = None if spec == "query2query" else side(args.doc_encoder, stored_doc, "doc")
        query_side, doc_side = {"doc2doc": (doc_space, doc_space), "query2query": (query_space, query_space),
                                "query2doc": (query_space, doc_space)}[spec]
        try:
            query_side.require("query", spec)
            doc_side.require("doc", spec)
        except VectorSourceError as why:
            raise SkippedSystem(str(why)) from why
        info = {"kind": "baseline", "query_encoder": query_side.name, "doc_encoder": doc_side.name,
                "doc_side": doc_side.kind}
        return System(spec, query_side, doc_side, info=info)
    try:
        config = model.config if model is not None else EraConfig.from_pretrained(spec)
    except OSError as error:  # no config.json here, or the Hub could not provide it (offline, unknown repo, ...)
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        where = "the folder is not an ERA adapter" if Path(spec).is_dir() else \
            "no such adapter folder, and it could not be loaded as a Hub id"
        raise ValueError(f"--system {spec!r}: {where} ({reason}). {_VALID_SYSTEMS}") from error
    query_model = None
    if model is not None:
        adapter = model.eval()
    elif getattr(config, "lora_config", None):
        # A fresh backbone (the LoRA is injected into it), from the same resolved copy the encoders use.
        backbone_side = query_side_encoder(config, make=encoders.get)
        backbone = AutoModel.from_pretrained(backbone_side.path)
        query_model = EraQueryEncoder.from_pretrained(spec, backbone=backbone, tokenizer=backbone_side.tokenizer)
        query_model.to(backbone_side.device)
        adapter = query_model
    else:
        adapter = EraAdapter.from_pretrained(spec).eval()
    if args.doc_encoder is not None:
        adapter.check_doc_encoder(args.doc_encoder)
    doc_side = stored_doc if stored_doc is not None else adapter_doc_side(
        adapter, args, where=str(spec), make=lambda model, revision: encoders.get(
            model, revision=revision, query_template=BARE_QUERY_TEMPLATE))
    if stored_doc is not None:
        if args.doc_encoder_name:
            adapter.check_doc_encoder(args.doc_encoder_name)
        adapter.check_doc_encoder(stored_doc.documents_source)
    adapter.check_doc_encoder(dim=doc_side.dim)
    query_side = None if query_model is not None else adapter_query_side(
        config, stored_queries=stored_query, doc_side=doc_side, make=encoders.get)
    metadata = config.training_metadata
    info = {
        "kind": "adapter",
        "path": str(spec),
        "query_encoder": config.query_encoder,
        "doc_encoder": config.doc_encoder,
        "doc_side": doc_side.kind,
        "query_side": getattr(config, "query_encoder_kind", "model"),
        "adapter_type": config.adapter_type,
        "mode": metadata.get("mode"),
        "label_budget": metadata.get("label_budget"),
        "labels_used": metadata.get("labels", {}).get("total"),
        "trained_on": {task: split.get("train", []) + split.get("val", [])
                       for task, split in metadata.get("split", {}).items()},
    }
    if query_model is not None:
        info["lora"] = config.lora_config
        return System(_adapter_name(spec), query_side, doc_side, None, info, query_model=query_model)
    return System(_adapter_name(spec), query_side, doc_side, adapter, info)


_VALID_SYSTEMS = f"Valid systems: {', '.join(BASELINES)}, an adapter folder, or an adapter's Hub id (org/name)."


def check_system(spec: str) -> None:
    """Refuse a --system value that is neither a baseline, an existing folder, nor shaped like a Hub id,
    before anything is loaded (a typo of a baseline must not become a Hub request)."""
    if spec in BASELINES or Path(spec).is_dir() or _HUB_ID.fullmatch(spec):
        return
    close = difflib.get_close_matches(spec.lower(), BASELINES, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ValueError(f"--system {spec!r} is not a baseline, an existing folder or a Hub id; {hint}{_VALID_SYSTEMS}")


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
    task: Task, split_seed: int, max_docs: int | None, max_queries: int | None, all_queries: bool = False,
    test_fraction: float = 0.5,
) -> TaskRun:
    split = make_split(task, seed=split_seed, test_fraction=test_fraction)
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
    system: System, run: TaskRun, k: int, ann: dict[str, Any] | None, embed_kwargs: dict[str, Any],
    index: VectorSource | None = None, index_params: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Embed, search and score one system on one task; per-query metrics plus timings. With an `index`
    (a database), the search is the database's own, and its recall against exact search is reported."""
    task = run.task
    by_id = {query.qid: query for query in task.queries}
    queries = [by_id[qid] for qid in run.test_qids]
    started = time.perf_counter()
    query_vectors = system.embed_queries(task, queries, **embed_kwargs)
    doc_ids = task.doc_ids
    if index is not None:
        embedded = time.perf_counter()
        depth = min(k + int(task.ignore_identical_ids), index.num_rows)
        scores, indices, doc_ids, ann_recall = search_index(index, query_vectors, depth, task.doc_ids,
                                                            index_params or {})
    else:
        doc_vectors = system.embed_documents(task, **embed_kwargs)
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
        scores, indices = drop_identical_ids(scores, indices, run.test_qids, doc_ids, k)
    searched = time.perf_counter()
    per_query = per_query_metrics_ranked(indices, doc_ids, run.test_qids, run.qrels, scores)
    return {
        "per_query": per_query,
        "indices": indices,
        "doc_ids": doc_ids,
        "scores": scores,
        "seconds_embed": embedded - started,
        "seconds_search": searched - embedded,
        "ann_recall": ann_recall,
    }


@dataclass(kw_only=True)
class EvaluateArguments(VectorArguments, DataArguments):
    """What to score, on which test queries, and where the report goes."""

    systems: list[str] = option(help="doc2doc, query2query, query2doc, or an adapter folder / Hub id "
                                     "(repeatable: --system A --system B)", aliases=["--system"], action="extend")
    query_encoder: str | None = option(None, help="query encoder for the baselines, e.g. "
                                                  "sentence-transformers/all-mpnet-base-v2")
    doc_encoder: str | None = option(None, help="doc encoder of the index, e.g. sentence-transformers/all-MiniLM-L6-v2")
    label_budget: float | None = option(None, help="label budget the adapters were trained with (for the report)",
                                        valid=FRACTION)
    split_seed: int = option(0, help="seed of the test/validation/train split", valid=NON_NEGATIVE)
    max_docs: int | None = option(None, help="cap each corpus: every judged doc plus seeded random others",
                                  valid=AT_LEAST_ONE)
    max_queries: int | None = option(None, help="seeded sample of at most this many test queries per task",
                                     valid=AT_LEAST_ONE)
    k: int = option(100, help="search depth (the metrics need 100)", valid=AT_LEAST_ONE)
    ann: Literal["ivf", "hnsw"] | None = option(None, help="approximate search instead of exact; reports its recall")
    index: str | None = option(None, help="search through this vector database (lancedb://PATH?table=T or a faiss "
                                          "index file: its own exact or ANN search) and report its recall against "
                                          "exact search; also the default --doc-vectors")
    ann_param: list[str] = option(help="ANN setting key=value, e.g. nlist=1024, nprobe=32, M=32, efSearch=128; with "
                                       "--index: nprobes, refine_factor (LanceDB) or nprobe, efSearch (faiss)",
                                  default_factory=list, action="extend")
    ignore_identical_ids: Literal["auto", "on", "off"] = option(
        "auto", help="do not count a retrieved doc whose id is the query's (auto: per task, on for ArguAna)")
    all_queries: bool = option(False, help="score every labeled query, not the test part (zero-shot baselines vs "
                                           "published numbers)")
    batch_size: int = option(32, help="texts per batch when embedding", valid=AT_LEAST_ONE)
    output: str | None = option(None, help="folder for results.json, results.md, runs/ and the plot", required=True)
    record: bool = option(False, help="write each adapter folder's test metrics into its config.json and model card")

    def __post_init__(self) -> None:
        if isinstance(self.ignore_identical_ids, bool) or self.ignore_identical_ids is None:  # Python callers
            self.ignore_identical_ids = {None: "auto", True: "on", False: "off"}[self.ignore_identical_ids]
        super().__post_init__()
        if not self.systems:
            raise ValueError("name at least one --system (doc2doc, query2query, query2doc or an adapter path).")
        if self.record and self.all_queries:
            raise ValueError("--record stores test metrics in adapter cards; --all-queries scores training queries "
                             "too. Drop one of them.")
        if self.query_encoder is not None and (self.query_vectors or self.query_doc_vectors):
            raise ValueError("give --query-encoder (a model ERA runs) or --query-vectors (stored vectors), not both.")
        if self.index is not None:
            if self.doc_encoder is not None:
                raise ValueError("--index reads the documents' vectors from the database; drop --doc-encoder.")
            if self.ann is not None:
                raise ValueError("--index searches through the database's own index; drop --ann.")
            if self.max_docs is not None:
                raise ValueError("--index searches the database's whole table; drop --max-docs (a capped corpus is "
                                 "not what the database serves).")
            self.doc_vectors = self.doc_vectors or self.index
        self.check_doc_side(self.doc_encoder)
        self.ann_settings()  # refuse a malformed --ann-param now

    def ann_settings(self) -> dict[str, Any] | None:
        if self.ann is None and self.index is None:
            if self.ann_param:
                raise ValueError("--ann-param needs --ann ivf|hnsw or --index.")
            return None
        settings: dict[str, Any] = {"kind": self.ann} if self.ann else {}
        for item in self.ann_param:
            key, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise ValueError(f"--ann-param {item!r}: write it as key=<integer>, e.g. nprobe=32.")
            settings[key] = int(value)
        return settings


def evaluate(data: Any, systems: Sequence[str], **options: Any) -> dict[str, Any]:
    """Evaluate every system on every task's test queries from Python; `data` as `--data`, or `Task`s
    (`era_adapters.inputs`); `options` are the fields of `EvaluateArguments` (`output` optional here).
    Returns the report (see `run_evaluation`)."""
    tasks = given_tasks(data)
    args = EvaluateArguments(data=describe(tasks) if tasks is not None else data,
                             systems=[str(system) for system in systems], **options)
    return run_evaluation(args, tasks=tasks)


def run_evaluation(args: EvaluateArguments, tasks: list[Task] | None = None,
                   models: dict[str, EraAdapter] | None = None) -> dict[str, Any]:
    """Score every system on every task's test queries; write the report to `args.output` if given.

    `ignore_identical_ids`: "auto" keeps each task's default (on for ArguAna-like tasks); "on"/"off"
    force it. `all_queries` scores every labeled query instead of the test part (for zero-shot
    comparisons with published numbers; never for adapters trained on this data). `record`: write each
    local adapter's test metrics into its config.json and model card (`artifacts.record_evaluation`),
    so the card's table and the Hub's model-index show them, next to doc2doc and query2query (added to
    the systems when missing). `tasks`: in-memory tasks instead of `args.data`; `models`: in-memory
    adapters, by the system name that stands for them in `args.systems`.
    """
    models = models or {}
    for spec in args.systems:  # before anything loads: a typo must not become a Hub request
        if spec not in models:
            check_system(spec)
    encoders = Encoders(args.cache_dir, args.batch_size)
    stored_doc, stored_query = doc_side_from(args), query_side_from(args)
    adapters, skipped = [], {}
    for spec in args.systems:
        if spec not in BASELINES:
            adapters.append(build_system(spec, encoders, args, stored_doc, stored_query, models.get(spec)))
    query_encoder, doc_encoder = _baseline_encoders(args, adapters)
    baseline_args = dataclasses.replace(args, query_encoder=query_encoder, doc_encoder=doc_encoder)
    wanted = list(args.systems)
    if args.record:  # a card shows its adapter next to the index and the re-index, on the same queries
        wanted = [name for name in ("doc2doc", "query2query") if name not in wanted] + wanted
    by_spec = dict(zip([spec for spec in args.systems if spec not in BASELINES], adapters))
    built = []
    for spec in wanted:
        try:
            built.append(by_spec[spec] if spec in by_spec else
                         build_system(spec, encoders, baseline_args, stored_doc, stored_query))
        except SkippedSystem as why:
            skipped[spec] = str(why)
            logger.warning("not scoring %s: %s", spec, why)
    names = [system.name for system in built]
    if len(set(names)) != len(names):
        raise ValueError(f"two systems share a name ({names}); put the adapters in folders with distinct names.")
    if not built:
        raise ValueError(f"no system can be scored: {skipped}")
    loaded = stage_tasks(args, tasks)
    if args.ignore_identical_ids != "auto":
        loaded = [dataclasses.replace(task, ignore_identical_ids=args.ignore_identical_ids == "on") for task in loaded]
    runs = [prepare_task(task, args.split_seed, args.max_docs, args.max_queries, args.all_queries, args.test_fraction)
            for task in loaded]
    _refuse_leaks(built, runs)
    _prepare_stored(runs, [side for side in (stored_query, stored_doc) if side is not None])
    ann = args.ann_settings() if args.ann else None
    index_params = args.ann_settings() if args.index else None
    index = None if args.index is None else stored_doc.documents_source if args.index == args.doc_vectors else \
        open_source(args.index, "--index", id_column=args.id_column, vector_column=args.vector_column)
    embed_kwargs = {"cache_dir": args.cache_dir, "batch_size": args.batch_size}
    raw: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for run in runs:
        for system in built:
            logger.info("evaluating %s on %s (%d docs, %d queries)", system.name, run.task.name,
                        len(run.task.doc_ids), len(run.test_qids))
            through = index if index is not None and system.doc_side is stored_doc else None
            raw[system.name][run.task.name] = search_task(system, run, args.k, ann, embed_kwargs, through,
                                                          index_params)
    report = _report(built, runs, raw, label_budget=args.label_budget, split_seed=args.split_seed,
                     max_docs=args.max_docs, max_queries=args.max_queries, k=args.k, ann=ann,
                     all_queries=args.all_queries, test_fraction=args.test_fraction, index=args.index,
                     index_params=index_params, skipped=skipped,
                     stored={"doc": stored_doc.record() if stored_doc else None,
                             "query": stored_query.record() if stored_query else None})
    if args.output is not None:
        write_outputs(Path(args.output), report, built, runs, raw)
    if args.record:
        record_in_adapters(report)
    return report


def _baseline_encoders(args: EvaluateArguments, adapters: list[System]) -> tuple[str | None, str | None]:
    """--query-encoder / --doc-encoder, else the encoders the adapters name (when they agree and are models)."""
    found = []
    for given, key in ((args.query_encoder, "query_encoder"), (args.doc_encoder, "doc_encoder")):
        names = {system.info[key] for system in adapters if system.info.get(key.replace("encoder", "side")) != "external"}
        found.append(given if given is not None or len(names) != 1 else names.pop())
    return found[0], found[1]


def _refuse_leaks(built: list[System], runs: list[TaskRun]) -> None:
    """An adapter trained or validated on a test query of this evaluation would void its numbers."""
    for system in built:
        for run in runs:
            leaked = set(system.info.get("trained_on", {}).get(run.task.name, [])) & set(run.test_qids)
            if leaked:
                raise ValueError(
                    f"{system.name} was trained on {len(leaked)} of the {len(run.test_qids)} test queries of task "
                    f"{run.task.name!r} (e.g. {sorted(leaked)[0]!r}): its split differs from this evaluation's. "
                    f"Evaluate with the split it was trained with (--split-seed, --test-fraction, --test-qrels)."
                )


def _prepare_stored(runs: list[TaskRun], sides: list[Any]) -> None:
    """Check stored vectors against every (capped) corpus; `--missing-vectors skip` narrows the corpora,
    for every system alike."""
    for side in sides:
        for run, task in zip(runs, side.prepare([run.task for run in runs])):
            run.capped = run.capped or task is not run.task
            run.task = task


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
                "empty_docs": run.task.empty_docs,
                "split": run.split.to_dict(),
                "test_qids": run.test_qids,
                "doc_ids": run.task.doc_ids if run.capped else None,  # the sampled corpus, when capped
            }
            for run in runs
        },
    }
