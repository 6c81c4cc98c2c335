"""Encoders and adapters shared by the export and mteb-wrapper tests."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModel, AutoTokenizer

from modeling_era import EraAdapter, EraConfig, EraQueryEncoder
from era_adapters.artifacts import save_query_encoder
from era_adapters.encoders import TextEncoder
from tiny_models import make_tiny_bert

QUERIES = ["find python code", "how to search a vector index " * 6, "a", "return the list value"]
DOCS = ["def search(index, vector): return index.search(vector)", "the data file", "model embedding text"]
INSTRUCTION = "given a description retrieve the function"


def make_encoders(root: Path) -> SimpleNamespace:
    """A tiny query backbone (32-d), a plain doc encoder (16-d) and a sentence-transformers doc encoder
    (32-d, CLS pooling, not normalised) whose settings must be read from its own files."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

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
