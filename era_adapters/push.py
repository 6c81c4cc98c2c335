"""Share a saved ERA adapter on the Hugging Face Hub.

    python training/push.py OUT --repo-id user/name [--private] [--revision BRANCH] [--token-env VAR]
                                [--commit-message MSG] [--update-card] [--dry-run]

OUT is a folder written by the training stages (`era_adapters.artifacts.save_query_encoder`) or by
`save_pretrained` plus a model card. It is validated first (config.json with its `auto_map`,
model.safetensors, the two code files, README.md with parseable YAML metadata), then uploaded as it is
through `huggingface_hub`: `HfApi.create_repo(exist_ok=True)`, `create_branch` for `--revision`, and one
`upload_folder`. Hidden files and `__pycache__` are left out; nothing else is added or changed, unless
`--update-card` re-renders the card for this repo id (in a temporary copy; OUT is never modified).

The token comes from the usual places (`HF_TOKEN`, or the cached `hf auth login`), or from the
environment variable named by `--token-env`. It is never printed or written; error messages are
scrubbed of it.

From Python: `push_adapter(folder_or_model, repo_id, ...)`; an in-memory `EraQueryEncoder`/`EraAdapter`
is saved with its model card first. `model.push_to_hub(repo_id)` comes here too: the library declares
`push_adapter` as its `era_adapters` entry point, which the Hub code looks up (it never imports the
library by name).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi

from era_adapters.cards import write_model_card

__all__ = [
    "CODE_FILES",
    "IGNORE_PATTERNS",
    "REQUIRED_FILES",
    "AdapterFolderError",
    "files_to_upload",
    "push_adapter",
    "scrub",
    "validate_adapter_folder",
]

CODE_FILES = ("configuration_era.py", "modeling_era.py")
REQUIRED_FILES = ("config.json", "model.safetensors", *CODE_FILES, "README.md")
# Never uploaded: hidden files/folders (editor and staging leftovers) and Python caches.
IGNORE_PATTERNS = [".*", "*/.*", "__pycache__", "*/__pycache__", "__pycache__/*", "*/__pycache__/*"]


class AdapterFolderError(ValueError):
    """A folder that is not a complete, uploadable ERA adapter."""


def validate_adapter_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Check that `folder` is a complete ERA adapter; return its parsed config.json.

    Raises `AdapterFolderError` listing every problem found (not just the first).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterFolderError(f"{folder} is not a folder: pass the folder a training stage saved (e.g. runs/era-align).")
    problems = [f"missing {name}" for name in REQUIRED_FILES if not (folder / name).is_file()]
    config: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            problems.append(f"config.json is not valid JSON ({error})")
        else:
            problems += _config_problems(config)
    if (folder / "model.safetensors").is_file():
        problems += _weights_problems(folder / "model.safetensors")
    if (folder / "README.md").is_file():
        problems += _card_problems((folder / "README.md").read_text(encoding="utf-8"))
    if problems:
        raise AdapterFolderError(
            f"{folder} is not an uploadable ERA adapter: " + "; ".join(problems) + ". Save it with "
            "era_adapters.artifacts.save_query_encoder (or save_pretrained plus render_model_card) and push that folder."
        )
    return config


def _config_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    if config.get("model_type") != "era":
        problems.append(f"config.json has model_type={config.get('model_type')!r}, not 'era'")
    auto_map = config.get("auto_map") or {}
    if not auto_map:
        problems.append("config.json has no auto_map (AutoModel.from_pretrained(..., trust_remote_code=True) needs it)")
    else:
        if not str(auto_map.get("AutoConfig", "")).startswith("configuration_era."):
            problems.append(f"config.json auto_map AutoConfig is {auto_map.get('AutoConfig')!r}, not configuration_era.*")
        if not str(auto_map.get("AutoModel", "")).startswith("modeling_era."):
            problems.append(f"config.json auto_map AutoModel is {auto_map.get('AutoModel')!r}, not modeling_era.*")
    for key in ("query_encoder", "doc_encoder"):
        if not config.get(key):
            problems.append(f"config.json names no {key}")
    return problems


def _weights_problems(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as error:  # noqa: BLE001 - any parse failure means a broken file
        return [f"model.safetensors cannot be read ({error})"]
    if not any(key.startswith("adapter.") for key in keys):
        return [f"model.safetensors holds no adapter weights (keys: {keys[:5]})"]
    return []


def _card_problems(text: str) -> list[str]:
    if not text.startswith("---"):
        return ["README.md has no YAML metadata block (render it with era_adapters.artifacts.render_model_card)"]
    try:
        metadata = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (yaml.YAMLError, IndexError) as error:
        return [f"README.md metadata is not valid YAML ({error})"]
    base_model = metadata.get("base_model")
    if isinstance(base_model, str) and (os.path.isabs(base_model) or base_model.startswith(".")):
        return [f"README.md base_model is a local path ({base_model}); the Hub only accepts model ids"]
    return []


def files_to_upload(folder: str | os.PathLike) -> list[str]:
    """The files (relative POSIX paths) `upload_folder` sends for `folder`, with our ignore patterns."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def push_adapter(
    source: str | os.PathLike | Any,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    update_card: bool = False,
    api: HfApi | None = None,
) -> Any:
    """Upload a saved adapter folder (or an in-memory ERA model) to `repo_id`; return the CommitInfo.

    `private`: make a new repo private (None: the account's default; an existing repo keeps its
    visibility). `revision`: a branch, created if missing. `token`: None reads HF_TOKEN or the cached
    login. `update_card`: re-render README.md for `repo_id` first (in a temporary copy).
    """
    api = api or HfApi()
    with tempfile.TemporaryDirectory(prefix="era-push-") as tmp:
        if isinstance(source, (str, os.PathLike)):
            folder = Path(source)
            validate_adapter_folder(folder)
            if update_card:
                staged = Path(tmp) / "adapter"
                shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(".*", "__pycache__"))
                write_model_card(staged, repo_id)
                folder = staged
        else:  # an EraQueryEncoder / EraAdapter: save it with its card, like the training stages do
            folder = Path(tmp) / "adapter"
            source.save_pretrained(folder)
            write_model_card(folder, repo_id)
        validate_adapter_folder(folder)
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, token=token, exist_ok=True)
        repo_id = getattr(url, "repo_id", None) or repo_id
        if revision is not None:
            api.create_branch(repo_id=repo_id, repo_type="model", branch=revision, token=token, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(folder),
            revision=revision,
            token=token,
            commit_message=commit_message or f"Upload ERA adapter ({', '.join(REQUIRED_FILES)})",
            ignore_patterns=list(IGNORE_PATTERNS),
        )


def scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text
