"""Stored-vector sources: every format reads the same rows, lookups by id, streaming, validation of
misaligned sources (each problem counted), the order-independent fingerprint, check_doc_encoder with an
index, and search through a database."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modeling_era import EraAdapter, EraConfig
from modeling_era.modeling_era import IncompatibleDocEncoderError
from era_adapters.search import exact_search, exact_search_chunks
from era_adapters.vectors import VectorSource, VectorSourceError, search_index
from vector_files import unit_vectors, write_faiss, write_lancedb, write_npy, write_parquet, write_safetensors

IDS = [f"doc-{i}" for i in range(300)]
VECTORS = unit_vectors(300, 12)


def all_formats(folder) -> dict[str, str]:
    import datasets

    folder.mkdir(exist_ok=True)
    table = datasets.Dataset.from_dict({"id": IDS, "emb": VECTORS.tolist()})
    table.save_to_disk(str(folder / "saved"))
    pq.write_table(pa.table({"id": IDS, "vector": pa.FixedSizeListArray.from_arrays(pa.array(VECTORS.ravel()), 12)}),
                   folder / "groups.parquet", row_group_size=70)
    return {
        "lancedb": write_lancedb(folder / "db", IDS, VECTORS),
        "datasets parquet": write_parquet(folder / "hub.parquet", IDS, VECTORS),
        "parquet, 5 row groups": str(folder / "groups.parquet"),
        "datasets folder": str(folder / "saved"),
        "npy": write_npy(folder / "m.npy", IDS, VECTORS),
        "safetensors": write_safetensors(folder / "m.safetensors", IDS, VECTORS),
        "faiss": write_faiss(folder / "index.faiss", IDS, VECTORS),
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return all_formats(tmp_path_factory.mktemp("formats"))


@pytest.mark.parametrize("kind", ["lancedb", "datasets parquet", "parquet, 5 row groups", "datasets folder", "npy",
                                  "safetensors", "faiss"])
def test_every_format_reads_the_same_rows(sources, kind):
    source = VectorSource(sources[kind])
    assert (source.num_rows, source.dim) == (300, 12)
    assert source.ids.to_pylist() == IDS
    wanted = ["doc-299", "doc-3", "doc-140", "doc-3"]  # across row groups, out of order, repeated
    np.testing.assert_array_equal(source.lookup(wanted), VECTORS[[299, 3, 140, 3]])
    streamed = list(source.batches(64))
    assert max(len(chunk) for chunk in streamed) <= 64
    np.testing.assert_array_equal(np.concatenate(streamed), VECTORS)
    assert source.check().normalized


def test_the_fingerprint_names_the_vectors_not_the_storage_or_the_order(sources, tmp_path):
    fingerprints = {VectorSource(spec).fingerprint() for spec in sources.values()}
    assert len(fingerprints) == 1
    order = np.random.default_rng(0).permutation(300)
    shuffled = VectorSource(write_npy(tmp_path / "s.npy", [IDS[i] for i in order], VECTORS[order]))
    assert shuffled.fingerprint() == fingerprints.pop()
    changed = VECTORS.copy()
    changed[:, 0] += 1e-3  # every vector moves a little: another index
    assert VectorSource(write_npy(tmp_path / "c.npy", IDS, changed)).fingerprint() != shuffled.fingerprint()


def test_lookup_counts_ids_without_a_vector(sources):
    source = VectorSource(sources["npy"], what="--doc-vectors")
    with pytest.raises(VectorSourceError, match=r"--doc-vectors .*2 of 3 ids \(x\) have no vector, e.g. \['a', 'b'\]"):
        source.lookup(["a", "doc-1", "b"], purpose="x")
    join = source.join(IDS[:10] + ["a", "b"], where="task t")
    assert (join["missing"], join["unused"], join["missing_examples"]) == (2, 290, ["a", "b"])


def test_duplicate_ids_are_refused(tmp_path):
    source = VectorSource(write_npy(tmp_path / "d.npy", IDS[:5] + ["doc-1", "doc-1", "doc-2"], unit_vectors(8, 12)))
    with pytest.raises(VectorSourceError, match=r"3 rows repeat an id already seen \(e.g. \['doc-1', 'doc-2'\]\)"):
        source.check()


def test_non_finite_rows_are_refused(tmp_path):
    vectors = VECTORS[:10].copy()
    vectors[[2, 7], 3] = [np.nan, np.inf]
    with pytest.raises(VectorSourceError, match=r"2 of 10 vectors hold NaN or inf \(e.g. ids \['doc-2', 'doc-7'\]\)"):
        VectorSource(write_parquet(tmp_path / "n.parquet", IDS[:10], vectors)).check()


def test_rows_of_another_length_are_refused(tmp_path):
    rows = [list(map(float, row)) for row in VECTORS[:6]]
    rows[4] = rows[4][:8]
    pq.write_table(pa.table({"id": IDS[:6], "embedding": rows}), tmp_path / "ragged.parquet")
    with pytest.raises(VectorSourceError, match="1 of 6 vectors are not 12-d"):
        VectorSource(str(tmp_path / "ragged.parquet")).check()


def test_normalisation_declared_or_detected(tmp_path):
    scaled = VECTORS[:20] * np.linspace(0.5, 2.0, 20, dtype=np.float32)[:, None]
    with pytest.raises(VectorSourceError, match="declared L2-normalised, but 20 of 20 vectors are not \(norms from 0.5 to 2\)"):
        VectorSource(write_npy(tmp_path / "s.npy", IDS[:20], scaled), normalized=True).check()
    mixed = VECTORS[:20].copy()
    mixed[:3] *= 2.0
    with pytest.warns(UserWarning, match="3 of 20 vectors are not unit length"):
        report = VectorSource(write_npy(tmp_path / "m.npy", IDS[:20], mixed)).check()
    assert not report.normalized and report.unnormalized_rows == 3
    with pytest.raises(VectorSourceError, match="declared not normalised, but every vector has unit length"):
        VectorSource(write_npy(tmp_path / "u.npy", IDS[:20], VECTORS[:20]), normalized=False).check()


def test_an_ids_file_must_match_the_rows(tmp_path):
    np.save(tmp_path / "m.npy", VECTORS[:5])
    (tmp_path / "m.ids.txt").write_text("a\nb\nc\n")
    with pytest.raises(VectorSourceError, match="5 vectors but 3 ids"):
        VectorSource(str(tmp_path / "m.npy"))
    with pytest.raises(VectorSourceError, match="ids file .*nothing.txt not found"):
        VectorSource(f"{tmp_path / 'm.npy'}?ids={tmp_path / 'nothing.txt'}")


def test_columns_are_named_or_found(tmp_path):
    pq.write_table(pa.table({"pid": IDS[:4], "a": VECTORS[:4].tolist(), "b": VECTORS[:4].tolist()}), tmp_path / "t.parquet")
    with pytest.raises(VectorSourceError, match="cannot tell which column holds the ids"):
        VectorSource(str(tmp_path / "t.parquet"))
    with pytest.raises(VectorSourceError, match="cannot tell which column holds the vectors.*--vector-column"):
        VectorSource(str(tmp_path / "t.parquet"), id_column="pid")
    source = VectorSource(f"{tmp_path / 't.parquet'}?id=pid&vector=b")
    np.testing.assert_array_equal(source.lookup(["doc-2"]), VECTORS[[2]])


def test_a_text_column_is_read_by_id(tmp_path):
    source = VectorSource(write_lancedb(tmp_path / "db", IDS[:3], VECTORS[:3], ["x", "y", "z"]), text_column="text")
    assert source.texts_of(["doc-2", "nope", "doc-0"]) == ["z", None, "x"]


def test_streamed_exact_search_equals_exact_search(sources):
    queries = unit_vectors(7, 12, seed=5)
    chunks = VectorSource(sources["parquet, 5 row groups"]).batches(64)
    for got, want in zip(exact_search_chunks(queries, chunks, 10, 12), exact_search(queries, VECTORS, 10)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["lancedb", "faiss"])
def test_search_through_the_database_scores_and_recalls(sources, kind):
    queries = unit_vectors(5, 12, seed=6)
    scores, rows, ids, recall = search_index(VectorSource(sources[kind]), queries, 10, IDS[:250], {})
    exact_scores, exact_rows = exact_search(queries, VECTORS, 10)
    assert recall == 1.0  # both are flat (exact) indexes
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    assert [[ids[row] for row in found] for found in rows] == [[IDS[row] for row in found] for found in exact_rows]
    assert ids[:250] == IDS[:250] and all(extra in IDS[250:] for extra in ids[250:])  # not in the corpus: appended


def adapter_for(source: VectorSource, name: str = "api-embed-1") -> EraAdapter:
    ids = source.fingerprint_ids()
    return EraAdapter(EraConfig(query_dim=8, doc_dim=source.dim, doc_encoder=name, doc_encoder_kind="external",
                                doc_vectors_fingerprint=source.fingerprint(ids), doc_vectors_fingerprint_ids=ids))


def test_check_doc_encoder_recognises_its_index(sources, tmp_path):
    adapter = adapter_for(VectorSource(sources["npy"]))
    for spec in sources.values():
        adapter.check_doc_encoder(VectorSource(spec))  # the same vectors, any storage
    adapter.check_doc_encoder(adapter.config.doc_vectors_fingerprint)
    adapter.check_doc_encoder("api-embed-1", dim=12)
    grown = VectorSource(write_npy(tmp_path / "g.npy", IDS + ["new"], np.concatenate([VECTORS, VECTORS[:1]])))
    adapter.check_doc_encoder(grown)  # rows added since training: still the same index
    other = VectorSource(write_npy(tmp_path / "o.npy", IDS, unit_vectors(300, 12, seed=8)))
    with pytest.raises(IncompatibleDocEncoderError, match=r"o\.npy.*other vectors .* of api-embed-1"):
        adapter.check_doc_encoder(other)
    with pytest.raises(IncompatibleDocEncoderError, match="fingerprint sha256:.*but this adapter was trained"):
        adapter.check_doc_encoder(other.fingerprint())
    shrunk = VectorSource(write_npy(tmp_path / "s.npy", IDS[:10], VECTORS[:10]))
    with pytest.raises(IncompatibleDocEncoderError, match="lacks rows this adapter was fingerprinted on"):
        adapter.check_doc_encoder(shrunk)
    with pytest.raises(IncompatibleDocEncoderError, match="built with text-embedding-3-small"):
        adapter.check_doc_encoder("text-embedding-3-small")


def test_an_unknown_source_says_what_is_accepted(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VectorSourceError, match="not a vector source.*lancedb://"):
        VectorSource(str(tmp_path / "notes.txt"))
    with pytest.raises(VectorSourceError, match="no such file"):
        VectorSource(str(tmp_path / "missing.parquet"))
    with pytest.raises(VectorSourceError, match="name the table"):
        VectorSource(f"lancedb://{tmp_path}")
