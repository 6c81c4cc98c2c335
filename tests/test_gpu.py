"""The CUDA paths: encoding on the GPU in float32 / float16 / bfloat16, and both training stages on one GPU
in float32 and under Accelerate's bf16 mixed precision, each compared with the CPU.

Skipped without a CUDA GPU (CI has none); on a GPU machine: `python -m pytest -q tests/test_gpu.py`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_era import EraQueryEncoder
from synonym_task import FAST, write_synonym_task
from test_fusion import fusion_encoder
from test_modeling import FAMILIES, INSTRUCTION, QUERIES, make_encoder
from tiny_models import make_tiny_bert
from era_adapters.encoders import TextEncoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI has none")
REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gpu_models")
    return make_tiny_bert(root / "strong", hidden_size=32, seed=1), make_tiny_bert(root / "light", hidden_size=16, seed=2)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_query_encoders_on_the_gpu_match_the_cpu(models, tmp_path, dtype, tolerance):
    built = {family: make_encoder(models[0], family) for family in FAMILIES}
    built["fusion"] = fusion_encoder(models)
    for family, model in built.items():
        expected = model.encode_queries(QUERIES, instruction=INSTRUCTION)
        model.save_pretrained(tmp_path / family)
        gpu = EraQueryEncoder.from_pretrained(tmp_path / family, dtype=dtype).to(CUDA)
        assert gpu.dtype == dtype and gpu.device.type == "cuda"
        vectors = gpu.encode_queries(QUERIES, instruction=INSTRUCTION)
        assert vectors.dtype == torch.float32 and vectors.device.type == "cpu"
        assert (1 - cosine(vectors, expected)).max() < tolerance, (family, dtype)


def test_text_encoder_picks_half_precision_on_the_gpu(models):
    texts = ["find python code", "how to search a vector index"] * 20
    cpu = TextEncoder(str(models[0]), device="cpu")
    gpu = TextEncoder(str(models[0]))
    assert gpu.device.type == "cuda" and gpu.dtype == "float16" and cpu.dtype == "float32"
    assert gpu.cache_key != cpu.cache_key  # half-precision vectors never mix with float32 ones in the cache
    similarity = cosine(torch.from_numpy(gpu.encode(texts)), torch.from_numpy(cpu.encode(texts)))
    assert similarity.min() > 0.999


TRAIN = """
import json, sys
from era_adapters.adapt import adapt
from era_adapters.align import align
args = json.loads(sys.argv[1])
root = args.pop("root")
align(root + "/data", query_encoder=args["q"], doc_encoder=args["d"], output=root + "/align", adapter=args["adapter"],
      cache_dir=root + "/cache", prompt_template="{query}")
model = adapt(root + "/data", output=root + "/both", label_budget=0.8, validation="holdout", mode="both", init=root + "/align",
              cache_dir=root + "/cache", **args["fast"])
recipe = model.config.training_metadata["recipe"]
print("RESULT", json.dumps({"start": recipe["curve"][0]["validation"], "best": recipe["best_validation"],
                            "processes": recipe["processes"]}))
"""


def train_in_subprocess(models, root: Path, adapter: str, **env: str) -> dict:
    write_synonym_task(root / "data" / "syn")
    payload = {"root": str(root), "q": str(models[0]), "d": str(models[1]), "adapter": adapter, "fast": FAST}
    done = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(payload)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.parametrize("adapter", ["linear", "fusion"])
def test_training_on_the_gpu_and_in_bf16_learns_like_the_cpu(models, tmp_path, adapter):
    cpu = train_in_subprocess(models, tmp_path / "cpu", adapter, CUDA_VISIBLE_DEVICES="")
    gpu = train_in_subprocess(models, tmp_path / "gpu", adapter)
    bf16 = train_in_subprocess(models, tmp_path / "bf16", adapter, ACCELERATE_MIXED_PRECISION="bf16")
    for run in (cpu, gpu, bf16):
        assert run["best"] >= run["start"] + 0.2, run  # stage 2 learns on every path
    # The GPU embeds in float16, so the runs differ a little; they must land close to the CPU one.
    # (on CPU, bf16 autocast lands 0.03-0.06 below float32 on this fixture)
    assert abs(gpu["best"] - cpu["best"]) < 0.15 and abs(bf16["best"] - cpu["best"]) < 0.15, (cpu, gpu, bf16)
    assert np.isfinite([gpu["best"], bf16["best"]]).all()
