"""Stored vectors written the way their owners write them (LanceDB, `datasets` Parquet, faiss, .npy,
.safetensors), with nothing from era_adapters, so the readers are tested against the real formats."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def write_lancedb(folder: Path, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str] | None = None,
                  table: str = "docs") -> str:
    import lancedb
    import pyarrow as pa

    columns = {"id": list(ids), "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(np.asarray(vectors, np.float32).ravel()), vectors.shape[1])}
    if texts is not None:
        columns["text"] = list(texts)
    lancedb.connect(str(folder)).create_table(table, pa.table(columns), mode="overwrite")
    return f"lancedb://{folder}?table={table}"


def write_parquet(path: Path, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str] | None = None,
                  vector_column: str = "embedding") -> str:
    """As embedded corpora are shared on the Hub: a `datasets` dataset exported to Parquet."""
    import datasets

    columns = {"id": list(ids), vector_column: [list(map(float, row)) for row in np.asarray(vectors, np.float32)]}
    if texts is not None:
        columns["text"] = list(texts)
    features = datasets.Features({"id": datasets.Value("string"),
                                  vector_column: datasets.Sequence(datasets.Value("float32")),
                                  **({"text": datasets.Value("string")} if texts is not None else {})})
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return str(path)


def write_faiss(path: Path, ids: Sequence[str], vectors: np.ndarray) -> str:
    """A flat inner-product faiss index; string ids live in an ids file, one per row."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, np.float32))
    faiss.write_index(index, str(path))
    ids_file = path.with_suffix(".ids.txt")
    ids_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
    return f"{path}?ids={ids_file}"


def write_npy(path: Path, ids: Sequence[str], vectors: np.ndarray) -> str:
    np.save(path, np.asarray(vectors))
    path.with_suffix(".ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return str(path)


def write_safetensors(path: Path, ids: Sequence[str], vectors: np.ndarray) -> str:
    from safetensors.numpy import save_file

    save_file({"embeddings": np.ascontiguousarray(vectors)}, str(path))
    path.with_suffix(".ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return str(path)


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
