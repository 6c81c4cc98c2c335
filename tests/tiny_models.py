"""Tiny random text encoders built on the spot, so the fast suite needs no download."""
from __future__ import annotations

from pathlib import Path

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
