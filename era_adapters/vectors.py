"""Stored vectors as ERA's doc side (or query side): the index you already have, read without its model.

A `VectorSource` is opened from a spec string (docs/stored_vectors.md):

    lancedb://PATH?table=T                      a LanceDB table (pip install 'era-adapters[lancedb]')
    vectors.parquet | vectors.arrow | FOLDER    Parquet / Arrow files, or a `datasets` save_to_disk folder
    org/name?split=train                        a `datasets` dataset on the Hub (or its local cache)
    vectors.npy | vectors.safetensors           a matrix, with its ids in vectors.ids.txt (or '?ids=FILE')
    index.faiss                                 a faiss index with an IndexIDMap (or '?ids=FILE')

Query parameters after the spec: `id`, `vector`, `text` (column names; by default `id` and the one
list-of-floats column), `ids`, `tensor`, `split`, `config`, `table`.

Vectors are read in chunks (memory-mapped or batch-decoded), never all at once: `batches` streams
them, `lookup(ids)` returns the vectors of given ids in order. `check` validates a source once
(duplicate ids, NaN rows, ragged or wrong dimensions, unnormalised rows where normalised ones were
declared) and `join` compares its ids with a corpus (ids without a vector, vectors without a text),
each problem counted. `fingerprint` hashes a fixed sample of (id, vector) rows: the sample is the
rows whose ids have the smallest hashes, so it does not depend on the row order, and an adapter
records it to recognise its index later (`EraQueryEncoder.check_doc_encoder(source)`).
"""
from __future__ import annotations

import hashlib
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qsl

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from era_adapters.vector_stores import (ArrowStore, FaissStore, LanceStore, MatrixStore, ParquetStore, Store,
                                        VectorSourceError, data_files, open_arrow_file, open_datasets,
                                        open_safetensors)

__all__ = ["NORM_TOLERANCE", "SourceCheck", "VectorSource", "VectorSourceError", "open_source", "search_index"]

logger = logging.getLogger(__name__)
NORM_TOLERANCE = 1e-3  # |‖v‖ − 1| above this: not unit-normalised (float32 rounding stays far below)
FINGERPRINT_ROWS = 32
BATCH_ROWS = 1 << 14  # vectors per chunk: 24 MiB at 384-d float32
_PARAMETERS = {"id", "vector", "text", "ids", "tensor", "split", "config", "table"}
_EXAMPLES = 3
_SUFFIXES = (".npy", ".safetensors", ".faiss", ".index", ".parquet", ".arrow", ".feather")


def _split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`PATH?key=value&...` -> (PATH, {key: value}); a '?' not followed by known keys stays in the path."""
    path, sep, query = str(spec).rpartition("?")
    if sep:
        params = dict(parse_qsl(query, keep_blank_values=True))
        if params and set(params) <= _PARAMETERS:
            return path, params
    return str(spec), {}


def open_store(spec: str, id_column: str | None = None, vector_column: str | None = None,
               text_column: str | None = None) -> Store:
    """The reader for a spec string (see the module docstring); columns given in the spec win."""
    target, params = _split_spec(spec)
    columns = (params.get("id", id_column), params.get("vector", vector_column), params.get("text", text_column))
    if target.startswith("lancedb://"):
        return LanceStore(target[len("lancedb://"):], params.get("table"), *columns)
    path = Path(target).expanduser()
    if not path.exists() and (path.suffix in _SUFFIXES or not re.fullmatch(r"[\w.-]+/[\w.-]+", target)):
        raise VectorSourceError(f"{spec}: no such file or folder (and not a Hub dataset id).")
    if path.suffix in (".npy", ".safetensors"):
        matrix = np.load(path, mmap_mode="r", allow_pickle=False) if path.suffix == ".npy" else \
            open_safetensors(path, params.get("tensor"))
        return MatrixStore(matrix, Path(params["ids"]) if "ids" in params else path.with_suffix(".ids.txt"), str(path))
    if path.suffix in (".faiss", ".index"):
        return FaissStore(path, Path(params["ids"]) if "ids" in params else None)
    if path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))
                                      and not (path / "state.json").is_file()):
        return ParquetStore(data_files(path, (".parquet",)), str(path), *columns)
    if path.suffix in (".arrow", ".feather"):
        tables = [open_arrow_file(file) for file in data_files(path, (path.suffix,))]
        return ArrowStore(pa.concat_tables(tables), str(path), *columns)
    if path.is_dir() or (not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", target)):
        return ArrowStore(open_datasets(target, params.get("split"), params.get("config")), target, *columns)
    raise VectorSourceError(f"{spec}: not a vector source. Give a LanceDB table (lancedb://PATH?table=T), Parquet or "
                            "Arrow files, a datasets folder or Hub id, a .npy/.safetensors matrix with its ids, or a "
                            "faiss index (docs/stored_vectors.md).")


@dataclass
class SourceCheck:
    """What `VectorSource.check` found, counted; `normalized` says whether every row is unit length."""

    rows: int
    dim: int
    duplicate_ids: int = 0
    non_finite_rows: int = 0
    unnormalized_rows: int = 0
    zero_rows: int = 0
    norm_range: tuple[float, float] = (0.0, 0.0)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def normalized(self) -> bool:
        return self.unnormalized_rows == 0 and self.rows > 0

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "dim": self.dim, "duplicate_ids": self.duplicate_ids,
                "non_finite_rows": self.non_finite_rows, "unnormalized_rows": self.unnormalized_rows,
                "zero_rows": self.zero_rows, "norm_range": list(self.norm_range), "normalized": self.normalized}


class VectorSource:
    """Stored vectors with ids: streamed, looked up by id, validated and fingerprinted.

    Args:
        spec: where the vectors are (module docstring).
        id_column / vector_column / text_column: column names (tables); the spec's `?id=...` etc. win.
        normalized: declared unit-length (True), declared not (False) or detected (None); `check`
            refuses a declaration the vectors contradict.
        what: how messages name this source (e.g. "--doc-vectors").
    """

    def __init__(self, spec: str, *, id_column: str | None = None, vector_column: str | None = None,
                 text_column: str | None = None, normalized: bool | None = None, what: str = "vectors") -> None:
        self.spec, self.what, self.declared_normalized = str(spec), what, normalized
        self.store = open_store(self.spec, id_column, vector_column, text_column)
        self._ids: pa.Array | None = None
        self._check: SourceCheck | None = None
        self._fingerprints: dict[tuple[str, ...] | None, str] = {}

    def __repr__(self) -> str:
        return f"VectorSource({self.spec!r}, rows={self.num_rows}, dim={self.dim})"

    @property
    def num_rows(self) -> int:
        return self.store.num_rows

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def has_text(self) -> bool:
        return self.store.has_text

    @property
    def ids(self) -> pa.Array:
        """Every row's id (strings, row order): the only column held in memory."""
        if self._ids is None:
            self._ids = self.store.ids()
        return self._ids

    def batches(self, batch_rows: int = BATCH_ROWS) -> Iterator[np.ndarray]:
        """The vectors, `(n, dim)` float32 chunks in row order (bounded memory)."""
        return self.store.batches(batch_rows)

    def rows_of(self, ids: Sequence[str] | pa.Array) -> np.ndarray:
        """Row number of each id, -1 where the source has none (the first row of a duplicate id)."""
        wanted = ids if isinstance(ids, pa.Array) else pa.array(list(ids), pa.string())
        rows = pc.index_in(wanted, value_set=self.ids)
        return rows.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def lookup(self, ids: Sequence[str], *, purpose: str = "") -> np.ndarray:
        """The vectors of these ids, in this order, `(len(ids), dim)` float32; a `VectorSourceError` counts
        the ids without a vector."""
        rows = self.rows_of(ids)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            examples = [str(ids[i]) for i in missing[:_EXAMPLES]]
            raise VectorSourceError(
                f"{self.what} {self.spec}: {len(missing)} of {len(rows)} ids{f' ({purpose})' if purpose else ''} have "
                f"no vector, e.g. {examples}. Add their vectors, or check the id column (--id-column).")
        return self.vectors_at(rows)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of these row numbers, in this order."""
        rows = np.asarray(rows, dtype=np.int64)
        unique, inverse = np.unique(rows, return_inverse=True)
        return np.ascontiguousarray(self.store.rows(unique)[inverse], dtype=np.float32)

    def texts_of(self, ids: Sequence[str]) -> list[str | None]:
        """The text column's value for each id (None where the id is absent)."""
        rows = self.rows_of(ids)
        present = rows >= 0
        unique, inverse = np.unique(rows[present], return_inverse=True)
        found = self.store.texts(unique) if len(unique) else []
        out: list[str | None] = [None] * len(rows)
        for position, index in zip(np.flatnonzero(present), inverse):
            out[position] = found[index]
        return out

    # ------------------------------------------------------------------ validation

    def check(self) -> SourceCheck:
        """One streaming pass: duplicate ids, non-finite rows, norms. Raises a `VectorSourceError` for
        what makes the source unusable (duplicates, NaN/inf, a declared normalisation it contradicts);
        warns, counted, when rows are of mixed length. Cached: a source is checked once."""
        if self._check is not None:
            return self._check
        ids = self.ids
        report = SourceCheck(rows=self.num_rows, dim=self.dim)
        counts = pc.value_counts(ids)
        repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        report.duplicate_ids = int(pc.sum(pc.filter(counts.field("counts"), pc.greater(counts.field("counts"), 1)))
                                   .as_py() or 0) - len(repeated)
        report.examples["duplicate_ids"] = repeated.slice(0, _EXAMPLES).to_pylist()
        low, high, start = np.inf, -np.inf, 0
        bad_rows: list[int] = []
        for chunk in self.batches():
            # Squared norms in float64 without copying the chunk; a NaN or inf anywhere makes them non-finite.
            squared = np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64)
            finite = np.isfinite(squared)
            bad_rows += (np.flatnonzero(~finite)[:_EXAMPLES] + start).tolist()
            report.non_finite_rows += int((~finite).sum())
            norms = np.sqrt(squared[finite])
            report.unnormalized_rows += int((np.abs(norms - 1.0) > NORM_TOLERANCE).sum())
            report.zero_rows += int((norms == 0).sum())
            if len(norms):
                low, high = min(low, float(norms.min())), max(high, float(norms.max()))
            start += len(chunk)
        report.norm_range = (low, high) if np.isfinite(low) else (0.0, 0.0)
        report.examples["non_finite_ids"] = [ids[row].as_py() for row in bad_rows[:_EXAMPLES]]
        self._raise_for(report)
        self._check = report
        return report

    def _raise_for(self, report: SourceCheck) -> None:
        name = f"{self.what} {self.spec}"
        if report.duplicate_ids:
            raise VectorSourceError(
                f"{name}: {report.duplicate_ids} rows repeat an id already seen (e.g. {report.examples['duplicate_ids']}); "
                "an id must name one vector. Deduplicate the source.")
        if report.non_finite_rows:
            raise VectorSourceError(
                f"{name}: {report.non_finite_rows} of {report.rows} vectors hold NaN or inf (e.g. ids "
                f"{report.examples['non_finite_ids']}); re-embed those documents.")
        low, high = report.norm_range
        if self.declared_normalized and report.unnormalized_rows:
            raise VectorSourceError(
                f"{name}: declared L2-normalised, but {report.unnormalized_rows} of {report.rows} vectors are not "
                f"(norms from {low:.4g} to {high:.4g}). Normalise them, or drop --vectors-normalized.")
        if self.declared_normalized is False and report.normalized:
            raise VectorSourceError(f"{name}: declared not normalised, but every vector has unit length; drop "
                                    "--vectors-normalized false (the index is a cosine index).")
        if report.unnormalized_rows and report.unnormalized_rows < report.rows:
            warnings.warn(f"{name}: {report.unnormalized_rows} of {report.rows} vectors are not unit length (norms "
                          f"from {low:.4g} to {high:.4g}; {report.zero_rows} are zero); the index is treated as an "
                          "inner-product (dot) index.", stacklevel=3)

    @property
    def normalized(self) -> bool:
        return self.check().normalized

    def join(self, ids: Sequence[str] | pa.Array | pa.ChunkedArray, *, where: str) -> dict[str, Any]:
        """Compare the source's ids with a corpus' (`where` names it): counts and examples of corpus ids
        without a vector (`missing`) and of vectors whose id is not in the corpus (`unused`)."""
        corpus = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), pa.string())
        if isinstance(corpus, pa.ChunkedArray):
            corpus = corpus.combine_chunks()
        has_vector = pc.is_in(corpus, value_set=self.ids)
        used = pc.is_in(self.ids, value_set=corpus)
        missing = pc.filter(corpus, pc.invert(has_vector))
        unused = pc.filter(self.ids, pc.invert(used))
        return {"corpus": where, "ids": len(corpus), "missing": len(missing),
                "missing_examples": missing.slice(0, _EXAMPLES).to_pylist(), "unused": len(unused),
                "unused_examples": unused.slice(0, _EXAMPLES).to_pylist(),
                "has_vector": has_vector.to_numpy(zero_copy_only=False)}

    # ------------------------------------------------------------------ fingerprint

    def fingerprint_ids(self, count: int = FINGERPRINT_ROWS) -> list[str]:
        """The fixed sample: the `count` ids with the smallest blake2b digests (independent of row order)."""
        best: list[tuple[bytes, str]] = []
        for start in range(0, len(self.ids), BATCH_ROWS):
            chunk = self.ids.slice(start, BATCH_ROWS).to_pylist()
            best = sorted(best + [(hashlib.blake2b(i.encode("utf-8"), digest_size=16).digest(), i) for i in chunk])[:count]
        return [identifier for _, identifier in best]

    def fingerprint(self, ids: Sequence[str] | None = None) -> str:
        """sha256 over the (id, float32 vector) rows of the fixed sample, or of these `ids` (an adapter
        passes the ids it was fingerprinted on, so a grown or reordered index still matches)."""
        key = None if ids is None else tuple(ids)
        if key not in self._fingerprints:
            sample = self.fingerprint_ids() if ids is None else list(ids)
            vectors = self.lookup(sample, purpose="the fingerprint's sample")
            digest = hashlib.sha256()
            for identifier, vector in zip(sample, vectors):
                digest.update(identifier.encode("utf-8") + b"\0" + vector.astype("<f4").tobytes())
            self._fingerprints[key] = "sha256:" + digest.hexdigest()
        return self._fingerprints[key]

    # ------------------------------------------------------------------ search

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Exact inner-product top-k over every stored vector, streamed chunk by chunk: (scores, ids)."""
        from era_adapters.search import exact_search_chunks

        scores, rows = exact_search_chunks(queries, self.batches(), k, self.dim)
        ids = self.ids
        return scores, [[ids[int(row)].as_py() for row in found if row >= 0] for found in rows]

    def search(self, queries: np.ndarray, k: int, **params: int) -> tuple[np.ndarray, list[list[str]]]:
        """The database's own search (LanceDB: its index if it has one, else a flat scan; faiss: the
        index's search): (scores, ids) of the top k. `params`: nprobes / refine_factor (LanceDB),
        nprobe / efSearch (faiss)."""
        return self.store.search(np.asarray(queries, dtype=np.float32), int(k), params)


def search_index(index: VectorSource, queries: np.ndarray, k: int, doc_ids: Sequence[str],
                 params: dict[str, int]) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """Top-k through a database's own search, as rows of `doc_ids` for the metrics, and its recall@k
    against exact search over the same stored vectors. Ids the database returns that are not in
    `doc_ids` (vectors without a document) stay in the ranking as non-relevant documents, appended to
    the returned id list, so the ranking scored is the one the database serves."""
    from era_adapters.search import recall_against_exact

    scores, found = index.search(queries, k, **params)
    _, exact = index.exact_search(queries, k)
    ids = list(doc_ids)
    row_of = {doc_id: row for row, doc_id in enumerate(ids)}

    def rows(lists: list[list[str]]) -> np.ndarray:
        out = np.full((len(lists), k), -1, dtype=np.int64)
        for query, hits in enumerate(lists):
            for rank, hit in enumerate(hits[:k]):
                if hit not in row_of:
                    row_of[hit] = len(ids)
                    ids.append(hit)
                out[query, rank] = row_of[hit]
        return out

    ranked = rows(found)
    recall = recall_against_exact(ranked, rows(exact), k)
    extra = len(ids) - len(doc_ids)
    if extra:
        logger.warning("%s returned %d documents that are not in the corpus; they count as non-relevant.",
                       index.spec, extra)
    return np.where(ranked >= 0, scores[:, :k], -np.inf).astype(np.float32), ranked, ids, recall


def open_source(spec: str | VectorSource | None, what: str, **options: Any) -> VectorSource | None:
    """A `VectorSource` for a spec (None stays None; an open source is returned as is)."""
    if spec is None or isinstance(spec, VectorSource):
        return spec
    return VectorSource(spec, what=what, **options)
