"""Stage 1, self-supervised alignment: fit A so that A(Q(t)) ≈ D(t) on unlabeled texts.

    accelerate launch training/align.py --query-encoder Q --doc-encoder D --data DIR [--tasks ...] \
        --num-texts 1000 --adapter linear|low_rank|mlp|fusion --output OUT

Samples texts per task (corpus documents; optionally the non-test queries too), embeds them with both
encoders through the embedding cache (only the sampled texts go through Q), fits the adapter and
saves an EraQueryEncoder with its config, metrics and model card. With `--doc-vectors SOURCE
--doc-encoder-name NAME` (an index built with an embedding API) D(t) is read from the stored vectors
by id instead, and the doc encoder never runs (docs/stored_vectors.md).

`linear` is closed-form ridge regression with bias: the sums XᵀX and XᵀY are accumulated in float64
(all-reduced across processes under Accelerate), the ridge strength is chosen on a held-out slice.
`low_rank` and `mlp` start from the ridge solution and are trained by gradient steps (AdamW, cosine
or MSE loss, early stopping on the held-out alignment); `--refine-epochs` does the same for `linear`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from modeling_era import EraAdapter, EraConfig
from era_adapters.arguments import AT_LEAST_ONE, NON_NEGATIVE, DataArguments, VectorArguments, option
from era_adapters.artifacts import era_config, save_query_encoder
from era_adapters.data import Task, cap_corpus
from era_adapters.encoders import BARE_QUERY_TEMPLATE, TextEncoder, choose_prompt_template
from era_adapters.inputs import describe, given_tasks, stage_tasks
from era_adapters.loop import LoopConfig, checkpoint_folder, local_rows, seeded_batches, train
from era_adapters.losses import alignment_loss
from era_adapters.ridge import choose_ridge, procrustes, ridge_statistics, set_from_linear
from era_adapters.search import exact_search
from era_adapters.sides import EncoderSide, doc_side_from, query_side_from
from era_adapters.splits import make_split, queries_outside_test

logger = logging.getLogger(__name__)
HELD_OUT_SHARE = 0.1
FUSION_GATE = 1.0  # fusion's starting gate: D(q) and the aligned A(Q(q)) weighted equally (docs/results.md)
_SAMPLE_STREAM = 5  # numpy SeedSequence stream of the text sampling (splits: 0-2, data: 3, evaluate: 4)


@dataclass
class AlignmentTexts:
    """Sampled texts as each encoder sees them; `held_out` marks the evaluation slice."""

    query_side: list[str]
    doc_side: list[str]
    held_out: np.ndarray
    counts: dict[str, dict[str, int]]
    keys: list[tuple[str, str]]  # ("doc" | "query", id) of each text: how stored vectors are found


def sample_texts(
    tasks: Sequence[Task], num_texts: int, seed: int, query_encoder: Any, with_queries: bool = False,
    test_fraction: float = 0.5, split_seed: int = 0,
) -> AlignmentTexts:
    """`num_texts` corpus documents per task (seeded), plus the non-test queries if asked.

    Documents are fed as they are to both encoders; queries get the query prompt (with their task
    instruction) on the Q side and stay plain on the D side, as at search time. Test queries of the
    evaluation's split (`split_seed`) are never used, even unlabeled, nor a query with a test query's text.
    """
    query_side, doc_side, counts, keys = [], [], {}, []
    rng = np.random.default_rng([_SAMPLE_STREAM, seed])
    for task in tasks:
        rows = np.sort(rng.choice(len(task.doc_ids), size=min(num_texts, len(task.doc_ids)), replace=False))
        docs = [task.doc_texts[int(row)] for row in rows]
        query_side += docs
        doc_side += docs
        keys += [("doc", task.doc_ids[int(row)]) for row in rows]
        counts[task.name] = {"documents": len(docs), "queries": 0}
        if with_queries:
            test = make_split(task, seed=split_seed, test_fraction=test_fraction).test_qids
            queries = queries_outside_test(task, test)
            query_side += [query_encoder.format_query(q.query, q.instruction) for q in queries]
            doc_side += [q.query for q in queries]
            keys += [("query", q.qid) for q in queries]
            counts[task.name]["queries"] = len(queries)
    held_out = np.zeros(len(query_side), dtype=bool)
    held = np.random.default_rng([_SAMPLE_STREAM + 1, seed]).choice(
        len(query_side), size=max(1, round(HELD_OUT_SHARE * len(query_side))), replace=False
    )
    held_out[held] = True
    return AlignmentTexts(query_side, doc_side, held_out, counts, keys)


# ---------------------------------------------------------------------------------------------
# Gradient training (low_rank, mlp, refinement of linear, and the reference recipe in bench/)
# ---------------------------------------------------------------------------------------------


def fit_gradient(
    adapter: EraAdapter,
    x: np.ndarray,
    y: np.ndarray,
    x_held: np.ndarray,
    y_held: np.ndarray,
    *,
    loop: LoopConfig,
    batch_size: int,
    loss: str,
    accelerator: Accelerator,
    checkpoint_dir: str | os.PathLike | None,
) -> list[dict[str, float]]:
    """Train the adapter on (x, y) pairs; early stopping on held-out mean cosine. Returns the curve."""
    inputs, targets = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    held_inputs, held_targets = torch.from_numpy(x_held).float(), torch.from_numpy(y_held).float()
    device = accelerator.device

    def batches(epoch: int):
        for batch in seeded_batches(len(inputs), batch_size, loop.seed, epoch):
            rows = local_rows(batch, accelerator)
            yield inputs[rows].to(device), targets[rows].to(device)

    def loss_fn(model, batch):
        return alignment_loss(model(batch[0]), batch[1], loss)  # this process's mean; DDP averages the shares

    def validate(model) -> float:
        with torch.no_grad():
            predicted = model(held_inputs.to(device))
            return float(F.cosine_similarity(predicted, held_targets.to(device), dim=-1).mean())

    steps = -(-len(inputs) // batch_size)
    result = train(adapter, batches_for_epoch=batches, loss_fn=loss_fn, validate=validate, config=loop,
                   accelerator=accelerator, checkpoint_dir=checkpoint_dir, steps_per_epoch=steps, name="align",
                   metric="held-out cosine")
    return result.history


# ---------------------------------------------------------------------------------------------
# Quality report
# ---------------------------------------------------------------------------------------------


def alignment_quality(adapter: EraAdapter, x_held: np.ndarray, y_held: np.ndarray, y_all: np.ndarray,
                      held_rows: np.ndarray) -> dict[str, float]:
    """Held-out mean cosine, and twin retrieval: the rank of D(t) among all alignment texts' D
    embeddings when searched with A(Q(t)) (Recall@1 and @10)."""
    with torch.no_grad():
        predicted = adapter(torch.from_numpy(x_held).float()).numpy()
    cosine = float(np.mean(np.sum(predicted * y_held, axis=1) / np.maximum(np.linalg.norm(y_held, axis=1), 1e-12)))
    _, found = exact_search(predicted, np.ascontiguousarray(y_all, dtype=np.float32), 10)
    hits = found == held_rows[:, None]
    return {
        "held_out_cosine": cosine,
        "twin_recall@1": float(hits[:, :1].any(1).mean()),
        "twin_recall@10": float(hits.any(1).mean()),
        "held_out_texts": int(len(x_held)),
        "twin_pool": int(len(y_all)),
    }


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def texts_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()


@dataclass(kw_only=True)
class AlignArguments(VectorArguments, DataArguments):
    """Settings of stage 1 (recorded in the adapter's `training_metadata["arguments"]`)."""

    query_encoder: str | None = option(None, help="Hub id or folder of the strong query encoder Q (or "
                                                  "--query-doc-vectors: its stored vectors)")
    doc_encoder: str | None = option(None, help="Hub id or folder of the doc encoder D that built the index (or "
                                                "--doc-vectors: the index's stored vectors)")
    output: str = option(help="folder for the aligned EraQueryEncoder")
    num_texts: int = option(1000, help="corpus documents sampled per task", valid=AT_LEAST_ONE)
    adapter: Literal["linear", "low_rank", "mlp", "fusion"] = option("linear", help="adapter family")
    fusion_branch: Literal["linear", "low_rank"] = option(
        "linear", help="fusion: family of the Q branch (low_rank for large query encoders)")
    fusion_gate: float = option(FUSION_GATE, help="fusion: starting gate of the Q branch (0: start as the "
                                                  "symmetric D→D model)")
    with_queries: bool = option(False, help="also align on the non-test query texts")
    procrustes: bool = option(False, help="orthogonal map instead of ridge (equal dims)")
    refine_epochs: int = option(0, help="gradient refinement epochs of the linear ridge fit", valid=NON_NEGATIVE)
    loss: Literal["cosine", "mse"] = option("cosine", help="loss of the gradient fits")
    epochs: int = option(50, help="gradient epochs for low_rank / mlp", valid=NON_NEGATIVE)
    lr: float = option(1e-3, help="AdamW learning rate of the gradient fits", valid=NON_NEGATIVE)
    weight_decay: float = option(0.01, help="AdamW weight decay of the gradient fits", valid=NON_NEGATIVE)
    batch_size: int = option(256, help="texts per gradient step", valid=AT_LEAST_ONE)
    patience: int = option(5, help="epochs without a better held-out alignment before stopping", valid=AT_LEAST_ONE)
    adapter_rank: int = option(64, help="rank of the low_rank family", valid=AT_LEAST_ONE)
    adapter_hidden_dim: int = option(1024, help="hidden width of the mlp family", valid=AT_LEAST_ONE)
    prompt_template: str | None = option(None, help="query prompt; default: '{instruction} {query}' for encoders "
                                                    "trained with prompts, else '{query}' "
                                                    "(era_adapters.encoders.choose_prompt_template)")
    default_instruction: str = option("", help="instruction used when a query has none")
    seed: int = option(0, help="seed of the text sample, the corpus cap and the weights", valid=NON_NEGATIVE)
    split_seed: int = option(0, help="seed of the split whose test queries --with-queries leaves out (evaluate's "
                                     "--split-seed)", valid=NON_NEGATIVE)
    max_docs: int | None = option(None, help="cap each corpus as the evaluation does", valid=AT_LEAST_ONE)
    embed_batch_size: int = option(32, help="texts per batch when embedding", valid=AT_LEAST_ONE)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adapter == "fusion" and self.refine_epochs:
            raise ValueError("--refine-epochs does not apply to fusion: its stage 1 is the closed-form fit of the "
                             "Q branch.")
        self.check_doc_side(self.doc_encoder, needs_name=True)
        if self.doc_encoder is None and self.doc_vectors is None:
            raise ValueError("stage 1 needs the doc side: --doc-encoder MODEL, or --doc-vectors SOURCE (the index's "
                             "stored vectors) with --doc-encoder-name.")
        stored_query = self.query_doc_vectors is not None or self.query_vectors is not None
        if (self.query_encoder is None) != stored_query:
            raise ValueError("stage 1 needs the query side: --query-encoder MODEL, or --query-doc-vectors SOURCE (the "
                             "query encoder's stored vectors of the documents), not both.")


def align(data: Any = None, *, texts: Sequence[str] | None = None, accelerator: Accelerator | None = None,
          **options: Any) -> EraAdapter:
    """Run stage 1 from Python; returns the fitted adapter (also saved to `output`). `data`: a folder or
    Hub task names (as `--data`) or `Task`s (`era_adapters.inputs`); or `texts=[...]`, unlabeled texts
    to align on. `options` are the fields of `AlignArguments`."""
    tasks = given_tasks(data, texts=texts)
    if tasks is not None:
        options.setdefault("num_texts", max(len(task.doc_ids) for task in tasks))  # every text given
    args = AlignArguments(data=describe(tasks) if tasks is not None else data, **options)
    return run_alignment(args, accelerator, tasks=tasks)


def run_alignment(args: AlignArguments, accelerator: Accelerator | None = None, tasks: list | None = None,
                  ) -> EraAdapter:
    """Run stage 1 and save the aligned query encoder to `args.output`; returns the fitted adapter.

    `adapter="fusion"`: the Q branch (family `fusion_branch`) is fitted exactly like that family alone
    (its alignment metrics are reported); the light branch, fed D(q), starts as the identity and the
    gate at `fusion_gate`. (Aligning the light branch would be trivial: on documents D(t) is the target.)
    """
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(args.seed)
    q_side, d_side, prompt = _sides(args)
    loaded = [cap_corpus(task, args.max_docs, args.seed) for task in stage_tasks(args, tasks)]
    loaded = d_side.prepare(q_side.prepare(loaded))
    if args.with_queries:
        q_side.require("query", "--with-queries")
        d_side.require("query", "--with-queries (stage 1 fits A(Q(query)) ≈ D(query))")
    if args.adapter == "fusion":
        d_side.require("query", "a fusion adapter (at search time it feeds D(query) to its light branch)")
    texts = sample_texts(loaded, args.num_texts, args.seed, q_side, args.with_queries, args.test_fraction,
                         args.split_seed)
    embed = {"cache_dir": args.cache_dir, "accelerator": accelerator}
    # Texts are already formatted for each side (prompted queries on Q's), so embed them as they are.
    x = q_side.texts(texts.query_side, texts.keys, **embed)
    y = d_side.texts(texts.doc_side, texts.keys, **embed)
    train_rows, held_rows = np.flatnonzero(~texts.held_out), np.flatnonzero(texts.held_out)
    metadata_recipe: dict[str, Any] = {"family": args.adapter, "loss": args.loss, "held_out_share": HELD_OUT_SHARE}
    shape = {"prompt_template": prompt["template"], "default_instruction": args.default_instruction,
             "adapter_rank": args.adapter_rank, "adapter_hidden_dim": args.adapter_hidden_dim}
    family = args.fusion_branch if args.adapter == "fusion" else args.adapter
    model = EraAdapter(era_config(q_side, d_side, adapter_type=family, **shape))
    mine = train_rows[accelerator.process_index :: accelerator.num_processes]
    if args.procrustes:
        weight, bias = procrustes(x[train_rows], y[train_rows]), np.zeros(y.shape[1])
        metadata_recipe["fit"] = "orthogonal Procrustes"
    else:
        residual = family == "low_rank" and x.shape[1] == y.shape[1]
        stats = ridge_statistics(x[mine], y[mine] - (x[mine] if residual else 0), accelerator)
        weight, bias, ridge_report = choose_ridge(stats, x[held_rows], y[held_rows] - (x[held_rows] if residual else 0))
        if residual:
            weight = weight + np.eye(weight.shape[0])
        metadata_recipe.update(fit="closed-form ridge with bias (float64 sums)", ridge=ridge_report)
    set_from_linear(model, weight, bias)
    gradient_epochs = args.refine_epochs if family == "linear" else args.epochs
    checkpoints = checkpoint_folder(args.output)
    if gradient_epochs > 0:
        loop = LoopConfig(epochs=gradient_epochs, lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
                          seed=args.seed)
        curve = fit_gradient(model, x[train_rows], y[train_rows], x[held_rows], y[held_rows], loop=loop,
                             batch_size=args.batch_size, loss=args.loss, accelerator=accelerator,
                             checkpoint_dir=checkpoints)
        metadata_recipe.update(gradient={"epochs": gradient_epochs, "lr": args.lr, "weight_decay": args.weight_decay,
                                         "batch_size": args.batch_size, "patience": args.patience, "curve": curve})
    quality = alignment_quality(model, x[held_rows], y[held_rows], y, held_rows)
    metadata_recipe["summary"] = _summary(args.adapter, metadata_recipe, len(train_rows))
    if args.adapter == "fusion":
        model = fusion_from_branch(model, era_config(q_side, d_side, adapter_type="fusion", fusion_branch=family,
                                                     fusion_gate=args.fusion_gate, **shape))
        metadata_recipe.update(fusion={"branch": family, "gate": args.fusion_gate, "light_branch": "identity"})
        metadata_recipe["summary"] += f"; fusion: light branch D(q) at identity, Q branch gated at {args.fusion_gate:g}"
    config = model.config
    config.training_metadata = {
        "mode": "align",
        "tasks": [task.name for task in loaded],
        "seeds": {"sample": args.seed, "torch": args.seed, "split": args.split_seed},
        "arguments": args.to_dict(),
        "alignment": {
            "num_texts_per_task": args.num_texts,
            "with_queries": args.with_queries,
            "max_docs": args.max_docs,
            "texts": texts.counts,
            "train_texts": int(len(train_rows)),
            "processes": accelerator.num_processes,
            "texts_sha256": texts_fingerprint(texts.query_side + texts.doc_side),
            "metrics": quality,
        },
        "recipe": metadata_recipe,
        "prompt": prompt,
        "sides": {"query": q_side.record(), "doc": d_side.record()},
    }
    if accelerator.is_main_process:
        save_query_encoder(model, args.output)
        shutil.rmtree(checkpoints, ignore_errors=True)
        logger.info("align: saved %s; %s; held-out cosine %.4f, twin recall@1 %.3f on %d held-out texts",
                    args.output, metadata_recipe["summary"], quality["held_out_cosine"], quality["twin_recall@1"],
                    quality["held_out_texts"])
    accelerator.wait_for_everyone()
    return model


def _sides(args: AlignArguments) -> tuple[Any, Any, dict[str, str]]:
    """The query and doc sides (run or stored) and the query prompt with why it was chosen."""
    stored_query = query_side_from(args)
    if stored_query is not None:
        if args.adapter == "fusion":
            raise ValueError("a fusion adapter runs its query encoder: drop --query-doc-vectors / --query-vectors.")
        prompt = {"template": BARE_QUERY_TEMPLATE, "chosen_by": "stored query vectors: embedded by whoever stored them"}
        q_side = stored_query
    else:
        q_encoder = TextEncoder(args.query_encoder, cache_dir=args.cache_dir, batch_size=args.embed_batch_size)
        prompt = choose_prompt_template(q_encoder, args.prompt_template)
        q_encoder.query_template = prompt["template"]
        q_side = EncoderSide(q_encoder)
    d_side = doc_side_from(args, lambda: TextEncoder(args.doc_encoder, cache_dir=args.cache_dir,
                                                     batch_size=args.embed_batch_size))
    return q_side, d_side, prompt


def fusion_from_branch(branch: EraAdapter, config: EraConfig) -> EraAdapter:
    """A fusion adapter (`config`) whose Q branch is `branch`'s map; the light branch stays the identity."""
    fused = EraAdapter(config)
    fused.adapter.strong.load_state_dict(branch.adapter.state_dict())
    return fused


def _summary(adapter: str, recipe: dict[str, Any], count: int) -> str:
    text = f"{adapter} adapter, {recipe['fit']} on {count} unlabeled texts"
    if "gradient" in recipe:
        text += f", then AdamW on the {recipe['loss']} loss (early stopping on held-out alignment)"
    return text
