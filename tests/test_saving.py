"""Crash-safe saving (modeling_era.modeling_era.atomic_*): a real save killed at chosen points always
leaves a loadable adapter — the old one or the new one — and files get the modes the umask gives."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from modeling_era import EraAdapter, EraConfig
from modeling_era.modeling_era import atomic_folder, atomic_write, recover_folder

# Saves adapter `seed` into `folder`, after patching the module so that the process dies (os._exit)
# right after the `die_after`-th rename (0: while the weights are being written), optionally without
# the atomic exchange (the two-rename fallback of systems without renameat2).
KILLED_SAVE = textwrap.dedent(
    """
    import os, sys
    import modeling_era.modeling_era as me
    folder, seed, die_after, exchange = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    if not exchange:
        me._exchange = lambda first, second: False
    renames = {"n": 0}
    real_rename = os.rename
    def rename(source, target):
        real_rename(source, target)
        renames["n"] += 1
        if renames["n"] == die_after:
            os._exit(9)
    me.os.rename = rename
    if die_after == 0:
        import safetensors.torch as st
        def half_then_die(tensors, filename, metadata=None):
            with open(filename, "wb") as handle:
                handle.write(b"{half a header")
            os._exit(9)
        st.save_file = half_then_die
        import transformers.modeling_utils as mu
        mu.safe_save_file = half_then_die
    from test_saving import adapter
    adapter(seed).save_pretrained(folder)
    """
)


def adapter(seed: int) -> EraAdapter:
    config = EraConfig(query_encoder="q/enc", doc_encoder="d/enc", query_dim=8, doc_dim=4)
    torch.manual_seed(seed)
    model = EraAdapter(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model


def same_weights(a: EraAdapter, b: EraAdapter) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def killed_save(folder: Path, seed: int, die_after: int, exchange: bool) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder), str(seed), str(die_after),
                           "1" if exchange else "0"], capture_output=True, text=True, timeout=300, env=env)
    return done.returncode


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.parametrize("die_after", [0, 1, 2, 3])
def test_a_killed_save_leaves_the_old_or_the_new_adapter(tmp_path, exchange, die_after):
    folder = tmp_path / "adapter"
    old, new = adapter(1), adapter(2)
    old.save_pretrained(folder)
    (folder / "NOTES.md").write_text("kept")
    code = killed_save(folder, 2, die_after, exchange)
    loaded = EraAdapter.from_pretrained(folder)  # recovers a folder left aside, if any
    # Killed while writing, or between the fallback's two renames: the old adapter; once the new one is
    # in place (or with no kill at all: the exchange renames nothing): the new one.
    died_before_the_swap = code != 0 and (die_after == 0 or (not exchange and die_after == 1))
    assert same_weights(loaded, old if died_before_the_swap else new)
    assert (folder / "NOTES.md").read_text() == "kept"  # the folder's other files survive a save
    adapter(3).save_pretrained(folder)  # the next save works and cleans what was set aside
    assert same_weights(EraAdapter.from_pretrained(folder), adapter(3))
    assert not list(tmp_path.glob(".adapter.previous-*"))


def test_recover_folder_restores_what_an_interrupted_swap_set_aside(tmp_path):
    target, aside = tmp_path / "out", tmp_path / ".out.previous-123-abc"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    assert recover_folder(target) and (target / "config.json").is_file() and not aside.exists()
    assert not recover_folder(target)


def test_atomic_folder_swaps_whole_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as staging:
            (staging / "a").write_text("2")
            raise RuntimeError("interrupted")
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_saved_files_get_the_umask_modes(tmp_path):
    previous = os.umask(0o022)
    try:
        adapter(1).save_pretrained(tmp_path / "shared")
        atomic_write(tmp_path / "file.txt", "x")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "shared").iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == 0o644
