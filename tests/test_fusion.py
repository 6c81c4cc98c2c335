"""The fusion adapter (issue 8): [Q(q); D(q)] in, D's space out; starts as the symmetric model at gate 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder
from synonym_task import FAST, write_synonym_task
from test_modeling import INSTRUCTION, LOAD_WITHOUT_PACKAGE, QUERIES
from tiny_models import make_tiny_bert, write_task
from era_adapters.adapt import adapt
from era_adapters.align import align
from era_adapters.artifacts import query_side_encoder
from era_adapters.cache import embed_texts
from era_adapters.encoders import FusedEncoder, TextEncoder
from era_adapters.evaluate import evaluate

STRONG_DIM, LIGHT_DIM = 32, 16


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fusion_models")
    return make_tiny_bert(root / "strong", hidden_size=STRONG_DIM, seed=1), make_tiny_bert(root / "light", hidden_size=LIGHT_DIM, seed=2)


def fusion_config(strong: Path, light: Path, **overrides) -> EraConfig:
    settings = dict(
        query_encoder=str(strong), doc_encoder=str(light), fusion_encoder=str(light), query_dim=STRONG_DIM,
        doc_dim=LIGHT_DIM, fusion_dim=LIGHT_DIM, adapter_type="fusion", adapter_rank=4,
        prompt_template="{instruction} {query}",
    )
    return EraConfig(**{**settings, **overrides})


def load(folder: Path):
    return AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


def fusion_encoder(backbones, gate: float = 0.7, seed: int = 0, **overrides) -> EraQueryEncoder:
    strong, light = backbones
    model = EraQueryEncoder.from_backbone(fusion_config(strong, light, **overrides), *load(strong), *load(light))
    randomise(model.adapter, seed)
    with torch.no_grad():
        model.adapter.gate.fill_(gate)
    return model.eval()


def test_gate_zero_equals_the_symmetric_model_exactly(backbones):
    strong, light = backbones
    fused = fusion_encoder(backbones, gate=0.0)
    symmetric_config = EraConfig(query_encoder=str(light), doc_encoder=str(light), query_dim=LIGHT_DIM, doc_dim=LIGHT_DIM,
                                 prompt_template="{instruction} {query}")
    symmetric = EraQueryEncoder.from_backbone(symmetric_config, *load(light)).eval()
    symmetric.adapter.proj.load_state_dict(fused.adapter.light.state_dict())  # W_d, b_d: random, not identity
    assert not torch.equal(fused.adapter.light.weight, torch.eye(LIGHT_DIM))
    for queries in (QUERIES[:1], QUERIES):
        expected = symmetric.encode_queries(queries, instruction=INSTRUCTION)
        assert torch.equal(fused.encode_queries(queries, instruction=INSTRUCTION), expected)
    # on precomputed embeddings too: the Q branch contributes exactly nothing at gate 0
    q, d = torch.randn(5, STRONG_DIM), torch.randn(5, LIGHT_DIM)
    adapter = EraAdapter(fused.config)
    adapter.adapter.load_state_dict(fused.adapter.state_dict())
    sym_adapter = EraAdapter(symmetric_config)
    sym_adapter.adapter.load_state_dict(symmetric.adapter.state_dict())
    assert torch.equal(adapter(q, d), sym_adapter(d))
    # and a non-zero gate does use Q
    with torch.no_grad():
        adapter.adapter.gate.fill_(0.5)
    assert not torch.allclose(adapter(q, d), sym_adapter(d))


def test_fusion_output_is_the_documented_formula(backbones):
    adapter = EraAdapter(fusion_config(*backbones))
    randomise(adapter.adapter, seed=3)
    q, d = torch.randn(4, STRONG_DIM), torch.randn(4, LIGHT_DIM)
    module = adapter.adapter
    qn, dn = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    expected = F.normalize(dn @ module.light.weight.T + module.light.bias
                           + module.gate * (qn @ module.strong.proj.weight.T + module.strong.proj.bias), dim=-1)
    torch.testing.assert_close(adapter(q, d), expected)
    torch.testing.assert_close(adapter(torch.cat([q, d], dim=1)), expected)  # side by side, as cached


def test_new_fusion_adapter_starts_as_the_light_encoder(backbones):
    adapter = EraAdapter(fusion_config(*backbones))  # gate 0, light branch identity
    d = torch.randn(3, LIGHT_DIM)
    torch.testing.assert_close(adapter(torch.randn(3, STRONG_DIM), d), F.normalize(d, dim=-1), rtol=0, atol=1e-6)


def test_round_trips_are_bit_identical(backbones, tmp_path):
    jobs, expected = [], {}
    for branch in ("linear", "low_rank"):
        model = fusion_encoder(backbones, fusion_branch=branch, seed=5)
        expected[branch] = model.encode_queries(QUERIES, instruction=INSTRUCTION)
        folder = tmp_path / f"fusion-{branch}"
        model.save_pretrained(folder)
        keys = set(load_file(folder / "model.safetensors"))
        assert all(key.startswith("adapter.") for key in keys) and "adapter.gate" in keys  # both backbones by reference
        reloaded = EraQueryEncoder.from_pretrained(folder)
        assert torch.equal(reloaded.encode_queries(QUERIES, instruction=INSTRUCTION), expected[branch])
        assert torch.equal(AutoModel.from_pretrained(folder, trust_remote_code=True)
                           .encode_queries(QUERIES, instruction=INSTRUCTION), expected[branch])
        jobs.append((str(folder), str(tmp_path / f"{branch}.pt")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PACKAGE, json.dumps(jobs)], check=True, env=env, cwd=tmp_path)
    for (_, out), branch in zip(jobs, expected):
        assert torch.equal(torch.load(out, weights_only=True), expected[branch])


def test_bad_input_is_named(backbones, tmp_path):
    strong, light = backbones
    adapter = EraAdapter(fusion_config(strong, light))
    with pytest.raises(ValueError, match="5 strong query embeddings but 4 light ones"):
        adapter(torch.randn(5, STRONG_DIM), torch.randn(4, LIGHT_DIM))
    with pytest.raises(ValueError, match="needs the light query embeddings too"):
        adapter(torch.randn(5, STRONG_DIM))
    with pytest.raises(ValueError, match=rf"shape \(n, {LIGHT_DIM}\)"):
        adapter(torch.randn(5, STRONG_DIM), torch.randn(5, LIGHT_DIM + 1))
    linear = EraAdapter(EraConfig(query_dim=STRONG_DIM, doc_dim=LIGHT_DIM))
    with pytest.raises(ValueError, match="light embeddings are for fusion"):
        linear(torch.randn(2, STRONG_DIM), torch.randn(2, LIGHT_DIM))
    with pytest.raises(ValueError, match="needs fusion_dim"):
        EraConfig(adapter_type="fusion", query_dim=STRONG_DIM, doc_dim=LIGHT_DIM)
    with pytest.raises(ValueError, match="fusion_branch='mlp' is not supported"):
        fusion_config(strong, light, fusion_branch="mlp")
    # a model without its light backbone (missing branch)
    partial = EraQueryEncoder.from_backbone(fusion_config(strong, light), *load(strong))
    with pytest.raises(RuntimeError, match="no light query backbone"):
        partial.encode_queries(QUERIES)
    # a light backbone whose width contradicts fusion_dim
    with pytest.raises(ValueError, match="expects fusion_dim=16"):
        partial.attach_light_backbone(*load(strong))
    # a config whose encoder dims contradict the saved weights
    model = fusion_encoder(backbones)
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    config["fusion_dim"] = 8
    (tmp_path / "saved" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"adapter.light.weight: checkpoint \(16, 16\) vs config \(16, 8\)"):
        EraAdapter.from_pretrained(tmp_path / "saved")
    with pytest.raises(ValueError, match="bundle_backbone=False"):
        model.save_pretrained(tmp_path / "bundled", bundle_backbone=True)


# ---------------------------------------------------------------------------------------------
# Training: stage 1 fits the Q branch, stage 2 trains both; evaluation scores it on [Q(q); D(q)]
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fusion_task")
    write_task(root / "data" / "toy", num_docs=60, num_queries=40, seed=3)
    return root / "data"


def test_fusion_align_is_the_linear_fit_plus_an_identity_light_branch(backbones, task_data, tmp_path):
    strong, light = backbones
    common = dict(query_encoder=str(strong), doc_encoder=str(light), num_texts=60, cache_dir=tmp_path / "cache",
                  prompt_template="{query}")
    linear = align(task_data, output=tmp_path / "linear", **common)
    fused = align(task_data, output=tmp_path / "fusion", adapter="fusion", fusion_gate=0.25, **common)
    module = fused.adapter
    assert torch.equal(module.strong.proj.weight, linear.adapter.proj.weight)
    assert torch.equal(module.light.weight, torch.eye(LIGHT_DIM)) and module.gate.item() == 0.25
    saved = EraConfig.from_pretrained(tmp_path / "fusion")
    assert saved.adapter_type == "fusion" and saved.fusion_encoder == saved.doc_encoder and saved.fusion_dim == LIGHT_DIM
    assert saved.training_metadata["prompt"] == {"template": "{query}", "chosen_by": "given"}
    assert saved.training_metadata["recipe"]["fusion"] == {"branch": "linear", "gate": 0.25, "light_branch": "identity"}
    assert saved.training_metadata["alignment"]["metrics"] == linear.config.training_metadata["alignment"]["metrics"]
    # the training pipeline's query side: both encoders, side by side, each through its own cache
    encoder = query_side_encoder(saved, cache_dir=tmp_path / "cache", device="cpu")  # float32 everywhere
    assert isinstance(encoder, FusedEncoder) and encoder.dim == STRONG_DIM + LIGHT_DIM
    texts = ["find python code", "search the index"]
    vectors = embed_texts(encoder, texts, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(vectors[:, :STRONG_DIM], embed_texts(encoder.strong, texts, cache_dir=tmp_path / "cache"))
    np.testing.assert_array_equal(vectors[:, STRONG_DIM:], TextEncoder(str(light), device="cpu").encode(texts))
    # what evaluate scores equals what the saved query encoder gives from text
    model = AutoModel.from_pretrained(tmp_path / "fusion", trust_remote_code=True)
    torch.testing.assert_close(model.encode_queries(texts), fused(torch.from_numpy(vectors)), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def synonym_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fusion_synonyms")
    write_synonym_task(root / "data" / "syn")  # queries use synonyms of their document's words: labels carry signal
    return root / "data"


def test_fusion_stage_two_trains_both_branches_and_is_evaluated(backbones, synonym_data, tmp_path):
    strong, light = backbones
    cache = tmp_path / "cache"
    align(synonym_data, query_encoder=str(strong), doc_encoder=str(light), output=tmp_path / "fa", adapter="fusion",
          cache_dir=cache, prompt_template="{query}")
    start = EraAdapter.from_pretrained(tmp_path / "fa")
    trained = adapt(synonym_data, output=tmp_path / "fb", label_budget=0.8, validation="holdout", mode="both", init=tmp_path / "fa",
                    cache_dir=cache, **FAST)
    recipe = trained.config.training_metadata["recipe"]
    assert recipe["best_validation"] >= recipe["curve"][0]["validation"] + 0.2
    for name in ("light.weight", "strong.proj.weight", "gate"):
        before, after = start.adapter.state_dict()[name], trained.adapter.state_dict()[name]
        assert not torch.equal(before, after), f"{name} was not trained"
    with pytest.raises(ValueError, match="not supported with a fusion adapter"):
        adapt(synonym_data, output=tmp_path / "lora", label_budget=0.8, validation="holdout", mode="both", init=tmp_path / "fa",
              cache_dir=cache, lora=True)
    report = evaluate(synonym_data, ["doc2doc", str(tmp_path / "fb")], query_encoder=str(strong),
                      doc_encoder=str(light), cache_dir=cache)
    row = report["results"]["fb"]
    assert row["system"]["adapter_type"] == "fusion"
    assert row["macro"]["ndcg@10"] > report["results"]["doc2doc"]["macro"]["ndcg@10"] + 0.1
