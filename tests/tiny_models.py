"""Tiny random text encoders built on the spot, so the fast suite needs no download."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a of to and in is for on with how what find retrieve document query code python function "
    "return list value file data model search index vector embedding text given description"
).split()


def tiny_vocab() -> dict[str, int]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [f"##{c}" for c in letters]
    tokens = SPECIAL_TOKENS + letters + pieces + WORDS + list("0123456789.,?!'\"()[]{}:;-_=+*/")
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def make_tiny_bert(folder: Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """Save a 2-layer random BERT and its WordPiece tokenizer to `folder`; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab=tiny_vocab(), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TASK_WORDS = "python code search index vector embedding text function return list value file data model".split()


def write_task(folder: Path, num_docs: int = 40, num_queries: int = 20, seed: int = 0,
               overrides: dict[int, dict] | None = None) -> Path:
    """A MAIR-layout task: query i's text is exactly doc i's text, so doc2doc must rank it first."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = [" ".join(rng.choice(TASK_WORDS, size=8)) + f" {i}" for i in range(num_docs)]
    with open(folder / "docs.jsonl", "w") as handle:
        for i, doc in enumerate(docs):
            handle.write(json.dumps({"id": f"d{i}", "doc": doc}) + "\n")
    with open(folder / "queries.jsonl", "w") as handle:
        for i in range(num_queries):
            record = {"qid": f"q{i}", "instruction": "find the document", "query": docs[i],
                      "labels": [{"id": f"d{i}", "score": 1}]}
            record.update((overrides or {}).get(i, {}))
            handle.write(json.dumps(record) + "\n")
    return folder
