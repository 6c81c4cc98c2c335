"""era_adapters.data_check (`era-validate DIR`): counts, roles, the split the stages will use, problems."""
from __future__ import annotations

from era_adapters.cli import validate_main
from task_files import mair_docs, mair_query, write_beir, write_mair


def test_a_good_beir_folder_is_counted_with_its_roles(tmp_path, capsys):
    write_beir(tmp_path / "mine", qrels={"train": ["a\tc1\t1", "c\tc3\t1"], "test": ["b\tc2\t2", "b\tc3\t0"]})
    assert validate_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mine (BEIR layout" in out and ": ok" in out
    assert "3 documents, 3 queries, 3 labeled queries, 3 positive pairs" in out
    assert "roles of the labeled queries: train 2, test 1" in out
    assert "split: test 1, training pool 2, dev pool 0 (from your qrels files (train: " in out
    assert "stage 2 cross-validates" in out  # 2 training queries leave none to hold out
    assert "1 of 1 task(s) usable." in out


def test_train_qrels_alone_get_a_seeded_test_part_and_problems_are_listed(tmp_path, capsys):
    write_beir(tmp_path / "only-train", qrels={"train": ["a\tc1\t1", "b\tc2\t1", "c\tc3\t1"]})
    write_mair(tmp_path / "broken", queries=[mair_query("q1", {"d99": 1})], docs=mair_docs(3))
    assert validate_main([str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "only-train (BEIR layout" in out and "split: test 2, training pool 1" in out
    assert "no test queries given: a seeded 0.5 of them test" in out
    assert "problem: the training pool holds 1 queries; stage 2 needs at least 2." in out
    assert "broken (MAIR layout" in out and "labels doc 'd99', which is not in the corpus" in out
    assert "0 of 2 task(s) usable." in out
    assert validate_main([str(tmp_path), "--tasks", "only-train", "--test-fraction", "0"]) == 0
    assert "split: test 0, training pool 3" in capsys.readouterr().out
