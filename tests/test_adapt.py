"""Stage 2 end to end on the synonym task: it learns, early stopping, neutral start, bad arguments, kill and
resume, one vs two processes."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_era import EraAdapter, EraConfig
from era_adapters.adapt import adapt
from era_adapters.align import align
from era_adapters.cache import EmbeddingCache
from era_adapters.cli import adapt_main, evaluate_main
from era_adapters.data import load_tasks
from era_adapters.encoders import TextEncoder
from era_adapters.loop import checkpoint_folder
from era_adapters.splits import make_split
from era_adapters.supervision import TaskView, task_ndcg
from synonym_task import FAST, recipe, run, write_synonym_beir
from tiny_models import make_tiny_bert

REPO = Path(__file__).resolve().parents[1]


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
    assert metadata["mode"] == "both" and metadata["label_budget"] == 0.8 and metadata["tasks"] == ["syn"]
    labels = metadata["labels"]["tasks"]["syn"]
    assert (labels["training_pool"], labels["train_queries"], labels["validation_queries"], labels["test_queries"]) == (
        60, 38, 10, 60)
    assert labels["train_pairs"] == 38 and metadata["validation"]["strategy"] == "holdout"
    assert metadata["prompt"] == {"template": "{query}",  # stage 1's default for an encoder without prompts
                                  "chosen_by": "default: the encoder declares no prompts (not instruction-tuned)"}
    assert "InfoNCE" in metadata["recipe"]["summary"] and metadata["alignment"]
    assert metadata["seeds"] == {"split": 0, "train": 0, "alignment_sample": 0}
    split = make_split(load_tasks(setup / "data")[0], seed=0)
    # 0.8 of the training pool is the paper protocol's 0.4 of all 120 labeled queries: the same queries
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
    options = {"label_budget": 0.8, "validation": "holdout", "mode": "both", "init": str(setup / "align"),
               "cache_dir": str(setup / "cache"), **FAST, **RESUMABLE}
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
         "--label-budget", "0.8", "--validation", "holdout", "--mode", "both", "--init", str(setup / "align"), "--cache-dir", str(setup / "cache"),
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
# A user's own BEIR folder: qrels/train.tsv + qrels/test.tsv, every train pair used when asked
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """The issue's set-up in small: 40 train queries, 60 test queries, tiny Q/D and a stage-1 adapter."""
    root = tmp_path_factory.mktemp("user")
    query, doc = make_tiny_bert(root / "q", hidden_size=64, seed=1), make_tiny_bert(root / "d", hidden_size=32, seed=2)
    write_synonym_beir(root / "mine", {"train": range(40), "test": range(40, 100)})
    align(root / "mine", query_encoder=str(query), doc_encoder=str(doc), output=root / "align", cache_dir=root / "cache")
    return root


def test_every_train_pair_of_a_beir_folder_is_used_and_counted(user_folder, tmp_path, caplog):
    root, out = user_folder, tmp_path / "mine-both"
    argv = ["--data", str(root / "mine"), "--all-train-labels", "--init", str(root / "align"), "--cache-dir",
            str(root / "cache"), "--output", str(out), "--epochs", "6", "--lr", "0.03", "--batch-size", "8"]
    with caplog.at_level(logging.INFO):
        assert adapt_main(argv) == 0
    metadata = EraConfig.from_pretrained(out).training_metadata
    train = {f"q{i}" for i in range(40)}
    assert set(metadata["split"]["mine"]["train"]) == train and metadata["split"]["mine"]["val"] == []
    labels = metadata["labels"]["tasks"]["mine"]
    assert (labels["training_pool"], labels["train_queries"], labels["train_pairs"], labels["validation_queries"],
            labels["test_queries"]) == (40, 40, 40, 0, 60)
    assert metadata["split"]["mine"]["source"].startswith("your qrels files (train: ")
    # 40 labels leave no 20 to hold out: 5-fold cross-validation chose the epochs, then all 40 trained
    validation = metadata["validation"]
    assert validation["strategy"] == "kfold" and validation["folds"] == 5 and validation["queries"] == 40
    assert len(metadata["recipe"]["final_training_curve"]) == validation["best_epoch"]
    card = (out / "README.md").read_text()
    assert ("| labels used | 40 training queries (40 query-document pairs) and 0 validation queries; the 60 test "
            "queries were never used") in card
    assert "5-fold cross-validation over the training queries" in card
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("adapt fold 1/5 epoch 1/6: train loss") and "(best " in m for m in messages)
    assert any(m.startswith("adapt: saved") and "40 training queries (40 pairs)" in m for m in messages)

    assert evaluate_main(["--data", str(root / "mine"), "--system", str(out), "--cache-dir", str(root / "cache"),
                          "--output", str(tmp_path / "eval"), "--record"]) == 0
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(report["tasks"]["mine"]["test_qids"]) == {f"q{i}" for i in range(40, 100)}
    card = (out / "README.md").read_text()
    adapter = report["results"]["mine-both"]["tasks"]["mine"]["ndcg@10"]
    doc2doc = report["results"]["doc2doc"]["tasks"]["mine"]["ndcg@10"]
    assert f"| mine | 60 | **this adapter** | {adapter:.4f} |" in card
    assert f"| mine | 60 | doc2doc (the index as it is: doc encoder on both sides) | {doc2doc:.4f} |" in card
    assert "| mine | 60 | query2query (re-index with the query encoder) |" in card
    assert "Test queries: your qrels files (train: " in card
    assert ("Below the index on `mine`" in card) == (adapter < doc2doc)


def test_a_run_that_keeps_its_start_says_so_and_fails_when_asked(user_folder, tmp_path, caplog):
    root, out = user_folder, tmp_path / "stuck"
    argv = ["--data", str(root / "mine"), "--train-labels", "10", "--init", str(root / "align"), "--cache-dir",
            str(root / "cache"), "--output", str(out), "--epochs", "3", "--lr", "0", "--fail-below-index"]
    with caplog.at_level(logging.INFO):
        assert adapt_main(argv) == 1  # nothing can beat the start at lr 0
    assert (out / "model.safetensors").is_file()  # saved all the same, for inspection
    warnings = EraConfig.from_pretrained(out).training_metadata["validation"]["warnings"]
    assert warnings and warnings[0].startswith("stage 2 kept epoch 0")
    assert any(r.levelno == logging.WARNING and "kept epoch 0" in r.getMessage() for r in caplog.records)
    card = (out / "README.md").read_text()
    assert "**Warning:** stage 2 kept epoch 0" in card
    with pytest.raises(SystemExit):
        adapt_main(argv[:-1] + ["--label-budget", "0.5"])  # two ways of counting labels at once


def test_help_says_what_the_label_options_count(capsys):
    with pytest.raises(SystemExit):
        adapt_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "share b of each task's training pool" in text and "--train-labels" in text
    assert "--all-train-labels" in text and "--fail-below-index" in text and "--test-fraction" in text
