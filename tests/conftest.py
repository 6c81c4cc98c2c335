"""Shared fixtures: where the real datasets live, and a skip marker for a fresh clone without them."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real datasets not found at {SHARED_DATA} (they sit beside the repo in CI; a fresh clone has none)",
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection from this process is a test failure, not a silent Hub call."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The synonym task with tiny Q/D, a warm cache and its stage-1 adapter (tests/synonym_task.py)."""
    from synonym_task import aligned_setup

    return aligned_setup(tmp_path_factory.mktemp("adapt"))
