"""Distillation end to end on the synonym task (tiny Q/D): the held-out KL to the teacher falls, test
queries never enter, the teacher's cost stays in budget, metadata and card say what was done; kill and
resume, one vs two processes, the command line, and stage 2 with the distillation loss."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from modeling_era import EraConfig
from era_adapters.cli import distill_main
from era_adapters.data import load_tasks
from era_adapters.distill import distill
from era_adapters.loop import checkpoint_folder
from era_adapters.splits import make_split
from era_adapters.teacher import TeacherSettings, task_unlabeled_queries
from synonym_task import FAST, recipe, run

REPO = Path(__file__).resolve().parents[1]
QUICK = {"epochs": 6, "patience": 100, "teacher_docs": 60, "candidates": 10, "random_candidates": 10,
         "batch_size": 16, "lr": 3e-2}


def distilled(setup: Path, output: Path, **options):
    return distill(setup / "data", init=str(setup / "align"), output=str(output), cache_dir=str(setup / "cache"),
                   **{**QUICK, **options})


def test_distillation_learns_the_teachers_ranking_without_labels_or_test_queries(setup, tmp_path):
    model = distilled(setup, tmp_path / "distilled")
    metadata = model.config.training_metadata
    curve = metadata["recipe"]["curve"]
    assert metadata["mode"] == "distill" and metadata["label_budget"] is None
    assert -metadata["recipe"]["best_validation"] < -curve[0]["validation"]  # held-out KL to the teacher fell
    task = load_tasks(setup / "data")[0]
    test = set(make_split(task).test_qids)
    queries = task_unlabeled_queries([task], split_seed=0, test_fraction=0.5, settings=TeacherSettings())[0]
    assert queries and not {q.qid for q in queries} & test and all(q.labels == {} for q in queries)
    record = metadata["distillation"]
    assert record["queries"]["unlabeled"] == len(queries) == len(task.queries) - len(test)
    cost = record["teacher_cost"]["syn"]
    assert cost["documents_embedded_by_q"] == 60 <= cost["full_corpus"]
    reloaded = AutoModel.from_pretrained(tmp_path / "distilled", trust_remote_code=True)
    torch.testing.assert_close(reloaded.adapter.state_dict()["proj.weight"], model.adapter.proj.weight)
    card = (tmp_path / "distilled" / "README.md").read_text()
    assert "none: distilled from the query encoder's ranking" in card and "documents_embedded_by_q" in card


def test_query2query_teacher_a_query_log_and_a_budget_over_the_corpus(setup, tmp_path, caplog):
    log = tmp_path / "log.txt"
    log.write_text("\n".join(f"{word} {other}" for word, other in zip("abcdefghij", "klmnopqrst")) + "\n")
    model = distilled(setup, tmp_path / "logged", teacher="query2query", query_log=str(log), teacher_docs=10**6)
    record = model.config.training_metadata["distillation"]
    assert record["teacher"]["teacher"] == "query2query" and record["queries"]["unlabeled"] == 10
    assert record["queries"]["source"] == f"query log {log}"
    cost = record["teacher_cost"]["syn"]  # a budget over the corpus: Q embeds it all, and says so
    assert cost["documents_embedded_by_q"] == cost["capped_corpus"] and "re-indexes" in cost["note"]
    assert "covers all" in caplog.text and "Lower --teacher-docs" in caplog.text


KILL_AFTER_EPOCH_3 = textwrap.dedent(
    """
    import json, os, signal, sys
    import era_adapters.loop as loop
    save = loop._save_checkpoint
    def save_then_die(path, model, optimizer, scheduler, state, *rest):
        save(path, model, optimizer, scheduler, state, *rest)
        if state["epoch"] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    loop._save_checkpoint = save_then_die
    from era_adapters.distill import distill
    args = json.loads(sys.argv[1])
    distill(args.pop("data"), **args)
    """
)


def test_kill_and_resume_gives_the_uninterrupted_adapter(setup, tmp_path):
    options = {"init": str(setup / "align"), "cache_dir": str(setup / "cache"), **QUICK}
    straight = distill(setup / "data", output=str(tmp_path / "straight"), **options)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH_3,
                             json.dumps({"data": str(setup / "data"), "output": str(tmp_path / "resumed"), **options})],
                            cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (checkpoint_folder(tmp_path / "resumed") / "checkpoint.pt").is_file()
    resumed = distill(setup / "data", output=str(tmp_path / "resumed"), **options)
    assert recipe(resumed)["resumed_from_epoch"] == 3 and recipe(resumed)["curve"] == recipe(straight)["curve"]
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=0)


def test_two_processes_distil_the_same_adapter_as_one(setup, tmp_path):
    options = {**QUICK, "epochs": 3, "batch_size": 7}
    one = distilled(setup, tmp_path / "one", **options)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "training/distill.py", "--data", str(setup / "data"),
         "--init", str(setup / "align"), "--cache-dir", str(setup / "cache"), "--output", str(tmp_path / "two"), *flags],
        cwd=REPO, check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert EraConfig.from_pretrained(tmp_path / "two").training_metadata["recipe"]["processes"] == 2
    two = load_file(tmp_path / "two" / "model.safetensors")
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two[name], value, atol=1e-5, rtol=1e-4)


def test_command_line_and_its_errors(setup, tmp_path, capsys):
    common = ["--data", str(setup / "data"), "--init", str(setup / "align"), "--cache-dir", str(setup / "cache"),
              "--epochs", "1", "--teacher-docs", "30"]
    assert distill_main([*common, "--output", str(tmp_path / "cli")]) == 0
    assert EraConfig.from_pretrained(tmp_path / "cli").training_metadata["mode"] == "distill"
    (tmp_path / "empty.txt").write_text("")
    assert distill_main([*common, "--output", str(tmp_path / "x"), "--query-log", str(tmp_path / "empty.txt")]) == 2
    assert "empty.txt is empty" in capsys.readouterr().err
    task = load_tasks(setup / "data")[0]
    test_query = next(q for q in task.queries if q.qid in set(make_split(task).test_qids))
    (tmp_path / "leak.txt").write_text(f"{test_query.query}\nsomething else\n")
    assert distill_main([*common, "--output", str(tmp_path / "x"), "--query-log", str(tmp_path / "leak.txt")]) == 2
    assert "are test queries of task 'syn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        distill_main([*common, "--output", str(tmp_path / "x"), "--teacher-docs", "0"])
    assert "--teacher-docs (teacher_docs) must be a number >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_stage_two_adds_the_distillation_loss_on_unlabeled_queries(setup, tmp_path):
    plain = run(setup, tmp_path / "plain", epochs=3, patience=100, validation="holdout")
    both = run(setup, tmp_path / "kd", epochs=3, patience=100, validation="holdout", distill_weight=1.0,
               teacher_docs=60, candidates=10, random_candidates=10)
    record = both.config.training_metadata["distillation"]
    validation = set(both.config.training_metadata["split"]["syn"]["val"])
    task = load_tasks(setup / "data")[0]
    queries = task_unlabeled_queries([task], split_seed=0, test_fraction=0.5, settings=TeacherSettings(),
                                     leave_out=[sorted(validation)])[0]
    assert record["weight"] == 1.0 and record["unlabeled_queries"] == len(queries)
    assert not {q.qid for q in queries} & validation
    assert "distillation loss" in recipe(both)["summary"]
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), both.state_dict().values()))
    with pytest.raises(ValueError, match="drop one of --lora and --distill-weight"):
        run(setup, tmp_path / "lora", lora=True, distill_weight=1.0, **FAST)


def test_tasks_with_a_corpus_smaller_than_the_candidates_distil_together(setup, tmp_path):
    """Several tasks distil into one adapter even when a corpus has fewer documents than `candidates`
    (its candidate rows are padded, not a shape error)."""
    task = load_tasks(setup / "data")[0]
    small = dataclasses.replace(task, name="small", doc_ids=task.doc_ids[:4], docs=task.docs.select(range(4)))
    model = distill([task, small], init=str(setup / "align"), output=str(tmp_path / "both"),
                    cache_dir=str(setup / "cache"), **QUICK)
    cost = model.config.training_metadata["distillation"]["teacher_cost"]
    assert QUICK["candidates"] > 4 and cost["small"]["documents_embedded_by_q"] == 4
    assert cost["syn"]["documents_embedded_by_q"] == QUICK["teacher_docs"]
