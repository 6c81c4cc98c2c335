"""Stage 2: the loss, in-batch masking, hard-negative mining, early stopping, resume, DDP, LoRA, end to end."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from modeling_era import EraAdapter, EraConfig
from tiny_models import WORDS, make_tiny_bert
from era_adapters.adapt import adapt
from era_adapters.align import align
from era_adapters.cache import EmbeddingCache
from era_adapters.data import load_tasks
from era_adapters.encoders import TextEncoder
from era_adapters.evaluate import evaluate
from era_adapters.loop import checkpoint_folder
from era_adapters.losses import contrastive_loss, in_batch_mask, pair_weights
from era_adapters.mining import mine_hard_negatives
from era_adapters.splits import make_split
from era_adapters.supervision import TaskView, task_ndcg

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# A task where the labels carry what alignment cannot: each query says its document's words with
# synonyms (a fixed word -> word map), so A(Q(query)) ≈ D(query text) lands far from D(document)
# until labeled pairs teach the map.
# ---------------------------------------------------------------------------------------------

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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny Q (64-d) and D (32-d), the synonym task, a warm cache and the stage-1 adapter."""
    root = tmp_path_factory.mktemp("adapt")
    query, doc = make_tiny_bert(root / "q", hidden_size=64, seed=1), make_tiny_bert(root / "d", hidden_size=32, seed=2)
    write_synonym_task(root / "data" / "syn")
    align(root / "data", query_encoder=str(query), doc_encoder=str(doc), output=root / "align",
          cache_dir=root / "cache")
    return root


FAST = {"epochs": 30, "patience": 5, "lr": 3e-2, "batch_size": 8}


def run(setup: Path, output: Path, **kwargs):
    options = {"label_budget": 0.4, "mode": "both", "init": setup / "align", "cache_dir": setup / "cache", **FAST}
    options.update(kwargs)
    return adapt(setup / "data", output=output, **options)


def recipe(adapter) -> dict:
    return adapter.config.training_metadata["recipe"]


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------

DOCS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
POSITIVES = torch.tensor([[0, -1], [1, 3]])  # query 1 has two positives
NEGATIVES = torch.tensor([[2, -1], [4, 2]])
POOL = torch.tensor([0, 1, 3])  # the batch's positives


def nll(positive: float, others: list[float], tau: float) -> float:
    return -math.log(math.exp(positive / tau) / (math.exp(positive / tau) + sum(math.exp(s / tau) for s in others)))


def test_loss_equals_a_hand_computation():
    tau = 0.5
    # Query 0, positive d0 (score 1): hard negative d2 (0.6); in-batch d1 (0), d3 (0.8); d0 is its own.
    pair_00 = nll(1.0, [0.6, 0.0, 0.8], tau)
    # Query 1, positives d1 (1) and d3 (0.6): hard negatives d4 (0), d2 (0.8); in-batch d0 (0) only.
    pair_11 = nll(1.0, [0.0, 0.8, 0.0], tau)
    pair_13 = nll(0.6, [0.0, 0.8, 0.0], tau)
    uniform = contrastive_loss(QUERIES, DOCS, POSITIVES, NEGATIVES, POOL, pair_weights(POSITIVES), temperature=tau)
    assert uniform.item() == pytest.approx((pair_00 + 0.5 * pair_11 + 0.5 * pair_13) / 2, rel=1e-6)
    grades = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    graded = contrastive_loss(QUERIES, DOCS, POSITIVES, NEGATIVES, POOL, pair_weights(POSITIVES, grades),
                              temperature=tau)
    assert graded.item() == pytest.approx((pair_00 + 2 / 3 * pair_11 + 1 / 3 * pair_13) / 2, rel=1e-6)
    # Without in-batch negatives only the hard ones remain; the normaliser divides the weighted sum.
    alone = contrastive_loss(QUERIES, DOCS, POSITIVES, NEGATIVES, None, pair_weights(POSITIVES), temperature=tau,
                             normaliser=4.0)
    expected = (nll(1.0, [0.6], tau) + 0.5 * nll(1.0, [0.0, 0.8], tau) + 0.5 * nll(0.6, [0.0, 0.8], tau)) / 4
    assert alone.item() == pytest.approx(expected, rel=1e-6)


def test_in_batch_masking_never_uses_a_querys_own_positive():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        positives = torch.randint(0, 12, (6, 4), generator=generator)
        positives[torch.rand(6, 4, generator=generator) < 0.4] = -1
        positives[:, 0] = torch.randint(0, 12, (6,), generator=generator)  # at least one each
        negatives = torch.randint(-1, 12, (6, 3), generator=generator)
        pool = torch.unique(positives[positives >= 0])
        allowed = in_batch_mask(positives, negatives, pool)
        for i in range(6):
            own = set(positives[i][positives[i] >= 0].tolist())
            used = set(pool[allowed[i]].tolist())
            assert not used & own
            assert not used & set(negatives[i].tolist())  # nor counted twice
            assert used == set(pool.tolist()) - own - set(negatives[i].tolist())
    # Behaviour: a document shared as a positive by both queries never acts as a negative of either,
    # so moving it in space changes each pair's loss only through its own positive term.
    positives = torch.tensor([[0, -1], [0, 1]])
    pool = torch.tensor([0, 1])
    none = torch.full((2, 0), -1, dtype=torch.long)
    loss = contrastive_loss(QUERIES, DOCS, positives, none, pool, pair_weights(positives), temperature=0.5)
    by_hand = (nll(1.0, [0.0], 0.5) + 0.5 * nll(0.0, [], 0.5) + 0.5 * nll(1.0, [], 0.5)) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Mining
# ---------------------------------------------------------------------------------------------


def test_mined_negatives_skip_positives_and_near_duplicates():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    scores = [0.8, 0.8, 0.78, 0.9, 0.75, 0.5, 0.3, 0.2]  # d0 positive, d1 its duplicate, d2/d3 within 5%
    docs = np.array([[s, math.sqrt(1 - s * s)] for s in scores], dtype=np.float32)
    mined = mine_hard_negatives(query, docs, np.array([[0]]), 3)
    assert mined.tolist() == [[4, 5, 6]]
    # With a ratio of 1 only scores at or above the positive's count as duplicates: d2 (0.78) comes back.
    assert mine_hard_negatives(query, docs, np.array([[0]]), 2, near_duplicate_ratio=1.0).tolist() == [[2, 4]]
    # Excluded rows (e.g. the query's own document) are skipped as well; too few candidates leave -1.
    assert mine_hard_negatives(query, docs, np.array([[0]]), 5, excluded=np.array([[5]])).tolist() == [[4, 6, 7, -1, -1]]


def test_mining_matches_brute_force_and_deepens_when_needed():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(25, 8)).astype(np.float32)
    positives = np.full((25, 40), -1)
    for i in range(25):  # many positives among the top documents: the first, shallow search runs short
        top = np.argsort(-(docs @ queries[i]))
        positives[i, : 5 + i] = rng.choice(top[:60], size=5 + i, replace=False)
    mined = mine_hard_negatives(queries, docs, positives, 10, max_depth=300)
    for i in range(25):
        scores = docs @ queries[i]
        own = positives[i][positives[i] >= 0]
        weakest = scores[own].min()
        cut = weakest - 0.05 * abs(weakest)
        allowed = [j for j in np.argsort(-scores, kind="stable") if j not in set(own) and scores[j] < cut]
        assert mined[i].tolist() == allowed[:10]
        assert not set(mined[i].tolist()) & set(own.tolist())


# ---------------------------------------------------------------------------------------------
# Training runs on the fixture
# ---------------------------------------------------------------------------------------------


def validation_score(setup: Path, folder: Path) -> float:
    """nDCG@10 of a saved adapter on the validation queries of its own split, recomputed from scratch."""
    config = EraConfig.from_pretrained(folder)
    adapter = EraAdapter.from_pretrained(folder).eval()
    task = load_tasks(setup / "data")[0]
    split = config.training_metadata["split"]["syn"]
    by_id = {q.qid: q for q in task.queries}
    val = [by_id[qid] for qid in split["val"]]
    query_encoder = TextEncoder(config.query_encoder, query_template=config.prompt_template, cache_dir=setup / "cache")
    doc_encoder = TextEncoder(config.doc_encoder, cache_dir=setup / "cache")
    docs = doc_encoder.encode(list(task.doc_texts))
    queries = query_encoder.encode([query_encoder.format_query(q.query, q.instruction) for q in val])
    with torch.no_grad():
        adapted = adapter(torch.from_numpy(queries)).numpy()
    view = TaskView("syn", task.doc_ids, 0, False, None, [q.qid for q in val], {q.qid: q.labels for q in val},
                    queries, [])
    return task_ndcg(view, docs, adapted)


def test_both_improves_validation_over_the_aligned_start(setup, tmp_path):
    adapter = run(setup, tmp_path / "both")
    curve = recipe(adapter)["curve"]
    assert curve[0]["epoch"] == 0  # the stage-1 adapter, scored before any step
    assert recipe(adapter)["best_validation"] >= curve[0]["validation"] + 0.3
    assert validation_score(setup, tmp_path / "both") == pytest.approx(recipe(adapter)["best_validation"], abs=1e-6)
    metadata = EraConfig.from_pretrained(tmp_path / "both").training_metadata
    assert metadata["mode"] == "both" and metadata["label_budget"] == 0.4 and metadata["tasks"] == ["syn"]
    assert metadata["prompt"] == {"template": "{query}",  # stage 1's default for an encoder without prompts
                                  "chosen_by": "default: the encoder declares no prompts (not instruction-tuned)"}
    assert "InfoNCE" in metadata["recipe"]["summary"] and metadata["alignment"]
    assert metadata["seeds"] == {"split": 0, "train": 0, "alignment_sample": 0}
    split = make_split(load_tasks(setup / "data")[0], seed=0)
    assert metadata["split"]["syn"]["train"] == split.train(0.4) and metadata["split"]["syn"]["val"] == split.val(0.4)
    assert not (set(split.train(0.4)) | set(split.val(0.4))) & set(split.test_qids)
    # The test queries were never even embedded.
    task = load_tasks(setup / "data")[0]
    config = EraConfig.from_pretrained(tmp_path / "both")
    encoder = TextEncoder(config.query_encoder, query_template=config.prompt_template, cache_dir=setup / "cache")
    test = [q for q in task.queries if q.qid in set(split.test_qids)]
    cache = EmbeddingCache.for_encoder(encoder, setup / "cache")
    assert not cache.contains([encoder.format_query(q.query, q.instruction) for q in test]).any()
    assert not checkpoint_folder(tmp_path / "both").exists()  # removed once the output is saved


def test_early_stopping_restores_the_best_epoch(setup, tmp_path):
    adapter = run(setup, tmp_path / "unstable", lr=0.3, patience=2, epochs=40, temperature=0.02)
    result = recipe(adapter)
    scores = [entry["validation"] for entry in result["curve"]]
    assert len(scores) - 1 < 40, "expected an early stop"
    assert result["best_epoch"] < result["curve"][-1]["epoch"]
    assert scores[result["best_epoch"]] == max(scores) == result["best_validation"]
    assert scores[-1] < max(scores)
    assert validation_score(setup, tmp_path / "unstable") == pytest.approx(max(scores), abs=1e-6)


def test_adapt_mode_starts_neutral(setup, tmp_path):
    same = dict(mode="adapt", init=None, prompt_template="{query}", epochs=1, lr=0.0)
    square = run(setup, tmp_path / "square", query_encoder=str(setup / "q"), doc_encoder=str(setup / "q"), **same)
    torch.testing.assert_close(square.adapter.proj.weight, torch.eye(64))
    assert square.config.training_metadata["recipe"]["start"]["init"] == "identity"
    first = run(setup, tmp_path / "random1", query_encoder=str(setup / "q"), doc_encoder=str(setup / "d"), **same)
    second = run(setup, tmp_path / "random2", query_encoder=str(setup / "q"), doc_encoder=str(setup / "d"), **same)
    torch.testing.assert_close(first.adapter.proj.weight, second.adapter.proj.weight, atol=0, rtol=0)
    assert first.config.training_metadata["mode"] == "adapt"


def test_bad_arguments(setup, tmp_path):
    with pytest.raises(ValueError, match="--init"):
        run(setup, tmp_path / "x", init=None)
    with pytest.raises(ValueError, match="--query-encoder"):
        run(setup, tmp_path / "x", mode="adapt", init=None)
    with pytest.raises(TypeError, match="unknown option 'temprature'; did you mean 'temperature'"):
        run(setup, tmp_path / "x", temprature=0.1)
    with pytest.raises(ValueError, match="differs"):
        run(setup, tmp_path / "x", doc_encoder=str(setup / "q"))


# ---------------------------------------------------------------------------------------------
# Kill and resume, one vs two processes
# ---------------------------------------------------------------------------------------------

RESUMABLE = {"epochs": 6, "patience": 100, "remine_every": 2, "l2_to_init": 0.01, "align_weight": 0.5,
             "align_texts": 50, "align_batch_size": 16}

KILL_AFTER_EPOCH_3 = textwrap.dedent(
    """
    import json, os, signal, sys
    import era_adapters.loop as loop
    save = loop._save_checkpoint
    def save_then_die(path, model, optimizer, scheduler, state, *rest):
        save(path, model, optimizer, scheduler, state, *rest)
        if state["epoch"] == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # a kill right after a finished checkpoint
    loop._save_checkpoint = save_then_die
    from era_adapters.adapt import adapt
    args = json.loads(sys.argv[1])
    adapt(args.pop("data"), **args)
    """
)


def test_kill_and_resume_gives_the_uninterrupted_adapter(setup, tmp_path):
    options = {"label_budget": 0.4, "mode": "both", "init": str(setup / "align"), "cache_dir": str(setup / "cache"),
               **FAST, **RESUMABLE}
    straight = adapt(setup / "data", output=tmp_path / "straight", **options)
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_EPOCH_3,
         json.dumps({"data": str(setup / "data"), "output": str(tmp_path / "resumed"), **options})],
        cwd=REPO, capture_output=True, text=True,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    folder = checkpoint_folder(tmp_path / "resumed")
    assert (folder / "checkpoint.pt").is_file() and (folder / "negatives-epoch3.npy").is_file()
    assert not (tmp_path / "resumed").exists()
    resumed = adapt(setup / "data", output=tmp_path / "resumed", **options)
    assert recipe(resumed)["resumed_from_epoch"] == 3
    assert recipe(resumed)["curve"] == recipe(straight)["curve"]
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=0)
    # A leftover checkpoint of another run is refused; leftovers without a checkpoint are replaced.
    (folder / "checkpoint.pt").parent.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"")
    (folder / "run.json").write_text(json.dumps({"settings": {}}))
    with pytest.raises(ValueError, match="other settings"):
        adapt(setup / "data", output=tmp_path / "resumed", **options)
    (folder / "checkpoint.pt").unlink()
    again = adapt(setup / "data", output=tmp_path / "resumed", **options)
    assert recipe(again)["resumed_from_epoch"] is None


def test_two_processes_train_the_same_adapter_as_one(setup, tmp_path):
    options = {"remine_every": 2, "l2_to_init": 0.01, "align_weight": 0.5, "align_texts": 40,
               "align_batch_size": 9, "epochs": 4, "patience": 100, "lr": 3e-2, "batch_size": 7}
    one = run(setup, tmp_path / "one", **options)
    # `accelerate launch --cpu --num_processes 2` starts ONE process (multi-CPU needs mpirun there);
    # --multi_gpu goes through torchrun, which on a machine without GPUs gives 2 CPU processes (gloo).
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "training/adapt.py", "--data", str(setup / "data"),
         "--label-budget", "0.4", "--mode", "both", "--init", str(setup / "align"), "--cache-dir", str(setup / "cache"),
         "--output", str(tmp_path / "two"), *flags],
        cwd=REPO, check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert EraConfig.from_pretrained(tmp_path / "two").training_metadata["recipe"]["processes"] == 2
    two = load_file(tmp_path / "two" / "model.safetensors")
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two[name], value, atol=1e-5, rtol=1e-4)
    assert EraConfig.from_pretrained(tmp_path / "two").training_metadata["recipe"]["curve"][-1]["validation"] == (
        pytest.approx(recipe(one)["curve"][-1]["validation"], abs=1e-6))


# ---------------------------------------------------------------------------------------------
# LoRA on the query backbone
# ---------------------------------------------------------------------------------------------


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
