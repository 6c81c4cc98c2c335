#!/usr/bin/env bash
# The wheel as a user gets it: build it, install it NON-editable into a fresh venv, train with the
# console scripts from a folder outside the checkout, then reload the adapter in a venv that has only
# torch + transformers + safetensors (the Hub files must stand alone).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/era-wheel-XXXXXX)
trap 'rm -rf "$work"' EXIT
pip_quiet=(--quiet --disable-pip-version-check)
python -m pip wheel "${pip_quiet[@]}" --no-deps --wheel-dir "$work/dist" "$repo"
python -m venv "$work/wheel-venv"
"$work/wheel-venv/bin/python" -m pip install "${pip_quiet[@]}" torch==2.13.0
"$work/wheel-venv/bin/python" -m pip install "${pip_quiet[@]}" "$work/dist/"era_adapters-*.whl
python -m venv "$work/hub-venv"
"$work/hub-venv/bin/python" -m pip install "${pip_quiet[@]}" torch==2.13.0
"$work/hub-venv/bin/python" -m pip install "${pip_quiet[@]}" transformers safetensors
mkdir "$work/run"
cd "$work/run"  # outside the checkout: nothing of it is importable from here
"$work/wheel-venv/bin/python" "$repo/.ci/wheel_smoke.py" train "$repo/tests/tiny_models.py" "$work/run"
"$work/hub-venv/bin/python" "$repo/.ci/wheel_smoke.py" reload "$work/run"
