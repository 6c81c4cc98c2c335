"""The model card of an ERA adapter: YAML metadata the Hub reads (incl. model-index results) and a
usage guide, rendered from the adapter's config (`training_metadata`) with the template in
`model_cards/era_adapter.md` (shipped in the wheel as `era_adapters.model_cards`).
"""
from __future__ import annotations

import importlib.resources
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_era import EraConfig
from modeling_era.modeling_era import BACKBONE_PREFIX, WEIGHTS_NAME, atomic_write

# The checkout's model_cards/ when run from a source tree (an editable install elsewhere would point the
# package resource at its own copy), else the copy shipped in the wheel as era_adapters/model_cards/.
_CHECKOUT_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "era_adapter.md"
CARD_TEMPLATE = (_CHECKOUT_TEMPLATE if _CHECKOUT_TEMPLATE.is_file()
                 else importlib.resources.files("era_adapters.model_cards") / "era_adapter.md")
CARD_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def count_adapter_parameters(weights: str | os.PathLike) -> int:
    """Parameters stored besides a bundled backbone: the adapter (and a LoRA), as the card reports them."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if not key.startswith(BACKBONE_PREFIX):
                total += math.prod(int(size) for size in handle.get_slice(key).get_shape())
    return total


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None, config: EraConfig | None = None,
                     num_parameters: int | None = None) -> None:
    """(Re-)render folder/README.md from the folder's config (read from config.json unless given) and weights;
    `repo_id` names it in the usage snippet (default: the folder's name); `num_parameters` defaults to the
    tensors stored beside a bundled backbone (the adapter, and a LoRA)."""
    folder = Path(folder)
    config = config or EraConfig.from_pretrained(folder)
    count = num_parameters if num_parameters is not None else count_adapter_parameters(folder / WEIGHTS_NAME)
    card = render_model_card(config, num_parameters=count, repo_id=repo_id or folder.name)
    atomic_write(folder / "README.md", str(card))


def render_model_card(config: EraConfig, *, num_parameters: int, repo_id: str) -> ModelCard:
    """The model card: YAML metadata the Hub reads (incl. model-index results) and a usage guide."""
    metadata = config.training_metadata
    evaluation = metadata.get("evaluation", {})  # {task: {metric: value}} on the test queries
    datasets = sorted(metadata.get("tasks", []))
    card_data = ModelCardData(
        library_name="transformers",
        # The Hub rejects cards whose base_model is a local path (or a name of an API model, not a repo).
        base_model=_hub_id(config.query_encoder) if getattr(config, "query_encoder_kind", "model") == "model" else None,
        tags=["era", "retrieval", "embedding-adapter", "sentence-similarity", f"doc-encoder:{config.doc_encoder}"],
        datasets=datasets or None,
        pipeline_tag="feature-extraction",
        model_name=repo_id,
        eval_results=[
            EvalResult(task_type="retrieval", dataset_type=task, dataset_name=task, dataset_split="test",
                       metric_type=metric.replace("@", "_at_"), metric_value=round(float(value), 5))
            for task, values in sorted(evaluation.items())
            for metric, value in values.items()
            if metric in CARD_METRICS
        ]
        or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=repo_id,
        repo_id=repo_id,
        num_parameters=f"{num_parameters:,}",
        bundled=config.bundle_backbone,
        recipe=metadata.get("recipe", {}).get("summary", "see training_metadata in config.json"),
        label_budget=_labels_used(metadata),
        split_source=_split_source(metadata),
        validation_text=_validation_text(metadata),
        datasets_text=", ".join(f"`{name}`" for name in datasets) or "not recorded",
        training_details=_training_details(metadata),
        metrics_table=_metrics_table(evaluation),
        below_index=_below_index(evaluation),
        uses_instruction="{instruction}" in config.prompt_template,
        instruction_literal=repr(config.default_instruction),  # a valid Python string in the usage snippet
        evaluated=bool(evaluation),
        query_encoder_revision=config.query_encoder_revision or "not pinned",
        doc_encoder_revision=config.doc_encoder_revision or "not pinned",
        fusion_encoder=config.fusion_encoder if config.adapter_type == "fusion" else None,
        fusion_encoder_revision=config.fusion_encoder_revision or "not pinned",
        fusion_dim=config.fusion_dim,
        fusion_pooling=config.fusion_pooling,
        evaluation_scope=_evaluation_scope(metadata.get("evaluation_settings", {})),
        test_source=_test_source(metadata.get("evaluation_settings", {})),
        search_scope=_search_scope(metadata.get("evaluation_settings", {})),
        skipped=metadata.get("evaluation_settings", {}).get("skipped", {}),
        external_doc=getattr(config, "doc_encoder_kind", "model") == "external",
        external_query=getattr(config, "query_encoder_kind", "model") == "external",
        doc_vectors_fingerprint=getattr(config, "doc_vectors_fingerprint", None),
        **{key: getattr(config, key) for key in (
            "query_encoder", "doc_encoder", "query_dim", "doc_dim", "adapter_type", "pooling", "similarity",
            "normalize_output", "prompt_template", "default_instruction")},
    )


def _evaluation_scope(settings: dict[str, Any]) -> str:
    scope = "the whole corpus"
    if settings.get("max_docs"):
        scope = f"a capped corpus (max_docs = {settings['max_docs']}: every judged document plus seeded random others)"
    if settings.get("max_queries"):
        scope += f", at most {settings['max_queries']} sampled test queries per task"
    return scope


def _test_source(settings: dict[str, Any]) -> str:
    sources = settings.get("test_source") or {}
    if not sources:
        return "not recorded"
    if len(set(sources.values())) == 1:
        return next(iter(sources.values()))
    return "; ".join(f"`{task}`: {source}" for task, source in sources.items())
def _search_scope(settings: dict[str, Any]) -> str:
    if settings.get("index"):
        return f"searched through the vector database {settings['index']} (its own search)"
    return "exact inner-product search"


def _hub_id(name: str | None) -> str | None:
    """`name` if it can be a Hub model id (org/name, not an existing local folder), else None."""
    if not name or not _HUB_ID.match(name) or os.path.exists(name):
        return None
    return name


def _labels_used(metadata: dict[str, Any]) -> str:
    """The labels stage 2 actually used, per role, as `training_metadata["labels"]` counted them."""
    labels = metadata.get("labels")
    if labels is None:
        if metadata.get("mode") == "distill":
            queries = metadata["distillation"]["queries"]
            return (f"none: distilled from the query encoder's ranking on {queries['unlabeled']} unlabeled queries "
                    f"({queries['source']}), no labels read")
        if metadata.get("mode") == "align" or metadata.get("label_budget") is None:
            return "none: self-supervised alignment only, no labeled queries"
        return f"label budget {metadata['label_budget']} (counts per role not recorded)"
    total = labels["total"]
    text = (f"{total['train_queries']} training queries ({total['train_pairs']} query-document pairs) and "
            f"{total['validation_queries']} validation queries; the {total['test_queries']} test queries were "
            f"never used")
    tasks = labels["tasks"]
    per_task = "; ".join(
        f"`{name}`: {record['selection']}, {record['train_queries']} train, {record['validation_queries']} validation"
        + (f" ({record['validation_from']})" if record.get("validation_from") else "")
        for name, record in tasks.items())
    return f"{text} ({per_task})"


def _split_source(metadata: dict[str, Any]) -> str:
    sources = {name: split.get("source") for name, split in metadata.get("split", {}).items() if split.get("source")}
    if not sources:
        return "none: no labeled queries used" if metadata.get("mode") in ("align", "distill") else "not recorded"
    if len(set(sources.values())) == 1:
        return next(iter(sources.values()))
    return "; ".join(f"`{name}`: {source}" for name, source in sources.items())


def _validation_text(metadata: dict[str, Any]) -> str:
    validation = metadata.get("validation")
    if not validation:
        return ""
    start = validation.get("start")
    text = (f"Epoch chosen by {validation['how']}: validation nDCG@10 "
            + (f"{start:.4f} at the start, " if start is not None else "")
            + f"{validation['best']:.4f} at epoch {validation['best_epoch']}; doc2doc (the index as it is) "
            f"{validation['doc2doc']:.4f} on the same queries.")
    for warning in validation.get("warnings", []):
        text += f"\n\n**Warning:** {warning}"
    return text


def _without_curves(value: Any) -> Any:
    """Metadata minus per-epoch curves and long lists, which make a card unreadable (config.json keeps them)."""
    if isinstance(value, dict):
        return {k: _without_curves(v) for k, v in value.items() if k not in ("curve", "fold_curves",
                                                                                "final_training_curve")}
    if isinstance(value, list) and len(value) > 20:
        return value[:20] + [f"... {len(value) - 20} more"]
    return value


def _training_details(metadata: dict[str, Any]) -> str:
    shown = {key: _without_curves(metadata[key]) for key in ("mode", "recipe", "seeds", "tasks", "label_budget", "labels",
                                                             "validation", "distillation", "alignment") if key in metadata}
    if not shown:
        return "No training metadata recorded."
    return "```json\n" + json.dumps(shown, indent=1, default=str) + "\n```"


_BASELINE_ROWS = {"doc2doc": "doc2doc (the index as it is: doc encoder on both sides)",
                  "query2query": "query2query (re-index with the query encoder)"}


def _metrics_table(evaluation: dict[str, dict[str, Any]]) -> str:
    """Per task: this adapter, doc2doc and query2query on the same test queries, with the query count and
    the paired sign-flip test of nDCG@10 against doc2doc."""
    if not evaluation:
        return ("Not evaluated yet: run `python training/evaluate.py --system <this folder> --record ...` to put "
                "its test metrics here, next to doc2doc and query2query on the same queries.")
    header = "| task | test queries | system | " + " | ".join(CARD_METRICS) + " | Δ nDCG@10 vs doc2doc (p) |"
    lines = [header, "|---|---:|---|" + "---|" * (len(CARD_METRICS) + 1)]
    for task, values in sorted(evaluation.items()):
        count = values.get("n_queries", "?")
        rows = [("**this adapter**", values, values.get("vs_doc2doc"))]
        for name, label in _BASELINE_ROWS.items():
            if name in values.get("baselines", {}):
                baseline = values["baselines"][name]
                rows.append((label, baseline, baseline.get("vs_doc2doc")))
        for label, metrics, test in rows:
            cells = " | ".join(f"{metrics.get(m, float('nan')):.4f}" for m in CARD_METRICS)
            versus = "—" if test is None else f"{test['mean_diff']:+.4f} (p={test['p_value']:.3g})"
            lines.append(f"| {task} | {count} | {label} | {cells} | {versus} |")
    return "\n".join(lines)


def _below_index(evaluation: dict[str, dict[str, Any]]) -> str:
    """A plain sentence for every task where this adapter scores below doc2doc on the test queries."""
    lines = []
    for task, values in sorted(evaluation.items()):
        doc2doc = values.get("baselines", {}).get("doc2doc", {}).get("ndcg@10")
        if doc2doc is not None and values["ndcg@10"] < doc2doc:
            test = values.get("vs_doc2doc") or {}
            lines.append(f"**Below the index on `{task}`:** nDCG@10 {values['ndcg@10']:.4f} vs doc2doc {doc2doc:.4f} on "
                         f"the same {values.get('n_queries', '?')} test queries (p={test.get('p_value', float('nan')):.3g}"
                         f"): on this data the index alone (`doc2doc`) serves queries better than this adapter.")
    return "\n\n".join(lines)
