"""The two sides of an adapter as every stage sees them: an encoder ERA runs, or vectors someone stored.

A *side* gives the vectors a stage needs, whatever makes them:

* `EncoderSide` runs a `TextEncoder` (or a fusion `FusedEncoder`) through the embedding cache;
* `StoredSide` reads a `VectorSource` by id: an index built with an embedding API, whose model cannot
  (or will not) be run again. Its documents come from `--doc-vectors` (`--query-doc-vectors` for the
  query side) and its queries from `--doc-query-vectors` (`--query-vectors`);
* `FusedSide` puts two sides next to each other (a fusion adapter's strong encoder, run, and the
  stored doc encoder's query vectors).

Each has `documents(task)` (the corpus, in corpus order), `queries(task, queries)`, `texts(texts,
keys)` (a mixed list such as stage 1's sample: an encoder reads the texts, a stored side the keys
`(kind, id)`), `prepare(tasks)` (checks stored vectors against the corpora once) and `config_fields()`
(what the adapter's `EraConfig` records). A stage (or a new one, e.g. distillation) calls these and
needs no other branch for stored vectors; `doc_side_from` / `query_side_from` build them from the
stage's `VectorArguments`.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from era_adapters.models import weights_fingerprint
from era_adapters.cache import embed_documents, embed_queries, embed_texts
from era_adapters.data import Query, Task, select_docs
from era_adapters.vectors import VectorSource, VectorSourceError, open_source

__all__ = ["EncoderSide", "FusedSide", "StoredSide", "as_side", "doc_side_from", "query_side_from"]

logger = logging.getLogger(__name__)
Key = tuple[str, str]  # ("doc" | "query", id)
_TEXT_SAMPLE = 1000  # corpus texts compared with a source's text column


class EncoderSide:
    """A side whose vectors come from running an encoder (cached)."""

    kind = "model"

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def __repr__(self) -> str:
        return f"EncoderSide({self.encoder!r})"

    @property
    def name(self) -> str:
        return self.encoder.model_id

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def normalize(self) -> bool:
        return bool(getattr(self.encoder, "normalize", True))

    def format_query(self, query: str, instruction: str | None = "") -> str:
        return self.encoder.format_query(query, instruction)

    def prepare(self, tasks: Sequence[Task]) -> list[Task]:
        return list(tasks)

    def require(self, kind: str, purpose: str) -> None:
        """An encoder embeds any text: nothing to require."""

    def documents(self, task: Task, **embed: Any) -> np.ndarray:
        return embed_documents(self.encoder, task.doc_texts, **embed)

    def queries(self, task: Task, queries: Sequence[Query], **embed: Any) -> np.ndarray:
        return embed_queries(self.encoder, [q.query for q in queries], [q.instruction for q in queries], **embed)

    def texts(self, texts: Sequence[str], keys: Sequence[Key], **embed: Any) -> np.ndarray:
        return embed_texts(self.encoder, texts, **embed)

    def config_fields(self, role: str) -> dict[str, Any]:
        encoder = self.encoder
        if role == "doc":
            return {"doc_encoder": encoder.model_id, "doc_encoder_revision": encoder.revision, "doc_dim": encoder.dim,
                    "similarity": "cosine" if encoder.normalize else "dot", "doc_encoder_kind": "model",
                    "doc_encoder_sha256": weights_fingerprint(encoder.path, encoder.cache_dir)}
        if role == "light":
            return {"fusion_encoder": encoder.model_id, "fusion_encoder_revision": encoder.revision,
                    "fusion_dim": encoder.dim, "fusion_pooling": encoder.pooling,
                    "fusion_max_seq_length": encoder.max_length, "fusion_lowercase_queries": encoder.do_lower_case}
        return {"query_encoder": encoder.model_id, "query_encoder_revision": encoder.revision,
                "query_dim": encoder.dim, "normalize_input": encoder.normalize, "pooling": encoder.pooling,
                "max_seq_length": encoder.max_length, "lowercase_queries": encoder.do_lower_case,
                "query_encoder_kind": "model"}

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name}


class StoredSide:
    """A side whose vectors are stored: documents and/or queries, each a `VectorSource` keyed by id.

    `missing`: "error" refuses a corpus with documents that have no vector; "skip" drops them from
    every corpus the stages use (counted, warned and recorded).
    """

    kind = "external"

    def __init__(self, name: str, documents: VectorSource | None, queries: VectorSource | None = None, *,
                 role: str = "doc", missing: str = "error") -> None:
        if documents is None and queries is None:
            raise ValueError("a stored side needs document or query vectors.")
        if documents is not None and queries is not None and documents.dim != queries.dim:
            raise VectorSourceError(f"{documents.what} are {documents.dim}-d but {queries.what} are {queries.dim}-d: "
                                    "both must come from the same encoder.")
        self.name, self.documents_source, self.queries_source = name, documents, queries
        self.role, self.missing = role, missing
        self.report: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"StoredSide({self.name!r}, documents={self.documents_source!r}, queries={self.queries_source!r})"

    @property
    def dim(self) -> int:
        return (self.documents_source or self.queries_source).dim

    @property
    def normalize(self) -> bool:
        return all(source.normalized for source in (self.documents_source, self.queries_source) if source is not None)

    def format_query(self, query: str, instruction: str | None = "") -> str:
        return query  # the vectors were made by whoever stored them; the text only names the query

    def _source(self, kind: str, purpose: str) -> VectorSource:
        self.require(kind, purpose)
        source = self.documents_source if kind == "doc" else self.queries_source
        source.check()
        return source

    def require(self, kind: str, purpose: str) -> None:
        """Refuse, naming the flag to add, when the vectors of `kind` ("doc" | "query") were not given."""
        side = "doc" if self.role == "doc" else "query"
        if kind == "query" and self.queries_source is None:
            flag = "--doc-query-vectors" if side == "doc" else "--query-vectors"
            raise VectorSourceError(
                f"{purpose} needs the queries' vectors from the {side} encoder, which is not run (its documents are "
                f"stored vectors): pass {flag} SOURCE (the queries embedded by {self.name}, keyed by query id).")
        if kind == "doc" and self.documents_source is None:
            flag = "--doc-vectors" if side == "doc" else "--query-doc-vectors"
            raise VectorSourceError(f"{purpose} needs {self.name}'s vectors of the documents: pass {flag} SOURCE.")

    def prepare(self, tasks: Sequence[Task]) -> list[Task]:
        """Check the document vectors against every corpus: counts of documents without a vector
        (refused, or dropped with `missing="skip"`) and of vectors without a document (warned); doc
        ids that repeat across tasks are refused (one source cannot tell them apart)."""
        if self.documents_source is None:
            return list(tasks)
        source = self._source("doc", "checking the corpora")
        corpora = [pa.array(task.doc_ids, pa.string()) for task in tasks]
        every = pa.chunked_array(corpora, pa.string())
        if len(tasks) > 1 and pc.count_distinct(every).as_py() < len(every):
            counts = pc.value_counts(every)
            repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1)).slice(0, 3)
            raise VectorSourceError(f"the tasks share doc ids (e.g. {repeated.to_pylist()}) while {source.what} is one "
                                    "source keyed by id: run one task at a time.")
        prepared = []
        for task, corpus in zip(tasks, corpora):
            join = source.join(corpus, where=f"task {task.name}")
            has_vector = join.pop("has_vector")
            if join["missing"] and self.missing != "skip":
                raise VectorSourceError(
                    f"{source.what} {source.spec}: {join['missing']} of {join['ids']} documents of task {task.name} have "
                    f"no vector (e.g. {join['missing_examples']}). Embed them into the index, check --id-column, or pass "
                    "--missing-vectors skip to leave them out of the corpus (counted in the report).")
            if join["missing"]:
                warnings.warn(f"task {task.name}: {join['missing']} of {join['ids']} documents have no vector in "
                              f"{source.spec} and are left out of the corpus (--missing-vectors skip).", stacklevel=2)
                task = select_docs(task, np.flatnonzero(has_vector))
            join["text_mismatches"] = self._compare_texts(source, task)
            self.report[task.name] = join
            prepared.append(task)
        unused = join["unused"] if len(tasks) == 1 else source.join(every, where="the tasks' corpora")["unused"]
        if unused:
            logger.warning("%s: %d of %d vectors have no document in the tasks' corpora; they are not used.",
                           source.spec, unused, source.num_rows)
        return prepared

    def _compare_texts(self, source: VectorSource, task: Task) -> int | None:
        """With a text column: how many of a sample of corpus documents have another text in the source
        (a shifted id column shows up here). Warned, counted."""
        if not source.has_text or not task.doc_ids:
            return None
        rows = np.sort(np.random.default_rng(0).choice(len(task.doc_ids), min(_TEXT_SAMPLE, len(task.doc_ids)),
                                                       replace=False))
        stored = source.texts_of([task.doc_ids[row] for row in rows])
        corpus = task.docs.select(rows)["doc"]
        different = sum(a is not None and a.strip() != b.strip() for a, b in zip(stored, corpus))
        if different:
            warnings.warn(f"task {task.name}: {different} of {len(rows)} sampled documents have another text in "
                          f"{source.spec}'s text column than in the corpus; check that ids match.", stacklevel=3)
        return different

    def documents(self, task: Task, **_: Any) -> np.ndarray:
        return self._source("doc", f"task {task.name}").lookup(task.doc_ids, purpose=f"task {task.name}'s documents")

    def queries(self, task: Task, queries: Sequence[Query], **_: Any) -> np.ndarray:
        source = self._source("query", f"the queries of task {task.name}")
        return source.lookup([q.qid for q in queries], purpose=f"queries of task {task.name}")

    def texts(self, texts: Sequence[str], keys: Sequence[Key], **_: Any) -> np.ndarray:
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        for kind in ("doc", "query"):
            rows = [row for row, key in enumerate(keys) if key[0] == kind]
            if rows:
                source = self._source(kind, "stage 1's sample" if kind == "doc" else "aligning on queries")
                out[rows] = source.lookup([keys[row][1] for row in rows], purpose=f"sampled {kind}s")
        return out

    def fingerprint(self) -> tuple[str, list[str]]:
        source = self._source("doc", "the fingerprint")
        ids = source.fingerprint_ids()
        return source.fingerprint(ids), ids

    def config_fields(self, role: str) -> dict[str, Any]:
        if role == "doc":
            fingerprint, ids = self.fingerprint()
            return {"doc_encoder": self.name, "doc_encoder_revision": None, "doc_dim": self.dim,
                    "similarity": "cosine" if self.normalize else "dot", "doc_encoder_kind": "external",
                    "doc_vectors_fingerprint": fingerprint, "doc_vectors_fingerprint_ids": ids,
                    "doc_vectors_normalized": self.normalize}
        if role == "light":
            return {"fusion_encoder": self.name, "fusion_dim": self.dim}
        return {"query_encoder": self.name, "query_encoder_revision": None, "query_dim": self.dim,
                "normalize_input": True, "query_encoder_kind": "external"}

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "missing_vectors": self.missing}
        for label, source in (("documents", self.documents_source), ("queries", self.queries_source)):
            if source is not None:
                out[label] = {"source": source.spec, **source.check().as_dict()}
        if self.report:
            out["corpora"] = self.report
        return out


class FusedSide:
    """Two sides side by side, `(n, first.dim + second.dim)`: a fusion adapter's query input when its
    light (doc) encoder is stored, so its query vectors are read by id."""

    kind = "fused"

    def __init__(self, first: Any, second: Any) -> None:
        self.parts = (first, second)
        second.require("query", "a fusion adapter (it feeds D(query) to its light branch)")

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self.parts)

    @property
    def name(self) -> str:
        return " + ".join(part.name for part in self.parts)

    @property
    def encoder(self) -> Any:
        return self.parts[0].encoder

    def format_query(self, query: str, instruction: str | None = "") -> str:
        return self.parts[0].format_query(query, instruction)

    def prepare(self, tasks: Sequence[Task]) -> list[Task]:
        return list(tasks)

    def require(self, kind: str, purpose: str) -> None:
        for part in self.parts:
            part.require(kind, purpose)

    def queries(self, task: Task, queries: Sequence[Query], **embed: Any) -> np.ndarray:
        return np.concatenate([part.queries(task, queries, **embed) for part in self.parts], axis=1)

    def texts(self, texts: Sequence[str], keys: Sequence[Key], **embed: Any) -> np.ndarray:
        return np.concatenate([part.texts(texts, keys, **embed) for part in self.parts], axis=1)

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "parts": [part.record() for part in self.parts]}


def as_side(encoder_or_side: Any) -> Any:
    """A side as is; a `TextEncoder` (or `FusedEncoder`) wrapped in an `EncoderSide`."""
    return encoder_or_side if hasattr(encoder_or_side, "config_fields") or isinstance(encoder_or_side, FusedSide) \
        else EncoderSide(encoder_or_side)


def _source_options(args: Any) -> dict[str, Any]:
    return {"id_column": args.id_column, "vector_column": args.vector_column, "text_column": args.text_column,
            "normalized": args.vectors_normalized}


def doc_side_from(args: Any, encoder_factory: Any = None, *, name: str | None = None) -> Any:
    """The doc side a stage's `VectorArguments` ask for: stored vectors (`doc_vectors`) or the
    `encoder_factory()` encoder (None when the stage has no doc encoder to run). `name` defaults to
    `args.doc_encoder_name`."""
    if args.doc_vectors is None:
        if args.doc_query_vectors is not None:
            raise ValueError("--doc-query-vectors goes with --doc-vectors (stored doc vectors); with --doc-encoder "
                             "the doc encoder embeds the queries itself.")
        return None if encoder_factory is None else EncoderSide(encoder_factory())
    options = _source_options(args)
    documents = open_source(args.doc_vectors, "--doc-vectors", **options)
    queries = open_source(args.doc_query_vectors, "--doc-query-vectors", **{**options, "text_column": None})
    return StoredSide(name or args.doc_encoder_name or args.doc_vectors, documents, queries, role="doc",
                      missing=args.missing_vectors)


def query_side_from(args: Any, *, name: str | None = None) -> StoredSide | None:
    """A stored query side (`query_vectors` / `query_doc_vectors`), or None: the query encoder is run."""
    if args.query_vectors is None and args.query_doc_vectors is None:
        return None
    options = {**_source_options(args), "text_column": None, "normalized": None}
    return StoredSide(name or args.query_encoder_name or args.query_vectors or args.query_doc_vectors,
                      open_source(args.query_doc_vectors, "--query-doc-vectors", **options),
                      open_source(args.query_vectors, "--query-vectors", **options), role="query")
