"""The mteb wrapper routes queries through the adapter and documents through the doc encoder, by prompt_type."""
from __future__ import annotations

from enum import Enum
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from modeling_era import EraQueryEncoder, IncompatibleDocEncoderError
from interop_models import DOCS, QUERIES, make_encoders, save_adapter
from era_adapters.encoders import TextEncoder
from era_adapters.mteb_wrapper import EraMtebModel


pytestmark = pytest.mark.usefixtures("no_network")  # see conftest.py


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return make_encoders(tmp_path_factory.mktemp("encoders"))


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
