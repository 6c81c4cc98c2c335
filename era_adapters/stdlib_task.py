"""The embedded default task: Python code search built from the running interpreter's standard library.

Every install has real text to learn from: each documented stdlib function gives a query (the first
paragraph of its docstring) and a document (its source with the docstring removed). The task is
written in MAIR's layout, so it goes through the same loader as any other dataset. Deterministic for
a given interpreter and seed.
"""
from __future__ import annotations

import ast
import inspect
import json
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

TASK_NAME = "python_stdlib_code_search"
INSTRUCTION = "Given a description of a Python function, retrieve its implementation."
# Folders that are tests, GUIs, demos or vendored code rather than library functions.
SKIPPED_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
                "__pycache__", "pydoc_data", "venv"}
MIN_QUERY_WORDS, MAX_QUERY_WORDS = 6, 80


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        path for path in root.rglob("*.py") if not SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1])
    )


def first_paragraph(docstring: str) -> str:
    paragraph = inspect.cleandoc(docstring).split("\n\n")[0]
    return re.sub(r"\s+", " ", paragraph).strip()


def source_without_docstring(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    start = (node.decorator_list[0] if node.decorator_list else node).lineno - 1
    doc_node = node.body[0]
    kept = lines[start : doc_node.lineno - 1] + lines[doc_node.end_lineno : node.end_lineno]
    return textwrap.dedent("".join(kept)).strip()


def function_pairs(path: Path, module: str) -> list[dict]:
    """(query, document) pairs for the documented functions and methods of one module."""
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = text.splitlines(keepends=True)
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        docstring = ast.get_docstring(node)
        if not docstring or len(node.body) < 2:  # a docstring-only function leaves no code to find
            continue
        query = first_paragraph(docstring)
        if not MIN_QUERY_WORDS <= len(query.split()) <= MAX_QUERY_WORDS:
            continue
        code = source_without_docstring(lines, node)
        pairs.append({"id": f"{module}:{node.lineno}:{node.name}", "query": query, "doc": code})
    return pairs


def collect_pairs() -> list[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    pairs, seen_queries, seen_docs = [], set(), set()
    for path in stdlib_files():
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for pair in function_pairs(path, module):
            # Duplicated docstrings or bodies would make the single relevant document ambiguous.
            if pair["query"] in seen_queries or pair["doc"] in seen_docs:
                continue
            seen_queries.add(pair["query"])
            seen_docs.add(pair["doc"])
            pairs.append(pair)
    return pairs


def write_stdlib_task(parent: Path, num_pairs: int = 1500, seed: int = 0) -> Path:
    """Write the task (docs.jsonl, queries.jsonl, SOURCE.md) under `parent` once; return its folder.

    The folder name records the interpreter version, size and seed, so a different setting never
    reuses a folder built for another. Written to a temp folder and renamed: never half-written.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    folder = Path(parent) / f"{TASK_NAME}-py{version}-n{num_pairs}-seed{seed}" / TASK_NAME
    if (folder / "queries.jsonl").is_file():
        return folder
    pairs = collect_pairs()
    if len(pairs) < num_pairs:
        raise ValueError(f"this interpreter's stdlib has only {len(pairs)} usable functions; ask for fewer pairs.")
    chosen = random.Random(seed).sample(pairs, num_pairs)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
    with open(staging / "docs.jsonl", "w", encoding="utf-8") as docs:
        for pair in chosen:
            docs.write(json.dumps({"id": pair["id"], "doc": pair["doc"]}) + "\n")
    with open(staging / "queries.jsonl", "w", encoding="utf-8") as queries:
        for pair in chosen:
            record = {"qid": "q:" + pair["id"], "instruction": INSTRUCTION, "query": pair["query"],
                      "labels": [{"id": pair["id"], "score": 1}]}
            queries.write(json.dumps(record) + "\n")
    (staging / "SOURCE.md").write_text(
        f"# {TASK_NAME}\n\ndomain: code\n\nBuilt at run time by training/stdlib_task.py from the standard library of "
        f"Python {version} ({len(pairs)} documented functions; {num_pairs} sampled with seed {seed}). Query: the "
        "first paragraph of a function's docstring; document: its source without the docstring.\n"
    )
    try:
        staging.rename(folder)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
    return folder
