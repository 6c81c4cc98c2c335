"""Faults: a stage that dies while it replaces an existing adapter folder leaves, at that path, the old
adapter or the new one, loadable, never a mix or nothing.

Two ways. Every step: a real stage runs in-process with each file-system step that touches its output
(a rename, a replace, the atomic exchange, and the weights half written) followed by a copy of the
folder's surroundings: the disk as a kill at that instant would leave it. Each copy must load as the
old or the new adapter, old until the swap and new after. Real kills: the stage in a subprocess that
`os._exit`s at the most exposed instants (between the two renames of the fallback, when the path is
empty; halfway through the weights), then loaded and rerun.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import transformers.modeling_utils

import modeling_era.modeling_era as modeling
from modeling_era import EraAdapter, EraConfig
from era_adapters import cli
from synonym_task import FAST

REPO = Path(__file__).resolve().parents[1]


def align_argv(setup: Path, output: Path) -> list[str]:
    """Stage 1 again, on another text sample than the adapter at setup/align."""
    return ["--data", str(setup / "data"), "--query-encoder", str(setup / "q"), "--doc-encoder", str(setup / "d"),
            "--seed", "1", "--num-texts", "60", "--output", str(output), "--cache-dir", str(setup / "cache")]


def adapt_argv(setup: Path, output: Path) -> list[str]:
    options = [f"--{key.replace('_', '-')}={value}" for key, value in FAST.items()]
    return ["--data", str(setup / "data"), "--init", str(setup / "align"), "--label-budget", "0.4",
            "--output", str(output), "--cache-dir", str(setup / "cache"), *options]


def record_argv(setup: Path, output: Path) -> list[str]:
    """evaluate --record: rewrites the adapter folder's config and card with its test metrics."""
    return ["--data", str(setup / "data"), "--system", str(output), "--record", "--output",
            str(output.parent.parent / "evaluation"), "--cache-dir", str(setup / "cache")]


STAGES = {"align": (cli.align_main, align_argv), "adapt": (cli.adapt_main, adapt_argv),
          "evaluate --record": (cli.evaluate_main, record_argv)}


def fingerprint(folder: Path) -> tuple:
    """What tells two adapters apart: the weights, and whether test metrics are recorded (config and
    card must agree on that)."""
    model = EraAdapter.from_pretrained(folder)  # restores a folder a killed save left aside
    recorded = "evaluation" in EraConfig.from_pretrained(folder).training_metadata
    assert recorded == ("ndcg_at_10" in (folder / "README.md").read_text()), "config and card disagree"
    return tuple(value.numpy().tobytes() for value in model.state_dict().values()), recorded


def disk_after_every_step(monkeypatch, run_dir: Path, copies: Path) -> list[Path]:
    """Copy `run_dir` after every rename / replace / exchange that touches it, and while the weights are
    half written; returns the list the copies are appended to."""
    taken: list[Path] = []

    def take() -> None:
        taken.append(Path(shutil.copytree(run_dir, copies / f"{len(taken):03d}", symlinks=True)))

    def after(function):
        def step(*args, **kwargs):
            result = function(*args, **kwargs)
            if any(str(run_dir) in os.fspath(arg) for arg in args[:2]):
                take()
            return result
        return step

    real_save = transformers.modeling_utils.safe_save_file

    def half_written_first(tensors, filename, metadata=None):
        Path(filename).write_bytes(b'{"half a header')
        take()
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(os, "rename", after(os.rename))
    monkeypatch.setattr(os, "replace", after(os.replace))
    monkeypatch.setattr(modeling, "_exchange", after(modeling._exchange))
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", half_written_first)
    return taken


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_killed_at_any_step_leaves_the_old_or_the_new_adapter(setup, tmp_path, monkeypatch, stage, exchange):
    main, argv = STAGES[stage]
    output = tmp_path / "run" / "adapter"
    shutil.copytree(setup / "align", output)
    old = fingerprint(output)
    if not exchange:  # systems without renameat2: two renames, with a moment when the path is empty
        monkeypatch.setattr(modeling, "_exchange", lambda first, second: False)
    copies = disk_after_every_step(monkeypatch, output.parent, tmp_path / "copies")
    assert main(argv(setup, output)) == 0
    monkeypatch.undo()
    new = fingerprint(output)
    assert new != old and len(copies) >= (2 if exchange else 4)
    states = ["old" if fingerprint(copy / "adapter") == old else "new" for copy in copies]  # raises if neither
    assert states == sorted(states, key=["old", "new"].index), states  # old until the swap, new after
    assert not [p.name for p in output.parent.iterdir() if p.name.startswith(".adapter.")]  # nothing left over


KILLED_STAGE = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import modeling_era.modeling_era as modeling
    from era_adapters import cli
    stage, argv, output, die_at = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    modeling._exchange = lambda first, second: False  # the two-rename fallback: the widest window
    real_rename = os.rename
    def rename(source, target):
        real_rename(source, target)
        if die_at == "path-empty" and Path(source) == output:  # the old folder is aside, the new not yet in
            os._exit(9)
    os.rename = rename
    if die_at == "half-written":
        import transformers.modeling_utils as mu
        def half_then_die(tensors, filename, metadata=None):
            Path(filename).write_bytes(b'{"half a header')
            os._exit(9)
        mu.safe_save_file = half_then_die
    sys.exit(getattr(cli, stage + "_main")(argv))
    """
)


@pytest.mark.parametrize("stage, die_at", [("align", "path-empty"), ("adapt", "half-written")])
def test_a_real_kill_while_saving_keeps_the_old_adapter_and_a_rerun_gives_the_new(setup, tmp_path, stage, die_at):
    main, argv = STAGES[stage]
    output = tmp_path / "run" / "adapter"
    shutil.copytree(setup / "align", output)
    old = fingerprint(output)
    killed = subprocess.run([sys.executable, "-c", KILLED_STAGE, stage, json.dumps(argv(setup, output)), str(output),
                             die_at], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""})
    assert killed.returncode == 9, killed.stderr[-3000:]
    assert (die_at == "path-empty") != output.exists()  # killed with the old adapter aside, or still in place
    assert fingerprint(output) == old  # loading puts it back
    assert main(argv(setup, output)) == 0  # the rerun (adapt: resumed from its checkpoint) completes the swap
    assert fingerprint(output) != old
    assert not [p.name for p in output.parent.iterdir() if p.name.startswith(".adapter.")]
