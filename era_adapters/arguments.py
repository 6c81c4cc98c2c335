"""Settings as dataclasses: one source of defaults, help text and valid ranges for the command line
(parsed by `transformers.HfArgumentParser`, as `TrainingArguments` is), the Python API and the
training metadata each stage records.

A field is declared with `option(default, help=..., valid=...)`; `valid` is a `Range` checked when
the dataclass is built (`Settings.__post_init__`), so a bad value is refused with the flag's name and
its valid range, on the command line and from Python alike.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import sys
import types
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, Sequence, TypeVar

from transformers import HfArgumentParser

_RANGE_KEY = "era_valid_range"
T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high` (either may be None: unbounded); `open_low`/`open_high` exclude the end."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.open_high and value == self.high)))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, open_low=True)
FRACTION = Range(0, 1, open_low=True)  # (0, 1]
OPEN_FRACTION = Range(0, 1, open_low=True, open_high=True)  # (0, 1)


def option(default: Any = MISSING, *, help: str, valid: Range | None = None, default_factory: Any = MISSING,
           **argparse_options: Any) -> Any:
    """A settings field: its default, command-line help, valid range (checked on construction) and any
    extra argparse options (e.g. `aliases`)."""
    metadata = {"help": help, **argparse_options}
    if valid is not None:
        metadata[_RANGE_KEY] = valid
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(kw_only=True)
class Settings:
    """Base of every settings dataclass: checks ranges and turns paths into strings on construction."""

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, spec.name, value)
            valid = spec.metadata.get(_RANGE_KEY)
            if valid is None or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in valid:
                raise ValueError(f"{flag_name(spec.name)} ({spec.name}) must be a number {valid}, got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of every field (what the stages save into `training_metadata`)."""
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class DataArguments(Settings):
    """Where the tasks come from, shared by every stage."""

    data: str = option(help="a folder of MAIR/BEIR task folders, one task folder, or comma-separated MAIR task "
                            "names (fetched from the Hub)")
    tasks: list[str] | None = option(None, help="task names to use (default: every task under --data)")
    cache_dir: str | None = option(None, help="ERA cache: embeddings, assembled models, task copies "
                                              "(default: $ERA_CACHE_DIR or ~/.cache/era)")
    drop_empty_docs: bool = option(False, help="drop documents whose text is empty, and their labels (default: "
                                               "embed them as empty, as BEIR and MTEB do); counted either way")
    skip_bad_tasks: bool = option(False, help="leave out the task folders under --data that cannot be read, listed "
                                              "in a warning (default: stop with an error naming the first)")
    train_qrels: str | None = option(None, help="qrels file (query-id, corpus-id, score) whose queries form the "
                                                "training pool of a BEIR task (default: its qrels/train.tsv)")
    dev_qrels: str | None = option(None, help="qrels file of the validation (dev) queries (default: qrels/dev.tsv)")
    test_qrels: str | None = option(None, help="qrels file of the test queries, never trained on (default: "
                                               "qrels/test.tsv)")
    test_fraction: float = option(0.5, help="share of the labeled queries carved off (seeded) as the test part when "
                                            "the data marks no test queries; 0: no test part. Every stage must use "
                                            "the same value", valid=Range(0, 1, open_high=True))

    def load_options(self) -> dict[str, Any]:
        """The keyword arguments of `era_adapters.data.load_tasks` that these settings fix."""
        return {"drop_empty_docs": self.drop_empty_docs, "skip_bad_tasks": self.skip_bad_tasks,
                "qrels": self.qrels_files()}

    def qrels_files(self) -> dict[str, str | None]:
        """The qrels file given for each role (None: the task folder's own)."""
        return {"train": self.train_qrels, "dev": self.dev_qrels, "test": self.test_qrels}


@dataclass(kw_only=True)
class VectorArguments(Settings):
    """Stored vectors instead of running an encoder (docs/stored_vectors.md), shared by every stage. A
    SOURCE is lancedb://PATH?table=T, Parquet/Arrow files or a `datasets` folder / Hub id, a .npy or
    .safetensors matrix (ids in NAME.ids.txt or '?ids=FILE'), or a faiss index with an id map."""

    doc_vectors: str | None = option(None, help="the index's document vectors, keyed by doc id, instead of running "
                                                "--doc-encoder: lancedb://PATH?table=T, Parquet/Arrow files or a "
                                                "datasets folder / Hub id, .npy or .safetensors (+ NAME.ids.txt), a "
                                                "faiss index (docs/stored_vectors.md)")
    doc_encoder_name: str | None = option(None, help="name of the encoder that made --doc-vectors, recorded as given "
                                                     "(free text, e.g. text-embedding-3-small)")
    doc_query_vectors: str | None = option(None, help="the queries embedded by that same doc encoder, keyed by query id "
                                                      "(doc2doc, --with-queries and fusion need them)")
    query_vectors: str | None = option(None, help="stored query-encoder vectors of the queries, keyed by query id, "
                                                  "instead of running --query-encoder (an API-only query encoder)")
    query_doc_vectors: str | None = option(None, help="stored query-encoder vectors of the documents, keyed by doc id "
                                                      "(stage 1 aligns on documents)")
    query_encoder_name: str | None = option(None, help="name of the query encoder of --query-vectors (free text)")
    id_column: str | None = option(None, help="id column of the sources (default: 'id'; a source's '?id=' wins)")
    vector_column: str | None = option(None, help="vector column (default: 'vector', 'embedding' or the one list of "
                                                  "floats; '?vector=' wins)")
    text_column: str | None = option(None, help="text column of --doc-vectors, compared with the corpus' texts")
    vectors_normalized: bool | None = option(None, help="declare the stored vectors L2-normalised (true) or not "
                                                        "(false); checked. Default: detected")
    missing_vectors: Literal["error", "skip"] = option(
        "error", help="documents without a stored vector: refuse (error) or leave them out of the corpus (skip)")

    @property
    def stored_doc_side(self) -> bool:
        return self.doc_vectors is not None

    def check_doc_side(self, doc_encoder: str | None, needs_name: bool = False) -> None:
        """Exactly one way to get the doc side; stored vectors named where the adapter will record them."""
        if doc_encoder is not None and self.doc_vectors is not None:
            raise ValueError("give --doc-encoder (a model ERA runs) or --doc-vectors (stored vectors), not both; name "
                             "the encoder of stored vectors with --doc-encoder-name.")
        if self.doc_encoder_name is not None and self.doc_vectors is None:
            raise ValueError("--doc-encoder-name names the encoder of --doc-vectors; with --doc-encoder the model's id "
                             "is recorded.")
        if needs_name and self.doc_vectors is not None and not self.doc_encoder_name:
            raise ValueError("--doc-vectors: name the encoder that made them with --doc-encoder-name (e.g. "
                             "text-embedding-3-small): the adapter records it and check_doc_encoder compares it.")


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` that knows `option`'s valid ranges (kept out of argparse, checked by `Settings`)."""

    @staticmethod
    def _parse_dataclass_field(parser: Any, spec: dataclasses.Field) -> None:
        if _RANGE_KEY in spec.metadata:
            spec = copy.copy(spec)
            valid = spec.metadata[_RANGE_KEY]
            help_text = spec.metadata.get("help", "")
            spec.metadata = types.MappingProxyType(
                {**{k: v for k, v in spec.metadata.items() if k != _RANGE_KEY}, "help": f"{help_text} (valid: {valid})"}
            )
        HfArgumentParser._parse_dataclass_field(parser, spec)


def parse_arguments(types_: Sequence[type[T]], argv: Sequence[str] | None = None, description: str | None = None,
                    ) -> tuple[Any, ...]:
    """Parse the command line into the given settings dataclasses. A value out of range, or any other
    invalid setting, ends the program with `error: <message>` and exit status 2, like argparse's own errors."""
    import argparse

    parser = ArgumentParser(list(types_), description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv)))
    except ValueError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


def split_options(options: dict[str, Any], *types_: type) -> list[dict[str, Any]]:
    """Share keyword options among settings dataclasses by field name; an unknown name is a TypeError
    that lists the valid ones."""
    names = [{spec.name for spec in dataclasses.fields(kind)} for kind in types_]
    known = set().union(*names)
    for name in sorted(set(options) - known):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(known))}."
        raise TypeError(f"unknown option {name!r}; {hint}")
    return [{key: value for key, value in options.items() if key in group} for group in names]


__all__ = [
    "AT_LEAST_ONE",
    "FRACTION",
    "NON_NEGATIVE",
    "OPEN_FRACTION",
    "POSITIVE",
    "ArgumentParser",
    "DataArguments",
    "Range",
    "Settings",
    "VectorArguments",
    "flag_name",
    "option",
    "parse_arguments",
    "split_options",
]
