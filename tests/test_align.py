"""Stage 1: closed-form fits, gradient families, the saved artifact, multi-process equality, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import AutoModel

from modeling_era import EraAdapter, EraConfig
from tiny_models import make_tiny_bert, write_task
from era_adapters.align import align, fit_gradient, sample_texts
from era_adapters.data import Query, Task
from era_adapters.splits import make_split
from era_adapters.ridge import ridge_statistics, set_from_linear
from era_adapters.loop import LoopConfig

REPO = Path(__file__).resolve().parents[1]


def test_gradient_refinement_never_ends_worse_than_its_start(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(8, 4))).astype(np.float32)
    config = EraConfig(query_dim=8, doc_dim=4, adapter_type="mlp", adapter_hidden_dim=16)
    adapter = EraAdapter(config)
    weight, bias, _ = ridge_statistics(x[:250], y[:250]).solve(1e-3)
    set_from_linear(adapter, weight, bias)
    curve = fit_gradient(adapter, x[:250], y[:250], x[250:], y[250:], loop=LoopConfig(epochs=30, lr=1e-2, patience=30),
                         batch_size=64, loss="cosine", accelerator=Accelerator(cpu=True), checkpoint_dir=None)
    best = max(point["validation"] for point in curve)
    assert best > curve[0]["validation"] + 0.01  # the MLP learns the non-linearity ridge cannot
    with torch.no_grad():
        final = torch.nn.functional.cosine_similarity(adapter(torch.from_numpy(x[250:])), torch.from_numpy(y[250:])).mean()
    assert float(final) == pytest.approx(best, abs=1e-6)  # the best epoch's weights are restored


class _BareQuery:
    def format_query(self, query: str, instruction: str) -> str:
        return query


def test_with_queries_leaves_out_the_evaluations_test_queries_and_their_twins():
    queries = [Query(f"q{i}", f"question {i}", "", {"d0": 1}) for i in range(10)]
    corpus = datasets.Dataset.from_dict({"id": ["d0"], "doc": ["a document"]})
    test = make_split(Task("toy", "unknown", ["d0"], corpus, queries), seed=0).test_qids
    twin = Query("q10", f"  QUESTION {test[0][1:]}", "", {})  # another id, a test query's text
    task = Task("toy", "unknown", ["d0"], corpus, queries + [twin])
    # the sample's seed is not the split's: the evaluation's test part (split seed 0) still never enters
    texts = sample_texts([task], num_texts=1, seed=7, query_encoder=_BareQuery(), with_queries=True, split_seed=0)
    used = {key for kind, key in texts.keys if kind == "query"}
    assert used == {q.qid for q in queries} - set(test)
    assert texts.counts["toy"] == {"documents": 1, "queries": 5}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    query = make_tiny_bert(root / "query", hidden_size=32, seed=1)
    doc = make_tiny_bert(root / "doc", hidden_size=16, seed=2)
    write_task(root / "data" / "tiny", num_docs=60, num_queries=30)
    return root, str(query), str(doc)


def test_align_saves_a_complete_query_encoder(setup, tmp_path):
    root, query, doc = setup
    output = tmp_path / "aligned"
    align(root / "data", query_encoder=query, doc_encoder=doc, output=output, num_texts=50, with_queries=True,
          cache_dir=root / "cache")
    config = json.loads((output / "config.json").read_text())
    assert config["query_encoder"] == query and config["doc_encoder"] == doc
    assert (config["query_dim"], config["doc_dim"]) == (32, 16)
    meta = config["training_metadata"]
    assert meta["mode"] == "align" and meta["tasks"] == ["tiny"]
    assert meta["alignment"]["texts"]["tiny"] == {"documents": 50, "queries": 15}  # test queries never used
    metrics = meta["alignment"]["metrics"]
    assert -1 <= metrics["held_out_cosine"] <= 1 and 0 <= metrics["twin_recall@1"] <= 1
    assert len(meta["alignment"]["texts_sha256"]) == 64
    assert "ridge" in meta["recipe"] and (output / "README.md").is_file()
    model = AutoModel.from_pretrained(output, trust_remote_code=True)
    assert model.encode_queries(["find python code"]).shape == (1, 16)


def test_align_is_deterministic(setup, tmp_path):
    root, query, doc = setup
    for name in ("a", "b"):
        align(root / "data", query_encoder=query, doc_encoder=doc, output=tmp_path / name, num_texts=40,
              adapter="mlp", epochs=3, adapter_hidden_dim=8, cache_dir=root / "cache")
    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(first[key], second[key]) for key in first)


def _align_command(root: Path, query: str, doc: str, output: Path, *extra: str) -> list[str]:
    return ["training/align.py", "--query-encoder", query, "--doc-encoder", doc, "--data", str(root / "data"),
            "--output", str(output), "--num-texts", "50", "--cache-dir", str(root / "cache"), *extra]


def test_two_processes_fit_the_same_linear_adapter(setup, tmp_path):
    root, query, doc = setup
    single = _align_command(root, query, doc, tmp_path / "one")
    double = _align_command(root, query, doc, tmp_path / "two")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, *single], check=True, cwd=REPO, env=env, capture_output=True)
    # `--cpu --num_processes 2` starts one process; `--multi_gpu` goes through torchrun: 2 CPU processes (gloo).
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                               "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               *double], check=True, cwd=REPO, env=env, capture_output=True, text=True)
    meta = json.loads((tmp_path / "two" / "config.json").read_text())["training_metadata"]["alignment"]
    assert meta["processes"] == 2, launched.stderr[-2000:]
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for key in one:  # float64 sums reduced in another order: equal to float32 rounding
        torch.testing.assert_close(one[key], two[key], atol=1e-6, rtol=1e-6)


def test_gradient_family_resumes_after_a_kill(setup, tmp_path):
    root, query, doc = setup
    extra = ["--adapter", "mlp", "--epochs", "40", "--patience", "40", "--adapter-hidden-dim", "64",
             "--batch-size", "8"]
    subprocess.run([sys.executable, *_align_command(root, query, doc, tmp_path / "full", *extra)],
                   check=True, cwd=REPO, capture_output=True)
    output = tmp_path / "killed"
    checkpoint = tmp_path / ".killed.checkpoints" / "checkpoint.pt"
    process = subprocess.Popen([sys.executable, *_align_command(root, query, doc, output, *extra)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if output.exists():
        pytest.skip("the run finished before it could be killed; nothing to resume")
    assert checkpoint.exists(), "no checkpoint was written before the kill"
    subprocess.run([sys.executable, *_align_command(root, query, doc, output, *extra)], check=True, cwd=REPO,
                   capture_output=True)
    resumed, full = load_file(output / "model.safetensors"), load_file(tmp_path / "full" / "model.safetensors")
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], atol=0, rtol=0)


def test_bad_input(setup, tmp_path):
    root, query, doc = setup
    with pytest.raises(Exception, match="no/such-encoder"):
        align(root / "data", query_encoder="no/such-encoder", doc_encoder=doc, output=tmp_path / "x",
              cache_dir=root / "cache")
