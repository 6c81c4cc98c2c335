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

CARD_TEMPLATE = importlib.resources.files("era_adapters.model_cards") / "era_adapter.md"
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
        label_budget=_label_budget(metadata.get("label_budget")),
        datasets_text=", ".join(f"`{name}`" for name in datasets) or "not recorded",
        training_details=_training_details(metadata),
        metrics_table=_metrics_table(evaluation),
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


def _search_scope(settings: dict[str, Any]) -> str:
    if settings.get("index"):
        return f"searched through the vector database {settings['index']} (its own search)"
    return "exact inner-product search"


def _hub_id(name: str | None) -> str | None:
    """`name` if it can be a Hub model id (org/name, not an existing local folder), else None."""
    if not name or not _HUB_ID.match(name) or os.path.exists(name):
        return None
    return name


def _label_budget(budget: Any) -> str:
    if budget is None:
        return "none: self-supervised alignment only, no labeled queries"
    if isinstance(budget, (int, float)) and 0 < budget <= 1:
        return f"{budget:.0%} of each task's labeled queries (validation labels included)"
    return str(budget)


def _without_curves(value: Any) -> Any:
    """Metadata minus per-epoch curves and long lists, which make a card unreadable (config.json keeps them)."""
    if isinstance(value, dict):
        return {k: _without_curves(v) for k, v in value.items() if k != "curve"}
    if isinstance(value, list) and len(value) > 20:
        return value[:20] + [f"... {len(value) - 20} more"]
    return value


def _training_details(metadata: dict[str, Any]) -> str:
    shown = {key: _without_curves(metadata[key]) for key in ("mode", "recipe", "seeds", "tasks", "label_budget", "alignment")
             if key in metadata}
    if not shown:
        return "No training metadata recorded."
    return "```json\n" + json.dumps(shown, indent=1, default=str) + "\n```"


def _metrics_table(evaluation: dict[str, dict[str, float]]) -> str:
    if not evaluation:
        return "Not evaluated yet: run `python training/evaluate.py --system <this folder> ...`."
    lines = ["| task | " + " | ".join(CARD_METRICS) + " |", "|---|" + "---|" * len(CARD_METRICS)]
    for task, values in sorted(evaluation.items()):
        lines.append(f"| {task} | " + " | ".join(f"{values.get(m, float('nan')):.4f}" for m in CARD_METRICS) + " |")
    return "\n".join(lines)
