"""The Hub package with the real packaged models (all-MiniLM-L6-v2, all-mpnet-base-v2)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from modeling_era import EraConfig, EraQueryEncoder
from era_adapters.models import MINILM_ID, MPNET_ID, ModelNotAvailableError, resolve_model

SENTENCES = ["What causes scurvy?", "Retrieve the Python function that parses a date string.", "x"]


def packaged(model_id: str):
    try:
        return resolve_model(model_id)
    except ModelNotAvailableError as error:
        pytest.skip(f"{model_id} is not installed here ({error}); .ci/install installs it")


def load(model_id: str):
    resolved = packaged(model_id)
    return resolved, AutoModel.from_pretrained(resolved.path), AutoTokenizer.from_pretrained(resolved.path)


def test_mpnet_query_encoder_with_linear_adapter_to_minilm_space():
    resolved, backbone, tokenizer = load(MPNET_ID)
    config = EraConfig(query_encoder=resolved.model_id, doc_encoder=MINILM_ID, query_dim=768, doc_dim=384)
    assert resolved.model_id == MPNET_ID  # the Hub id is kept, never the local path
    model = EraQueryEncoder.from_backbone(config, backbone, tokenizer).eval()
    vectors = model.encode_queries(SENTENCES)
    assert vectors.shape == (3, 384) and vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(3))


def test_identity_adapter_over_minilm_reproduces_minilm():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    resolved, backbone, tokenizer = load(MINILM_ID)
    config = EraConfig(query_encoder=MINILM_ID, doc_encoder=MINILM_ID, query_dim=384, doc_dim=384,
                       prompt_template="{query}")
    model = EraQueryEncoder.from_backbone(config, backbone, tokenizer).eval()  # linear starts at identity
    ours = model.encode_queries(SENTENCES)
    reference = sentence_transformers.SentenceTransformer(str(resolved.path), device="cpu").encode(
        SENTENCES, normalize_embeddings=True, convert_to_tensor=True
    )
    torch.testing.assert_close(ours, reference.cpu(), atol=1e-5, rtol=1e-5)
