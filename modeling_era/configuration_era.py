"""Configuration of an ERA adapter: everything needed to use it correctly, nothing hidden elsewhere.

This file travels to the Hugging Face Hub with every adapter (``trust_remote_code``): it imports only
the standard library and ``transformers``, and does nothing at import time.
"""
from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

ADAPTER_TYPES = ("linear", "low_rank", "mlp", "fusion")
FUSION_BRANCHES = ("linear", "low_rank")
POOLING_MODES = ("mean", "cls", "last_token")
SIMILARITIES = ("cosine", "dot")
ENCODER_KINDS = ("model", "external")


class EraConfig(PretrainedConfig):
    r"""Configuration of an ERA adapter that maps query-encoder embeddings into a doc encoder's space.

    Every field is saved in `config.json`; together they say how to use the adapter correctly.

    Args:
        query_encoder (`str`, *optional*, defaults to `None`):
            Hub id (or local path) of the strong query encoder whose pooled embeddings feed the adapter.
            For API-only query encoders (e.g. OpenAI vectors) a descriptive name; no backbone is loaded.
        query_encoder_revision (`str`, *optional*, defaults to `None`):
            Git revision (commit, tag or branch) of `query_encoder` the adapter was trained with.
        query_encoder_kind (`str`, *optional*, defaults to `"model"`):
            `"model"`: `query_encoder` is a checkpoint this code loads. `"external"`: the adapter was trained on
            stored query vectors (an API); `query_encoder` is a name only, and the adapter is an `EraAdapter`
            that takes those vectors.
        doc_encoder (`str`, *optional*, defaults to `None`):
            The doc encoder that built the index this adapter searches: a Hub id, or for an external doc
            encoder its name as the user gave it (free text, e.g. `"text-embedding-3-small"`).
        doc_encoder_revision (`str`, *optional*, defaults to `None`):
            Revision of `doc_encoder`.
        doc_encoder_sha256 (`str`, *optional*, defaults to `None`):
            Fingerprint of the doc encoder's files the adapter was trained with (sha256 over its weights,
            config and tokenizer files): identifies a local copy that carries no Hub id or revision.
        doc_encoder_kind (`str`, *optional*, defaults to `"model"`):
            `"model"`: `doc_encoder` is a checkpoint the training pipeline ran. `"external"`: the adapter was
            trained on the index's stored vectors and `doc_encoder` was never run (e.g. an embedding API); a
            fusion adapter's light branch then takes the index's query vectors (`light_query_embeddings`).
        doc_vectors_fingerprint (`str`, *optional*, defaults to `None`):
            External doc encoder: `"sha256:..."` over a fixed sample of the stored (id, float32 vector) rows
            (`doc_vectors_fingerprint_ids`), so `check_doc_encoder(source)` recognises the index.
        doc_vectors_fingerprint_ids (`list[str]`, *optional*, defaults to `None`):
            The ids of that sample (the ids with the smallest blake2b digests; independent of row order).
        doc_vectors_normalized (`bool`, *optional*, defaults to `None`):
            Whether the stored document vectors are L2-normalised (a cosine index); `None` when not recorded.
        query_dim (`int`, *optional*, defaults to 768):
            Dimension of the query encoder's pooled embedding (the adapter's input).
        doc_dim (`int`, *optional*, defaults to 384):
            Dimension of the doc encoder's embedding (the adapter's output).
        adapter_type (`str`, *optional*, defaults to `"linear"`):
            Adapter family: `"linear"` (the paper's W·x + b), `"low_rank"` (B·A·x + b, plus x itself when
            the dims are equal; for large dims), `"mlp"` (W·x + b plus a small GELU MLP residual whose
            output layer starts at zero) or `"fusion"` (both query embeddings in:
            W_d·D(q) + b_d + gate·(W_q·Q(q) + b_q), with D = `fusion_encoder`).
        adapter_rank (`int`, *optional*, defaults to 64):
            Inner rank of the `low_rank` family.
        adapter_hidden_dim (`int`, *optional*, defaults to 1024):
            Hidden width of the `mlp` family.
        normalize_input (`bool`, *optional*, defaults to `True`):
            L2-normalise the query encoder's pooled embedding before the adapter, as the query encoder's
            own sentence-transformers pipeline does.
        normalize_output (`bool`, *optional*, defaults to `True`):
            L2-normalise the adapter's output (required for a cosine index).
        similarity (`str`, *optional*, defaults to `"cosine"`):
            Similarity the doc index uses: `"cosine"` or `"dot"`.
        pooling (`str`, *optional*, defaults to `"mean"`):
            How the query backbone's token states become one vector: `"mean"`, `"cls"` or `"last_token"`.
        max_seq_length (`int`, *optional*, defaults to 256):
            Token limit for queries; longer prompts are truncated. (sentence-transformers' name:
            transformers 5 reserves `max_length` for generation.)
        lowercase_queries (`bool`, *optional*, defaults to `False`):
            Lower-case each prompt before tokenizing, as the query encoder's sentence-transformers config
            asks (`do_lower_case`).
        prompt_template (`str`, *optional*, defaults to `"{instruction} {query}"`):
            How a query is shown to the query encoder. Must contain `{query}`; may contain `{instruction}`.
        default_instruction (`str`, *optional*, defaults to `""`):
            Instruction used when the caller passes none.
        fusion_encoder (`str`, *optional*, defaults to `None`):
            `fusion` only: Hub id of the light encoder whose query embedding feeds the second branch
            (normally the doc encoder itself).
        fusion_encoder_revision (`str`, *optional*, defaults to `None`):
            Revision of `fusion_encoder`.
        fusion_dim (`int`, *optional*, defaults to `None`):
            `fusion` only (then required): dimension of `fusion_encoder`'s embedding.
        fusion_pooling (`str`, *optional*, defaults to `"mean"`):
            Pooling of `fusion_encoder`.
        fusion_max_seq_length (`int`, *optional*, defaults to 256):
            Token limit of `fusion_encoder` for queries.
        fusion_lowercase_queries (`bool`, *optional*, defaults to `False`):
            `lowercase_queries` for `fusion_encoder`.
        fusion_branch (`str`, *optional*, defaults to `"linear"`):
            Shape of the strong (Q) branch of `fusion`: `"linear"` or `"low_rank"` (rank `adapter_rank`,
            for large query encoders).
        fusion_gate (`float`, *optional*, defaults to 0.0):
            Starting value of the learned scalar gate on the Q branch. At 0 a fusion adapter starts as the
            symmetric model (the light encoder on both sides, through W_d).
        lora_config (`dict`, *optional*, defaults to `None`):
            When the query backbone was trained with a LoRA: its peft `LoraConfig` arguments (`r`,
            `lora_alpha`, `lora_dropout`, `target_modules`, `bias`). The LoRA weights are stored with the
            adapter (prefix `lora.`); loading puts them on the referenced backbone.
        bundle_backbone (`bool`, *optional*, defaults to `False`):
            Whether the query backbone's weights are stored in this folder (self-contained artifact)
            rather than loaded from `query_encoder` by reference.
        backbone_config (`dict`, *optional*, defaults to `None`):
            The bundled backbone's own config (only when bundled).
        training_metadata (`dict`, *optional*, defaults to `{}`):
            Free-form record written by the training stages: recipe, settings, seeds, data and split,
            label counts, metrics.

    Example:

    ```python
    >>> from modeling_era import EraConfig, EraAdapter

    >>> config = EraConfig(
    ...     query_encoder="sentence-transformers/all-mpnet-base-v2",
    ...     doc_encoder="sentence-transformers/all-MiniLM-L6-v2",
    ...     query_dim=768,
    ...     doc_dim=384,
    ...     prompt_template="{query}",
    ... )
    >>> adapter = EraAdapter(config)  # maps (n, 768) query vectors to (n, 384) doc-space vectors
    >>> adapter.config.adapter_type
    'linear'
    ```
    """

    model_type = "era"
    _auto_class = "AutoConfig"

    def __init__(
        self,
        query_encoder: str | None = None,
        query_encoder_revision: str | None = None,
        query_encoder_kind: str = "model",
        doc_encoder: str | None = None,
        doc_encoder_revision: str | None = None,
        doc_encoder_sha256: str | None = None,
        doc_encoder_kind: str = "model",
        doc_vectors_fingerprint: str | None = None,
        doc_vectors_fingerprint_ids: list[str] | None = None,
        doc_vectors_normalized: bool | None = None,
        query_dim: int = 768,
        doc_dim: int = 384,
        adapter_type: str = "linear",
        adapter_rank: int = 64,
        adapter_hidden_dim: int = 1024,
        normalize_input: bool = True,
        normalize_output: bool = True,
        similarity: str = "cosine",
        pooling: str = "mean",
        max_seq_length: int = 256,
        lowercase_queries: bool = False,
        prompt_template: str = "{instruction} {query}",
        default_instruction: str = "",
        fusion_encoder: str | None = None,
        fusion_encoder_revision: str | None = None,
        fusion_dim: int | None = None,
        fusion_pooling: str = "mean",
        fusion_max_seq_length: int = 256,
        fusion_lowercase_queries: bool = False,
        fusion_branch: str = "linear",
        fusion_gate: float = 0.0,
        lora_config: dict[str, Any] | None = None,
        bundle_backbone: bool = False,
        backbone_config: dict[str, Any] | None = None,
        training_metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _check_choice("adapter_type", adapter_type, ADAPTER_TYPES)
        _check_choice("pooling", pooling, POOLING_MODES)
        _check_choice("similarity", similarity, SIMILARITIES)
        _check_choice("fusion_pooling", fusion_pooling, POOLING_MODES)
        _check_choice("fusion_branch", fusion_branch, FUSION_BRANCHES)
        _check_choice("query_encoder_kind", query_encoder_kind, ENCODER_KINDS)
        _check_choice("doc_encoder_kind", doc_encoder_kind, ENCODER_KINDS)
        if adapter_type == "fusion":
            if not fusion_dim or int(fusion_dim) <= 0:
                raise ValueError(
                    "adapter_type='fusion' needs fusion_dim, the dimension of the light query encoder "
                    "(fusion_encoder, normally the doc encoder), e.g. fusion_dim=384."
                )
            if bundle_backbone:
                raise ValueError("a fusion adapter names both query encoders by reference; use bundle_backbone=False.")
        if "{query}" not in prompt_template:
            raise ValueError(
                f"prompt_template {prompt_template!r} has no '{{query}}' slot; "
                "write it like '{instruction} {query}'."
            )
        for name, value in (("query_dim", query_dim), ("doc_dim", doc_dim), ("max_seq_length", max_seq_length)):
            if int(value) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        self.query_encoder = query_encoder
        self.query_encoder_revision = query_encoder_revision
        self.query_encoder_kind = query_encoder_kind
        self.doc_encoder = doc_encoder
        self.doc_encoder_revision = doc_encoder_revision
        self.doc_encoder_sha256 = doc_encoder_sha256
        self.doc_encoder_kind = doc_encoder_kind
        self.doc_vectors_fingerprint = doc_vectors_fingerprint
        self.doc_vectors_fingerprint_ids = list(doc_vectors_fingerprint_ids) if doc_vectors_fingerprint_ids else None
        self.doc_vectors_normalized = doc_vectors_normalized
        self.query_dim = int(query_dim)
        self.doc_dim = int(doc_dim)
        self.adapter_type = adapter_type
        self.adapter_rank = int(adapter_rank)
        self.adapter_hidden_dim = int(adapter_hidden_dim)
        self.normalize_input = normalize_input
        self.normalize_output = normalize_output
        self.similarity = similarity
        self.pooling = pooling
        self.max_seq_length = int(max_seq_length)
        self.lowercase_queries = bool(lowercase_queries)
        self.prompt_template = prompt_template
        self.default_instruction = default_instruction
        self.fusion_encoder = fusion_encoder
        self.fusion_encoder_revision = fusion_encoder_revision
        self.fusion_dim = int(fusion_dim) if fusion_dim else None
        self.fusion_pooling = fusion_pooling
        self.fusion_max_seq_length = int(fusion_max_seq_length)
        self.fusion_lowercase_queries = bool(fusion_lowercase_queries)
        self.fusion_branch = fusion_branch
        self.fusion_gate = float(fusion_gate)
        self.lora_config = dict(lora_config) if lora_config else None
        self.bundle_backbone = bundle_backbone
        self.backbone_config = backbone_config
        self.training_metadata = dict(training_metadata or {})
        super().__init__(**kwargs)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(choices)}.")
