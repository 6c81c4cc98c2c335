"""Readers of stored vectors, one per storage format, behind one small interface (`Store`): ids, vectors
in row chunks, vectors of given rows, optional texts, and for databases their own search. Nothing here
reads a whole matrix: Arrow files and `.npy` / `.safetensors` matrices are memory-mapped, Parquet is
decoded in batches, faiss reconstructs the rows asked for, LanceDB scans and takes.

`era_adapters.vectors.VectorSource` opens a store from a spec string and adds what every format
shares (lookup by id, validation, fingerprint); use that, not these classes. (Longer than most
modules: one small class per format, each with the memory rules its format needs.)
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from era_adapters.readers import DataError
from era_adapters.search import release_pages

ID_COLUMNS = ("id", "_id", "doc_id", "docid", "corpus_id", "qid", "query_id")
VECTOR_COLUMNS = ("vector", "embedding", "embeddings", "emb", "vectors")
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


class VectorSourceError(DataError):
    """Stored vectors that cannot be used as they are; the message names the source and the fix."""


class Store:
    """What a storage format provides. Rows are numbered 0..num_rows-1 in the store's own order."""

    num_rows: int
    dim: int
    has_text: bool = False
    id_column: str = "id"

    def ids(self) -> pa.Array:  # every row's id as strings (ids only: small)
        raise NotImplementedError

    def batches(self, batch_rows: int) -> Iterator[np.ndarray]:  # (n, dim) float32 chunks, in row order
        raise NotImplementedError

    def rows(self, rows: np.ndarray) -> np.ndarray:  # vectors of sorted, unique row numbers
        raise NotImplementedError

    def texts(self, rows: np.ndarray) -> list[str | None]:
        raise VectorSourceError("this source has no text column")

    def search(self, queries: np.ndarray, k: int, params: dict[str, int]) -> tuple[np.ndarray, list[list[str]]]:
        raise VectorSourceError("this source is a file of vectors, not a searchable index: pass a LanceDB table "
                                "(lancedb://PATH?table=T) or a faiss index file to --index.")


# ---------------------------------------------------------------------------------------------
# Arrow tables (datasets folders, .arrow / .feather files, Hub datasets) and Parquet files
# ---------------------------------------------------------------------------------------------


def _pick_column(schema: pa.Schema, given: str | None, candidates: tuple[str, ...], what: str, where: str,
                 accept=lambda field: True) -> str:
    names = schema.names
    if given is not None:
        if given not in names:
            raise VectorSourceError(f"{where}: no {what} column {given!r}; columns: {names}.")
        return given
    found = [name for name in candidates if name in names and accept(schema.field(name))]
    if not found:
        found = [field.name for field in schema if accept(field)] if what == "vector" else []
    if len(found) != 1 and not (found and found[0] in candidates):
        flag = {"id": "--id-column", "vector": "--vector-column"}[what]
        raise VectorSourceError(f"{where}: cannot tell which column holds the {what}s (columns: {names}); name it "
                                f"with {flag} or '?{what}=NAME' after the source.")
    return found[0]


def _is_vector_field(field: pa.Field) -> bool:
    kind = field.type
    return (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)) and \
        pa.types.is_floating(kind.value_type)


def vectors_from_arrow(column: pa.Array | pa.ChunkedArray, dim: int, where: str) -> np.ndarray:
    """A list<float> Arrow column as an (n, dim) float32 array; rows of another length or null are refused."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.null_count:
        raise VectorSourceError(f"{where}: {column.null_count} rows have no vector (null); drop or fill them.")
    lengths = pc.list_value_length(column)
    wrong = int(pc.sum(pc.not_equal(lengths, dim)).as_py() or 0)
    if wrong:
        raise VectorSourceError(f"{where}: {wrong} of {len(column)} vectors are not {dim}-d (first row's length); "
                                "every row must have the same dimension.")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(column), dim)


class _ColumnStore(Store):
    """Shared by the Arrow, Parquet and LanceDB stores: which columns hold the ids, vectors and texts."""

    def _pick_columns(self, schema: pa.Schema, id_column: str | None, vector_column: str | None,
                      text_column: str | None) -> None:
        self.id_column = _pick_column(schema, id_column, ID_COLUMNS, "id", self.where)
        self.vector_column = _pick_column(schema, vector_column, VECTOR_COLUMNS, "vector", self.where, _is_vector_field)
        if not _is_vector_field(schema.field(self.vector_column)):
            raise VectorSourceError(f"{self.where}: column {self.vector_column!r} is "
                                    f"{schema.field(self.vector_column).type}, not a list of floats.")
        self.text_column = _pick_column(schema, text_column, (), "text", self.where) if text_column else None
        self.has_text = self.text_column is not None


class ArrowStore(_ColumnStore):
    """An Arrow table, normally memory-mapped (datasets' cache or an .arrow file): slices are free."""

    def __init__(self, table: pa.Table, where: str, id_column: str | None, vector_column: str | None,
                 text_column: str | None) -> None:
        self.where = where
        self._pick_columns(table.schema, id_column, vector_column, text_column)
        self.table, self.num_rows = table, table.num_rows
        self.dim = _first_length(table.column(self.vector_column), where)

    def ids(self) -> pa.Array:
        return _as_strings(self.table.column(self.id_column))

    def batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        for start in range(0, self.num_rows, batch_rows):
            yield vectors_from_arrow(self.table.column(self.vector_column).slice(start, batch_rows), self.dim, self.where)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return vectors_from_arrow(self.table.column(self.vector_column).take(pa.array(rows)), self.dim, self.where)

    def texts(self, rows: np.ndarray) -> list[str | None]:
        if self.text_column is None:
            return super().texts(rows)
        return self.table.column(self.text_column).take(pa.array(rows)).to_pylist()


class ParquetStore(_ColumnStore):
    """Parquet files (one, or a folder of them, in name order), decoded in batches, never whole."""

    def __init__(self, files: list[Path], where: str, id_column: str | None, vector_column: str | None,
                 text_column: str | None) -> None:
        import pyarrow.parquet as pq

        self.where = where
        # pre_buffer would keep every column chunk it read; a 1 MiB read buffer bounds what a batch holds.
        self.files = [pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20) for path in files]
        schema = self.files[0].schema_arrow
        for path, file in zip(files, self.files):
            if file.schema_arrow != schema:
                raise VectorSourceError(f"{path} has another schema than {files[0]}; keep one schema per source.")
        self._pick_columns(schema, id_column, vector_column, text_column)
        self.num_rows = sum(file.metadata.num_rows for file in self.files)
        kind = schema.field(self.vector_column).type
        first = next(self._scan([self.vector_column], 1), None)
        self.dim = kind.list_size if pa.types.is_fixed_size_list(kind) else \
            _first_length(pa.chunked_array([first.column(0)] if first is not None else [], kind), where)

    def _scan(self, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        for file in self.files:
            for batch in file.iter_batches(batch_size=batch_rows, columns=columns):
                yield batch
                pa.default_memory_pool().release_unused()  # decoded pages go back to the OS, not to a cache

    def ids(self) -> pa.Array:
        return pa.concat_arrays([_as_strings(batch.column(0)) for batch in self._scan([self.id_column], 1 << 16)]
                                or [pa.array([], pa.string())])

    def batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        for batch in self._scan([self.vector_column], batch_rows):
            yield vectors_from_arrow(batch.column(0), self.dim, self.where)

    def _pick(self, rows: np.ndarray, column: str) -> pa.Array:
        """The rows of one column, reading only the row groups that hold them, in batches."""
        picked, start = [], 0
        for file in self.files:
            for group in range(file.metadata.num_row_groups):
                size = file.metadata.row_group(group).num_rows
                local = rows[(rows >= start) & (rows < start + size)] - start
                offset = 0
                for batch in file.iter_batches(batch_size=1 << 14, row_groups=[group], columns=[column]):
                    inside = local[(local >= offset) & (local < offset + batch.num_rows)] - offset
                    if len(inside):
                        picked.append(batch.column(0).take(pa.array(inside)))
                    offset += batch.num_rows
                    if not len(local) or offset > local[-1]:
                        break
                start += size
        return pa.concat_arrays(picked) if picked else pa.array([], self.files[0].schema_arrow.field(column).type)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        return vectors_from_arrow(self._pick(rows, self.vector_column), self.dim, self.where)

    def texts(self, rows: np.ndarray) -> list[str | None]:
        if self.text_column is None:
            return Store.texts(self, rows)
        return self._pick(rows, self.text_column).to_pylist()


def _first_length(column: pa.ChunkedArray, where: str) -> int:
    kind = column.type
    if pa.types.is_fixed_size_list(kind):
        return kind.list_size
    for chunk in column.chunks:
        valid = chunk.drop_null()
        if len(valid):
            return len(valid[0])
    raise VectorSourceError(f"{where}: no vectors found (the vector column is empty).")


def _as_strings(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if column.null_count:
        raise VectorSourceError(f"{column.null_count} rows have no id (null); every vector needs one.")
    return column.cast(pa.string())


def open_arrow_file(path: Path) -> pa.Table:
    """An .arrow/.feather file, memory-mapped (IPC file or stream format, as `datasets` writes)."""
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source).read_all()


def open_datasets(spec: str, split: str | None, config: str | None) -> pa.Table:
    """A `datasets` dataset (a save_to_disk folder, or a Hub id) as its memory-mapped Arrow table."""
    import datasets

    if Path(spec).is_dir():
        loaded = datasets.load_from_disk(spec)
    else:
        loaded = datasets.load_dataset(spec, config, split=split or "train")
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) != 1:
            raise VectorSourceError(f"{spec} has splits {list(loaded)}: pick one with '?split=NAME'.")
        loaded = loaded[split or next(iter(loaded))]
    if loaded._indices is not None:  # a selection on top of the table: materialise it in row order
        loaded = loaded.flatten_indices()
    return loaded.data.table


# ---------------------------------------------------------------------------------------------
# Matrices: .npy and .safetensors, with an ids file
# ---------------------------------------------------------------------------------------------


class MatrixStore(Store):
    """A memory-mapped 2-D float matrix and its ids (one a line in a .txt file, or a JSON list). Scans
    go through the memory map (pages handed back chunk by chunk); rows looked up are read from the file:
    touching scattered rows of a map would map whole page-cache folios around each (MiBs per row)."""

    def __init__(self, matrix: np.ndarray, ids_file: Path, where: str) -> None:
        if matrix.ndim != 2 or matrix.dtype.kind != "f":
            raise VectorSourceError(f"{where}: expected a 2-D float matrix, got {matrix.dtype} {matrix.shape}.")
        if not matrix.flags.c_contiguous:
            raise VectorSourceError(f"{where}: a Fortran-ordered matrix; save it in C order (np.ascontiguousarray).")
        self.matrix, self.where = matrix, where
        self.num_rows, self.dim = matrix.shape
        self._ids = read_ids_file(ids_file)
        if len(self._ids) != self.num_rows:
            raise VectorSourceError(f"{where}: {self.num_rows} vectors but {len(self._ids)} ids in {ids_file}; "
                                    "the ids file needs one id per row, in row order.")

    def ids(self) -> pa.Array:
        return self._ids

    def batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        for start in range(0, self.num_rows, batch_rows):
            view = self.matrix[start:start + batch_rows]
            yield np.asarray(view, dtype=np.float32)
            release_pages(view)  # a scanned chunk of a memory map leaves this process's RSS

    def rows(self, rows: np.ndarray) -> np.ndarray:
        if not isinstance(self.matrix, np.memmap):  # already in memory
            return np.asarray(self.matrix[rows], dtype=np.float32)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        row_bytes = self.dim * self.matrix.dtype.itemsize
        runs = np.flatnonzero(np.diff(rows) != 1) + 1  # consecutive rows are read in one go
        with open(self.matrix.filename, "rb", buffering=0) as handle:
            for first, last in zip(np.concatenate([[0], runs]), np.concatenate([runs, [len(rows)]])):
                for start in range(first, last, 1 << 14):
                    stop = min(last, start + (1 << 14))
                    handle.seek(self.matrix.offset + int(rows[start]) * row_bytes)
                    block = np.frombuffer(handle.read((stop - start) * row_bytes), dtype=self.matrix.dtype)
                    out[start:stop] = block.reshape(stop - start, self.dim)
        return out


def read_ids_file(path: Path) -> pa.Array:
    if not path.is_file():
        raise VectorSourceError(f"ids file {path} not found: give one id per row ('?ids=FILE', .txt one per line "
                                "or a .json list), or put it beside the vectors as <name>.ids.txt.")
    if path.suffix == ".json":
        return pa.array([str(value) for value in json.loads(path.read_text(encoding="utf-8"))], pa.string())
    # Split in Arrow: a million ids as Python strings would stay in this process's heap afterwards.
    text = path.read_text(encoding="utf-8").removesuffix("\n")
    return pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten().cast(pa.string()) if text else \
        pa.array([], pa.string())


def open_safetensors(path: Path, tensor: str | None) -> np.ndarray:
    """One tensor of a .safetensors file, memory-mapped (the format is an 8-byte header length, a JSON
    header, then raw little-endian data), so no tensor is read whole."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    names = [name for name in header if name != "__metadata__"]
    if tensor is None:
        if len(names) != 1:
            raise VectorSourceError(f"{path} holds tensors {names}: pick one with '?tensor=NAME'.")
        tensor = names[0]
    if tensor not in header:
        raise VectorSourceError(f"{path} has no tensor {tensor!r}; it holds {names}.")
    entry = header[tensor]
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise VectorSourceError(f"{path}: tensor {tensor} is {entry['dtype']}; store vectors as F32, F16 or F64.")
    start, _ = entry["data_offsets"]
    return np.memmap(path, dtype=np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<"), mode="r",
                     offset=8 + length + start, shape=tuple(entry["shape"]))


# ---------------------------------------------------------------------------------------------
# faiss index files and LanceDB tables: databases with their own search
# ---------------------------------------------------------------------------------------------


class FaissStore(Store):
    """A faiss index file, memory-mapped where faiss can; ids from its IndexIDMap (or an ids file)."""

    def __init__(self, path: Path, ids_file: Path | None) -> None:
        import faiss

        self.faiss, self.where = faiss, str(path)
        try:
            self.index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            self.index = faiss.read_index(str(path))
        id_map = getattr(self.index, "id_map", None)
        self.inner = faiss.downcast_index(self.index.index) if id_map is not None else self.index
        if hasattr(self.inner, "make_direct_map") and not getattr(self.inner, "direct_map", None):
            self.inner.make_direct_map()  # IVF: rows can then be reconstructed one by one
        self.num_rows, self.dim = int(self.index.ntotal), int(self.index.d)
        if ids_file is not None:
            self._ids = read_ids_file(ids_file)
        elif id_map is not None:
            self._ids = pa.array(faiss.vector_to_array(id_map)).cast(pa.string())
        else:
            raise VectorSourceError(f"{path}: a faiss index without an id map (IndexIDMap): give the row ids with "
                                    "'?ids=FILE' (one per row, in the order the vectors were added).")
        if len(self._ids) != self.num_rows:
            raise VectorSourceError(f"{path}: {self.num_rows} vectors but {len(self._ids)} ids.")

    def ids(self) -> pa.Array:
        return self._ids

    def batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        for start in range(0, self.num_rows, batch_rows):
            yield self.inner.reconstruct_n(start, min(batch_rows, self.num_rows - start))

    def rows(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        return self.inner.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int, params: dict[str, int]) -> tuple[np.ndarray, list[list[str]]]:
        for key, value in params.items():
            target = self.inner.hnsw if key == "efSearch" and hasattr(self.inner, "hnsw") else self.inner
            if key not in ("nprobe", "efSearch") or not hasattr(target, key):
                raise VectorSourceError(f"--ann-param {key}: this faiss index takes nprobe (IVF) or efSearch (HNSW).")
            setattr(target, key, value)
        scores, rows = self.inner.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        if self.index.metric_type == self.faiss.METRIC_L2:
            scores = -scores  # a distance: higher is better after the sign flip
        ids = self._ids.to_numpy(zero_copy_only=False)
        return scores, [[ids[row] for row in found if row >= 0] for found in rows]


class LanceStore(_ColumnStore):
    """A LanceDB table (`pip install era-adapters[lancedb]`): scanned in batches, rows taken by offset."""

    def __init__(self, path: str, table: str | None, id_column: str | None, vector_column: str | None,
                 text_column: str | None) -> None:
        try:
            import lancedb
        except ImportError as error:
            raise VectorSourceError("reading a LanceDB table needs lancedb: pip install 'era-adapters[lancedb]'.") \
                from error
        self.where = f"lancedb://{path}?table={table}"
        if not table:
            raise VectorSourceError(f"lancedb://{path}: name the table, e.g. lancedb://{path}?table=docs.")
        database = lancedb.connect(path)
        try:
            self.table = database.open_table(table)
        except (ValueError, FileNotFoundError) as error:
            raise VectorSourceError(f"{self.where}: no such table ({error}).") from error
        schema = self.table.schema
        self._pick_columns(schema, id_column, vector_column, text_column)
        self._ids: pa.Array | None = None
        self.num_rows = self.table.count_rows()
        kind = schema.field(self.vector_column).type
        self.dim = kind.list_size if pa.types.is_fixed_size_list(kind) else len(self._take([0], [self.vector_column])
                                                                                  .column(0)[0])

    def _take(self, rows, columns: list[str]) -> pa.Table:
        """These (sorted) row offsets, in order, with the id column checked against the scan's ids."""
        taken = self.table.take_offsets([int(row) for row in rows]).select([self.id_column, *columns]).to_arrow()
        if taken.num_rows != len(rows) or (self._ids is not None and not taken.column(0).cast(pa.string()).equals(
                pa.chunked_array([self._ids.take(pa.array(rows))]))):
            raise VectorSourceError(f"{self.where}: rows read by offset do not match the scanned ids; was the table "
                                    "changed while it was read?")
        return taken.drop_columns([self.id_column])

    def ids(self) -> pa.Array:
        batches = self.table.search().select([self.id_column]).to_batches(1 << 16)
        self._ids = pa.concat_arrays([_as_strings(batch.column(0)) for batch in batches] or [pa.array([], pa.string())])
        return self._ids

    def batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        # Windows of offsets rather than a scan: LanceDB's scan reads far ahead (~0.8 GB for 1M x 384).
        for start in range(0, self.num_rows, batch_rows):
            window = np.arange(start, min(self.num_rows, start + batch_rows))
            yield vectors_from_arrow(self._take(window, [self.vector_column]).column(0), self.dim, self.where)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        return vectors_from_arrow(self._take(rows, [self.vector_column]).column(0), self.dim, self.where)

    def texts(self, rows: np.ndarray) -> list[str | None]:
        if self.text_column is None:
            return Store.texts(self, rows)
        return self._take(rows, [self.text_column]).column(0).to_pylist()

    def search(self, queries: np.ndarray, k: int, params: dict[str, int]) -> tuple[np.ndarray, list[list[str]]]:
        unknown = set(params) - {"nprobes", "refine_factor"}
        if unknown:
            raise VectorSourceError(f"--ann-param {sorted(unknown)}: a LanceDB search takes nprobes and refine_factor.")
        all_scores, all_ids = np.full((len(queries), k), -np.inf, np.float32), []
        for row, query in enumerate(np.asarray(queries, dtype=np.float32)):
            search = self.table.search(query, vector_column_name=self.vector_column).distance_type("dot").limit(k)
            if "nprobes" in params:
                search = search.nprobes(params["nprobes"])
            if "refine_factor" in params:
                search = search.refine_factor(params["refine_factor"])
            found = search.select([self.id_column, "_distance"]).to_arrow()
            # LanceDB's "dot" distance is 1 - q·d: turn it back into the inner product.
            all_scores[row, :found.num_rows] = 1.0 - found["_distance"].to_numpy()
            all_ids.append(_as_strings(found[self.id_column]).to_pylist())
        return all_scores, all_ids


def data_files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files of a source: the path itself, or the files with these suffixes in a folder (name order)."""
    if path.is_file():
        return [path]
    files = sorted(child for child in path.rglob("*") if child.suffix in suffixes and child.is_file())
    if not files:
        raise VectorSourceError(f"{path}: no {'/'.join(suffixes)} files in this folder.")
    return files
