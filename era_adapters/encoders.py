"""Text encoders for any Hugging Face `AutoModel` checkpoint, with an identity that keys the cache.

`TextEncoder` reads pooling, normalisation and the token limit from the sentence-transformers files
when the checkpoint has them (``modules.json``, ``1_Pooling/config.json``, a ``Normalize`` module,
``sentence_bert_config.json``); arguments override them. Queries get a prompt template (instruction +
query, via `modeling_era.format_prompt`); documents none by default. Embedding itself is
`modeling_era.encode_texts` (length-sorted batches, truncation, pooling, normalisation), the same code
the exported `EraQueryEncoder` runs.

`encoder.identity` is what the embedding cache keys on: model id, revision (or a fingerprint of the
weights when the folder has no revision), pooling, normalisation, max_length and dtype. Prompts are
not part of it: the cache keys on the exact text fed to the model, after the prompt is applied.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from modeling_era.modeling_era import encode_texts, format_prompt

from .models import ResolvedModel, resolve_model, weights_fingerprint

__all__ = [
    "DEFAULT_QUERY_TEMPLATE",
    "BARE_QUERY_TEMPLATE",
    "choose_prompt_template",
    "POOLING_MODES",
    "TextEncoder",
    "read_sentence_transformers_config",
]

logger = logging.getLogger(__name__)

DEFAULT_QUERY_TEMPLATE = "{instruction} {query}"
BARE_QUERY_TEMPLATE = "{query}"  # how MTEB scores models without prompts; the baselines' query prompt
POOLING_MODES = ("mean", "cls", "last_token")
# Bumped when the embedding recipe changes in a way that changes vectors (invalidates caches).
RECIPE_VERSION = 1
_ST_POOLING = {"mean": "mean", "cls": "cls", "lasttoken": "last_token", "last_token": "last_token"}
_ST_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
_DEFAULT_MAX_LENGTH = 512


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def read_sentence_transformers_config(folder: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint's sentence-transformers files say; ``None`` where they say nothing.

    Returns ``{"pooling", "normalize", "max_length", "do_lower_case", "include_prompt", "prompts",
    "unsupported"}``: `prompts` are the checkpoint's own named prompts (empty for models trained without),
    `pooling` is one of `POOLING_MODES` or the unsupported ST mode's name, `normalize` is True/False
    when ``modules.json`` exists (a ``Normalize`` module or not), `unsupported` lists modules other
    than Transformer / Pooling / Normalize (e.g. Dense), which this encoder cannot reproduce.
    """
    folder = Path(folder)
    found: dict[str, Any] = {
        "pooling": None,
        "normalize": None,
        "max_length": None,
        "do_lower_case": False,
        "include_prompt": True,
        "unsupported": [],
    }
    st_config = _read_json(folder / "config_sentence_transformers.json") or {}
    found["prompts"] = dict(st_config.get("prompts") or {})
    bert_config = _read_json(folder / "sentence_bert_config.json") or {}
    if bert_config.get("max_seq_length"):
        found["max_length"] = int(bert_config["max_seq_length"])
    found["do_lower_case"] = bool(bert_config.get("do_lower_case", False))
    modules = _read_json(folder / "modules.json")
    if modules is None:
        return found
    found["normalize"] = False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Normalize":
            found["normalize"] = True
        elif kind == "Pooling":
            pooling_config = _read_json(folder / module.get("path", "") / "config.json") or {}
            mode = pooling_config.get("pooling_mode")
            if mode is None:
                modes = [name for key, name in _ST_LEGACY_POOLING.items() if pooling_config.get(key)]
                mode = modes if len(modes) != 1 else modes[0]
            if isinstance(mode, list):
                mode = mode[0] if len(mode) == 1 else "+".join(mode) or "mean"
            found["pooling"] = _ST_POOLING.get(mode, mode)
            found["include_prompt"] = bool(pooling_config.get("include_prompt", True))
        elif kind != "Transformer":
            found["unsupported"].append(module.get("type"))
    return found


def _tokenizer_max_length(folder: Path, config: Any) -> int:
    limit = (_read_json(folder / "tokenizer_config.json") or {}).get("model_max_length")
    if isinstance(limit, (int, float)) and 0 < limit <= 100_000:
        return int(limit)
    positions = getattr(config, "max_position_embeddings", None)
    return min(_DEFAULT_MAX_LENGTH, int(positions)) if positions else _DEFAULT_MAX_LENGTH


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-")[-80:] or "model"


def choose_prompt_template(encoder: TextEncoder, template: str | None) -> dict[str, str]:
    """The query prompt to use with `encoder` and why (stages record both in the adapter's metadata).

    Given none: the instruction only for instruction-tuned models. A checkpoint whose sentence-
    transformers config declares prompts was trained with them; one without (all-mpnet-base-v2,
    all-MiniLM-L6-v2) was not, and a long instruction swamps a short query there: measured with
    Q = all-mpnet-base-v2 (README, Results), the bare query is the better prompt.
    """
    if template is not None:
        return {"template": template, "chosen_by": "given"}
    if encoder.prompts:
        return {"template": DEFAULT_QUERY_TEMPLATE, "chosen_by": "default: the encoder declares prompts"}
    return {"template": BARE_QUERY_TEMPLATE, "chosen_by": "default: the encoder declares no prompts (not instruction-tuned)"}


class TextEncoder:
    """Embeds texts with a Hugging Face checkpoint; loads the weights lazily (a warm cache never does).

    Args:
        model: Hub id, local folder, or a `ResolvedModel` (see `era_adapters.models.resolve_model`).
        revision: Hub revision to resolve (ignored for a `ResolvedModel`).
        pooling / normalize / max_length: override what the sentence-transformers files say
            (defaults without them: mean pooling, normalised, the tokenizer's limit or 512).
        dtype: "float32", "float16" or "bfloat16"; default float32 on CPU, on GPU bfloat16 for
            checkpoints stored in bfloat16 and float16 otherwise.
        device: default CUDA when available, else CPU.
        query_template: how a query is shown to the model, `{instruction}` and `{query}` slots.
        doc_template: how a document is shown (a `{text}` slot); None feeds documents as they are.
        batch_size: default batch size of `encode`.
        cache_dir: the ERA cache (packaged models, weight fingerprints).
    """

    def __init__(
        self,
        model: str | os.PathLike | ResolvedModel,
        *,
        revision: str | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        query_template: str = DEFAULT_QUERY_TEMPLATE,
        doc_template: str | None = None,
        batch_size: int = 32,
        cache_dir: str | os.PathLike | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.resolved = model if isinstance(model, ResolvedModel) else resolve_model(model, revision, cache_dir=cache_dir)
        self.cache_dir = cache_dir
        self.trust_remote_code = trust_remote_code
        path = self.resolved.path
        st = read_sentence_transformers_config(path)
        if st["unsupported"] and pooling is None:
            raise ValueError(
                f"{self.model_id} has sentence-transformers modules this encoder cannot reproduce: {st['unsupported']}. "
                "Use a checkpoint made of Transformer + Pooling (+ Normalize), or pass pooling=... to embed with the "
                "backbone alone (the vectors will differ from sentence-transformers')."
            )
        self.pooling = pooling or st["pooling"] or "mean"
        if self.pooling not in POOLING_MODES:
            raise ValueError(
                f"pooling={self.pooling!r} (from {'the argument' if pooling else path / '1_Pooling'}) is not supported; "
                f"choose one of {POOLING_MODES}."
            )
        if not st["include_prompt"]:
            warnings.warn(
                f"{self.model_id}: its Pooling excludes prompt tokens (include_prompt=False); ERA pools all tokens.",
                stacklevel=2,
            )
        if normalize is not None:
            self.normalize = bool(normalize)
        else:  # the checkpoint's own choice when it has sentence-transformers files, else normalised
            self.normalize = st["normalize"] if st["normalize"] is not None else True
        self._config = None
        self.max_length = int(max_length or st["max_length"] or _tokenizer_max_length(path, self.config))
        self.do_lower_case = st["do_lower_case"]
        self.prompts = st["prompts"]
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = self._pick_dtype(dtype)
        if "{query}" not in query_template:
            raise ValueError(f"query_template must contain '{{query}}', got {query_template!r}.")
        if doc_template is not None and "{text}" not in doc_template:
            raise ValueError(f"doc_template must contain '{{text}}', got {doc_template!r}.")
        self.query_template = query_template
        self.doc_template = doc_template
        self.batch_size = int(batch_size)
        self._model = None
        self._tokenizer = None
        self._identity: dict[str, Any] | None = None

    # ------------------------------------------------------------------ description

    @property
    def model_id(self) -> str:
        return self.resolved.model_id

    @property
    def revision(self) -> str | None:
        return self.resolved.revision

    @property
    def path(self) -> Path:
        return self.resolved.path

    @property
    def config(self) -> Any:
        if self._config is None:
            from transformers import AutoConfig

            self._config = AutoConfig.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
        return self._config

    @property
    def dim(self) -> int:
        """Width of the embeddings (the backbone's hidden size)."""
        for name in ("hidden_size", "d_model", "dim"):
            value = getattr(self.config, name, None)
            if isinstance(value, int):
                return value
        return int(self.model.get_input_embeddings().embedding_dim)

    def _pick_dtype(self, dtype: str | torch.dtype | None) -> str:
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        if dtype is None or dtype == "auto":
            if self.device.type == "cpu":
                return "float32"
            stored = str(getattr(self.config, "dtype", None) or getattr(self.config, "torch_dtype", None) or "")
            return "bfloat16" if "bfloat16" in stored else "float16"
        dtype = _DTYPE_ALIASES.get(dtype, dtype)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose float32, float16 or bfloat16.")
        return dtype

    @property
    def identity(self) -> dict[str, Any]:
        """What determines the vectors of a given text: the cache key (prompts excluded)."""
        if self._identity is None:
            identity: dict[str, Any] = {"model_id": self.model_id, "revision": self.revision}
            if self.revision is None:
                identity["weights_sha256"] = weights_fingerprint(self.path, self.cache_dir)
            identity.update(
                pooling=self.pooling,
                normalize=self.normalize,
                max_length=self.max_length,
                dtype=self.dtype,
                recipe=RECIPE_VERSION,
            )
            self._identity = identity
        return dict(self._identity)

    @property
    def cache_key(self) -> str:
        canonical = json.dumps(self.identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:20]

    @property
    def cache_name(self) -> str:
        """Folder name of this encoder's embeddings in the cache: readable model name + identity key."""
        name = self.model_id if self.resolved.source != "local" or self.revision else Path(self.model_id).name
        return f"{_slug(name)}--{self.cache_key}"

    def __repr__(self) -> str:
        return (
            f"TextEncoder({self.model_id!r}, revision={self.revision!r}, pooling={self.pooling!r}, "
            f"normalize={self.normalize}, max_length={self.max_length}, dtype={self.dtype!r}, device={str(self.device)!r})"
        )

    # ------------------------------------------------------------------ prompts

    def format_query(self, query: str, instruction: str | None = "") -> str:
        """The exact text fed to the model for a query (the template filled by `format_prompt`)."""
        return format_prompt(self.query_template, query, instruction or "")

    def format_document(self, text: str) -> str:
        """The exact text fed to the model for a document (as is unless a `doc_template` is set)."""
        return text if self.doc_template is None else self.doc_template.format(text=text)

    # ------------------------------------------------------------------ model

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            from transformers import AutoModel

            logger.info("loading %s from %s (%s, %s)", self.model_id, self.path, self.dtype, self.device)
            model = AutoModel.from_pretrained(
                self.path, dtype=_DTYPES[self.dtype], trust_remote_code=self.trust_remote_code
            )
            self._model = model.to(self.device).eval()
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
            if self._tokenizer.pad_token is None and self._tokenizer.eos_token is not None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    def to(self, device: str | torch.device) -> TextEncoder:
        """Move to another device (the dtype stays: it is part of the identity)."""
        device = torch.device(device)
        if device != self.device:
            if self.dtype != "float32" and device.type == "cpu":
                logger.warning("%s: running %s on CPU (slow); pass dtype='float32' for CPU work", self.model_id, self.dtype)
            self.device = device
            if self._model is not None:
                self._model.to(device)
        return self

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed exactly these texts (no prompt added, no cache): `(n, dim)` float32, input order."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string.")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not a string.")
        if self.do_lower_case:  # as sentence-transformers does for such checkpoints
            texts = [text.lower() for text in texts]
        vectors = encode_texts(
            self.model,
            self.tokenizer,
            texts,
            pooling=self.pooling,
            max_length=self.max_length,
            batch_size=batch_size or self.batch_size,
            normalize=self.normalize,
            on_batch=on_batch,
        )
        return vectors.numpy()


class FusedEncoder:
    """The query side of a fusion adapter: a strong and a light encoder's embeddings side by side.

    Both see the same prompt (the strong encoder's template). `era_adapters.cache.embed_texts` embeds each
    part through its own cache and concatenates, `(n, strong.dim + light.dim)`: the input a fusion
    `EraAdapter` takes.
    """

    def __init__(self, strong: TextEncoder, light: TextEncoder) -> None:
        self.strong, self.light = strong, light

    @property
    def parts(self) -> tuple[TextEncoder, TextEncoder]:
        return self.strong, self.light

    @property
    def dim(self) -> int:
        return self.strong.dim + self.light.dim

    @property
    def model_id(self) -> str:
        return f"{self.strong.model_id} + {self.light.model_id}"

    def __repr__(self) -> str:
        return f"FusedEncoder({self.strong!r}, {self.light!r})"

    def format_query(self, query: str, instruction: str | None = "") -> str:
        return self.strong.format_query(query, instruction)

    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return np.concatenate([part.encode(texts, **kwargs) for part in self.parts], axis=1)
