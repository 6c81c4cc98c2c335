"""The Hub package: EraConfig, EraAdapter, EraQueryEncoder, save/load, guards and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder, IncompatibleDocEncoderError
from tiny_models import make_tiny_bert

FAMILIES = ["linear", "low_rank", "mlp"]
QUERIES = ["find python code", "how to search a vector index", "a"]
INSTRUCTION = "given a description retrieve the function"


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), hidden_size=32)


def make_encoder(backbone_path: Path, family: str, doc_dim: int = 16, seed: int = 0) -> EraQueryEncoder:
    config = EraConfig(
        query_encoder=str(backbone_path),
        doc_encoder="tiny/doc-encoder",
        doc_encoder_revision="abc123",
        query_dim=32,
        doc_dim=doc_dim,
        adapter_type=family,
        adapter_rank=4,
        adapter_hidden_dim=8,
        default_instruction="default instruction",
    )
    model = EraQueryEncoder.from_backbone(
        config, AutoModel.from_pretrained(backbone_path), AutoTokenizer.from_pretrained(backbone_path)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random, non-neutral weights so a round trip that drops any of them shows
        for parameter in model.adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model.eval()


# A process where `import modeling_era` fails: how a Hub user without our package loads an adapter.
LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_era" or name.startswith("modeling_era."):
                raise ImportError("modeling_era is deliberately not importable here")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel
    jobs = json.loads(sys.argv[1])
    for folder, out in jobs:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        torch.save(model.encode_queries(QUERIES, instruction=INSTRUCTION), out)
    """
).replace("QUERIES", repr(QUERIES)).replace("INSTRUCTION", repr(INSTRUCTION))


def test_round_trips_are_bit_identical_for_every_family_and_mode(tiny_backbone, tmp_path):
    expected, jobs = {}, []
    for family in FAMILIES:
        model = make_encoder(tiny_backbone, family)
        expected[family] = model.encode_queries(QUERIES, instruction=INSTRUCTION)
        assert expected[family].shape == (3, 16) and expected[family].dtype == torch.float32
        torch.testing.assert_close(expected[family].norm(dim=1), torch.ones(3))
        for bundle in (False, True):
            folder = tmp_path / f"{family}-{'bundled' if bundle else 'ref'}"
            model.save_pretrained(folder, bundle_backbone=bundle)
            files = set(os.listdir(folder))
            assert {"config.json", "model.safetensors", "modeling_era.py", "configuration_era.py"} <= files
            assert ("tokenizer.json" in files) == bundle
            reloaded = EraQueryEncoder.from_pretrained(folder)
            assert torch.equal(reloaded.encode_queries(QUERIES, instruction=INSTRUCTION), expected[family])
            jobs.append((str(folder), str(tmp_path / f"{folder.name}.pt"), family))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    payload = json.dumps([(folder, out) for folder, out, _ in jobs])
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PACKAGE, payload], check=True, env=env, cwd=tmp_path)
    for _, out, family in jobs:
        assert torch.equal(torch.load(out, weights_only=True), expected[family])


def test_by_reference_folder_holds_only_adapter_weights(tiny_backbone, tmp_path):
    from safetensors.torch import load_file

    model = make_encoder(tiny_backbone, "linear")
    model.save_pretrained(tmp_path / "ref")
    model.save_pretrained(tmp_path / "bundled", bundle_backbone=True)
    assert set(load_file(tmp_path / "ref" / "model.safetensors")) == {"adapter.proj.weight", "adapter.proj.bias"}
    bundled_keys = set(load_file(tmp_path / "bundled" / "model.safetensors"))
    assert any(key.startswith("backbone.") for key in bundled_keys)
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_era.EraConfig",
        "AutoModel": "modeling_era.EraQueryEncoder",
    }
    assert config["query_encoder"] == str(tiny_backbone) and config["doc_encoder"] == "tiny/doc-encoder"


def test_adapter_on_precomputed_embeddings_matches_query_encoder(tiny_backbone, tmp_path):
    encoder = make_encoder(tiny_backbone, "mlp")
    encoder.save_pretrained(tmp_path)
    adapter = EraAdapter.from_pretrained(tmp_path)  # the same folder serves API-only use
    tokens = encoder.tokenizer(QUERIES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.backbone(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(adapter(pooled), encoder(**tokens))
    adapter.save_pretrained(tmp_path / "precomputed-adapter")
    assert json.loads((tmp_path / "precomputed-adapter" / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "modeling_era.EraAdapter"
    )
    again = AutoModel.from_pretrained(tmp_path / "precomputed-adapter", trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(again(pooled), adapter(pooled)), (again(pooled) - adapter(pooled)).abs().max()


def test_default_instruction_and_prompt_template(tiny_backbone):
    model = make_encoder(tiny_backbone, "linear")
    with_default = model.encode_queries(QUERIES)
    explicit = model.encode_queries(QUERIES, instruction="default instruction")
    assert torch.equal(with_default, explicit)
    assert not torch.equal(with_default, model.encode_queries(QUERIES, instruction=""))


def test_encoding_does_not_depend_on_batch_size_or_order(tiny_backbone):
    model = make_encoder(tiny_backbone, "linear")
    full = model.encode_queries(QUERIES, batch_size=32)
    torch.testing.assert_close(model.encode_queries(QUERIES, batch_size=1), full, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.encode_queries(QUERIES[::-1]).flip(0), full, atol=1e-6, rtol=0)


def test_compatibility_guard(tiny_backbone):
    model = make_encoder(tiny_backbone, "linear")
    model.check_doc_encoder("tiny/doc-encoder", revision="abc123", dim=16)  # the right one passes
    model.check_doc_encoder("TINY/Doc-Encoder")  # Hub ids are case-insensitive
    with pytest.raises(IncompatibleDocEncoderError, match="built with other/encoder.*tiny/doc-encoder"):
        model.check_doc_encoder("other/encoder")
    with pytest.raises(IncompatibleDocEncoderError, match="384-d vectors.*16-d"):
        model.check_doc_encoder(dim=384)
    with pytest.raises(IncompatibleDocEncoderError, match="revision def456"):
        model.check_doc_encoder("tiny/doc-encoder", revision="def456")


def test_weights_contradicting_config_are_rejected(tiny_backbone, tmp_path):
    make_encoder(tiny_backbone, "linear").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["doc_dim"] = 24
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"adapter\.proj\.weight: checkpoint \(16, 32\) vs config \(24, 32\)"):
        EraQueryEncoder.from_pretrained(tmp_path)


def test_family_mismatch_is_rejected(tiny_backbone, tmp_path):
    make_encoder(tiny_backbone, "linear").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["adapter_type"] = "low_rank"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit its config.*missing adapter.down.weight"):
        EraAdapter.from_pretrained(tmp_path)


def test_missing_and_corrupt_weights(tiny_backbone, tmp_path):
    make_encoder(tiny_backbone, "linear").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="corrupt or truncated"):
        EraAdapter.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        EraAdapter.from_pretrained(tmp_path)


def test_never_loads_a_pickle(tiny_backbone, tmp_path):
    model = make_encoder(tiny_backbone, "linear")
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.adapter.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        EraQueryEncoder.from_pretrained(tmp_path)


def test_empty_inputs(tiny_backbone):
    model = make_encoder(tiny_backbone, "low_rank")
    empty = model.encode_queries([])
    assert empty.shape == (0, 16) and empty.dtype == torch.float32
    with pytest.raises(ValueError, match=r"queries\[1\] is empty"):
        model.encode_queries(["fine", "  "])
    with pytest.raises(TypeError, match="list of strings"):
        model.encode_queries("a single string")


def test_config_validation():
    with pytest.raises(ValueError, match="adapter_type='conv'.*linear, low_rank, mlp"):
        EraConfig(adapter_type="conv")
    with pytest.raises(ValueError, match="no '\\{query\\}' slot"):
        EraConfig(prompt_template="{instruction}")
    with pytest.raises(ValueError, match="pooling='max'"):
        EraConfig(pooling="max")
    with pytest.raises(ValueError, match="doc_dim must be a positive integer"):
        EraConfig(doc_dim=0)


def test_wrong_backbone_for_adapter(tiny_backbone, tmp_path):
    config = EraConfig(query_dim=64, doc_dim=16)
    other = make_tiny_bert(tmp_path / "wide", hidden_size=48)
    with pytest.raises(ValueError, match="hidden size is 48 but the adapter expects query_dim=64"):
        EraQueryEncoder.from_backbone(config, AutoModel.from_pretrained(other), AutoTokenizer.from_pretrained(other))


def test_a_missing_backbone_names_the_encoder_and_three_fixes(tmp_path, no_network, monkeypatch):
    """Offline, with the adapter's query encoder in no cache: the error says which encoder and how to fix it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = EraConfig(query_encoder="someone/absent-query-encoder", query_dim=32, doc_dim=16)
    EraQueryEncoder(config).save_pretrained(tmp_path / "adapter")  # by reference: no backbone in the folder
    with pytest.raises(OSError) as raised:
        AutoModel.from_pretrained(tmp_path / "adapter", trust_remote_code=True, local_files_only=True,
                                  cache_dir=tmp_path / "empty-hub-cache")
    message = str(raised.value)
    assert "runs the encoder 'someone/absent-query-encoder'" in message
    assert "cache_dir=era_adapters.models.offline_hub_cache(), local_files_only=True" in message  # (1) a warm cache
    assert "backbone=AutoModel.from_pretrained(local_copy)" in message  # (2) the loaded encoder
    assert "bundle_backbone=True" in message  # (3) a folder that carries its backbone


def test_reference_checkpoint_import(tmp_path):
    weight, bias = torch.randn(16, 32), torch.randn(16)
    torch.save({"proj.weight": weight, "proj.bias": bias}, tmp_path / "adapter.pt")
    adapter = EraAdapter.from_reference_checkpoint(
        tmp_path / "adapter.pt", query_encoder="q/model", doc_encoder="d/model", normalize_output=False
    )
    assert (adapter.config.query_dim, adapter.config.doc_dim) == (32, 16)
    assert adapter.config.doc_encoder == "d/model"
    x = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), x @ weight.T + bias)
    torch.save({"layer.weight": weight}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a linear adapter state dict.*layer.weight"):
        EraAdapter.from_reference_checkpoint(tmp_path / "other.pt", query_encoder="q", doc_encoder="d")
    torch.save({"proj.weight": weight, "proj.bias": torch.randn(3)}, tmp_path / "bad_shape.pt")
    with pytest.raises(ValueError, match="do not form"):
        EraAdapter.from_reference_checkpoint(tmp_path / "bad_shape.pt", query_encoder="q", doc_encoder="d")


def test_adapter_input_shape_is_checked(tiny_backbone):
    adapter = EraAdapter(EraConfig(query_encoder="q", doc_encoder="d", query_dim=32, doc_dim=16))
    with pytest.raises(ValueError, match=r"shape \(n, 32\).*got \(4, 31\)"):
        adapter(torch.randn(4, 31))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_load_encodes_close_to_float32(tiny_backbone, tmp_path, dtype):
    """from_pretrained(..., dtype=bf16/fp16) puts backbone and adapter in that dtype; vectors stay float32."""
    for family in FAMILIES:
        model = make_encoder(tiny_backbone, family)
        model.save_pretrained(tmp_path / family)
        expected = model.encode_queries(QUERIES, instruction=INSTRUCTION)
        half = EraQueryEncoder.from_pretrained(tmp_path / family, dtype=dtype)
        assert half.dtype == dtype and next(half.backbone.parameters()).dtype == dtype
        vectors = half.encode_queries(QUERIES, instruction=INSTRUCTION)
        assert vectors.dtype == torch.float32
        cosine = (vectors * expected).sum(1)
        assert cosine.min() > 0.99, (family, cosine)


def test_one_instruction_per_query(tiny_backbone):
    model = make_encoder(tiny_backbone, "linear")
    instructions = ["first instruction", "second instruction", "first instruction"]
    together = model.encode_queries(QUERIES, instruction=instructions)
    one_by_one = torch.cat([model.encode_queries([q], instruction=i) for q, i in zip(QUERIES, instructions)])
    torch.testing.assert_close(together, one_by_one, rtol=0, atol=1e-6)
    assert not torch.allclose(together, model.encode_queries(QUERIES, instruction="first instruction"))
    with pytest.raises(ValueError, match="2 instructions for 3 queries"):
        model.encode_queries(QUERIES, instruction=instructions[:2])


def test_lowercasing_query_encoders_match_the_training_encoder(tmp_path):
    """A sentence-transformers checkpoint with do_lower_case (and a cased tokenizer): the saved query encoder
    lower-cases its prompts exactly as the training pipeline's TextEncoder does."""
    from tiny_models import tiny_vocab
    from transformers import BertTokenizerFast

    from era_adapters.artifacts import era_config, save_query_encoder
    from era_adapters.encoders import TextEncoder

    folder = make_tiny_bert(tmp_path / "cased", hidden_size=32)
    BertTokenizerFast(vocab=tiny_vocab(), do_lower_case=False).save_pretrained(folder)  # capitals -> [UNK]
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    encoder = TextEncoder(str(folder), query_template="{query}")
    config = era_config(encoder, encoder, prompt_template="{query}")
    assert config.lowercase_queries
    save_query_encoder(EraAdapter(config), tmp_path / "adapter")
    model = EraQueryEncoder.from_pretrained(tmp_path / "adapter")
    queries = ["Find Python Code", "Search The Index"]
    expected = EraAdapter(config)(torch.from_numpy(encoder.encode(queries)))
    torch.testing.assert_close(model.encode_queries(queries), expected, rtol=0, atol=1e-6)
    model.config.lowercase_queries = False  # what the mismatch looked like: capitals become unknown tokens
    assert not torch.allclose(model.encode_queries(queries), expected, atol=1e-3)


def test_hub_files_import_only_torch_transformers_safetensors_and_the_standard_library():
    """What travels to the Hub stands alone: every import, at any depth (lazy ones too), is allowed."""
    import ast

    allowed = {"torch", "transformers", "safetensors", *sys.stdlib_module_names}
    found = {}
    for path in Path(__file__).resolve().parents[1].joinpath("modeling_era").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            found.update({name: path.name for name in names})
    assert found, "the walk found no imports at all"
    assert {name for name in found if name.split(".")[0] not in allowed} == set(), found
