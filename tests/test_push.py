"""Hub sharing without the Hub: what `huggingface_hub` would be asked to upload, and loading by repo id
and revision from a local Hugging Face cache with HF_HUB_OFFLINE=1 (no test here touches the network)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.utils import filter_repo_objects
from transformers import AutoModel, AutoTokenizer

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder
from tiny_models import make_tiny_bert
from era_adapters import push
from era_adapters.cli import push_main
from era_adapters.artifacts import save_query_encoder

REPO_ID = "someone/era-tiny"
BACKBONE_ID = "tiny-org/query-backbone"
SECRET = "hf_NotARealTokenButTreatItAsSecret123"
QUERIES = ["find python code", "how to search a vector index", "a"]
INSTRUCTION = "given a description retrieve the function"
SAVED_FILES = {"config.json", "model.safetensors", "configuration_era.py", "modeling_era.py", "README.md"}


pytestmark = pytest.mark.usefixtures("no_network")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), hidden_size=32)


def random_adapter(query_encoder: str, seed: int, **config) -> EraAdapter:
    config = EraConfig(query_encoder=query_encoder, doc_encoder="tiny-org/doc-encoder", doc_encoder_revision="abc123",
                       query_dim=32, doc_dim=16, default_instruction="default instruction",
                       training_metadata={"mode": "align", "tasks": ["tiny-task"],
                                          "evaluation": {"tiny-task": {"ndcg@10": 0.5}}}, **config)
    adapter = EraAdapter(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random, non-neutral weights: a round trip that loses them shows
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return adapter


@pytest.fixture
def saved_adapter(tiny_backbone, tmp_path) -> Path:
    return save_query_encoder(random_adapter(BACKBONE_ID, seed=0), tmp_path / "era-tiny")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Capturing what huggingface_hub receives
# ---------------------------------------------------------------------------------------------


class HubRecorder:
    """Stands in for the Hub: records create_repo / create_branch / upload_folder / create_commit calls
    and the exact bytes each upload would send (read while the uploaded folder still exists)."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        self.fail_with = fail_with

    def install(self, monkeypatch) -> HubRecorder:
        recorder = self

        def create_repo(self, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False, **kwargs):
            recorder.calls.append(("create_repo", dict(repo_id=repo_id, token=token, private=private,
                                                       repo_type=repo_type, exist_ok=exist_ok, **kwargs)))
            if recorder.fail_with is not None:
                raise recorder.fail_with
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_branch(self, repo_id, *, branch, token=None, repo_type=None, exist_ok=False, **kwargs):
            recorder.calls.append(("create_branch", dict(repo_id=repo_id, branch=branch, token=token,
                                                         repo_type=repo_type, exist_ok=exist_ok)))

        def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, allow_patterns=None, **kwargs):
            from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

            recorder.calls.append(("upload_folder", dict(repo_id=repo_id, folder_path=folder_path, **kwargs)))
            folder = Path(folder_path)
            paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            kept = filter_repo_objects(paths, allow_patterns=allow_patterns,
                                       ignore_patterns=list(ignore_patterns or []) + DEFAULT_IGNORE_PATTERNS)
            recorder.uploaded = {path: (folder / path).read_bytes() for path in kept}
            return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abcd", commit_message="m",
                              commit_description="", oid="0123abcd")

        def create_commit(self, repo_id, operations, *, commit_message=None, token=None, revision=None, **kwargs):
            recorder.calls.append(("create_commit", dict(repo_id=repo_id, token=token, revision=revision)))
            recorder.uploaded = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
            return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abcd", commit_message="m",
                              commit_description="", oid="0123abcd")

        for name, method in (("create_repo", create_repo), ("create_branch", create_branch),
                             ("upload_folder", upload_folder), ("create_commit", create_commit)):
            monkeypatch.setattr(HfApi, name, method)
        return self

    def named(self, name: str) -> list[dict]:
        return [kwargs for call, kwargs in self.calls if call == name]


def test_cli_uploads_exactly_the_saved_folder_with_private_and_revision(saved_adapter, monkeypatch, capfd):
    hub = HubRecorder().install(monkeypatch)
    monkeypatch.setenv("MY_HUB_TOKEN", SECRET)
    expected = folder_bytes(saved_adapter)
    assert set(expected) == SAVED_FILES  # the saved folder: config, weights, both code files, the card

    code = push_main([str(saved_adapter), "--repo-id", REPO_ID, "--private", "--revision", "dev",
                      "--token-env", "MY_HUB_TOKEN"])

    assert code == 0
    assert [name for name, _ in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    (repo,), (branch,), (upload,) = hub.named("create_repo"), hub.named("create_branch"), hub.named("upload_folder")
    assert repo == dict(repo_id=REPO_ID, token=SECRET, private=True, repo_type="model", exist_ok=True)
    assert branch == dict(repo_id=REPO_ID, branch="dev", token=SECRET, repo_type="model", exist_ok=True)
    assert upload["revision"] == "dev" and upload["token"] == SECRET and upload["repo_type"] == "model"
    assert Path(upload["folder_path"]) == saved_adapter  # the folder itself, not a re-save
    assert hub.uploaded == expected  # byte for byte, card included
    card = ModelCard(hub.uploaded["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.base_model == BACKBONE_ID
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err
    assert "someone/era-tiny@dev" in out and 'revision=\'dev\'' in out


def test_cli_token_from_the_usual_places_public_main_branch(saved_adapter, monkeypatch, capfd):
    hub = HubRecorder().install(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    (saved_adapter / ".ipynb_checkpoints").mkdir()  # hidden leftovers are not uploaded
    (saved_adapter / ".ipynb_checkpoints" / "x.json").write_text("{}")
    (saved_adapter / "__pycache__").mkdir()
    (saved_adapter / "__pycache__" / "modeling_era.cpython-311.pyc").write_bytes(b"\0")

    assert push_main([str(saved_adapter), "--repo-id", REPO_ID]) == 0

    assert [name for name, _ in hub.calls] == ["create_repo", "upload_folder"]  # no branch for main
    assert hub.named("create_repo")[0]["private"] is None  # an existing repo keeps its visibility
    assert hub.named("create_repo")[0]["token"] == SECRET
    assert hub.named("upload_folder")[0]["revision"] is None
    assert set(hub.uploaded) == SAVED_FILES
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_cli_refuses_incomplete_folders_before_any_hub_call(saved_adapter, monkeypatch, capfd):
    hub = HubRecorder().install(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    (saved_adapter / "modeling_era.py").unlink()
    (saved_adapter / "README.md").unlink()
    config = json.loads((saved_adapter / "config.json").read_text())
    del config["auto_map"]
    (saved_adapter / "config.json").write_text(json.dumps(config))

    assert push_main([str(saved_adapter), "--repo-id", REPO_ID]) == 2

    assert hub.calls == []
    err = capfd.readouterr().err
    assert "missing modeling_era.py" in err and "missing README.md" in err and "no auto_map" in err
    with pytest.raises(push.AdapterFolderError, match="not a folder"):
        push.validate_adapter_folder(saved_adapter / "nope")
    (saved_adapter / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(push.AdapterFolderError, match="model.safetensors cannot be read"):
        push.validate_adapter_folder(saved_adapter)


def test_card_with_a_local_base_model_is_refused(tiny_backbone, tmp_path):
    folder = save_query_encoder(random_adapter(str(tiny_backbone), seed=0), tmp_path / "local")
    card = (folder / "README.md").read_text()
    assert "base_model" not in card.split("---")[1]  # the renderer leaves a local path out of the metadata
    (folder / "README.md").write_text(card.replace("library_name:", f"base_model: {tiny_backbone}\nlibrary_name:", 1))
    with pytest.raises(push.AdapterFolderError, match="base_model is a local path"):
        push.validate_adapter_folder(folder)


def test_cli_without_a_token_says_how_to_log_in(saved_adapter, monkeypatch, tmp_path, capfd):
    import huggingface_hub.constants as hub_constants

    hub = HubRecorder().install(monkeypatch)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert push_main([str(saved_adapter), "--repo-id", REPO_ID]) == 2
    assert "hf auth login" in capfd.readouterr().err and hub.calls == []
    assert push_main([str(saved_adapter), "--repo-id", REPO_ID, "--token-env", "UNSET_VAR"]) == 2
    assert "UNSET_VAR is not set" in capfd.readouterr().err and hub.calls == []
    # a dry run needs no token and calls nothing
    assert push_main([str(saved_adapter), "--repo-id", REPO_ID, "--dry-run"]) == 0
    assert hub.calls == [] and "nothing uploaded" in capfd.readouterr().out


def test_hub_errors_are_reported_with_the_token_scrubbed(saved_adapter, monkeypatch, capfd):
    HubRecorder(fail_with=RuntimeError(f"401 Unauthorized for token {SECRET}")).install(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert push_main([str(saved_adapter), "--repo-id", REPO_ID]) == 1
    out, err = capfd.readouterr()
    assert "401 Unauthorized" in err and "***" in err
    assert SECRET not in out + err


def test_update_card_renders_it_for_the_repo_id_and_leaves_the_folder_alone(saved_adapter, monkeypatch, capfd):
    hub = HubRecorder().install(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    before = folder_bytes(saved_adapter)
    assert REPO_ID not in before["README.md"].decode()
    assert push_main([str(saved_adapter), "--repo-id", REPO_ID, "--dry-run"]) == 0
    assert "--update-card" in capfd.readouterr().err  # the stale usage snippet is pointed out

    assert push_main([str(saved_adapter), "--repo-id", REPO_ID, "--update-card"]) == 0

    assert folder_bytes(saved_adapter) == before
    assert set(hub.uploaded) == SAVED_FILES
    assert {k: v for k, v in hub.uploaded.items() if k != "README.md"} == {
        k: v for k, v in before.items() if k != "README.md"}
    card = hub.uploaded["README.md"].decode()
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in card
    assert "528 parameters" in card  # the linear adapter: a 16x32 weight and 16 biases


def test_push_adapter_saves_an_in_memory_model_with_its_card(tiny_backbone, monkeypatch):
    hub = HubRecorder().install(monkeypatch)
    adapter = random_adapter(BACKBONE_ID, seed=3)
    model = EraQueryEncoder.from_backbone(adapter.config, AutoModel.from_pretrained(tiny_backbone),
                                          AutoTokenizer.from_pretrained(tiny_backbone))
    model.adapter.load_state_dict(adapter.adapter.state_dict())

    push.push_adapter(model, REPO_ID, token=SECRET)

    assert set(hub.uploaded) == SAVED_FILES
    card = ModelCard(hub.uploaded["README.md"].decode())
    assert REPO_ID in card.text and card.data.eval_results[0].metric_value == 0.5


def inherited_push(tiny_backbone, monkeypatch) -> tuple[HubRecorder, EraQueryEncoder]:
    hub = HubRecorder().install(monkeypatch)

    def no_remote_card(*args, **kwargs):
        raise EntryNotFoundError("no README.md in the (new) repo")

    monkeypatch.setattr(ModelCard, "load", classmethod(no_remote_card))
    adapter = random_adapter(BACKBONE_ID, seed=1)
    model = EraQueryEncoder.from_backbone(adapter.config, AutoModel.from_pretrained(tiny_backbone),
                                          AutoTokenizer.from_pretrained(tiny_backbone))
    model.adapter.load_state_dict(adapter.adapter.state_dict())
    model.push_to_hub(REPO_ID, private=True, revision="dev", token=SECRET)
    return hub, model


def test_inherited_push_to_hub_uploads_config_weights_and_code(tiny_backbone, monkeypatch, tmp_path):
    """`model.push_to_hub` goes through our save_pretrained: config, weights, code files, on the branch asked."""
    hub, model = inherited_push(tiny_backbone, monkeypatch)
    assert hub.named("create_repo")[0]["private"] is True and hub.named("create_repo")[0]["token"] == SECRET
    assert hub.named("create_branch")[0]["branch"] == "dev" and hub.named("upload_folder")[0]["revision"] == "dev"
    model.save_pretrained(tmp_path / "saved")
    saved = folder_bytes(tmp_path / "saved")
    assert set(hub.uploaded) == SAVED_FILES
    for name in ("config.json", "model.safetensors", "configuration_era.py", "modeling_era.py"):
        assert hub.uploaded[name] == saved[name], name


def test_inherited_push_to_hub_uploads_the_era_card(tiny_backbone, monkeypatch):
    hub, _ = inherited_push(tiny_backbone, monkeypatch)
    card = ModelCard(hub.uploaded["README.md"].decode())
    assert "ERA adapter" in card.text and card.data.base_model == BACKBONE_ID
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in card.text


def test_push_to_hub_without_the_library_uploads_a_minimal_card_that_says_so(tiny_backbone, monkeypatch):
    """A user with only the Hub folder (no era-adapters): transformers' own upload, with the card the
    adapter's code writes itself, which names the encoders and says what it lacks."""
    hub = HubRecorder().install(monkeypatch)
    monkeypatch.setattr(ModelCard, "load", classmethod(lambda *a, **k: (_ for _ in ()).throw(EntryNotFoundError("new"))))
    monkeypatch.setitem(sys.modules, "era_adapters.push", None)  # the entry point cannot load: no library
    model = random_adapter(BACKBONE_ID, seed=1)
    model.push_to_hub(REPO_ID, token=SECRET)
    assert [name for name, _ in hub.calls] == ["create_repo", "create_commit"]
    card = ModelCard(hub.uploaded["README.md"].decode())
    assert "era-adapters library was not" in card.text and BACKBONE_ID in card.text
    assert card.data.base_model == BACKBONE_ID and "era" in card.data.tags
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in card.text
    assert {"config.json", "model.safetensors", "configuration_era.py", "modeling_era.py"} <= set(hub.uploaded)


# ---------------------------------------------------------------------------------------------
# Loading by repo id and revision from the local Hugging Face cache, offline
# ---------------------------------------------------------------------------------------------


def lay_out_in_hub_cache(folder: Path, cache: Path, repo_id: str, commit: str, *, main: bool = True) -> None:
    """Put `folder` in `cache` as `huggingface_hub` does: blobs named by content hash, a snapshot of
    relative symlinks under `models--org--name/snapshots/<commit>/`, and `refs/main` holding the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks (some Windows set-ups): the hub client copies too
            shutil.copy2(blob, link)
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)


def fake_commit(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


# A process where `import modeling_era` fails (as for a Hub user), HF_HUB_OFFLINE=1, HF_HUB_CACHE set.
LOAD_FROM_CACHE = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_era" or name.startswith("modeling_era."):
                raise ImportError("modeling_era is deliberately not importable here")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel
    for repo_id, revision, out in json.loads(sys.argv[1]):
        model = AutoModel.from_pretrained(repo_id, revision=revision, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        model.check_doc_encoder("tiny-org/doc-encoder")
        torch.save(model.encode_queries(QUERIES, instruction=INSTRUCTION), out)
    """
).replace("QUERIES", repr(QUERIES)).replace("INSTRUCTION", repr(INSTRUCTION))


def test_load_by_repo_id_and_revision_from_the_offline_hub_cache(tiny_backbone, tmp_path):
    from huggingface_hub import scan_cache_dir

    cache = tmp_path / "hub-cache"
    backbone_commit = fake_commit("backbone v1")
    lay_out_in_hub_cache(tiny_backbone, cache, BACKBONE_ID, backbone_commit)
    backbone, tokenizer = AutoModel.from_pretrained(tiny_backbone), AutoTokenizer.from_pretrained(tiny_backbone)

    expected, jobs = {}, []
    # two commits of the same adapter repo (refs/main -> the second), plus a bundled, self-contained one
    versions = [("v1", REPO_ID, False, False), ("v2", REPO_ID, False, True), ("bundled", REPO_ID + "-bundled", True, True)]
    for seed, (label, repo_id, bundle, is_main) in enumerate(versions):
        adapter = random_adapter(BACKBONE_ID, seed=seed, query_encoder_revision=backbone_commit)
        folder = save_query_encoder(adapter, tmp_path / label, repo_id=repo_id)
        model = EraQueryEncoder.from_backbone(adapter.config, backbone, tokenizer)
        model.adapter.load_state_dict(adapter.adapter.state_dict())
        if bundle:
            card = (folder / "README.md").read_bytes()
            model.save_pretrained(folder, bundle_backbone=True)
            (folder / "README.md").write_bytes(card)
        expected[label] = model.encode_queries(QUERIES, instruction=INSTRUCTION)
        lay_out_in_hub_cache(folder, cache, repo_id, fake_commit(label), main=is_main)
    jobs = [
        (REPO_ID, None, str(tmp_path / "main.pt"), "v2"),  # by repo id: refs/main
        (REPO_ID, fake_commit("v1"), str(tmp_path / "v1.pt"), "v1"),  # pinned to an older commit
        (REPO_ID, fake_commit("v2"), str(tmp_path / "v2.pt"), "v2"),
        (REPO_ID + "-bundled", None, str(tmp_path / "bundled.pt"), "bundled"),
    ]
    scanned = {repo.repo_id: repo for repo in scan_cache_dir(cache).repos}  # a layout the hub client recognises
    assert set(scanned) == {REPO_ID, REPO_ID + "-bundled", BACKBONE_ID}
    assert {ref for rev in scanned[REPO_ID].revisions for ref in rev.refs} == {"main"}
    assert len(scanned[REPO_ID].revisions) == 2

    workdir = tmp_path / "elsewhere"  # no folder named like a repo id next to the process
    workdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home"),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("TRANSFORMERS_CACHE", None)
    payload = json.dumps([(repo_id, revision, out) for repo_id, revision, out, _ in jobs])
    subprocess.run([sys.executable, "-c", LOAD_FROM_CACHE, payload], check=True, env=env, cwd=workdir)
    for _, _, out, label in jobs:
        assert torch.equal(torch.load(out, weights_only=True), expected[label]), label
    assert not torch.equal(expected["v1"], expected["v2"])  # the revision really selects different weights
