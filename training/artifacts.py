"""What a training stage leaves behind: an EraQueryEncoder folder with a full config and a model card.

Stages train an `EraAdapter` on cached embeddings; `save_query_encoder` turns it into the folder a
user loads with `AutoModel.from_pretrained(folder, trust_remote_code=True)`. The folder is written
next to its destination and renamed into place, so an interrupted save never replaces a good one.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder
from modeling_era.modeling_era import BACKBONE_PREFIX
from training.encoders import FusedEncoder, TextEncoder

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "era_adapter.md"
CARD_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def era_config(
    query_encoder: TextEncoder,
    doc_encoder: TextEncoder,
    *,
    adapter_type: str = "linear",
    prompt_template: str = "{instruction} {query}",
    default_instruction: str = "",
    training_metadata: dict[str, Any] | None = None,
    light_encoder: TextEncoder | None = None,
    **adapter_shape: Any,
) -> EraConfig:
    """An EraConfig that records the encoders exactly as they embed (ids, revisions, pooling...).

    `light_encoder` (fusion only): the light query encoder of the second branch, normally the doc encoder.
    """
    if adapter_type == "fusion":
        light_encoder = light_encoder or doc_encoder
        if light_encoder.normalize != query_encoder.normalize:
            raise ValueError(f"fusion needs both query encoders to agree on normalisation: {query_encoder!r} vs {light_encoder!r}.")
        adapter_shape.update(
            fusion_encoder=light_encoder.model_id, fusion_encoder_revision=light_encoder.revision,
            fusion_dim=light_encoder.dim, fusion_pooling=light_encoder.pooling,
            fusion_max_seq_length=light_encoder.max_length, fusion_lowercase_queries=light_encoder.do_lower_case,
        )
    return EraConfig(
        query_encoder=query_encoder.model_id,
        query_encoder_revision=query_encoder.revision,
        doc_encoder=doc_encoder.model_id,
        doc_encoder_revision=doc_encoder.revision,
        query_dim=query_encoder.dim,
        doc_dim=doc_encoder.dim,
        adapter_type=adapter_type,
        normalize_input=query_encoder.normalize,
        normalize_output=True,
        similarity="cosine" if doc_encoder.normalize else "dot",
        pooling=query_encoder.pooling,
        max_seq_length=query_encoder.max_length,
        lowercase_queries=query_encoder.do_lower_case,
        prompt_template=prompt_template,
        default_instruction=default_instruction,
        training_metadata=training_metadata or {},
        **adapter_shape,
    )


def query_side_settings(config: EraConfig, light: bool = False) -> dict[str, Any]:
    """TextEncoder arguments that embed queries exactly as an adapter with this config expects them
    (`light`: a fusion adapter's light query encoder, which sees the same prompt)."""
    prefix = "fusion_" if light else ""
    return {
        "model": config.fusion_encoder if light else config.query_encoder,
        "revision": config.fusion_encoder_revision if light else config.query_encoder_revision,
        "pooling": getattr(config, prefix + "pooling"),
        "normalize": config.normalize_input,
        "max_length": getattr(config, prefix + "max_seq_length"),
        "query_template": config.prompt_template,
    }


def query_side_encoder(config: EraConfig, make: Callable[..., TextEncoder] = TextEncoder,
                       **kwargs: Any) -> TextEncoder | FusedEncoder:
    """What embeds queries exactly as an adapter with this config expects them: a TextEncoder, or for a
    fusion adapter a FusedEncoder (strong + light). `make` builds each TextEncoder (e.g. a shared pool)."""
    strong = make(**query_side_settings(config), **kwargs)
    if config.adapter_type != "fusion":
        return strong
    return FusedEncoder(strong, make(**query_side_settings(config, light=True), **kwargs))


def adapter_input_dim(config: EraConfig) -> int:
    """Width of the (cached) query vectors an EraAdapter with this config takes."""
    return config.query_dim + (config.fusion_dim if config.adapter_type == "fusion" else 0)


def save_query_encoder(adapter: EraAdapter, output: str | os.PathLike, *, repo_id: str | None = None) -> Path:
    """Save `adapter` as an EraQueryEncoder folder (backbone by reference) with its model card."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.staging-{uuid.uuid4().hex[:8]}"
    model = EraQueryEncoder(adapter.config)
    model.adapter.load_state_dict(adapter.adapter.state_dict())
    model.save_pretrained(staging)
    write_model_card(staging, repo_id=repo_id or output.name)
    _replace_folder(staging, output)
    return output


def count_adapter_parameters(weights: str | os.PathLike) -> int:
    """Parameters stored besides a bundled backbone: the adapter (and a LoRA), as the card reports them."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if not key.startswith(BACKBONE_PREFIX):
                total += math.prod(int(size) for size in handle.get_slice(key).get_shape())
    return total


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None, config: EraConfig | None = None) -> None:
    """(Re-)render folder/README.md from the folder's config (read from config.json unless given) and weights;
    `repo_id` names it in the usage snippet (default: the folder's name). Written to a temporary file, then
    renamed into place."""
    folder = Path(folder)
    config = config or EraConfig.from_pretrained(folder)
    card = render_model_card(config, num_parameters=count_adapter_parameters(folder / "model.safetensors"),
                             repo_id=repo_id or folder.name)
    _atomic_write_text(folder / "README.md", str(card))


def record_evaluation(folder: str | os.PathLike, evaluation: dict[str, dict[str, float]],
                      settings: dict[str, Any]) -> None:
    """Store test metrics ({task: {metric: value}}) and how they were measured in an adapter folder's
    config.json (`training_metadata["evaluation"]`, `["evaluation_settings"]`) and re-render its card, so
    the Hub shows them (model-index). Both files are replaced atomically."""
    folder = Path(folder)
    config = EraConfig.from_pretrained(folder)
    config.training_metadata["evaluation"] = evaluation
    config.training_metadata["evaluation_settings"] = settings
    _atomic_write_text(folder / "config.json", config.to_json_string())
    write_model_card(folder, config=config)


def _atomic_write_text(path: Path, text: str) -> None:
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def _replace_folder(staging: Path, output: Path) -> None:
    previous = output.parent / f".{output.name}.previous-{uuid.uuid4().hex[:8]}"
    if output.exists():
        output.rename(previous)
    staging.rename(output)
    shutil.rmtree(previous, ignore_errors=True)


def render_model_card(config: EraConfig, *, num_parameters: int, repo_id: str) -> ModelCard:
    """The model card: YAML metadata the Hub reads (incl. model-index results) and a usage guide."""
    metadata = config.training_metadata
    evaluation = metadata.get("evaluation", {})  # {task: {metric: value}} on the test queries
    datasets = sorted(metadata.get("tasks", []))
    card_data = ModelCardData(
        library_name="transformers",
        base_model=_hub_id(config.query_encoder),  # the Hub rejects cards whose base_model is a local path
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
