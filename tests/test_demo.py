"""The main job (README command one) on its reduced size: real models, real stdlib data, no network."""
from __future__ import annotations

import pytest

from era_adapters.demo import run

pytestmark = pytest.mark.slow


def test_quick_demo_gives_sane_numbers(tmp_path):
    report = run(None, quick=True, cache_dir=None, output=tmp_path / "demo")
    macro = {name: result["macro"] for name, result in report["results"].items()}
    for metrics in macro.values():
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert macro["query2doc"]["ndcg@10"] < 0.1  # unrelated spaces: the sanity check stays near zero
    assert macro["era-align"]["ndcg@10"] > macro["query2doc"]["ndcg@10"] + 0.5
    assert macro["era-align"]["ndcg@10"] > macro["doc2doc"]["ndcg@10"] - 0.05
    assert macro["era-both"]["ndcg@10"] > macro["query2doc"]["ndcg@10"] + 0.5
    assert macro["fusion-both"]["ndcg@10"] > macro["query2doc"]["ndcg@10"] + 0.5
    assert macro["fusion-align"]["ndcg@10"] > macro["doc2doc"]["ndcg@10"] - 0.05
    for name in ("era-distill", "fusion-distill"):  # zero labels: distilled from the re-index's ranking
        assert macro[name]["ndcg@10"] > macro["doc2doc"]["ndcg@10"] - 0.05
    assert (tmp_path / "demo" / "era-distill" / "config.json").is_file()
    assert (tmp_path / "demo" / "era-align" / "model.safetensors").is_file()
