"""Stage 2, supervised adaptation: train the adapter further on a few (query, relevant document) pairs.

    accelerate launch training/adapt.py --data DIR [--tasks ...] --label-budget 0.2 \
        --mode both --init OUT_ALIGN --output OUT                      # ERA: aligned start
    accelerate launch training/adapt.py --data DIR [--tasks ...] --label-budget 0.2 \
        --mode adapt --query-encoder Q --doc-encoder D --output OUT    # labels only, neutral start

What it does (docs/method.md, "Stage 2 in detail"):

* Labels come from each task's split (`era_adapters.splits`, the split evaluation uses): the test part
  (your test qrels, else a seeded `--test-fraction`) is never read; of the training pool (your train
  qrels, else the other labeled queries) `--label-budget` (a share), `--train-labels N` or
  `--all-train-labels` say how many queries are used (`era_adapters.supervision`). Validation: the dev
  pool if there is one, else `--val-fraction` held out; with fewer than 20 validation queries, k-fold
  cross-validation chooses the epoch count instead (`--validation`; `era_adapters.model_selection`).
* Every epoch logs its train loss and validation nDCG@10; the run ends with a summary line and a loud
  warning when it kept its start (epoch 0) or ends below doc2doc on validation (`--fail-below-index`:
  exit status 1 then, after saving).
* Training runs on cached pooled Q vectors and cached D vectors of the (capped) corpus, so an epoch
  costs only adapter math (with `--lora` the backbone runs too: `era_adapters.lora`). With
  `--doc-vectors` the D vectors are the index's stored ones, checked against the adapter's fingerprint
  (docs/stored_vectors.md).
* Loss: InfoNCE (`era_adapters.losses.contrastive_loss`) over every (query, positive) pair against the
  query's mined hard negatives (`era_adapters.mining`, re-mined every `--remine-every` epochs) and the
  in-batch negatives; for `both`, plus the alignment loss on stage 1's unlabeled texts
  (`--align-weight`, default 2) and optionally an L2 pull toward the starting weights (`--l2-to-init`).
  These defaults were measured (docs/results.md, "Regulariser study"). `adapt`, the labels-only
  baseline, uses neither regulariser: nothing of stage 1 may leak into it.
* `era_adapters.loop.train`: AdamW, seeded batches, early stopping with the best weights restored, a
  checkpoint after every epoch beside the output and resume after a kill (the mined negatives are
  kept too, so a resumed run equals an uninterrupted one).
* DDP through Accelerate: every process holds the cached vectors and the global batch's indices, so
  the in-batch negatives of the *global* batch need no communication; each process's loss is scaled so
  that DDP's gradient average equals the one-process gradient. Several CPU processes: `accelerate
  launch --multi_gpu --num_processes N` (torchrun, gloo).
"""
from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from accelerate import Accelerator
from torch import nn

from modeling_era import EraAdapter, EraConfig
from era_adapters.arguments import (AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, DataArguments, Range, Settings,
                                    VectorArguments, option, split_options)
from era_adapters.adapt_record import stage_metadata
from era_adapters.artifacts import (adapter_doc_side, adapter_input_dim, adapter_query_side, era_config,
                                    save_query_encoder)
from era_adapters.encoders import BARE_QUERY_TEMPLATE, TextEncoder, choose_prompt_template
from era_adapters.inputs import describe, given_tasks, gives_pairs, stage_tasks
from era_adapters.lora import LoraQueries, build_lora_model, default_lora_config, save_lora_query_encoder
from era_adapters.loop import (LoopConfig, LoopResult, checkpoint_folder)
from era_adapters.contrastive import train_adapter
from era_adapters.model_selection import BelowIndexError, cross_validate, verdict
from era_adapters.sides import EncoderSide, doc_side_from, query_side_from
from era_adapters.splits import DEFAULT_VAL_FRACTION, MIN_VALIDATION_QUERIES
from era_adapters.supervision import (AdaptData, CachedQueries, doc2doc_validation, load_adapt_data)
from era_adapters.teacher import (Distillation, TeacherSettings, build_targets, strong_side_of,
                                  task_unlabeled_queries)

logger = logging.getLogger(__name__)

MODES = ("both", "adapt")
# Regularisation toward the alignment per mode, unless set (measured: docs/results.md). `adapt` is the
# labels-only baseline: nothing from stage 1 may leak into it.
MODE_ALIGN_WEIGHT = {"both": 2.0, "adapt": 0.0}


@dataclass(kw_only=True)
class AdaptSettings(Settings):
    """Everything that shapes the training (recorded in the metadata; a resumed run must match it)."""

    temperature: float = option(0.05, help="InfoNCE temperature", valid=POSITIVE)
    batch_size: int = option(32, help="training queries per global batch (all their positives are used)",
                             valid=AT_LEAST_ONE)
    num_negatives: int = option(8, help="mined hard negatives per query", valid=NON_NEGATIVE)
    remine_every: int = option(1, help="re-mine the hard negatives every K epochs; 0: mine once",
                               valid=NON_NEGATIVE)
    near_duplicate_ratio: float = option(0.95, help="a document scoring at least this share of the weakest "
                                                    "positive's score is a near-duplicate, not a negative",
                                         valid=FRACTION)
    mine_depth: int = option(1000, help="deepest search when many candidates are excluded", valid=AT_LEAST_ONE)
    in_batch_negatives: bool = option(True, help="use the other queries' positives as negatives")
    graded: bool = option(False, help="weight a query's positives by relevance grade instead of uniformly")
    l2_to_init: float = option(0.0, help="λ of the L2 pull 0.5·λ·||θ − θ_start||²", valid=NON_NEGATIVE)
    align_weight: float | None = option(None, help=f"weight of the alignment loss on unlabeled texts "
                                                   f"(default by mode: {MODE_ALIGN_WEIGHT})", valid=NON_NEGATIVE)
    align_texts: int = option(1000, help="unlabeled documents per task for that loss (stage 1's sample)",
                              valid=NON_NEGATIVE)
    align_batch_size: int = option(64, help="unlabeled texts per step", valid=AT_LEAST_ONE)
    epochs: int = option(30, help="most training epochs", valid=AT_LEAST_ONE)
    lr: float = option(1e-3, help="AdamW learning rate", valid=NON_NEGATIVE)
    weight_decay: float = option(0.0, help="AdamW's decay toward zero", valid=NON_NEGATIVE)
    warmup_steps: int = option(0, help="linear warm-up steps", valid=NON_NEGATIVE)
    patience: int = option(5, help="epochs without a better validation score before stopping", valid=AT_LEAST_ONE)
    max_grad_norm: float | None = option(1.0, help="gradient clipping norm (None: off)", valid=POSITIVE)
    seed: int = option(0, help="seed of the start (adapt mode), batch order and LoRA init", valid=NON_NEGATIVE)
    distill_weight: float = option(0.0, help="weight of the distillation loss (era_adapters.distill) on unlabeled "
                                             "queries, added to the contrastive loss: every query outside the test "
                                             "and validation parts (or --query-log), labels ignored; 0: off",
                                   valid=NON_NEGATIVE)
    distill_batch_size: int = option(64, help="unlabeled queries per step for that loss", valid=AT_LEAST_ONE)

    def for_mode(self, mode: str) -> AdaptSettings:
        """These settings with the mode's default filled in where none was given."""
        return replace(self, align_weight=MODE_ALIGN_WEIGHT[mode] if self.align_weight is None else self.align_weight)

    def loop_config(self) -> LoopConfig:
        return LoopConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                          warmup_steps=self.warmup_steps, patience=self.patience, seed=self.seed,
                          max_grad_norm=self.max_grad_norm)


@dataclass(kw_only=True)
class AdaptArguments(VectorArguments, DataArguments):
    """What stage 2 runs on and where its adapter goes."""

    output: str = option(help="folder for the adapted EraQueryEncoder")
    label_budget: float | None = option(
        None, help="share b of each task's training pool (the queries of its train qrels / split, else its labeled "
                   "queries outside the test part) to use: round(b × pool) queries, the validation ones held out of "
                   "them unless there is a dev pool", valid=FRACTION)
    train_labels: int | None = option(None, help="the same as a count: use N queries of each task's training pool",
                                      valid=AT_LEAST_ONE)
    all_train_labels: bool = option(False, help="train on every query of the training pool (validation: the dev "
                                                "pool if any, else k-fold cross-validation)")
    val_fraction: float = option(DEFAULT_VAL_FRACTION, help="share of the used labels held out for validation when "
                                                            "there is no dev pool", valid=Range(0, 1, open_high=True))
    val_labels: int | None = option(None, help="validation queries: that many of the dev pool, or held out of the "
                                               "used labels (instead of --val-fraction)", valid=NON_NEGATIVE)
    validation: Literal["auto", "holdout", "kfold"] = option(
        "auto", help="how the epoch is chosen. holdout: early stopping on the validation queries; kfold: 5-fold "
                     "cross-validation over training + validation queries picks the epoch count, then all of them "
                     f"train; auto: holdout with at least {MIN_VALIDATION_QUERIES} validation queries, else kfold")
    fail_below_index: bool = option(False, help="exit with status 1 (after saving) when stage 2 keeps its start "
                                                "(epoch 0) or ends below doc2doc on validation")
    mode: Literal["both", "adapt"] = option("both", help="both: ERA, from the stage-1 adapter (--init); "
                                                         "adapt: labels only, from a neutral adapter")
    init: str | None = option(None, help="stage-1 adapter folder (training/align.py --output), for --mode both")
    query_encoder: str | None = option(None, help="query encoder, for --mode adapt (both: from --init)")
    doc_encoder: str | None = option(None, help="doc encoder, for --mode adapt (both: from --init)")
    adapter: Literal["linear", "low_rank", "mlp", "fusion"] = option("linear", help="adapter family (--mode adapt)")
    adapter_rank: int = option(64, help="rank of the low_rank family", valid=AT_LEAST_ONE)
    adapter_hidden_dim: int = option(1024, help="hidden width of the mlp family", valid=AT_LEAST_ONE)
    prompt_template: str | None = option(None, help="query prompt for --mode adapt (default as training/align.py: "
                                                    "by the encoder's kind)")
    default_instruction: str = option("", help="instruction used when a query has none")
    split_seed: int = option(0, help="seed of the split and the corpus cap (as evaluate's)", valid=NON_NEGATIVE)
    max_docs: int | None = option(None, help="cap each corpus exactly as training/evaluate.py does",
                                  valid=AT_LEAST_ONE)
    embed_batch_size: int = option(32, help="texts per batch when embedding", valid=AT_LEAST_ONE)
    lora: bool = option(False, help="also train a LoRA on the query backbone (peft)")
    lora_r: int = option(8, help="LoRA rank", valid=AT_LEAST_ONE)
    lora_alpha: int = option(16, help="LoRA alpha", valid=AT_LEAST_ONE)
    lora_dropout: float = option(0.0, help="LoRA dropout", valid=Range(0, 1, open_high=True))
    lora_targets: list[str] | None = option(None, help="module names for the LoRA (default: the attention "
                                                       "query/value projections)")

    def __post_init__(self) -> None:
        super().__post_init__()
        chosen = [name for name, value in (("--label-budget", self.label_budget), ("--train-labels", self.train_labels),
                                           ("--all-train-labels", self.all_train_labels or None)) if value is not None]
        if len(chosen) != 1:
            raise ValueError("say how many labels stage 2 uses with exactly one of --label-budget B (a share of the "
                             "training pool), --train-labels N or --all-train-labels; got "
                             f"{', '.join(chosen) or 'none'}.")
        self.check_doc_side(self.doc_encoder, needs_name=self.mode == "adapt")
        if self.query_encoder is not None and (self.query_vectors is not None or self.query_doc_vectors is not None):
            raise ValueError("give --query-encoder (a model ERA runs) or --query-vectors (stored vectors), not both.")

    def label_options(self) -> dict[str, Any]:
        """The options of `era_adapters.splits.select_labels`."""
        return {"label_budget": self.label_budget, "train_labels": self.train_labels,
                "all_train_labels": self.all_train_labels, "val_labels": self.val_labels,
                "val_fraction": self.val_fraction}


def _distillation(args: AdaptArguments, settings: AdaptSettings, teacher: TeacherSettings, tasks: list,
                  data: AdaptData, query_side: Any, doc_side: Any, accelerator: Accelerator) -> Distillation | None:
    """The distillation loss on each task's unlabeled queries (validation queries left out), or None."""
    if settings.distill_weight <= 0:
        return None
    queries = task_unlabeled_queries(tasks, split_seed=args.split_seed, test_fraction=args.test_fraction,
                                     settings=teacher, leave_out=[view.val_qids for view in data.tasks])
    targets = build_targets(tasks, queries, student_side=query_side, strong_side=strong_side_of(query_side),
                            doc_side=doc_side, settings=teacher, max_docs=args.max_docs, split_seed=args.split_seed,
                            seed=settings.seed, cache_dir=args.cache_dir, accelerator=accelerator)
    return Distillation(targets, teacher, accelerator.device, accelerator.num_processes, accelerator.process_index)


def _starting_adapter(args: AdaptArguments, seed: int, init_model: EraAdapter | None = None,
                      ) -> tuple[EraAdapter, Any, Any, dict[str, Any]]:
    """The starting adapter and its query and doc sides (encoders run through the cache, or stored vectors)."""
    mode, init = args.mode, args.init
    encoder = {"cache_dir": args.cache_dir, "batch_size": args.embed_batch_size}
    stored_queries = query_side_from(args)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose 'both' (from --init) or 'adapt' (labels only).")
    if mode == "both":
        if init is None:
            raise ValueError("--mode both starts from the stage-1 adapter: pass --init OUT_ALIGN.")
        config = init_model.config if init_model is not None else EraConfig.from_pretrained(init)
        model = copy.deepcopy(init_model) if init_model is not None else EraAdapter.from_pretrained(init)
        for given, expected, side in ((args.query_encoder, config.query_encoder, "query"),
                                      (args.doc_encoder, config.doc_encoder, "doc")):
            if given is not None and str(given) != str(expected):
                raise ValueError(f"--{side}-encoder {given} differs from the {side} encoder of {init} ({expected}).")
        d_side = adapter_doc_side(model, args, where=str(init), **encoder)
        q_side = adapter_query_side(config, stored_queries=stored_queries, doc_side=d_side, **encoder)
        start = {"init": str(init), "init_mode": config.training_metadata.get("mode"),
                 "init_recipe": config.training_metadata.get("recipe", {}).get("summary"),
                 "prompt": config.training_metadata.get("prompt", {"template": config.prompt_template,
                                                                   "chosen_by": f"stage 1 ({init})"})}
    else:
        if init is not None:
            raise ValueError("--mode adapt starts from a neutral adapter; --init belongs to --mode both.")
        if (args.query_encoder is None and stored_queries is None) or \
                (args.doc_encoder is None and args.doc_vectors is None):
            raise ValueError("--mode adapt needs the query side (--query-encoder or --query-vectors) and the doc side "
                             "(--doc-encoder or --doc-vectors).")
        if stored_queries is not None:
            q_side = stored_queries
            prompt = {"template": BARE_QUERY_TEMPLATE, "chosen_by": "stored query vectors: embedded by whoever "
                                                                    "stored them"}
        else:
            q_encoder = TextEncoder(args.query_encoder, **encoder)
            prompt = choose_prompt_template(q_encoder, args.prompt_template)
            q_encoder.query_template = prompt["template"]
            q_side = EncoderSide(q_encoder)
        d_side = doc_side_from(args, lambda: TextEncoder(args.doc_encoder, **encoder))
        config = era_config(q_side, d_side, adapter_type=args.adapter, prompt_template=prompt["template"],
                            default_instruction=args.default_instruction, adapter_rank=args.adapter_rank,
                            adapter_hidden_dim=args.adapter_hidden_dim)  # fusion: gate 0, i.e. starts as D(q)
        torch.manual_seed(seed)  # the seeded random init when the dims differ
        model = EraAdapter(config)
        start = {"init": "identity" if config.query_dim == config.doc_dim else f"random (torch seed {seed})",
                 "prompt": prompt}
        if args.adapter == "fusion":
            q_side = adapter_query_side(config, stored_queries=stored_queries, doc_side=d_side, **encoder)
            start["init"] = f"fusion: light branch identity, gate 0, Q branch random (torch seed {seed})"
    if d_side.dim != model.config.doc_dim or q_side.dim != adapter_input_dim(model.config):
        raise ValueError(
            f"the adapter maps {adapter_input_dim(model.config)}->{model.config.doc_dim} but the encoders give "
            f"{q_side.dim} and {d_side.dim} dims."
        )
    return model, q_side, d_side, start



def adapt(data: Any = None, *, pairs: Any = None, corpus: dict[str, str] | None = None,
          accelerator: Accelerator | None = None, **options: Any) -> EraAdapter:
    """Run stage 2 from Python; returns the trained adapter (also saved to `output`).

    `data`: a folder or Hub task names (as `--data`), `Task`s (`era_adapters.inputs`), or a
    `datasets.Dataset` with `anchor` / `positive` columns; or `pairs=[(query, positive doc id or text),
    ...]` with `corpus={doc_id: text}`. In-memory pairs are all training pairs (no test part carved unless
    `test_fraction` says so). `init` may be the `EraAdapter` that `align` returned. `options` are the
    fields of `AdaptArguments` (output, label_budget | train_labels | all_train_labels, mode, init, ...)
    and of `AdaptSettings` (temperature, epochs, lr, distill_weight, ...) and, with `distill_weight`, of
    `TeacherSettings` (teacher, teacher_docs, query_log, ...)."""
    tasks = given_tasks(data, pairs=pairs, corpus=corpus)
    if gives_pairs(data, pairs):
        options.setdefault("test_fraction", 0.0)  # pairs given to train on: all of them are the training pool
    init_model = options.get("init") if isinstance(options.get("init"), EraAdapter) else None
    if init_model is not None:
        options["init"] = f"an in-memory EraAdapter ({init_model.config.training_metadata.get('mode', 'untrained')})"
    run, hyper, teacher = split_options(options, AdaptArguments, AdaptSettings, TeacherSettings)
    args = AdaptArguments(data=describe(tasks) if tasks is not None else data, **run)
    return run_adaptation(args, AdaptSettings(**hyper), accelerator=accelerator, tasks=tasks, init_model=init_model,
                          teacher=TeacherSettings(**teacher))


def run_adaptation(args: AdaptArguments, settings: AdaptSettings | None = None,
                   accelerator: Accelerator | None = None, tasks: list | None = None,
                   init_model: EraAdapter | None = None, teacher: TeacherSettings | None = None) -> EraAdapter:
    """Run stage 2 and save the adapted query encoder to `args.output`; returns the trained adapter.
    With a LoRA, the returned adapter is the adapter part; the LoRA weights are in the saved folder.
    `tasks`: in-memory tasks instead of `args.data`; `init_model`: the starting adapter instead of `args.init`.
    Raises `BelowIndexError` (after saving) with `args.fail_below_index` when the verdict has warnings."""
    settings = (settings or AdaptSettings()).for_mode(args.mode)
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(settings.seed)
    model, q_side, d_side, start = _starting_adapter(args, settings.seed, init_model)
    if args.lora and model.config.adapter_type == "fusion":
        raise ValueError("--lora is not supported with a fusion adapter (two query backbones); drop --lora.")
    if args.lora and q_side.kind != "model":
        raise ValueError("--lora trains the query encoder's backbone: it needs --query-encoder, not stored vectors.")
    if args.lora and settings.distill_weight > 0:
        raise ValueError("--distill-weight trains on cached query vectors, which a LoRA on the query backbone "
                         "changes; drop one of --lora and --distill-weight.")
    init_metadata = dict(model.config.training_metadata)
    align_seed = int(init_metadata.get("seeds", {}).get("sample", settings.seed)) if args.mode == "both" else settings.seed
    loaded = stage_tasks(args, tasks)
    adapt_data = load_adapt_data(
        loaded, labels=args.label_options(), validation=args.validation, split_seed=args.split_seed,
        test_fraction=args.test_fraction, query_encoder=q_side, doc_encoder=d_side, max_docs=args.max_docs,
        cache_dir=args.cache_dir, accelerator=accelerator,
        align_texts=settings.align_texts if settings.align_weight > 0 else 0, align_seed=align_seed,
    )
    distillation = _distillation(args, settings, teacher or TeacherSettings(), loaded, adapt_data, q_side, d_side,
                                 accelerator)
    lora_config = None
    if args.lora:
        q_encoder = q_side.encoder
        lora_config = default_lora_config(q_encoder, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets)

    def fresh(data: AdaptData) -> tuple[nn.Module, Any]:
        """A trainable copy of the starting adapter (with a new LoRA) and what embeds `data`'s queries for it."""
        if args.lora:
            trained = build_lora_model(copy.deepcopy(model), q_encoder, lora_config, settings.seed)
            return trained.to(accelerator.device), LoraQueries(data, accelerator.device, q_encoder.max_length,
                                                              q_encoder.do_lower_case, batch_size=args.embed_batch_size)
        return copy.deepcopy(model).to(accelerator.device), CachedQueries(data, accelerator.device)

    folder = checkpoint_folder(args.output)
    trained, queries = fresh(adapt_data)
    if adapt_data.validation == "kfold":
        def run_fold(fold: AdaptData, name: str) -> LoopResult:
            fold_model, fold_queries = fresh(fold)
            return train_adapter(fold_model, fold, replace(settings, patience=settings.epochs), accelerator=accelerator,
                                 queries=fold_queries, name=name, distillation=distillation)[0]

        chosen = cross_validate(adapt_data, run_fold, settings.seed)
        result, negatives = LoopResult(0, chosen["best_validation"], []), None
        if chosen["best_epoch"] > 0:  # then train on all of them for the chosen number of epochs
            result, negatives = train_adapter(trained, adapt_data, replace(settings, epochs=chosen["best_epoch"]),
                                              accelerator=accelerator, queries=queries, checkpoint_dir=folder,
                                              validate=False, name="adapt (all training queries)",
                                              distillation=distillation)
    else:
        result, negatives = train_adapter(trained, adapt_data, settings, accelerator=accelerator, queries=queries,
                                          checkpoint_dir=folder, distillation=distillation)
        n_validation = sum(len(view.val_qids) for view in adapt_data.tasks)
        chosen = {"best_epoch": result.best_epoch, "best_validation": result.best_score, "curve": result.history,
                  "doc2doc_validation": doc2doc_validation(adapt_data),
                  "how": f"early stopping on {n_validation} validation queries", "queries": n_validation,
                  "on": f"the {n_validation} validation queries"}
    warnings = verdict(chosen["best_epoch"], chosen["best_validation"], chosen["doc2doc_validation"], chosen["on"])
    model = (trained.adapter if args.lora else trained).cpu().eval()
    config = model.config
    metadata = stage_metadata(args, settings, adapt_data, chosen, result, negatives, config=config, start=start,
                              lora=lora_config, align_seed=align_seed, init_metadata=init_metadata,
                              warnings=warnings, processes=accelerator.num_processes)
    metadata["sides"] = {"query": q_side.record(), "doc": d_side.record()}
    if distillation is not None:
        metadata["distillation"] = {"weight": settings.distill_weight, "teacher": distillation.settings.to_dict(),
                                    "unlabeled_queries": len(distillation.targets),
                                    "teacher_cost": distillation.targets.cost}
        metadata["recipe"]["summary"] += (
            f"; plus {settings.distill_weight:g} × the distillation loss on {len(distillation.targets)} unlabeled "
            f"queries (teacher: {distillation.settings.teacher}, at most {distillation.settings.teacher_docs} "
            f"documents per corpus through Q)")
    config.training_metadata = metadata
    if accelerator.is_main_process:
        if args.lora:
            save_lora_query_encoder(trained, args.output)
        else:
            save_query_encoder(model, args.output)
        shutil.rmtree(folder, ignore_errors=True)
        for warning in warnings:
            logger.warning("WARNING: %s", warning)
        total = metadata["labels"]["total"]
        logger.info("adapt: saved %s; %d training queries (%d pairs), %s: validation nDCG@10 %s -> %.4f at epoch %d "
                    "(doc2doc %.4f on the same queries)", args.output, total["train_queries"], total["train_pairs"],
                    chosen["how"], f"{metadata['validation']['start']:.4f}" if chosen["curve"] else "n/a",
                    chosen["best_validation"], chosen["best_epoch"], chosen["doc2doc_validation"])
    accelerator.wait_for_everyone()
    if args.fail_below_index and warnings:
        raise BelowIndexError(" ".join(warnings) + f" (the adapter is saved in {args.output}; --fail-below-index)")
    return model
