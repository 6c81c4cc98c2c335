"""Export an ERA adapter as a sentence-transformers model: `encode_query` = query encoder + adapter,
`encode_document` = the doc encoder, in one folder that `SentenceTransformer(path)` loads without custom code.

    python training/export.py ADAPTER OUT [--doc-encoder PATH] [--query-encoder PATH] [--cache-dir DIR]

The model is one `Router` (sentence-transformers' query/document routing module):

    query:    Transformer(query encoder) -> Pooling -> [Normalize] -> Dense(adapter, identity) -> [Normalize]
    document: Transformer(doc encoder)   -> Pooling -> [Normalize]

The `Dense` layer holds the adapter's linear map (weight and bias, identity activation). The `low_rank`
family is exported as the single linear map it computes (B·A, plus the identity for its residual form);
the `mlp` family has a non-linear residual that the built-in modules cannot express, so it is refused,
as are adapters with a LoRA on the query backbone (use `AutoModel.from_pretrained(..., trust_remote_code=True)`
for those). The query side follows the adapter's config (pooling, normalisation, token limit); the
document side follows the doc encoder exactly as `era_adapters.encoders.TextEncoder` embeds documents
(pooling, normalisation, token limit and lower-casing from its sentence-transformers files), so both
routes reproduce ERA's vectors. Both backbones are stored in the folder (self-contained).

Prompts. ERA fills `config.prompt_template` (e.g. "{instruction} {query}") and strips the result;
sentence-transformers prepends a prompt string to the text. The export stores
`prompts={"query": st_prompt(config), "document": ""}`: the template's text before `{query}`, with the
config's default instruction filled in and leading whitespace removed, so `encode_query(queries)` equals
`encode_queries(queries)` (default instruction). For another instruction pass
`encode_query(queries, prompt=st_prompt(config, instruction))`. Templates with text after `{query}`
cannot be a prefix and are refused. Difference left: ERA strips each query's own leading/trailing
whitespace, sentence-transformers does not (invisible to BERT-style tokenizers).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder, IncompatibleDocEncoderError
from modeling_era.modeling_era import atomic_folder

__all__ = ["EXPORTABLE_FAMILIES", "adapter_linear_map", "export_sentence_transformer", "st_prompt"]

logger = logging.getLogger(__name__)

EXPORTABLE_FAMILIES = ("linear", "low_rank")
_ST_POOLING = {"mean": "mean", "cls": "cls", "last_token": "lasttoken"}
ERA_CONFIG_NAME = "era_config.json"  # the adapter's own config, kept beside the export for provenance


def st_prompt(config: EraConfig, instruction: str | None = None) -> str:
    """The sentence-transformers prompt (a prefix) equivalent to ERA's prompt for `instruction`.

    `instruction` defaults to the config's default instruction. Raises ValueError for templates that
    put text after `{query}` (not expressible as a prefix).
    """
    template = config.prompt_template
    if template.count("{query}") != 1:
        raise ValueError(f"prompt_template {template!r} must contain '{{query}}' exactly once to become a prompt prefix.")
    before, after = template.split("{query}")
    instruction = config.default_instruction if instruction is None else instruction
    if after.format(instruction=instruction).strip():
        raise ValueError(
            f"prompt_template {template!r} puts text after the query; sentence-transformers prompts are prefixes, "
            "so this adapter cannot be exported with its prompt. Use EraQueryEncoder.encode_queries instead."
        )
    return before.format(instruction=instruction).lstrip()


def _check_exportable(family: str) -> None:
    if family not in EXPORTABLE_FAMILIES:
        raise ValueError(
            f"adapter_type={family!r} cannot be exported with sentence-transformers' built-in modules "
            f"(exportable: {', '.join(EXPORTABLE_FAMILIES)}): its map has no built-in equivalent (mlp: a non-linear "
            "residual; fusion: two query encoders). "
            "Load it with AutoModel.from_pretrained(..., trust_remote_code=True) instead."
        )


def adapter_linear_map(adapter: torch.nn.Module, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight `(doc_dim, query_dim)`, bias `(doc_dim,)`) of an adapter that is one affine map."""
    _check_exportable(family)
    if family == "linear":
        weight, bias = adapter.proj.weight.double(), adapter.proj.bias.double()
    elif family == "low_rank":
        weight = adapter.up.weight.double() @ adapter.down.weight.double()
        if adapter.residual:
            weight = weight + torch.eye(weight.shape[0], dtype=torch.float64)
        bias = adapter.up.bias.double()
    return weight.float().detach().clone(), bias.float().detach().clone()


def _check_doc_encoder(config: EraConfig, doc: Any, era_cache_dir: str | os.PathLike | None) -> None:
    """The document route must be the encoder the adapter was trained for, not only one of its width: the
    same Hub id (and revision, where both are known), or a copy whose files have the recorded fingerprint."""
    from era_adapters.models import weights_fingerprint

    trained = f"{config.doc_encoder}@{config.doc_encoder_revision or 'any revision'}"
    if doc.dim != config.doc_dim:
        raise IncompatibleDocEncoderError(
            f"the doc encoder at {doc.path} gives {doc.dim}-d vectors but the adapter maps into {config.doc_dim}-d "
            f"({trained}); pass the doc encoder the adapter was trained for."
        )
    recorded = getattr(config, "doc_encoder_sha256", None)
    same_revision = None in (doc.revision, config.doc_encoder_revision) or doc.revision == config.doc_encoder_revision
    by_content = doc.resolved.source == "local" and doc.revision is None  # a plain folder is what its files are
    if doc.model_id == config.doc_encoder and same_revision and not (by_content and recorded):
        return
    fingerprint = weights_fingerprint(doc.path, era_cache_dir) if recorded else None
    if recorded and fingerprint == recorded:
        return
    found = f"{doc.model_id}@{doc.revision or 'no revision'}"
    found += f", files sha256 {fingerprint[:12]}…" if fingerprint else ""
    expected = trained + (f", files sha256 {recorded[:12]}…" if recorded else "")
    raise IncompatibleDocEncoderError(
        f"the doc encoder at {doc.path} ({found}) is not the one the adapter was trained for ({expected}); its "
        "vectors would not match the adapter's. Pass that encoder (a copy of its files, or its Hub id), or omit "
        "--doc-encoder to use the one the adapter names."
    )


def _load_adapter(adapter_dir: str | os.PathLike, config: EraConfig, **hub_kwargs: Any) -> tuple[torch.nn.Module, Any]:
    """The adapter module, and the loaded query encoder when its backbone is bundled (else None)."""
    if config.bundle_backbone:
        model = EraQueryEncoder.from_pretrained(adapter_dir, **hub_kwargs)
        return model.adapter, model
    return EraAdapter.from_pretrained(adapter_dir, **hub_kwargs).adapter, None


def _resolve(name_or_path: str, revision: str | None, cache_dir: str | os.PathLike | None) -> Path:
    from era_adapters.models import resolve_model

    return Path(resolve_model(name_or_path, revision, cache_dir=cache_dir).path)


def export_sentence_transformer(
    adapter_dir: str | os.PathLike,
    output: str | os.PathLike,
    doc_encoder_path: str | os.PathLike | None = None,
    *,
    query_encoder_path: str | os.PathLike | None = None,
    era_cache_dir: str | os.PathLike | None = None,
    **hub_kwargs: Any,
) -> Path:
    """Write a `SentenceTransformer` folder for the ERA adapter in `adapter_dir` to `output`; return it.

    `doc_encoder_path` / `query_encoder_path`: local copies of the encoders (default: resolve the ids and
    revisions the adapter's config names, with the packaged offline copies in the ERA cache `era_cache_dir`
    as fallback). `hub_kwargs` (e.g. `revision`, `cache_dir`, `local_files_only`) apply to loading the adapter.
    The folder is written beside `output` and renamed into place.
    """
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Router, Transformer
    except ImportError as error:
        raise ImportError("the sentence-transformers export needs sentence-transformers >= 5.4: "
                          "pip install 'era-adapters[export]'.") from error

    from era_adapters.encoders import TextEncoder

    config = EraConfig.from_pretrained(adapter_dir, **hub_kwargs)
    if getattr(config, "lora_config", None):
        raise ValueError(
            f"{adapter_dir} carries a LoRA on its query backbone; merge it into the backbone first or load the adapter "
            "with AutoModel.from_pretrained(..., trust_remote_code=True): the export needs a plain query encoder."
        )
    _check_exportable(config.adapter_type)
    external = [side for side in ("query", "doc") if getattr(config, f"{side}_encoder_kind", "model") == "external"]
    if external and not (external == ["doc"] and doc_encoder_path is not None):
        raise ValueError(
            f"{adapter_dir} was trained on stored vectors of an external {' and '.join(external)} encoder "
            f"({', '.join(getattr(config, f'{side}_encoder') for side in external)}), which a SentenceTransformer cannot "
            "run; search your index with AutoModel.from_pretrained(..., trust_remote_code=True) instead "
            "(docs/stored_vectors.md).")
    prompt = st_prompt(config)  # refuse unexportable templates before any heavy loading
    adapter, bundled = _load_adapter(adapter_dir, config, **hub_kwargs)
    weight, bias = adapter_linear_map(adapter, config.adapter_type)

    doc = TextEncoder(
        str(doc_encoder_path) if doc_encoder_path is not None else config.doc_encoder,
        revision=None if doc_encoder_path is not None else config.doc_encoder_revision,
        cache_dir=era_cache_dir,
        device="cpu",
    )
    _check_doc_encoder(config, doc, era_cache_dir)
    if doc.doc_template is not None:  # pragma: no cover - TextEncoder's default is no document template
        raise ValueError("document templates cannot be exported")

    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="era-export-") as tmp:
        if bundled is not None:  # the backbone lives inside the adapter's weights: give it a plain HF folder
            query_path = Path(tmp) / "query-backbone"
            bundled.backbone.save_pretrained(query_path)
            bundled.tokenizer.save_pretrained(query_path)
        elif query_encoder_path is not None:
            query_path = Path(query_encoder_path)
        else:
            query_path = _resolve(config.query_encoder, config.query_encoder_revision, era_cache_dir)

        query_transformer = Transformer(str(query_path), max_seq_length=config.max_seq_length,
                                        do_lower_case=config.lowercase_queries)
        hidden = query_transformer.get_embedding_dimension()
        if hidden != config.query_dim:
            raise ValueError(
                f"the query encoder at {query_path} has hidden size {hidden} but the adapter expects "
                f"query_dim={config.query_dim} ({config.query_encoder})."
            )
        query_modules: list[Any] = [query_transformer, Pooling(config.query_dim, pooling_mode=_ST_POOLING[config.pooling])]
        if config.normalize_input:
            query_modules.append(Normalize())
        query_modules.append(
            Dense(config.query_dim, config.doc_dim, bias=True, activation_function=None, init_weight=weight,
                  init_bias=bias)
        )
        if config.normalize_output:
            query_modules.append(Normalize())

        doc_modules: list[Any] = [
            Transformer(str(doc.path), max_seq_length=doc.max_length, do_lower_case=doc.do_lower_case),
            Pooling(doc.dim, pooling_mode=_ST_POOLING[doc.pooling]),
        ]
        if doc.normalize:
            doc_modules.append(Normalize())

        router = Router.for_query_document(query_modules=query_modules, document_modules=doc_modules)
        model = SentenceTransformer(
            modules=[router],
            prompts={"query": prompt, "document": ""},
            similarity_fn_name="cosine" if config.similarity == "cosine" else "dot",
            device="cpu",
        )
        with atomic_folder(output) as staging:
            model.save(str(staging))
            config.to_json_file(staging / ERA_CONFIG_NAME)
    logger.info("sentence-transformers export of %s written to %s", adapter_dir, output)
    return output
