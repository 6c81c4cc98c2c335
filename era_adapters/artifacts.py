"""What a training stage leaves behind: an EraQueryEncoder folder with a full config and a model card.

Stages train an `EraAdapter` on cached embeddings; `save_query_encoder` turns it into the folder a
user loads with `AutoModel.from_pretrained(folder, trust_remote_code=True)`. Folders are written
beside their destination and swapped in whole (`modeling_era.modeling_era.atomic_folder`), so an
interrupted save never replaces a good adapter with a broken one.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder
from modeling_era.modeling_era import atomic_folder, atomic_write
from era_adapters.cards import CARD_METRICS, write_model_card
from era_adapters.encoders import FusedEncoder, TextEncoder
from era_adapters.metrics import paired_test
from era_adapters.sides import EncoderSide, FusedSide, as_side, doc_side_from


def era_config(
    query_encoder: Any,
    doc_encoder: Any,
    *,
    adapter_type: str = "linear",
    prompt_template: str = "{instruction} {query}",
    default_instruction: str = "",
    training_metadata: dict[str, Any] | None = None,
    light_encoder: Any = None,
    **adapter_shape: Any,
) -> EraConfig:
    """An EraConfig that records both sides exactly as they embed: a `TextEncoder` (ids, revisions,
    pooling...) or a stored side (`era_adapters.sides.StoredSide`: its name, kind, fingerprint).

    `light_encoder` (fusion only): the light query encoder of the second branch, normally the doc encoder.
    """
    query_side, doc_side = as_side(query_encoder), as_side(doc_encoder)
    if adapter_type == "fusion":
        light = as_side(light_encoder or doc_encoder)
        if light.kind == "model" and light.normalize != query_side.normalize:
            raise ValueError(f"fusion needs both query encoders to agree on normalisation: {query_encoder!r} vs "
                             f"{light_encoder or doc_encoder!r}.")
        adapter_shape.update(light.config_fields("light"))
    return EraConfig(
        **query_side.config_fields("query"),
        **doc_side.config_fields("doc"),
        adapter_type=adapter_type,
        normalize_output=True,
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


def adapter_doc_side(adapter: EraAdapter | EraQueryEncoder, args: Any, *, where: str,
                     make: Callable[..., TextEncoder] = TextEncoder, **kwargs: Any) -> Any:
    """The doc side an adapter was trained for: its doc encoder, run (`make`), or the stored vectors of
    `args.doc_vectors` (a stage's `VectorArguments`), which must be its index: the name given with
    `--doc-encoder-name` and the vectors' fingerprint are checked with `check_doc_encoder`."""
    config = adapter.config
    if args.doc_vectors is None:
        if config.doc_encoder_kind == "external":
            raise ValueError(f"{where} was trained on the stored vectors of {config.doc_encoder} (an external doc "
                             "encoder, never run): pass --doc-vectors SOURCE, the same index.")
        return EncoderSide(make(config.doc_encoder, revision=config.doc_encoder_revision, **kwargs))
    side = doc_side_from(args, name=args.doc_encoder_name or config.doc_encoder)
    if args.doc_encoder_name:
        adapter.check_doc_encoder(args.doc_encoder_name)
    adapter.check_doc_encoder(side.documents_source)
    return side


def adapter_query_side(config: EraConfig, *, stored_queries: Any = None, doc_side: Any = None,
                       make: Callable[..., TextEncoder] = TextEncoder, **kwargs: Any) -> Any:
    """The side that gives an adapter its input, `(n, adapter_input_dim)`: its query encoder run as
    it expects (`query_side_encoder`), or the stored query vectors (`stored_queries`, a query-role
    `StoredSide`) when its query encoder is external; a fusion adapter whose doc encoder is external
    reads the light half from `doc_side`'s stored query vectors."""
    if config.query_encoder_kind == "external":
        if stored_queries is None:
            raise ValueError(f"this adapter takes stored vectors of {config.query_encoder} (an external query "
                             "encoder): pass --query-vectors SOURCE (the queries embedded by it, keyed by query id).")
        if config.adapter_type == "fusion":
            raise ValueError("a fusion adapter with an external query encoder is not supported.")
        return stored_queries
    if stored_queries is not None:
        raise ValueError(f"this adapter runs its query encoder {config.query_encoder}: drop --query-vectors.")
    if config.adapter_type == "fusion" and config.doc_encoder_kind == "external":
        if doc_side is None or doc_side.kind != "external":
            raise ValueError(f"this fusion adapter reads {config.doc_encoder}'s query vectors (an external doc "
                             "encoder): pass --doc-vectors and --doc-query-vectors.")
        return FusedSide(EncoderSide(make(**query_side_settings(config), **kwargs)), doc_side)
    return EncoderSide(query_side_encoder(config, make=make, **kwargs))


def adapter_input_dim(config: EraConfig) -> int:
    """Width of the (cached) query vectors an EraAdapter with this config takes."""
    return config.query_dim + (config.fusion_dim if config.adapter_type == "fusion" else 0)


def save_query_encoder(adapter: EraAdapter, output: str | os.PathLike, *, repo_id: str | None = None) -> Path:
    """Save `adapter` as an EraQueryEncoder folder (backbone by reference) with its model card; an adapter
    of an external query encoder (stored vectors) stays an EraAdapter, which takes those vectors."""
    if adapter.config.query_encoder_kind == "external":
        return save_with_card(adapter, output, repo_id=repo_id)
    model = EraQueryEncoder(adapter.config)
    model.adapter.load_state_dict(adapter.adapter.state_dict())
    return save_with_card(model, output, repo_id=repo_id)


def save_with_card(model: EraQueryEncoder | EraAdapter, output: str | os.PathLike, *, repo_id: str | None = None,
                   num_parameters: int | None = None) -> Path:
    """Write `model` and its model card to `output` as one crash-safe swap of the whole folder."""
    output = Path(output)
    with atomic_folder(output) as staging:
        model.save_pretrained(staging)
        write_model_card(staging, repo_id=repo_id or output.name, num_parameters=num_parameters)
    return output


def record_evaluation(folder: str | os.PathLike, evaluation: dict[str, dict[str, float]],
                      settings: dict[str, Any]) -> None:
    """Store test metrics ({task: {metric: value}}) and how they were measured in an adapter folder's
    config.json (`training_metadata["evaluation"]`, `["evaluation_settings"]`) and re-render its card, so
    the Hub shows them (model-index). The folder is swapped whole: config and card change together."""
    folder = Path(folder)
    config = EraConfig.from_pretrained(folder)
    config.training_metadata["evaluation"] = evaluation
    config.training_metadata["evaluation_settings"] = settings
    with atomic_folder(folder) as staging:
        shutil.copytree(folder, staging, copy_function=os.link, dirs_exist_ok=True)  # links: no data copied
        atomic_write(staging / "config.json", config.to_json_string())
        write_model_card(staging, repo_id=folder.name, config=config)


def record_in_adapters(report: dict[str, Any]) -> None:
    """Store in each local adapter folder its per-task test metrics with the query count, doc2doc's and
    query2query's on the same queries, the paired sign-flip tests, and the evaluation settings."""
    settings = {key: value for key, value in report["settings"].items() if key != "all_queries"}
    settings["test_source"] = {task: entry["split"]["source"] for task, entry in report["tasks"].items()}
    results = report["results"]
    for result in results.values():
        path = result["system"].get("path")
        if result["system"]["kind"] != "adapter" or not Path(path).is_dir():
            continue  # a Hub id: nothing local to write
        record_evaluation(path, {task: _card_entry(result, results, task) for task in result["tasks"]}, settings)


def _card_entry(result: dict[str, Any], results: dict[str, Any], task: str) -> dict[str, Any]:
    entry = result["tasks"][task]
    card = {metric: entry[metric] for metric in CARD_METRICS if metric in entry}
    card["n_queries"] = entry["n_queries"]
    card["baselines"] = {}
    for name in ("doc2doc", "query2query"):
        if name in results:
            theirs = results[name]["tasks"][task]
            card["baselines"][name] = {metric: theirs[metric] for metric in CARD_METRICS if metric in theirs}
            if "vs_doc2doc" in theirs:  # query2query against the index, on the same queries
                card["baselines"][name]["vs_doc2doc"] = theirs["vs_doc2doc"]
            card[f"vs_{name}"] = paired_test(
                np.array([entry["per_query"][qid]["ndcg@10"] for qid in entry["per_query"]]),
                np.array([theirs["per_query"][qid]["ndcg@10"] for qid in entry["per_query"]]))
    return card
