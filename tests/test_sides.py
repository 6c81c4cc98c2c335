"""Stored vectors as a stage's doc (or query) side: align → adapt → evaluate without running the doc
encoder, and every case where what is stored cannot stand in for the model (said, never faked)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.torch import load_file

from modeling_era import EraConfig
from modeling_era.modeling_era import IncompatibleDocEncoderError
from era_adapters import encoders as encoders_module
from era_adapters import models
from era_adapters.adapt import adapt
from era_adapters.align import align
from era_adapters.cli import align_main, embed_main
from era_adapters.data import load_tasks
from era_adapters.distill import distill
from era_adapters.evaluate import evaluate
from era_adapters.models import MINILM_ID, ModelNotAvailableError, resolve_model
from era_adapters.vectors import VectorSourceError
from tiny_models import make_tiny_bert, write_task
from vector_files import unit_vectors, write_faiss, write_lancedb, write_parquet

FAST = {"epochs": 30, "patience": 5, "lr": 3e-2, "batch_size": 8}
FORMATS = ("lancedb", "parquet", "faiss")


def forbid(monkeypatch, model_id: str) -> None:
    """Loading `model_id` becomes impossible: the resolver raises, as it would with no copy anywhere."""
    real = resolve_model

    def refuse(name, *args, **kwargs):
        if str(name) == model_id:
            raise ModelNotAvailableError(f"{model_id} must not be loaded in this test")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(encoders_module, "resolve_model", refuse)
    monkeypatch.setattr(models, "resolve_model", refuse)


def write_sources(root: Path, name: str, ids, vectors, texts=None, table: str = "docs") -> dict[str, str]:
    return {"lancedb": write_lancedb(root / f"{name}-lancedb", ids, vectors, texts, table=table),
            "parquet": write_parquet(root / f"{name}.parquet", ids, vectors, texts),
            "faiss": write_faiss(root / f"{name}.faiss", ids, vectors)}


@pytest.fixture(scope="module")
def minilm_index(tmp_path_factory, shared_data):
    """restbench_spotify (40 documents, 57 queries), its MiniLM vectors made with sentence-transformers
    in three stores, and the reference run that runs MiniLM itself (--doc-encoder)."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    try:
        minilm = resolve_model(MINILM_ID)
    except ModelNotAvailableError as error:
        pytest.skip(f"{MINILM_ID} is not installed here ({error})")
    root = tmp_path_factory.mktemp("stored")
    (root / "data").mkdir()
    os.symlink(shared_data / "restbench_spotify", root / "data" / "restbench_spotify")
    task = load_tasks(root / "data")[0]
    encoder = sentence_transformers.SentenceTransformer(str(minilm.path), device="cpu")
    docs = encoder.encode(list(task.doc_texts), normalize_embeddings=True)
    queries = encoder.encode([q.query for q in task.queries], normalize_embeddings=True)
    setup = SimpleNamespace(root=root, data=root / "data", cache=root / "cache", task=task,
                            query_encoder=str(make_tiny_bert(root / "q", hidden_size=64, seed=1)),
                            docs=write_sources(root, "docs", task.doc_ids, docs, list(task.doc_texts)),
                            queries=write_sources(root, "queries", [q.qid for q in task.queries], queries,
                                                  table="queries"))
    common = {"query_encoder": setup.query_encoder, "cache_dir": setup.cache}
    align(setup.data, doc_encoder=MINILM_ID, output=root / "reference" / "align", num_texts=40, **common)
    adapt(setup.data, mode="both", init=root / "reference" / "align", output=root / "reference" / "both",
          label_budget=0.4, cache_dir=setup.cache, **FAST)
    setup.reference = evaluate(setup.data, ["doc2doc", root / "reference" / "both"], doc_encoder=MINILM_ID,
                               **common)
    return setup


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("store", FORMATS)
def test_stored_vectors_train_the_adapter_the_model_trains(minilm_index, store, monkeypatch, tmp_path):
    setup = minilm_index
    forbid(monkeypatch, MINILM_ID)
    with pytest.raises(ModelNotAvailableError):  # the doc encoder really cannot be loaded now
        encoders_module.TextEncoder(MINILM_ID)
    stored = {"doc_vectors": setup.docs[store], "cache_dir": setup.cache}
    align(setup.data, query_encoder=setup.query_encoder, doc_encoder_name=MINILM_ID, output=tmp_path / "align",
          num_texts=40, **stored)
    adapt(setup.data, mode="both", init=tmp_path / "align", output=tmp_path / "both", label_budget=0.4, **stored,
          **FAST)
    report = evaluate(setup.data, ["doc2doc", tmp_path / "both"], query_encoder=setup.query_encoder,
                      doc_query_vectors=setup.queries[store], output=tmp_path / "eval", **stored)

    for stage in ("align", "both"):
        reference, mine = weights(setup.root / "reference" / stage), weights(tmp_path / stage)
        assert reference.keys() == mine.keys()
        for key in reference:
            np.testing.assert_allclose(mine[key].numpy(), reference[key].numpy(), atol=1e-5, rtol=0)
    for system in ("doc2doc", "both"):
        np.testing.assert_allclose(report["results"][system]["macro"]["ndcg@10"],
                                   setup.reference["results"][system]["macro"]["ndcg@10"], atol=1e-5)
    config = EraConfig.from_pretrained(tmp_path / "both")
    assert (config.doc_encoder, config.doc_encoder_kind, config.doc_vectors_normalized) == (MINILM_ID, "external", True)
    assert config.doc_vectors_fingerprint.startswith("sha256:") and len(config.doc_vectors_fingerprint_ids) == 32
    assert config.training_metadata["sides"]["doc"]["documents"]["source"] == setup.docs[store]


def test_evaluate_through_the_database_reports_its_recall(minilm_index, monkeypatch, tmp_path):
    setup = minilm_index
    forbid(monkeypatch, MINILM_ID)
    report = evaluate(setup.data, ["doc2doc", setup.root / "reference" / "both"], query_encoder=setup.query_encoder,
                      index=setup.docs["lancedb"], doc_query_vectors=setup.queries["lancedb"], cache_dir=setup.cache,
                      output=tmp_path / "eval")
    for system in ("doc2doc", "both"):
        entry = report["results"][system]["tasks"]["restbench_spotify"]
        assert entry["ann_recall"] == 1.0  # a table without a vector index: LanceDB's flat search is exact
        np.testing.assert_allclose(entry["ndcg@10"],
                                   setup.reference["results"][system]["tasks"]["restbench_spotify"]["ndcg@10"], atol=1e-5)
    assert "recall@k against exact search" in (tmp_path / "eval" / "results.md").read_text()


def test_doc2doc_without_the_index_query_vectors_is_skipped_with_its_reason(minilm_index, monkeypatch, tmp_path):
    setup = minilm_index
    forbid(monkeypatch, MINILM_ID)
    adapter = setup.root / "reference" / "both"
    report = evaluate(setup.data, ["doc2doc", adapter], query_encoder=setup.query_encoder,
                      doc_vectors=setup.docs["parquet"], doc_encoder_name=MINILM_ID, cache_dir=setup.cache,
                      output=tmp_path / "eval", record=False)
    assert list(report["results"]) == ["both"]
    reason = report["settings"]["skipped"]["doc2doc"]
    assert "--doc-query-vectors" in reason
    assert f"doc2doc was not scored: {reason}" in (tmp_path / "eval" / "results.md").read_text()


def test_embed_checks_stored_vectors_against_the_tasks(minilm_index, capsys):
    setup = minilm_index
    assert embed_main(["--data", str(setup.data), "--doc-vectors", setup.docs["lancedb"],
                       "--doc-query-vectors", setup.queries["parquet"]]) == 0
    out = capsys.readouterr().out
    assert "0 of 40 docs without a vector, 0 vectors not used" in out
    assert "0 of 57 queries without a vector" in out
    rows = json.loads(out.split("EMBED_SUMMARY ", 1)[1])
    assert {row["fingerprint"] for row in rows if row["flag"] == "--doc-vectors"} == {
        rows[0]["fingerprint"]}


# ---------------------------------------------------------------------------------------------
# What stored vectors cannot do, and sources that do not fit the corpus (tiny models, fast)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-stored")
    write_task(root / "data" / "tiny", num_docs=40, num_queries=20)
    task = load_tasks(root / "data")[0]
    vectors = unit_vectors(40, 16, seed=3)
    setup = SimpleNamespace(root=root, data=root / "data", cache=root / "cache", task=task, vectors=vectors,
                            query_encoder=str(make_tiny_bert(root / "q", hidden_size=32, seed=1)),
                            docs=write_parquet(root / "docs.parquet", task.doc_ids, vectors))
    setup.options = {"query_encoder": setup.query_encoder, "cache_dir": setup.cache, "doc_encoder_name": "api-embed-1"}
    align(setup.data, doc_vectors=setup.docs, output=root / "align", num_texts=40, **setup.options)
    return setup


def test_with_queries_needs_the_index_query_vectors(tiny, tmp_path):
    with pytest.raises(VectorSourceError, match="--with-queries.*pass --doc-query-vectors"):
        align(tiny.data, doc_vectors=tiny.docs, output=tmp_path / "a", with_queries=True, **tiny.options)
    queries = write_parquet(tmp_path / "q.parquet", [q.qid for q in tiny.task.queries], unit_vectors(20, 16, seed=4))
    model = align(tiny.data, doc_vectors=tiny.docs, doc_query_vectors=queries, output=tmp_path / "b",
                  with_queries=True, **tiny.options)
    assert model.config.training_metadata["alignment"]["texts"]["tiny"]["queries"] > 0


def test_fusion_is_refused_without_the_index_query_vectors(tiny, tmp_path):
    with pytest.raises(VectorSourceError, match="fusion.*--doc-query-vectors"):
        align(tiny.data, doc_vectors=tiny.docs, output=tmp_path / "f", adapter="fusion", **tiny.options)


def test_stage_2_needs_the_same_index(tiny, tmp_path):
    with pytest.raises(ValueError, match="trained on the stored vectors of api-embed-1.*--doc-vectors"):
        adapt(tiny.data, mode="both", init=tiny.root / "align", output=tmp_path / "x", label_budget=0.4,
              cache_dir=tiny.cache)
    other = write_parquet(tmp_path / "other.parquet", tiny.task.doc_ids, unit_vectors(40, 16, seed=9))
    with pytest.raises(IncompatibleDocEncoderError, match=r"other vectors \(fingerprint sha256:.*api-embed-1"):
        adapt(tiny.data, mode="both", init=tiny.root / "align", output=tmp_path / "y", label_budget=0.4,
              cache_dir=tiny.cache, doc_vectors=other)
    with pytest.raises(IncompatibleDocEncoderError, match="built with text-embedding-3-small"):
        adapt(tiny.data, mode="both", init=tiny.root / "align", output=tmp_path / "z", label_budget=0.4,
              cache_dir=tiny.cache, doc_vectors=tiny.docs, doc_encoder_name="text-embedding-3-small")


def test_documents_without_a_vector_are_refused_or_left_out_counted(tiny, tmp_path):
    partial = write_parquet(tmp_path / "partial.parquet", tiny.task.doc_ids[5:], tiny.vectors[5:])
    with pytest.raises(VectorSourceError, match="5 of 40 documents of task tiny have no vector"):
        align(tiny.data, doc_vectors=partial, output=tmp_path / "a", **tiny.options)
    with pytest.warns(UserWarning, match="5 of 40 documents have no vector .* left out"):
        model = align(tiny.data, doc_vectors=partial, output=tmp_path / "b", missing_vectors="skip", **tiny.options)
    corpus = model.config.training_metadata["sides"]["doc"]["corpora"]["tiny"]
    assert (corpus["missing"], corpus["ids"]) == (5, 40)
    assert model.config.training_metadata["alignment"]["texts"]["tiny"]["documents"] == 35


def test_vectors_without_a_document_are_counted(tiny, tmp_path, caplog):
    ids = list(tiny.task.doc_ids) + ["extra-1", "extra-2"]
    more = write_parquet(tmp_path / "more.parquet", ids, unit_vectors(42, 16, seed=3))
    model = align(tiny.data, doc_vectors=more, output=tmp_path / "a", **tiny.options)
    assert model.config.training_metadata["sides"]["doc"]["corpora"]["tiny"]["unused"] == 2
    assert "2 of 42 vectors have no document" in caplog.text


def test_a_wrong_dimension_is_refused(tiny, tmp_path):
    queries = write_parquet(tmp_path / "q.parquet", [q.qid for q in tiny.task.queries], unit_vectors(20, 8))
    with pytest.raises(VectorSourceError, match="16-d but --doc-query-vectors are 8-d"):
        align(tiny.data, doc_vectors=tiny.docs, doc_query_vectors=queries, output=tmp_path / "a", **tiny.options)
    wide = write_parquet(tmp_path / "wide.parquet", tiny.task.doc_ids, unit_vectors(40, 24))
    with pytest.raises(IncompatibleDocEncoderError, match="24-d vectors"):
        adapt(tiny.data, mode="both", init=tiny.root / "align", output=tmp_path / "b", label_budget=0.4,
              cache_dir=tiny.cache, doc_vectors=wide)


def test_a_declared_normalisation_is_checked(tiny, tmp_path):
    scaled = write_parquet(tmp_path / "scaled.parquet", tiny.task.doc_ids, tiny.vectors * 3.0)
    with pytest.raises(VectorSourceError, match="declared L2-normalised, but 40 of 40 vectors are not"):
        align(tiny.data, doc_vectors=scaled, vectors_normalized=True, output=tmp_path / "a", **tiny.options)
    model = align(tiny.data, doc_vectors=scaled, output=tmp_path / "b", **tiny.options)
    assert (model.config.similarity, model.config.doc_vectors_normalized) == ("dot", False)


def test_command_line_names_the_missing_pieces(tiny, tmp_path, capsys):
    base = ["--data", str(tiny.data), "--query-encoder", tiny.query_encoder, "--output", str(tmp_path / "a")]
    for extra, message in ((["--doc-vectors", tiny.docs], "name the encoder that made them with --doc-encoder-name"),
                           (["--doc-vectors", tiny.docs, "--doc-encoder", tiny.query_encoder, "--doc-encoder-name", "x"],
                            "--doc-encoder .* or --doc-vectors .*, not both")):
        with pytest.raises(SystemExit) as stopped:  # refused while parsing, like any bad setting
            align_main(base + extra)
        assert stopped.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    assert align_main(base + ["--doc-vectors", str(tmp_path / "nothing.parquet"), "--doc-encoder-name", "x"]) == 2
    assert "nothing.parquet" in capsys.readouterr().err


def test_an_api_query_encoder_trains_from_its_stored_vectors(tiny, tmp_path):
    """Q's vectors stored by id (as an API returns them) train the adapter that running Q trains."""
    q_encoder = encoders_module.TextEncoder(tiny.query_encoder)
    qids = [q.qid for q in tiny.task.queries]
    q_docs = write_parquet(tmp_path / "q-docs.parquet", tiny.task.doc_ids, q_encoder.encode(list(tiny.task.doc_texts)))
    q_queries = write_parquet(tmp_path / "q-queries.parquet", qids, q_encoder.encode([q.query for q in tiny.task.queries]))
    stored_q = {"query_doc_vectors": q_docs, "query_vectors": q_queries, "query_encoder_name": "api-query-1"}
    common = {"doc_vectors": tiny.docs, "cache_dir": tiny.cache, "label_budget": 0.4, **FAST}
    adapt(tiny.data, mode="both", init=tiny.root / "align", output=tmp_path / "run", **common)
    align(tiny.data, doc_vectors=tiny.docs, doc_encoder_name="api-embed-1", output=tmp_path / "align",
          num_texts=40, cache_dir=tiny.cache, **stored_q)
    adapt(tiny.data, mode="both", init=tmp_path / "align", output=tmp_path / "stored", **common, **stored_q)
    for stage, reference in (("align", tiny.root / "align"), ("stored", tmp_path / "run")):
        mine, theirs = weights(tmp_path / stage), weights(reference)
        for key in theirs:
            np.testing.assert_allclose(mine[key].numpy(), theirs[key].numpy(), atol=1e-5, rtol=0)
    config = json.loads((tmp_path / "stored" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_era.EraAdapter"  # takes the API's vectors
    assert (config["query_encoder"], config["query_encoder_kind"]) == ("api-query-1", "external")
    report = evaluate(tiny.data, ["query2query", tmp_path / "stored"], query_vectors=q_queries,
                      query_doc_vectors=q_docs, doc_vectors=tiny.docs, cache_dir=tiny.cache)
    reference = evaluate(tiny.data, ["query2query", tmp_path / "run"], query_encoder=tiny.query_encoder,
                         doc_vectors=tiny.docs, cache_dir=tiny.cache)
    for mine, theirs in (("query2query", "query2query"), ("stored", "run")):
        np.testing.assert_allclose(report["results"][mine]["macro"]["ndcg@10"],
                                   reference["results"][theirs]["macro"]["ndcg@10"], atol=1e-5)
    with pytest.raises(ValueError, match="pass --query-vectors"):
        evaluate(tiny.data, [tmp_path / "stored"], doc_vectors=tiny.docs, cache_dir=tiny.cache)


def test_fusion_reads_the_index_query_vectors(tiny, tmp_path):
    from modeling_era import EraQueryEncoder

    queries = write_parquet(tmp_path / "d-queries.parquet", [q.qid for q in tiny.task.queries], unit_vectors(20, 16, 4))
    stored = {"doc_vectors": tiny.docs, "doc_query_vectors": queries, "cache_dir": tiny.cache}
    align(tiny.data, query_encoder=tiny.query_encoder, doc_encoder_name="api-embed-1", adapter="fusion",
          output=tmp_path / "align", num_texts=40, **stored)
    adapt(tiny.data, mode="both", init=tmp_path / "align", output=tmp_path / "fusion", label_budget=0.4, **stored,
          **FAST)
    report = evaluate(tiny.data, ["doc2doc", tmp_path / "fusion"], query_encoder=tiny.query_encoder, **stored)
    assert set(report["results"]) == {"doc2doc", "fusion"}
    with pytest.raises(VectorSourceError, match="fusion adapter .*--doc-query-vectors"):
        evaluate(tiny.data, [tmp_path / "fusion"], query_encoder=tiny.query_encoder, doc_vectors=tiny.docs,
                 cache_dir=tiny.cache)
    served = EraQueryEncoder.from_pretrained(tmp_path / "fusion")  # the light encoder is external: not loaded
    texts = [q.query for q in tiny.task.queries[:3]]
    with pytest.raises(RuntimeError, match="pass light_query_embeddings"):
        served.encode_queries(texts)
    from era_adapters.evaluate import Encoders, build_system
    from era_adapters.evaluate import EvaluateArguments
    from era_adapters.sides import doc_side_from

    args = EvaluateArguments(data=str(tiny.data), systems=[str(tmp_path / "fusion")], output=None, **stored)
    system = build_system(str(tmp_path / "fusion"), Encoders(tiny.cache, 8), args, doc_side_from(args))
    light = system.query_side.parts[1].queries(tiny.task, tiny.task.queries[:3])
    np.testing.assert_allclose(served.encode_queries(texts, light_query_embeddings=light).numpy(),
                               system.embed_queries(tiny.task, tiny.task.queries[:3], cache_dir=tiny.cache), atol=1e-5)


def test_the_card_says_what_the_adapter_needs_and_what_was_not_scored(tiny, tmp_path):
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(tiny.root / "align", folder)
    evaluate(tiny.data, ["doc2doc", folder], query_encoder=tiny.query_encoder, doc_vectors=tiny.docs,
             cache_dir=tiny.cache, record=True)
    card = (folder / "README.md").read_text()
    config = EraConfig.from_pretrained(folder)
    assert f"fingerprint `{config.doc_vectors_fingerprint}`" in card
    assert 'check_doc_encoder(VectorSource("lancedb://' in card
    assert "doc2doc was not scored:" in card and "--doc-query-vectors" in card


def test_export_refuses_an_adapter_whose_doc_encoder_cannot_run(tiny, tmp_path):
    from era_adapters.export import export_sentence_transformer

    with pytest.raises(ValueError, match="stored vectors of an external doc encoder \\(api-embed-1\\)"):
        export_sentence_transformer(tiny.root / "align", tmp_path / "st")


def test_distillation_from_stored_vectors_equals_running_the_doc_encoder(minilm_index, monkeypatch, tmp_path):
    setup = minilm_index
    options = {"epochs": 3, "teacher_docs": 30, "candidates": 10, "random_candidates": 10, "cache_dir": setup.cache}
    distill(setup.data, init=str(setup.root / "reference" / "align"), output=str(tmp_path / "reference"), **options)
    forbid(monkeypatch, MINILM_ID)
    stored = {"doc_vectors": setup.docs["lancedb"], "cache_dir": setup.cache}
    align(setup.data, query_encoder=setup.query_encoder, doc_encoder_name=MINILM_ID, output=tmp_path / "align",
          num_texts=40, **stored)
    with pytest.raises(VectorSourceError, match="--doc-query-vectors"):  # candidates come from the index: D(q)
        distill(setup.data, init=str(tmp_path / "align"), output=str(tmp_path / "x"), **{**options, **stored})
    distill(setup.data, init=str(tmp_path / "align"), output=str(tmp_path / "stored"),
            doc_query_vectors=setup.queries["lancedb"], **{**options, **stored})
    reference, mine = weights(tmp_path / "reference"), weights(tmp_path / "stored")
    for key in reference:
        np.testing.assert_allclose(mine[key].numpy(), reference[key].numpy(), atol=1e-5, rtol=0)
    assert EraConfig.from_pretrained(tmp_path / "stored").doc_encoder_kind == "external"
