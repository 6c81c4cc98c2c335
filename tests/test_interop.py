"""Interop: the sentence-transformers export gives ERA's vectors; the mteb wrapper routes by prompt_type."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder, IncompatibleDocEncoderError
from tiny_models import make_tiny_bert
from era_adapters.artifacts import save_query_encoder
from era_adapters.encoders import TextEncoder
from era_adapters.export import export_sentence_transformer, st_prompt
from era_adapters.mteb_wrapper import EraMtebModel

QUERIES = ["find python code", "how to search a vector index " * 6, "a", "return the list value"]
DOCS = ["def search(index, vector): return index.search(vector)", "the data file", "model embedding text"]
INSTRUCTION = "given a description retrieve the function"


pytestmark = pytest.mark.usefixtures("no_network")  # see conftest.py


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> SimpleNamespace:
    """A tiny query backbone (32-d), a plain doc encoder (16-d) and a sentence-transformers doc encoder
    (32-d, CLS pooling, not normalised) whose settings must be read from its own files."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    root = tmp_path_factory.mktemp("encoders")
    query = make_tiny_bert(root / "query", hidden_size=32, seed=0)
    doc = make_tiny_bert(root / "doc", hidden_size=16, seed=1)
    st_doc = root / "st-doc"
    SentenceTransformer(modules=[Transformer(str(make_tiny_bert(root / "doc32", hidden_size=32, seed=2)),
                                             max_seq_length=24), Pooling(32, pooling_mode="cls")]).save(str(st_doc))
    return SimpleNamespace(query=query, doc=doc, st_doc=st_doc, root=root)


def save_adapter(encoders, folder: Path, family: str = "linear", *, doc: Path | None = None, bundle: bool = False,
                 seed: int = 0, **config) -> Path:
    doc = doc or encoders.doc
    settings = dict(query_encoder=str(encoders.query), doc_encoder=str(doc), query_dim=32,
                    doc_dim=TextEncoder(doc).dim, adapter_type=family, adapter_rank=4, adapter_hidden_dim=8,
                    max_seq_length=16, default_instruction="default instruction")
    settings.update(config)
    adapter = EraAdapter(EraConfig(**settings))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / 4)
    save_query_encoder(adapter, folder)
    if bundle:
        model = EraQueryEncoder.from_backbone(adapter.config, AutoModel.from_pretrained(encoders.query),
                                              AutoTokenizer.from_pretrained(encoders.query))
        model.adapter.load_state_dict(adapter.adapter.state_dict())
        model.save_pretrained(folder, bundle_backbone=True)
    return folder


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


# ---------------------------------------------------------------------------------------------
# mteb wrapper (mteb's encode protocol; no task is downloaded)
# ---------------------------------------------------------------------------------------------

try:  # the real enum when mteb is installed, else one with the same values
    from mteb.types import PromptType
except ImportError:
    class PromptType(str, Enum):
        query = "query"
        document = "document"

TASK = SimpleNamespace(name="TinyRetrieval", type="Retrieval", prompt={"query": "task prompt from metadata"})


def loader(columns: dict[str, list], batch_size: int = 2):
    """Batches as mteb hands them over: a torch DataLoader over a datasets.Dataset (dicts of lists)."""
    from datasets import Dataset
    from torch.utils.data import DataLoader

    return DataLoader(Dataset.from_dict(columns), batch_size=batch_size)


def encode(model, columns, prompt_type, task=TASK):
    return model.encode(loader(columns), task_metadata=task, hf_split="test", hf_subset="default",
                        prompt_type=prompt_type)


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def wrapped(encoders, tmp_path_factory):
    adapter_dir = save_adapter(encoders, tmp_path_factory.mktemp("mteb") / "adapter")
    return EraMtebModel(str(adapter_dir)), EraQueryEncoder.from_pretrained(adapter_dir), TextEncoder(encoders.doc)


def test_mteb_routes_queries_through_the_adapter_and_documents_through_the_doc_encoder(wrapped):
    model, era, doc_encoder = wrapped
    queries = encode(model, {"text": QUERIES}, PromptType.query)
    assert queries.dtype == np.float32 and queries.shape == (len(QUERIES), 16)
    close(queries, era.encode_queries(QUERIES, instruction="task prompt from metadata"))
    docs = encode(model, {"text": DOCS}, PromptType.document)
    close(docs, doc_encoder.encode(DOCS))
    close(encode(model, {"text": DOCS}, None), docs)  # symmetric tasks: the index's space
    close(encode(model, {"text": DOCS}, "document"), docs)  # plain strings work too
    assert not np.allclose(encode(model, {"text": DOCS}, PromptType.query), docs, atol=1e-3)
    scores = model.similarity(queries, docs)
    assert scores.shape == (len(QUERIES), len(DOCS))
    torch.testing.assert_close(scores, torch.from_numpy(queries @ docs.T), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.similarity_pairwise(queries[:3], docs), torch.from_numpy((queries[:3] * docs).sum(1)),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="neither 'query' nor 'document'"):
        encode(model, {"text": DOCS}, "passage")


def test_mteb_instructions_per_query_per_task_and_default(wrapped):
    model, era, doc_encoder = wrapped
    instructions = ["first instruction", "second instruction", "first instruction", None]
    # instruction-retrieval tasks: mteb appends the instruction to "text" and keeps both columns
    columns = {"text": [f"{q} {i}" if i else q for q, i in zip(QUERIES, instructions)], "query": QUERIES,
               "instruction": [i or "" for i in instructions]}
    expected = [era.encode_queries([q], instruction=i or "task prompt from metadata")[0] for q, i in zip(QUERIES, instructions)]
    close(encode(model, columns, PromptType.query), np.stack(expected))

    custom = EraMtebModel.from_models(era, doc_encoder, instructions={"TinyRetrieval": "my own instruction"})
    close(encode(custom, {"text": QUERIES}, PromptType.query), era.encode_queries(QUERIES, instruction="my own instruction"))
    plain = EraMtebModel.from_models(era, doc_encoder, use_task_prompt=False)
    close(encode(plain, {"text": QUERIES}, PromptType.query), era.encode_queries(QUERIES))  # the adapter's default
    no_prompt_task = SimpleNamespace(name="Other", type="Retrieval", prompt=None)
    close(encode(model, {"text": QUERIES}, PromptType.query, no_prompt_task), era.encode_queries(QUERIES))


def test_mteb_wrapper_refuses_another_doc_encoder(encoders, wrapped):
    _, era, _ = wrapped
    with pytest.raises(IncompatibleDocEncoderError, match="32-d vectors"):
        EraMtebModel.from_models(era, TextEncoder(encoders.st_doc))


def test_mteb_evaluate_runs_on_a_mock_task(wrapped):
    mteb = pytest.importorskip("mteb")
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask

    model, _, _ = wrapped
    assert model.mteb_model_meta.embed_dim == 16
    result = mteb.evaluate(model, MockRetrievalTask(), cache=None, show_progress_bar=False)
    (task_result,) = result.task_results
    score = task_result.scores["test"][0]["ndcg_at_10"]
    assert 0.0 <= score <= 1.0
