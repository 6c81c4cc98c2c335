"""The sentence-transformers export gives ERA's vectors (both routes), and refuses what it cannot express."""
from __future__ import annotations

import json

import pytest
import torch

from modeling_era import EraConfig, EraQueryEncoder, IncompatibleDocEncoderError
from interop_models import DOCS, INSTRUCTION, QUERIES, make_encoders, save_adapter
from era_adapters.encoders import TextEncoder
from era_adapters.export import export_sentence_transformer, st_prompt


pytestmark = pytest.mark.usefixtures("no_network")  # see conftest.py


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return make_encoders(tmp_path_factory.mktemp("encoders"))


# ---------------------------------------------------------------------------------------------
# sentence-transformers export
# ---------------------------------------------------------------------------------------------


def test_st_prompt_is_the_template_prefix():
    def prompt(template: str, instruction: str | None = None, default: str = "") -> str:
        return st_prompt(EraConfig(prompt_template=template, default_instruction=default), instruction)

    assert prompt("{instruction} {query}") == ""  # empty instruction: no stray space
    assert prompt("{instruction} {query}", default="Find code") == "Find code "
    assert prompt("{instruction} {query}", "Other", default="Find code") == "Other "
    assert prompt("Instruct: {instruction}\nQuery: {query}", "X") == "Instruct: X\nQuery: "
    assert prompt("{query}", "ignored") == ""
    assert prompt("{query} {instruction}") == ""  # nothing after the query once filled and stripped
    with pytest.raises(ValueError, match="puts text after the query"):
        prompt("{query} (task: {instruction})", "X")


@pytest.mark.parametrize(
    "family, bundle, st_doc",
    [("linear", False, False), ("low_rank", False, True), ("linear", True, False)],
    ids=["linear", "low-rank-residual-st-doc", "linear-bundled"],
)
def test_export_embeddings_equal_era(encoders, tmp_path, family, bundle, st_doc):
    from sentence_transformers import SentenceTransformer

    doc_path = encoders.st_doc if st_doc else encoders.doc
    similarity = "dot" if st_doc else "cosine"  # that doc encoder does not normalise
    adapter_dir = save_adapter(encoders, tmp_path / "adapter", family, doc=doc_path, bundle=bundle,
                               similarity=similarity)
    out = export_sentence_transformer(adapter_dir, tmp_path / "st")

    model = SentenceTransformer(str(out))  # plain load: no trust_remote_code, no custom code in the folder
    assert not list(out.rglob("*.py"))
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.base.modules.router.Router"]
    assert model.similarity_fn_name == similarity
    era = EraQueryEncoder.from_pretrained(adapter_dir)
    config = era.config

    def close(actual, expected):
        torch.testing.assert_close(torch.as_tensor(actual), torch.as_tensor(expected), atol=1e-5, rtol=0)

    # queries: default instruction through the stored "query" prompt, another one through st_prompt
    close(model.encode_query(QUERIES, convert_to_tensor=True), era.encode_queries(QUERIES))
    close(model.encode_query(QUERIES, prompt=st_prompt(config, INSTRUCTION), convert_to_tensor=True),
          era.encode_queries(QUERIES, instruction=INSTRUCTION))
    # documents: exactly what the pipeline's doc encoder gives (pooling/normalisation read from its files)
    doc_encoder = TextEncoder(doc_path)
    assert (doc_encoder.pooling, doc_encoder.normalize) == (("cls", False) if st_doc else ("mean", True))
    close(model.encode_document(DOCS), doc_encoder.encode(DOCS))
    close(model.encode(DOCS), doc_encoder.encode(DOCS))  # no task: the document route (the index side)
    assert model.encode_query(QUERIES).shape == (len(QUERIES), config.doc_dim)
    assert json.loads((out / "era_config.json").read_text())["doc_encoder"] == str(doc_path)


def test_export_refusals(encoders, tmp_path):
    mlp = save_adapter(encoders, tmp_path / "mlp", "mlp")
    with pytest.raises(ValueError, match="adapter_type='mlp' cannot be exported.*linear, low_rank"):
        export_sentence_transformer(mlp, tmp_path / "out")
    fusion = save_adapter(encoders, tmp_path / "fusion", "fusion", fusion_encoder=str(encoders.doc),
                          fusion_dim=TextEncoder(encoders.doc).dim)
    with pytest.raises(ValueError, match="adapter_type='fusion' cannot be exported.*two query encoders"):
        export_sentence_transformer(fusion, tmp_path / "out")
    suffix = save_adapter(encoders, tmp_path / "suffix", prompt_template="{query} (task: {instruction})")
    with pytest.raises(ValueError, match="puts text after the query"):
        export_sentence_transformer(suffix, tmp_path / "out")
    linear = save_adapter(encoders, tmp_path / "linear")
    with pytest.raises(IncompatibleDocEncoderError, match="gives 32-d vectors but the adapter maps into 16-d"):
        export_sentence_transformer(linear, tmp_path / "out", doc_encoder_path=encoders.st_doc)
    config = json.loads((linear / "config.json").read_text())
    config["lora_config"] = {"r": 4, "target_modules": ["query"]}
    (linear / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="carries a LoRA"):
        export_sentence_transformer(linear, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_checks_the_doc_encoders_identity_not_only_its_width(encoders, tmp_path):
    import shutil

    from era_adapters.models import weights_fingerprint
    from tiny_models import make_tiny_bert

    adapter = save_adapter(encoders, tmp_path / "adapter", doc_encoder_sha256=weights_fingerprint(encoders.doc))
    same_width = make_tiny_bert(tmp_path / "other-doc", hidden_size=16, seed=7)
    with pytest.raises(IncompatibleDocEncoderError, match=r"other-doc .* is not the one the adapter was trained for"):
        export_sentence_transformer(adapter, tmp_path / "out", doc_encoder_path=same_width)
    assert not (tmp_path / "out").exists()
    # A copy of the very files (another path, no revision) is the same encoder: its fingerprint says so.
    copy = shutil.copytree(encoders.doc, tmp_path / "doc-copy")
    assert export_sentence_transformer(adapter, tmp_path / "out", doc_encoder_path=copy).is_dir()
    # The folder the adapter names, changed since training, is no longer that encoder.
    changed = save_adapter(encoders, tmp_path / "changed", doc=copy, doc_encoder_sha256=weights_fingerprint(copy))
    shutil.copy(same_width / "model.safetensors", copy / "model.safetensors")
    with pytest.raises(IncompatibleDocEncoderError, match="files sha256"):
        export_sentence_transformer(changed, tmp_path / "out2")
