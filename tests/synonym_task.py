"""The synonym task shared by the stage-2 tests: each query says its document's words with synonyms (a
fixed word -> word map), so A(Q(query)) ≈ D(query text) lands far from D(document) until labeled pairs
teach the map. Also the tiny Q/D pair with a warm cache and a stage-1 adapter (`aligned_setup`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from era_adapters.adapt import adapt
from era_adapters.align import align
from tiny_models import WORDS, make_tiny_bert

DOC_WORDS, QUERY_WORDS = WORDS[:13], WORDS[13:26]
SYNONYM = dict(zip(DOC_WORDS, QUERY_WORDS))


def write_synonym_task(folder: Path, num_docs: int = 120, num_queries: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = [list(rng.choice(DOC_WORDS, size=6, replace=False)) for _ in range(num_docs)]
    with open(folder / "docs.jsonl", "w") as handle:
        for i, words in enumerate(docs):
            handle.write(json.dumps({"id": f"d{i}", "doc": " ".join(words)}) + "\n")
    with open(folder / "queries.jsonl", "w") as handle:
        for i in range(num_queries):
            words = [SYNONYM[word] for word in docs[i]]
            rng.shuffle(words)
            handle.write(json.dumps({"qid": f"q{i}", "instruction": "find", "query": " ".join(words),
                                     "labels": [{"id": f"d{i}", "score": 1}]}) + "\n")
    return folder


def write_synonym_beir(folder: Path, roles: dict[str, range], num_docs: int = 120, seed: int = 0) -> Path:
    """The synonym task in BEIR layout: corpus.jsonl, queries.jsonl and one qrels/<role>.tsv per role,
    e.g. {"train": range(40), "test": range(40, 100)} (query i's positive is doc i)."""
    mair = write_synonym_task(folder / ".mair", num_docs=num_docs, num_queries=max(max(r) for r in roles.values()) + 1,
                              seed=seed)
    docs = [json.loads(line) for line in (mair / "docs.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (mair / "queries.jsonl").read_text().splitlines()]
    with open(folder / "corpus.jsonl", "w") as handle:
        for doc in docs:
            handle.write(json.dumps({"_id": doc["id"], "title": "", "text": doc["doc"]}) + "\n")
    with open(folder / "queries.jsonl", "w") as handle:
        for query in queries:
            handle.write(json.dumps({"_id": query["qid"], "text": query["query"]}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    for role, rows in roles.items():
        lines = "".join(f"q{i}\td{i}\t1\n" for i in rows)
        (folder / "qrels" / f"{role}.tsv").write_text("query-id\tcorpus-id\tscore\n" + lines)
    for path in mair.iterdir():
        path.unlink()
    mair.rmdir()
    return folder


def aligned_setup(root: Path) -> Path:
    """Tiny Q (64-d) and D (32-d), the synonym task, a warm cache and the stage-1 adapter, under `root`."""
    query, doc = make_tiny_bert(root / "q", hidden_size=64, seed=1), make_tiny_bert(root / "d", hidden_size=32, seed=2)
    write_synonym_task(root / "data" / "syn")
    align(root / "data", query_encoder=str(query), doc_encoder=str(doc), output=root / "align",
          cache_dir=root / "cache")
    return root


FAST = {"epochs": 30, "patience": 5, "lr": 3e-2, "batch_size": 8}


def run(setup: Path, output: Path, **kwargs):
    # 0.8 of the 60-query training pool: 38 training + 10 held-out validation queries (early stopping on them)
    options = {"label_budget": 0.8, "validation": "holdout", "mode": "both", "init": setup / "align",
               "cache_dir": setup / "cache", **FAST}
    options.update(kwargs)
    return adapt(setup / "data", output=output, **options)


def recipe(adapter) -> dict:
    return adapter.config.training_metadata["recipe"]
