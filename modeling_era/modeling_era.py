"""ERA adapters as Hugging Face models: a strong query encoder searching a light doc encoder's index.

This file travels to the Hugging Face Hub with every adapter (``trust_remote_code``). It imports only
torch, transformers, safetensors and the standard library, makes no network calls of its own (only the
explicit ``from_pretrained`` of the named backbone and an explicit ``push_to_hub``), and does nothing at
import time. It is one file on purpose (longer than the library's modules): the Hub loads exactly the
two code files an adapter folder carries.

Reading order: crash-safe files (shared with the training pipeline) -> prompt and pooling helpers ->
``encode_texts`` (shared with the training pipeline) -> adapter families -> ``EraAdapter`` (precomputed
query vectors) -> ``EraQueryEncoder`` (text in, doc-space vectors out) -> the minimal model card.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.metadata
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import cached_file

from .configuration_era import EraConfig

WEIGHTS_NAME = "model.safetensors"
BACKBONE_PREFIX = "backbone."
LIGHT_BACKBONE_PREFIX = "light_backbone."  # fusion's light encoder: always by reference, never saved
LORA_PREFIX = "lora."  # LoRA weights of the query backbone (config.lora_config), stored with the adapter
# Keyword arguments of `from_pretrained` that also apply when fetching the backbone by reference.
_BACKBONE_HUB_KWARGS = ("cache_dir", "token", "local_files_only", "proxies", "dtype", "device_map")


# ---------------------------------------------------------------------------------------------
# Crash-safe files. Everything ERA writes goes through these three helpers (the training library
# imports them from here): a unique temporary name beside the target, fsync, then one rename, so a
# kill at any instant leaves either the old or the new complete file or folder at the path.
# ---------------------------------------------------------------------------------------------


def _umask_modes(path: Path) -> None:
    """Give `path` (and what is under it) the modes a plain open()/mkdir() gets under the umask: some
    writers (e.g. transformers' weights) go through 0600 temporary files, which would make a folder
    shared with other users or a service account unreadable."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [path] if path.is_file() else [path, *path.rglob("*")]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def _fsync_tree(path: Path) -> None:
    """Flush a file, or every file and folder under `path`, to disk."""
    paths = [path] if path.is_file() else [*path.rglob("*"), path]
    for item in paths:
        if item.is_symlink():
            continue
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_parent(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder; the rename still happened
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary_sibling(path: Path, kind: str) -> Path:
    # Hidden, unique per process and call; created with open()/mkdir(), so the umask sets its mode.
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write a file to; renamed onto `path` after fsync when the
    block ends without error, removed otherwise. Readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path, "tmp")
    try:
        yield temporary
        _umask_modes(temporary)
        _fsync_tree(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_parent(path)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` crash-safely (see `atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """An empty staging folder beside `path` to fill; when the block ends without error it replaces
    `path` (created or swapped), else it is removed. At every instant `path` holds the old complete
    folder or the new one: on Linux the two are exchanged in one atomic `renameat2(RENAME_EXCHANGE)`;
    elsewhere the old folder is first renamed aside and, should the process die between the two
    renames, `recover_folder(path)` (run by every later save and load) puts it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    staging = _temporary_sibling(path, "staging")
    staging.mkdir()
    try:
        yield staging
        _umask_modes(staging)
        _fsync_tree(staging)
        _swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the staging folder, or the old one after a swap


def recover_folder(path: str | os.PathLike) -> bool:
    """Put back the folder a save renamed aside if it was interrupted before its new folder arrived.
    Returns whether something was restored."""
    path = Path(path)
    _remove_dead_writers_leftovers(path)
    aside = sorted(path.parent.glob(f".{path.name}.previous-*"), key=lambda p: p.stat().st_mtime)
    if path.exists():  # the new folder arrived: what was set aside is the discarded old one
        for old in aside:
            shutil.rmtree(old, ignore_errors=True)
        return False
    if not aside:
        return False
    os.rename(aside[-1], path)
    _fsync_parent(path)
    return True


_LEFTOVER = re.compile(r"\.(?:staging|tmp)-(\d+)-[0-9a-f]{12}$")  # `_temporary_sibling`'s names


def _remove_dead_writers_leftovers(path: Path) -> None:
    """Remove the staging folders (nested ones too) and temporary files beside `path` of writers killed
    mid-save, whose process is gone; a live writer's are left alone."""
    for leftover in path.parent.glob(f".*{glob.escape(path.name)}.*"):
        writer = _LEFTOVER.search(leftover.name)
        if writer is None or _process_alive(int(writer.group(1))):
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would signal the process on Windows: keep what we cannot check
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_cwd = -100
    done = renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE)
    return done == 0


def _swap_in(staging: Path, path: Path) -> None:
    """Move the complete folder `staging` to `path`; what was at `path` ends up at `staging`."""
    if not path.exists():
        os.rename(staging, path)
    elif not _exchange(staging, path):
        aside = path.parent / f".{path.name}.previous-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        os.rename(path, aside)
        os.rename(staging, path)  # a kill before this line: recover_folder(path) restores `aside`
        os.rename(aside, staging)  # removed with the staging folder
    _fsync_parent(path)



class IncompatibleDocEncoderError(ValueError):
    """An adapter was used next to a doc encoder (or index) other than the one it was trained for."""


def format_prompt(template: str, query: str, instruction: str = "") -> str:
    """Fill a prompt template; an empty instruction leaves no stray whitespace."""
    return template.format(instruction=instruction, query=query).strip()


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Turn token states `(batch, seq, dim)` into one vector per text, ignoring padding."""
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden_states[:, 0]
    if mode == "last_token":
        # Position of the last real token, correct for left and right padding alike.
        seq_len = attention_mask.shape[1]
        last = seq_len - 1 - attention_mask.flip(1).argmax(1)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
    raise ValueError(f"pooling={mode!r} is not supported; choose mean, cls or last_token.")


def _check_texts(texts: Sequence[str], what: str) -> None:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, not a single string; wrap it: [{texts[:30]!r}].")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{what}[{i}] is empty or not a string ({text!r}); remove it or give it text.")


@torch.no_grad()
def encode_texts(
    backbone: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str,
    max_length: int,
    batch_size: int = 32,
    normalize: bool = True,
    head: nn.Module | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Embed texts with a transformer backbone: tokenize, length-sorted batches, pool, normalise.

    `head` (e.g. an adapter) is applied to the pooled vectors of each batch. Returns float32 on CPU
    in the input order. Shared by `EraQueryEncoder.encode_queries` and the training pipeline's
    encoders, so both embed texts identically. `on_batch(n)` is called after each batch of n texts
    (progress bars).
    """
    device = next(backbone.parameters()).device
    if not texts:  # let the head give the empty result its output width
        empty = torch.empty(0, backbone.config.hidden_size, device=device)
        return (head(empty) if head is not None else empty).float().cpu()
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    # Longest first: similar lengths share a batch (little padding) and memory peaks show up at once.
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    chunks = []
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        inputs = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
        hidden = backbone(**inputs).last_hidden_state
        vectors = pool(hidden, inputs["attention_mask"], pooling).float()
        if normalize:
            vectors = F.normalize(vectors, dim=-1)
        if head is not None:
            vectors = head(vectors)
        chunks.append(vectors.float().cpu())
        if on_batch is not None:
            on_batch(len(batch))
    stacked = torch.cat(chunks)
    result = torch.empty_like(stacked)
    result[torch.tensor(order)] = stacked
    return result


# ---------------------------------------------------------------------------------------------
# Adapter families. Each starts neutral: identity where the dims match, so an untrained adapter
# does no harm; `nn.Linear`'s seeded default init otherwise.
# ---------------------------------------------------------------------------------------------


def neutral_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A linear layer that starts as the identity when the dims match (seeded default init otherwise)."""
    layer = nn.Linear(in_dim, out_dim)
    if in_dim == out_dim:
        with torch.no_grad():
            layer.weight.copy_(torch.eye(out_dim))
            layer.bias.zero_()
    return layer


class LinearAdapter(nn.Module):
    """The paper's adapter: y = W·x + b."""

    def __init__(self, config: EraConfig) -> None:
        super().__init__()
        self.proj = neutral_linear(config.query_dim, config.doc_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class LowRankAdapter(nn.Module):
    """y = B·A·x + b (+ x when the dims match): few parameters for large dims."""

    def __init__(self, config: EraConfig) -> None:
        super().__init__()
        self.residual = config.query_dim == config.doc_dim
        self.down = nn.Linear(config.query_dim, config.adapter_rank, bias=False)
        self.up = nn.Linear(config.adapter_rank, config.doc_dim)
        if self.residual:
            with torch.no_grad():
                self.up.weight.zero_()
                self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.down(x))
        return out + x if self.residual else out


class MlpAdapter(nn.Module):
    """y = W·x + b + MLP(x): a linear map plus a small residual MLP that starts at zero."""

    def __init__(self, config: EraConfig) -> None:
        super().__init__()
        self.proj = LinearAdapter(config).proj
        self.hidden = nn.Linear(config.query_dim, config.adapter_hidden_dim)
        self.out = nn.Linear(config.adapter_hidden_dim, config.doc_dim)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.out(F.gelu(self.hidden(x)))


class FusionAdapter(nn.Module):
    """y = W_d·d + b_d + gate·A(q) on x = [q; d]: the light query embedding d = D(q), plus what the
    strong one q = Q(q) adds through A (the `fusion_branch` family). W_d starts as the identity and the
    gate at `fusion_gate`, so at gate 0 the adapter is the symmetric model D(q)."""

    def __init__(self, config: EraConfig) -> None:
        super().__init__()
        self.widths = (config.query_dim, config.fusion_dim)
        self.light = neutral_linear(config.fusion_dim, config.doc_dim)
        self.strong = ADAPTER_CLASSES[config.fusion_branch](config)
        self.gate = nn.Parameter(torch.tensor(float(config.fusion_gate)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        strong, light = x.split(self.widths, dim=-1)
        return self.light(light) + self.gate * self.strong(strong)


ADAPTER_CLASSES = {"linear": LinearAdapter, "low_rank": LowRankAdapter, "mlp": MlpAdapter, "fusion": FusionAdapter}


def build_adapter(config: EraConfig) -> nn.Module:
    return ADAPTER_CLASSES[config.adapter_type](config)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class EraPreTrainedModel(PreTrainedModel):
    """Shared loading rules: safetensors only, every weight present, the doc-encoder guard."""

    config_class = EraConfig
    base_model_prefix = "era"
    _auto_class = "AutoModel"

    def _init_weights(self, module: nn.Module) -> None:
        # The adapter modules initialise themselves (identity / zero residual); loading fills the rest.
        pass

    @classmethod
    def _load_adapter_checked(cls, path: str | os.PathLike, *model_args: Any, **kwargs: Any) -> PreTrainedModel:
        if os.path.isdir(path) or not os.path.exists(path):
            recover_folder(path)  # a save killed between its two renames left the old folder aside
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, WEIGHTS_NAME)):
            raise FileNotFoundError(
                f"{path} has no {WEIGHTS_NAME}: an ERA adapter folder holds config.json and {WEIGHTS_NAME}. "
                "Save the adapter with save_pretrained(...) or point at the folder that holds its weights."
            )
        kwargs["use_safetensors"] = True  # never unpickle a checkpoint
        kwargs["ignore_mismatched_sizes"] = True  # we raise below, with a message that names the shapes
        try:
            model, info = super().from_pretrained(path, *model_args, output_loading_info=True, **kwargs)
        except Exception as error:
            if "deserializ" in str(error).lower() or "header" in str(error).lower():
                raise OSError(
                    f"the weights file of {path} is corrupt or truncated ({error}); re-download or re-save it."
                ) from error
            raise
        _check_floating_weights(path, kwargs)
        lora = model.config.lora_config
        if lora and cls is not EraQueryEncoder:
            raise ValueError(
                f"{path} was trained with a LoRA on its query backbone, so vectors of the plain query encoder do "
                "not fit it; load it with EraQueryEncoder (AutoModel.from_pretrained(..., trust_remote_code=True))."
            )
        problems = [f"missing {k}" for k in info["missing_keys"]]
        problems += [f"unexpected {k}" for k in info["unexpected_keys"] if not (lora and k.startswith(LORA_PREFIX))]
        problems += [f"{k}: checkpoint {tuple(a)} vs config {tuple(b)}" for k, a, b in info["mismatched_keys"]]
        if problems:
            raise ValueError(
                f"the weights in {path} do not fit its config ({model.config.adapter_type}, "
                f"{model.config.query_dim}->{model.config.doc_dim}): {'; '.join(problems[:5])}. "
                "The config and model.safetensors come from different adapters; re-save them together."
            )
        return model

    def check_doc_encoder(
        self, doc_encoder: Any = None, *, revision: str | None = None, dim: int | None = None
    ) -> None:
        """Raise `IncompatibleDocEncoderError` unless the given doc encoder / index fits this adapter.

        `doc_encoder` is the doc encoder's name (a Hub id, or the name an external encoder was recorded
        under), a stored-vectors fingerprint (`"sha256:..."`), or the index itself: any object with a
        `fingerprint(ids)` method and a `dim`, such as `era_adapters.vectors.VectorSource`. An index is
        recognised by the fingerprint of the rows this adapter was fingerprinted on, so rows added or
        reordered since do not matter. Also pass the revision and/or the dimension of the index's vectors.
        """
        config = self.config
        expected = config.doc_encoder
        advice = (
            f"This adapter maps queries into the space of {expected}@{config.doc_encoder_revision or 'any'} "
            f"({config.doc_dim}-d). Search an index built with that encoder, or train an adapter for yours."
        )
        index = None
        if doc_encoder is not None and not isinstance(doc_encoder, str):
            index, doc_encoder = doc_encoder, None
            dim = getattr(index, "dim", None) if dim is None else dim
        if dim is not None and int(dim) != config.doc_dim:
            raise IncompatibleDocEncoderError(f"the index has {dim}-d vectors. {advice}")
        if index is not None:
            self._check_index(index, advice)
        if doc_encoder is not None and doc_encoder.startswith("sha256:"):
            wanted = config.doc_vectors_fingerprint
            if wanted is not None and doc_encoder != wanted:
                raise IncompatibleDocEncoderError(
                    f"the index's vectors have fingerprint {doc_encoder}, but this adapter was trained on the stored "
                    f"vectors of {expected} with fingerprint {wanted}. {advice}")
            return
        if doc_encoder is not None and expected is not None and doc_encoder.lower() != expected.lower():
            raise IncompatibleDocEncoderError(f"the index was built with {doc_encoder}. {advice}")
        wanted_revision = config.doc_encoder_revision
        if revision is not None and wanted_revision is not None and revision != wanted_revision:
            raise IncompatibleDocEncoderError(f"the index was built with revision {revision}. {advice}")

    def _check_index(self, index: Any, advice: str) -> None:
        """Compare an index's fingerprint (duck-typed: `index.fingerprint(ids)`) with the recorded one."""
        wanted, ids = self.config.doc_vectors_fingerprint, self.config.doc_vectors_fingerprint_ids
        if wanted is None or not hasattr(index, "fingerprint"):
            return  # trained by running its doc encoder: only the dimension can be compared
        try:
            found = index.fingerprint(ids)
        except (KeyError, ValueError) as error:
            raise IncompatibleDocEncoderError(
                f"the index {index!r} lacks rows this adapter was fingerprinted on ({error}). {advice}") from error
        if found != wanted:
            raise IncompatibleDocEncoderError(
                f"the index {index!r} holds other vectors (fingerprint {found}) than the stored vectors of "
                f"{self.config.doc_encoder} this adapter was trained on (fingerprint {wanted}). {advice}")

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save config.json, model.safetensors and the two code files crash-safely.

        The folder is written beside `save_directory` and swapped in whole (`atomic_folder`): a kill at
        any moment leaves the previous adapter or the new one, never a mix. Files of an existing folder
        that this save does not write (a README.md, notes) are kept; stale weight files are not.
        """
        if kwargs.get("push_to_hub"):
            raise ValueError("save_pretrained(push_to_hub=True) is not supported; call model.push_to_hub(repo_id).")
        target = Path(save_directory)
        with atomic_folder(target) as staging:
            self._write_files(staging, **kwargs)
            _carry_over(target, staging)

    def _write_files(self, folder: Path, **kwargs: Any) -> None:
        super().save_pretrained(folder, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload this adapter with a model card; takes `private`, `revision`, `token` and
        `commit_message` like transformers' `push_to_hub`.

        With the era-adapters library installed, its `push_adapter` uploads the adapter with the full ERA
        card (training details, evaluation results). Without it, transformers' own upload runs with the
        minimal card of `minimal_model_card`, which says what it lacks.
        """
        push_adapter = _library_push_adapter()
        if push_adapter is not None:
            return push_adapter(self, repo_id, **kwargs)
        return super().push_to_hub(repo_id, **kwargs)

    def _upload_modified_files(self, working_dir: str | os.PathLike, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        # transformers' push_to_hub wrote its generic README.md here; an ERA adapter carries its own card.
        atomic_write(Path(working_dir) / "README.md", minimal_model_card(self.config, repo_id))
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    def _finish(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = self.adapter(vectors.to(self.dtype))  # pooled vectors are float32; the adapter may be bf16/fp16
        return F.normalize(vectors, dim=-1) if self.config.normalize_output else vectors

    def _adapter_input(self, query_embeddings: torch.Tensor, light_embeddings: torch.Tensor | None) -> torch.Tensor:
        """Check and (per encoder) normalise pooled query embeddings; a fusion adapter takes both side by side.

        A fusion adapter also accepts them already side by side, `(n, query_dim + fusion_dim)`, as the
        training pipeline caches them.
        """
        config = self.config
        fused = config.adapter_type == "fusion"
        if not fused and light_embeddings is not None:
            raise ValueError(f"a {config.adapter_type} adapter takes one query embedding; light embeddings are for fusion.")
        if fused and light_embeddings is None and query_embeddings.ndim == 2 and \
                query_embeddings.shape[1] == config.query_dim + config.fusion_dim:
            query_embeddings, light_embeddings = query_embeddings.split([config.query_dim, config.fusion_dim], dim=1)
        parts = [(query_embeddings, config.query_dim, config.query_encoder)]
        if fused:
            if light_embeddings is None:
                raise ValueError(
                    f"this fusion adapter needs the light query embeddings too: pass light_query_embeddings of shape "
                    f"(n, {config.fusion_dim}) from {config.fusion_encoder}."
                )
            parts.append((light_embeddings, config.fusion_dim, config.fusion_encoder))
        for vectors, width, encoder in parts:
            if vectors.ndim != 2 or vectors.shape[1] != width:
                raise ValueError(
                    f"expected query embeddings of shape (n, {width}) from {encoder}, got {tuple(vectors.shape)}."
                )
        if fused and len(query_embeddings) != len(light_embeddings):
            raise ValueError(
                f"{len(query_embeddings)} strong query embeddings but {len(light_embeddings)} light ones; "
                "pass the same queries, in the same order, to both encoders."
            )
        vectors = [part.to(self.dtype) for part, _, _ in parts]
        if config.normalize_input:
            vectors = [F.normalize(part, dim=-1) for part in vectors]
        return torch.cat(vectors, dim=1) if fused else vectors[0]


class EraAdapter(EraPreTrainedModel):
    """Maps precomputed query embeddings `(n, query_dim)` into the doc encoder's space `(n, doc_dim)`.

    Use it when the query encoder is an API (e.g. OpenAI vectors) or its embeddings are cached.
    """

    main_input_name = "query_embeddings"

    def __init__(self, config: EraConfig) -> None:
        super().__init__(config)
        self.adapter = build_adapter(config)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
        return cls._load_adapter_checked(pretrained_model_name_or_path, *model_args, **kwargs)

    def forward(
        self, query_embeddings: torch.Tensor, light_query_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`(n, query_dim)` pooled query embeddings in (a fusion adapter also takes the light encoder's
        `(n, fusion_dim)` ones), `(n, doc_dim)` doc-space vectors out."""
        return self._finish(self._adapter_input(query_embeddings, light_query_embeddings))

    @classmethod
    def from_reference_checkpoint(
        cls, path: str | os.PathLike, *, query_encoder: str, doc_encoder: str, **config_kwargs: Any
    ) -> EraAdapter:
        """Import a linear adapter released with the authors' research code (a `.pt` state dict).

        The file must hold exactly `proj.weight` `(doc_dim, query_dim)` and `proj.bias` `(doc_dim,)`;
        it is read with `weights_only=True`, so no code in it can run. Name the encoders it was
        trained for: the file itself does not say.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or set(state) != {"proj.weight", "proj.bias"}:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"{path} is not a linear adapter state dict: expected keys proj.weight and proj.bias, found {found}."
            )
        weight, bias = state["proj.weight"], state["proj.bias"]
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"{path}: proj.weight {tuple(weight.shape)} and proj.bias {tuple(bias.shape)} do not form "
                "a (doc_dim, query_dim) linear map."
            )
        config = EraConfig(
            query_encoder=query_encoder,
            doc_encoder=doc_encoder,
            query_dim=weight.shape[1],
            doc_dim=weight.shape[0],
            adapter_type="linear",
            **config_kwargs,
        )
        config.training_metadata.setdefault("imported_from", os.path.basename(str(path)))
        model = cls(config)
        model.adapter.proj.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        return model


class EraQueryEncoder(EraPreTrainedModel):
    """Query backbone + pooling + adapter: text in, vectors in the doc encoder's space out.

    By default only the adapter is saved and the backbone is named by `config.query_encoder` and
    `config.query_encoder_revision` (like a PEFT adapter); `save_pretrained(..., bundle_backbone=True)`
    stores the backbone and tokenizer too, for a self-contained folder. A fusion adapter also runs the
    light encoder (`config.fusion_encoder`, by reference) on the query.
    """

    _keys_to_ignore_on_load_unexpected = [r"^lora\."]  # LoRA weights: injected after the backbone loads

    def __init__(self, config: EraConfig) -> None:
        super().__init__(config)
        self.adapter = build_adapter(config)
        # Only a bundled backbone is built here, empty, for `from_pretrained` to fill; a referenced one
        # is loaded explicitly afterwards (no nested from_pretrained inside __init__).
        self.backbone = None
        if config.bundle_backbone and config.backbone_config:
            backbone_config = AutoConfig.for_model(**config.backbone_config)
            self.backbone = AutoModel.from_config(backbone_config)
        self.tokenizer = None
        self.light_backbone, self.light_tokenizer = None, None  # fusion only
        self.post_init()

    @classmethod
    def from_backbone(
        cls, config: EraConfig, backbone: PreTrainedModel, tokenizer: Any,
        light_backbone: PreTrainedModel | None = None, light_tokenizer: Any = None,
    ) -> EraQueryEncoder:
        """Assemble a query encoder from loaded backbones and tokenizers (the light ones: fusion only)."""
        model = cls(config)
        model.attach_backbone(backbone, tokenizer)
        if light_backbone is not None:
            model.attach_light_backbone(light_backbone, light_tokenizer)
        return model

    def attach_backbone(self, backbone: PreTrainedModel, tokenizer: Any) -> None:
        _check_hidden_size(backbone, self.config.query_dim, "query_dim", self.config.query_encoder)
        self.backbone = backbone
        self.tokenizer = tokenizer

    def attach_light_backbone(self, backbone: PreTrainedModel, tokenizer: Any) -> None:
        """The light query encoder of a fusion adapter (normally the doc encoder)."""
        if self.config.adapter_type != "fusion":
            raise ValueError(f"a {self.config.adapter_type} adapter has no light query branch; only fusion has.")
        _check_hidden_size(backbone, self.config.fusion_dim, "fusion_dim", self.config.fusion_encoder)
        self.light_backbone = backbone
        self.light_tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        backbone: PreTrainedModel | None = None,
        tokenizer: Any = None,
        light_backbone: PreTrainedModel | None = None,
        light_tokenizer: Any = None,
        **kwargs: Any,
    ) -> EraQueryEncoder:
        """Load the adapter, then its backbone: bundled in the folder, given, or by reference.

        `backbone` / `tokenizer` override the referenced ones (e.g. a local copy of the query encoder);
        `light_backbone` / `light_tokenizer` likewise for the light encoder of a fusion adapter.
        Hub keyword arguments such as `cache_dir`, `token` and `local_files_only` apply to every load.
        """
        model = cls._load_adapter_checked(pretrained_model_name_or_path, *model_args, **kwargs)
        config = model.config
        hub_kwargs = {key: kwargs[key] for key in _BACKBONE_HUB_KWARGS if key in kwargs}
        if config.bundle_backbone:
            source, revision = pretrained_model_name_or_path, kwargs.get("revision")
        else:
            source, revision = config.query_encoder, config.query_encoder_revision
        if model.backbone is not None:
            backbone = model.backbone
        elif backbone is None and source is None:
            raise ValueError(
                f"{pretrained_model_name_or_path} names no query encoder and bundles none; pass backbone=... "
                "or load it with EraAdapter for precomputed query embeddings."
            )
        model.attach_backbone(*_load_encoder(source, revision, backbone, tokenizer, hub_kwargs))
        if config.adapter_type == "fusion" and config.doc_encoder_kind != "external":
            if light_backbone is None and config.fusion_encoder is None:
                raise ValueError(f"{pretrained_model_name_or_path} names no fusion_encoder; pass light_backbone=...")
            model.attach_light_backbone(*_load_encoder(
                config.fusion_encoder, config.fusion_encoder_revision, light_backbone, light_tokenizer, hub_kwargs))
        if config.lora_config:
            hub_kwargs.pop("dtype", None), hub_kwargs.pop("device_map", None)
            weights = cached_file(pretrained_model_name_or_path, WEIGHTS_NAME, revision=kwargs.get("revision"), **hub_kwargs)
            model._load_lora(weights)
        return model.eval()

    def _load_lora(self, weights_file: str) -> None:
        """Put the LoRA of `config.lora_config` on the backbone's target layers and fill it from the
        weights file (inference only; the layers and weight names are those peft trains)."""
        from safetensors.torch import load_file

        state = {k[len(LORA_PREFIX):]: v for k, v in load_file(weights_file).items() if k.startswith(LORA_PREFIX)}
        add_lora_layers(self.backbone, self.config.lora_config)
        expected = {k for k in self.backbone.state_dict() if "lora_" in k}
        if set(state) != expected:
            raise ValueError(
                f"the LoRA weights in {weights_file} do not fit lora_config {self.config.lora_config} on this backbone "
                f"(missing {sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]})."
            )
        self.backbone.load_state_dict(state, strict=False)

    def save_pretrained(self, save_directory: str | os.PathLike, *, bundle_backbone: bool | None = None,
                        **kwargs: Any) -> None:
        """Save the adapter (by default) or adapter + backbone + tokenizer (`bundle_backbone=True`),
        crash-safely (see `EraPreTrainedModel.save_pretrained`)."""
        bundle = self.config.bundle_backbone if bundle_backbone is None else bundle_backbone
        if bundle and self.config.adapter_type == "fusion":
            raise ValueError("a fusion adapter names both query encoders by reference; save with bundle_backbone=False.")
        if bundle and self.config.lora_config:
            raise ValueError("a LoRA backbone is saved by reference only: bundle_backbone=False (or merge it first).")
        self.config.bundle_backbone = bundle
        self.config.backbone_config = self.backbone.config.to_dict() if bundle else None
        super().save_pretrained(save_directory, **kwargs)

    def _write_files(self, folder: Path, **kwargs: Any) -> None:
        bundle = self.config.bundle_backbone
        state = self.state_dict()
        lora = {key: value for key, value in state.items() if key.startswith(BACKBONE_PREFIX) and "lora_" in key}
        state = {key: value for key, value in state.items() if not key.startswith(LIGHT_BACKBONE_PREFIX)}
        if not bundle:
            state = {key: value for key, value in state.items() if not key.startswith(BACKBONE_PREFIX)}
        if self.config.lora_config:
            if not lora:
                raise ValueError("config.lora_config is set but the backbone has no LoRA layers to save.")
            state.update({LORA_PREFIX + key[len(BACKBONE_PREFIX):]: value for key, value in lora.items()})
        super()._write_files(folder, state_dict=state, **kwargs)
        if bundle:
            self.tokenizer.save_pretrained(folder)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        light_inputs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token ids of prompted queries in, `(batch, doc_dim)` doc-space embeddings out.

        A fusion adapter also needs `light_inputs`: the light tokenizer's output for the same prompts.
        """
        config = self.config
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        strong = pool(self.backbone(**inputs).last_hidden_state, attention_mask, config.pooling).float()
        light = None
        if light_inputs is not None:
            hidden = self.light_backbone(**light_inputs).last_hidden_state
            light = pool(hidden, light_inputs["attention_mask"], config.fusion_pooling).float()
        return self._finish(self._adapter_input(strong, light))

    def encode_queries(
        self, queries: Sequence[str], instruction: str | Sequence[str] | None = None, batch_size: int = 32,
        light_query_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed queries for search against the doc encoder's index: `(n, doc_dim)` float32 on CPU.

        `instruction` fills the prompt template's `{instruction}` slot: one for all queries, or one per
        query (a list as long as `queries`); default: the config's. `light_query_embeddings`: a fusion
        adapter whose doc encoder is external (an API) takes the queries' vectors from that encoder here.
        """
        if self.backbone is None or self.tokenizer is None:
            raise RuntimeError("no query backbone attached; load with from_pretrained or use from_backbone.")
        _check_texts(queries, "queries")
        config = self.config
        if instruction is None or isinstance(instruction, str):
            instruction = [config.default_instruction if instruction is None else instruction] * len(queries)
        if len(instruction) != len(queries):
            raise ValueError(f"{len(instruction)} instructions for {len(queries)} queries; give one, or one per query.")
        prompts = [format_prompt(config.prompt_template, query, inst) for query, inst in zip(queries, instruction)]
        strong = {"pooling": config.pooling, "max_length": config.max_seq_length, "batch_size": batch_size,
                  "normalize": config.normalize_input}
        strong_prompts = [prompt.lower() for prompt in prompts] if config.lowercase_queries else prompts
        if config.adapter_type != "fusion":
            return encode_texts(self.backbone, self.tokenizer, strong_prompts, **strong, head=self._finish)
        # `_adapter_input` normalises each part, once: exactly what the symmetric model does to D(q).
        strong["normalize"] = False
        if light_query_embeddings is None:
            if self.light_backbone is None or self.light_tokenizer is None:
                external = config.doc_encoder_kind == "external"
                raise RuntimeError(
                    f"pass light_query_embeddings: the queries embedded by {config.fusion_encoder}, the index's "
                    "encoder, which this adapter does not run." if external else
                    "no light query backbone attached; load with from_pretrained or attach_light_backbone.")
            light = {**strong, "pooling": config.fusion_pooling, "max_length": config.fusion_max_seq_length}
            light_prompts = [prompt.lower() for prompt in prompts] if config.fusion_lowercase_queries else prompts
            light_query_embeddings = encode_texts(self.light_backbone, self.light_tokenizer, light_prompts, **light)
        with torch.no_grad():
            return self._finish(self._adapter_input(
                encode_texts(self.backbone, self.tokenizer, strong_prompts, **strong).to(self.device),
                torch.as_tensor(light_query_embeddings).float().to(self.device),
            )).float().cpu()


def _check_hidden_size(backbone: PreTrainedModel, expected: int, field: str, encoder: str | None) -> None:
    hidden = backbone.config.hidden_size
    if hidden != expected:
        raise ValueError(
            f"the backbone's hidden size is {hidden} but the adapter expects {field}={expected}; "
            f"load the encoder the adapter was trained with ({encoder})."
        )


def _load_encoder(
    source: str | os.PathLike | None, revision: str | None, backbone: PreTrainedModel | None, tokenizer: Any,
    hub_kwargs: dict[str, Any],
) -> tuple[PreTrainedModel, Any]:
    """The given backbone / tokenizer, or those named by `source` (an explicit, requested Hub load)."""
    try:
        if backbone is None:
            # AutoModel's probe for a PEFT adapter ignores the hub kwargs unless handed them again.
            probe = {key: hub_kwargs[key] for key in ("cache_dir", "local_files_only", "proxies") if key in hub_kwargs}
            backbone = AutoModel.from_pretrained(source, revision=revision, adapter_kwargs=probe, **hub_kwargs)
        if tokenizer is None:
            tokenizer_kwargs = {key: value for key, value in hub_kwargs.items() if key not in ("dtype", "device_map")}
            # Handing over the backbone's config keeps AutoTokenizer from reading our config.json (custom code).
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, config=backbone.config,
                                                      **tokenizer_kwargs)
    except OSError as error:
        raise OSError(
            f"this ERA adapter runs the encoder {source!r} (revision {revision or 'default'}), which could not be "
            f"loaded ({error}). Three ways to fix it: (1) put it in the Hugging Face cache (download it once with "
            "network access, or pass cache_dir= a cache that holds it; for the copies the era-adapters library "
            "packages: cache_dir=era_adapters.models.offline_hub_cache(), local_files_only=True); (2) pass the "
            "loaded encoder: from_pretrained(..., backbone=AutoModel.from_pretrained(local_copy), "
            "tokenizer=AutoTokenizer.from_pretrained(local_copy)); (3) save the adapter with "
            "save_pretrained(folder, bundle_backbone=True), so that the folder carries its backbone."
        ) from error
    return backbone.eval(), tokenizer


def _check_floating_weights(path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> None:
    """Refuse a weights file with non-float tensors: loading would cast them into garbage vectors."""
    from safetensors import safe_open

    keys = ("cache_dir", "token", "local_files_only", "proxies", "revision", "subfolder")
    weights = cached_file(path, WEIGHTS_NAME, **{key: hub_kwargs[key] for key in keys if key in hub_kwargs})
    with safe_open(weights, framework="pt") as handle:
        wrong = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
    wrong = {key: dtype for key, dtype in wrong.items() if dtype not in _FLOAT_DTYPES}
    if wrong:
        shown = ", ".join(f"{key} ({dtype})" for key, dtype in list(wrong.items())[:3])
        raise ValueError(
            f"the weights in {path} are not floating point: {shown}. An ERA adapter stores float tensors "
            "(F32, F16 or BF16); re-save it with save_pretrained."
        )


_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# Weight files an earlier save may have left; a new save replaces them, so they are never carried over.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")


def _carry_over(old: Path, new: Path) -> None:
    """Copy into `new` what the previous folder `old` holds and this save did not write (weights aside)."""
    if not old.is_dir():
        return
    for item in old.iterdir():
        if item.name.startswith(".") or item.name.endswith(_WEIGHT_SUFFIXES) or (new / item.name).exists():
            continue
        if item.is_dir():
            shutil.copytree(item, new / item.name, symlinks=True)
        else:
            shutil.copy2(item, new / item.name)


# ---------------------------------------------------------------------------------------------
# LoRA layers for inference: the query backbone of an adapter trained with a LoRA (peft's layout and
# weight names, so that the weights peft trained load as they are; no peft needed to use them)
# ---------------------------------------------------------------------------------------------


class LoraLinear(nn.Module):
    """y = base(x) + (alpha / r) · B·A·x, named as peft names it (`base_layer`, `lora_A.default`, ...)."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base_layer.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base_layer.out_features, bias=False)})
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.lora_B["default"](self.lora_A["default"](x.to(self.lora_A["default"].weight.dtype)))
        return self.base_layer(x) + (delta * self.scaling).to(x.dtype)


def add_lora_layers(backbone: nn.Module, lora_config: dict[str, Any]) -> None:
    """Wrap the target linear layers of `backbone` in `LoraLinear` (targets matched as peft matches them:
    a list of names equals a module's name or its last parts; a string is a full regex match)."""
    import re

    if lora_config.get("use_rslora") or lora_config.get("use_dora"):
        raise ValueError(f"lora_config {lora_config}: rsLoRA and DoRA adapters are not supported.")
    targets = lora_config["target_modules"]
    r, alpha = int(lora_config["r"]), float(lora_config.get("lora_alpha", 8))

    def is_target(name: str) -> bool:
        if isinstance(targets, str):
            return re.fullmatch(targets, name) is not None
        return any(name == target or name.endswith("." + target) for target in targets)

    chosen = [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear) and is_target(name)]
    if not chosen:
        raise ValueError(f"lora_config targets {targets}, but the backbone has no such linear layers.")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        base = getattr(parent, child)
        layer = LoraLinear(base, r, alpha).to(device=base.weight.device, dtype=base.weight.dtype)
        setattr(parent, child, layer)


# ---------------------------------------------------------------------------------------------
# Hub helpers: the era-adapters library's push (when installed) and the card written without it
# ---------------------------------------------------------------------------------------------


def _library_push_adapter() -> Callable[..., Any] | None:
    """`push_adapter` of the era-adapters library, found through its entry point (no import by name):
    None when the library is not installed."""
    for entry in importlib.metadata.entry_points(group="era_adapters", name="push_adapter"):
        try:
            return entry.load()
        except ImportError:
            return None
    return None


def minimal_model_card(config: EraConfig, repo_id: str) -> str:
    """A model card written from the config alone, for uploads made without the era-adapters library."""
    def yaml_value(value: Any) -> str:
        return json.dumps(value)  # JSON is YAML

    base_model = config.query_encoder if config.query_encoder and "/" in config.query_encoder and \
        not os.path.exists(config.query_encoder) else None
    metadata = {"library_name": "transformers", "pipeline_tag": "feature-extraction",
                "tags": ["era", "retrieval", "embedding-adapter", f"doc-encoder:{config.doc_encoder}"]}
    if base_model:
        metadata["base_model"] = base_model
    header = "\n".join(f"{key}: {yaml_value(value)}" for key, value in metadata.items())
    instruction = f", instruction={config.default_instruction!r}" if "{instruction}" in config.prompt_template else ""
    return f"""---
{header}
---

# {repo_id}

An ERA adapter ("Align then Train: Efficient Retrieval Adapter Learning", arXiv 2604.03403): queries go through
`{config.query_encoder}`, then a small `{config.adapter_type}` adapter maps them into the {config.doc_dim}-d space
of `{config.doc_encoder}`, so they can search an index built with that doc encoder, without re-indexing.

```python
from transformers import AutoModel

query_encoder = AutoModel.from_pretrained({json.dumps(repo_id)}, trust_remote_code=True)
query_encoder.check_doc_encoder({json.dumps(config.doc_encoder)}, dim=index.d)  # refuses another encoder's index
vectors = query_encoder.encode_queries(["your query"]{instruction})  # search the index with these
```

Prompt template: `{config.prompt_template}`. The training recipe and metadata are in `config.json`
(`training_metadata`).

> Note: this card was written by the adapter's own code because the era-adapters library was not
> installed when it was uploaded, so it lacks the training details and evaluation results. Install
> era-adapters and upload again (`model.push_to_hub(...)` or `era-push FOLDER --repo-id ...`) for the full card.
"""
