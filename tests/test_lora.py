"""LoRA on the query backbone: saved with the adapter, reloaded through AutoModel without peft, scored by
the evaluation through its LoRA backbone."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from modeling_era import EraAdapter, EraConfig
from era_adapters.data import load_tasks
from era_adapters.encoders import TextEncoder
from era_adapters.evaluate import evaluate
from era_adapters.supervision import TaskView, task_ndcg
from synonym_task import recipe, run



def test_lora_is_saved_with_the_adapter_and_reloads_through_automodel(setup, tmp_path):
    adapter = run(setup, tmp_path / "lora", lora=True, lora_r=4, epochs=2, remine_every=0, align_weight=0.0)
    folder = tmp_path / "lora"
    config = EraConfig.from_pretrained(folder)
    assert config.lora_config["r"] == 4 and recipe(adapter)["lora"]["target_modules"] == ["query", "value"]
    weights = load_file(folder / "model.safetensors")
    assert any(key.startswith("lora.") for key in weights) and not any(key.startswith("backbone.") for key in weights)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert any("lora_B" in name for name, _ in model.backbone.named_parameters())
    # The reloaded encoder reproduces the validation score of the best epoch.
    task = load_tasks(setup / "data")[0]
    by_id = {q.qid: q for q in task.queries}
    val = [by_id[qid] for qid in config.training_metadata["split"]["syn"]["val"]]
    adapted = torch.cat([model.encode_queries([q.query], instruction=q.instruction) for q in val]).numpy()
    docs = TextEncoder(config.doc_encoder, cache_dir=setup / "cache").encode(list(task.doc_texts))
    view = TaskView("syn", task.doc_ids, 0, False, None, [q.qid for q in val], {q.qid: q.labels for q in val},
                    adapted, [])
    assert task_ndcg(view, docs, adapted) == pytest.approx(recipe(adapter)["best_validation"], abs=1e-6)
    with pytest.raises(ValueError, match="LoRA"):  # cached plain-Q vectors do not fit a LoRA adapter
        EraAdapter.from_pretrained(folder)
    # The evaluation harness scores it through the LoRA backbone: its numbers are those of encode_queries.
    report = evaluate(setup / "data", [str(folder)], cache_dir=setup / "cache")
    result = report["results"]["lora"]
    assert result["system"]["lora"]["r"] == 4
    test = [by_id[qid] for qid in report["tasks"]["syn"]["test_qids"]]
    expected = model.encode_queries([q.query for q in test], instruction=[q.instruction for q in test]).numpy()
    view = TaskView("syn", task.doc_ids, 0, False, None, [q.qid for q in test], {q.qid: q.labels for q in test},
                    expected, [])
    assert result["tasks"]["syn"]["ndcg@10"] == pytest.approx(task_ndcg(view, docs, expected), abs=1e-6)
