"""The wheel as a user gets it (run by .ci/wheel_smoke.sh inside a fresh venv, outside the checkout):
align + adapt + evaluate --record through the console scripts on tiny models, then the checks.

    python wheel_smoke.py train TINY_MODELS_PY WORK   # in the venv holding the installed wheel
    python wheel_smoke.py reload WORK                 # in a venv with only torch + transformers + safetensors
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

QUERIES = ["python code search", "vector index of embedding text", "return a list value"]


def run(*command: str) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def train(tiny_models_py: str, work: Path) -> None:
    import era_adapters

    installed = Path(era_adapters.__file__).resolve()
    assert "site-packages" in installed.parts, f"era_adapters comes from {installed}, not the installed wheel"
    spec = importlib.util.spec_from_file_location("tiny_models", tiny_models_py)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    query, doc = tiny.make_tiny_bert(work / "query", 32, seed=1), tiny.make_tiny_bert(work / "doc", 16, seed=2)
    tiny.write_task(work / "data" / "tiny", num_docs=60, num_queries=40)
    bin_dir = Path(sys.executable).parent
    common = ["--data", str(work / "data"), "--cache-dir", str(work / "cache")]
    run(str(bin_dir / "era-validate"), str(work / "data"))
    run(str(bin_dir / "era-align"), "--query-encoder", str(query), "--doc-encoder", str(doc), "--num-texts", "40",
        "--output", str(work / "align"), *common)
    run(str(bin_dir / "era-distill"), "--init", str(work / "align"), "--epochs", "2", "--teacher-docs", "30",
        "--output", str(work / "distill"), *common)
    run(str(bin_dir / "era-adapt"), "--mode", "both", "--init", str(work / "distill"), "--label-budget", "0.5",
        "--distill-weight", "1.0", "--epochs", "2", "--output", str(work / "both"), *common)
    run(str(bin_dir / "era-evaluate"), "--system", "doc2doc", "--system", str(work / "both"), "--query-encoder",
        str(query), "--doc-encoder", str(doc), "--output", str(work / "eval"), "--record", *common)

    from huggingface_hub import ModelCard

    card = ModelCard.load(work / "both" / "README.md")
    results = card.data.to_dict()["model-index"][0]["results"]
    assert any(result["dataset"]["name"] == "tiny" for result in results), results
    assert "| tiny | 20 | doc2doc (the index as it is" in card.text, "the card must show doc2doc next to the adapter"

    import evaluate  # the metric module ships in the wheel
    from era_adapters.metrics import EVALUATE_MODULE

    metric = evaluate.load(EVALUATE_MODULE)
    value = metric.compute(predictions=[["d1", "d2"]], references=[{"doc_ids": ["d2"], "labels": [1]}],
                           metrics=["mrr@10"])
    assert value == {"mrr@10": 0.5}, value

    from modeling_era import EraQueryEncoder

    model = EraQueryEncoder.from_pretrained(work / "both")
    (work / "expected.json").write_text(json.dumps(model.encode_queries(QUERIES).tolist()))
    print("wheel: validate, align, distill, adapt, evaluate --record, card with model-index and doc2doc, evaluate module: ok")


def reload(work: Path) -> None:
    import importlib

    for absent in ("era_adapters", "modeling_era", "peft", "datasets", "accelerate", "sentence_transformers"):
        assert importlib.util.find_spec(absent) is None, f"{absent} is importable here; this venv must not have it"
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(work / "both", trust_remote_code=True)
    vectors = model.encode_queries(QUERIES)
    expected = torch.tensor(json.loads((work / "expected.json").read_text()))
    assert torch.allclose(vectors, expected, atol=1e-6), (vectors - expected).abs().max()
    print("hub files alone: AutoModel.from_pretrained(..., trust_remote_code=True) gives the same vectors: ok")


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(sys.argv[2], Path(sys.argv[3]))
    else:
        reload(Path(sys.argv[2]))
