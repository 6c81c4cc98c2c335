"""The model card every saved adapter gets: YAML metadata the Hub reads, and a body a user can follow."""
from __future__ import annotations

import ast
import re

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from modeling_era import EraAdapter, EraConfig
from tiny_models import make_tiny_bert
from era_adapters.artifacts import save_query_encoder
from era_adapters.cards import render_model_card

QUERY_ID, QUERY_REV = "sentence-transformers/all-mpnet-base-v2", "e8c3b32edf5434bc2275fc9bab85f82640a19130"
DOC_ID, DOC_REV = "sentence-transformers/all-MiniLM-L6-v2", "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
REPO_ID = "someone/era-mpnet-to-minilm"
INSTRUCTION = 'Given a "claim", retrieve the passage that supports it'
def baselines(doc2doc: float, query2query: float) -> dict:
    return {"doc2doc": {"ndcg@10": doc2doc, "recall@100": 0.8, "mrr@10": 0.5, "map@100": 0.5},
            "query2query": {"ndcg@10": query2query, "recall@100": 0.85, "mrr@10": 0.55, "map@100": 0.52,
                            "vs_doc2doc": {"mean_diff": query2query - doc2doc, "p_value": 0.02}}}


EVALUATION = {  # as `evaluate --record` writes it (era_adapters.artifacts.record_in_adapters)
    "scifact": {"ndcg@10": 0.61234, "recall@100": 0.9, "mrr@10": 0.58, "map@100": 0.55, "n_queries": 300,
                "baselines": baselines(0.60, 0.65), "vs_doc2doc": {"mean_diff": 0.01234, "p_value": 0.41}},
    "arguana": {"ndcg@10": 0.45, "recall@100": 0.97, "mrr@10": 0.39, "map@100": 0.40, "n_queries": 700,
                "baselines": baselines(0.50, 0.52), "vs_doc2doc": {"mean_diff": -0.05, "p_value": 0.003}},
}
LABELS = {  # as stage 2 writes it (era_adapters.adapt)
    "validation": "holdout",
    "tasks": {name: {"selection": f"--label-budget 0.1 × the {pool}-query training pool of task {name!r} = {used} "
                                  f"queries", "train_queries": used - val, "train_pairs": used - val + 3,
                     "validation_queries": val, "validation_from": "held out of the training labels",
                     "test_queries": test}
              for name, pool, used, val, test in (("scifact", 809, 81, 16, 300), ("arguana", 701, 70, 14, 700))},
    "total": {"train_queries": 121, "train_pairs": 127, "validation_queries": 30, "test_queries": 1000},
}
METADATA = {
    "mode": "both",
    "tasks": ["scifact", "arguana"],
    "label_budget": 0.1,
    "labels": LABELS,
    "split": {"scifact": {"source": "your qrels files (train: qrels/train.tsv, test: qrels/test.tsv)"},
              "arguana": {"source": "seeded split (seed 0): a 0.5 share of the labeled queries test"}},
    "validation": {"how": "early stopping on 30 validation queries", "best_epoch": 7, "best": 0.55, "start": 0.5,
                   "doc2doc": 0.52, "warnings": []},
    "seeds": {"split": 0, "train": 0},
    "recipe": {"summary": "linear adapter, closed-form ridge, then InfoNCE with mined negatives",
               "curve": [{"epoch": i, "validation": 0.1 * i} for i in range(50)]},
    "evaluation": EVALUATION,
}


pytestmark = pytest.mark.usefixtures("no_network")  # see conftest.py


def make_config(**overrides) -> EraConfig:
    settings = dict(query_encoder=QUERY_ID, query_encoder_revision=QUERY_REV, doc_encoder=DOC_ID,
                    doc_encoder_revision=DOC_REV, query_dim=768, doc_dim=384, default_instruction=INSTRUCTION,
                    training_metadata=METADATA)
    settings.update(overrides)
    return EraConfig(**settings)


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---", 2)[1])


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_saved_adapter_card_metadata_and_body(tmp_path):
    folder = save_query_encoder(EraAdapter(make_config()), tmp_path / "era", repo_id=REPO_ID)
    card = ModelCard.load(folder / "README.md")  # how the Hub and huggingface_hub read it

    assert card.data.library_name == "transformers"
    assert card.data.base_model == QUERY_ID
    assert {"era", "retrieval", "embedding-adapter", f"doc-encoder:{DOC_ID}"} <= set(card.data.tags)
    assert card.data.datasets == ["arguana", "scifact"]
    assert card.data.pipeline_tag == "feature-extraction"
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {
        (task, metric.replace("@", "_at_")): pytest.approx(value)
        for task, values in EVALUATION.items() for metric, value in values.items()
        if metric in ("ndcg@10", "recall@100", "mrr@10", "map@100")
    }

    metadata = front_matter((folder / "README.md").read_text())  # plain YAML, as the Hub parses it
    (index,) = metadata["model-index"]
    assert index["name"] == REPO_ID
    by_dataset = {r["dataset"]["name"]: r for r in index["results"]}
    assert set(by_dataset) == {"scifact", "arguana"}
    scifact = by_dataset["scifact"]
    assert scifact["task"]["type"] == "retrieval" and scifact["dataset"]["split"] == "test"
    assert {m["type"]: m["value"] for m in scifact["metrics"]} == {
        "ndcg_at_10": 0.61234, "recall_at_100": 0.9, "mrr_at_10": 0.58, "map_at_100": 0.55}

    body = card.text
    for needle in (QUERY_ID, QUERY_REV, DOC_ID, DOC_REV, "768-d", "384-d", "295,296 parameters"):
        assert needle in body, needle
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in body
    assert f"check_doc_encoder(\"{DOC_ID}\", dim=index.d)" in body
    assert f"instruction={INSTRUCTION!r}" in body  # the default instruction, as a valid Python string
    assert "`{instruction} {query}`" in body  # the prompt template
    # the labels actually used, per role, and where the split came from
    assert ("| labels used | 121 training queries (127 query-document pairs) and 30 validation queries; the 1000 "
            "test queries were never used") in body
    assert "--label-budget 0.1 × the 809-query training pool of task 'scifact' = 81 queries, 65 train, 16 validation" in body
    assert "`scifact`: your qrels files (train: qrels/train.tsv, test: qrels/test.tsv)" in body
    assert "validation nDCG@10 0.5000 at the start, 0.5500 at epoch 7; doc2doc (the index as it is) 0.5200" in body
    assert "closed-form ridge, then InfoNCE" in body and '"curve"' not in body  # recipe, without the curves
    # the adapter next to doc2doc and query2query on the same test queries, with counts and p-values
    assert "| scifact | 300 | **this adapter** | 0.6123 | 0.9000 | 0.5800 | 0.5500 | +0.0123 (p=0.41) |" in body
    assert "| scifact | 300 | doc2doc (the index as it is: doc encoder on both sides) | 0.6000 |" in body
    assert "| scifact | 300 | query2query (re-index with the query encoder) | 0.6500 | 0.8500 | 0.5500 | 0.5200 | +0.0500 (p=0.02) |" in body
    assert "| arguana | 700 | **this adapter** | 0.4500 | 0.9700 | 0.3900 | 0.4000 | -0.0500 (p=0.003) |" in body
    assert "**Below the index on `arguana`:** nDCG@10 0.4500 vs doc2doc 0.5000 on the same 700 test queries" in body
    assert "Below the index on `scifact`" not in body
    for section in ("## How to use", "## Training", "## Evaluation", "## Limitations"):
        assert section in body
    for block in python_blocks(body):
        ast.parse(block)  # the usage snippet is valid Python


def test_card_without_evaluation_instruction_slot_or_pinned_revisions():
    config = make_config(prompt_template="{query}", query_encoder_revision=None, doc_encoder_revision=None,
                         training_metadata={"mode": "align", "tasks": ["stdlib-code"]})
    card = render_model_card(config, num_parameters=10, repo_id=REPO_ID)
    metadata = front_matter(card.content)
    assert "model-index" not in metadata and metadata["datasets"] == ["stdlib-code"]
    assert "Not evaluated yet" in card.text
    assert "revision `not pinned`" in card.text and "None" not in card.text
    assert "none: self-supervised alignment only" in card.text and "| split | none: no labeled queries used |" in card.text
    assert 'encode_queries(["your query"])' in card.text and "instruction=" not in card.text
    assert "revision=" not in python_blocks(card.text)[0]  # nothing to pin the doc encoder to
    for block in python_blocks(card.text):
        ast.parse(block)


def test_fusion_card_names_the_light_encoder_and_a_capped_evaluation():
    metadata = {**METADATA, "evaluation_settings": {"max_docs": 500, "max_queries": 100}}
    config = make_config(adapter_type="fusion", fusion_encoder=DOC_ID, fusion_encoder_revision=DOC_REV,
                         fusion_dim=384, training_metadata=metadata)
    card = render_model_card(config, num_parameters=10, repo_id=REPO_ID)
    assert f"| light query encoder (fusion) | `{DOC_ID}` (revision `{DOC_REV}`), 384-d, mean pooling |" in card.text
    assert "This is a **fusion** adapter" in card.text
    assert "a capped corpus (max_docs = 500: every judged document plus seeded random others), at most 100" in card.text
    plain = render_model_card(make_config(), num_parameters=10, repo_id=REPO_ID)
    assert "fusion" not in plain.text and "over the whole corpus" in plain.text


def test_card_leaves_local_paths_out_of_base_model(tmp_path):
    card = render_model_card(make_config(query_encoder=str(tmp_path)), num_parameters=1, repo_id=REPO_ID)
    assert "base_model" not in front_matter(card.content)  # the Hub refuses a path there
    assert str(tmp_path) in card.text  # the body still says which encoder it was


def test_usage_snippet_runs_as_written(tmp_path):
    """Execute the card's own usage code against tiny local encoders (paths in place of Hub ids)."""
    query_path = make_tiny_bert(tmp_path / "query", hidden_size=32, seed=0)
    doc_path = make_tiny_bert(tmp_path / "doc", hidden_size=16, seed=1)
    config = make_config(query_encoder=str(query_path), query_encoder_revision=None, doc_encoder=str(doc_path),
                         doc_encoder_revision=None, query_dim=32, doc_dim=16)
    adapter = EraAdapter(config)
    with torch.no_grad():
        adapter.adapter.proj.weight.copy_(torch.randn(16, 32, generator=torch.Generator().manual_seed(0)))
    folder = tmp_path / "adapter"
    save_query_encoder(adapter, folder, repo_id=str(folder))  # the "repo id" is the folder itself
    (snippet,) = python_blocks(ModelCard.load(folder / "README.md").text)
    namespace: dict = {}
    exec(compile(snippet, "model-card-usage", "exec"), namespace)  # noqa: S102 - our own generated snippet
    ids = namespace["ids"][0].tolist()  # top 10 of a 2-document index: both documents, then faiss's -1 padding
    assert sorted(ids[:2]) == [0, 1] and set(ids[2:]) == {-1}
    assert namespace["queries"].shape == (1, 16)
