#!/usr/bin/env bash
# Creates bench/.venv-rllib: Ray RLlib (the established trainer bench/train_throughput.py compares
# kudos against) with NLE, in its own virtual environment so its pins never touch .venv.
# torch goes in FIRST, pinned to the CPU wheel on disk, so no resolver pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV=.venv-rllib
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
$PIP install torch==2.13.0
# The CPU torch above already satisfies RLlib's torch requirement; a --dry-run first shows that no
# other torch would be pulled (the script stops if one would, or if the resolver fails).
plan=$($VENV/bin/python -m pip install --dry-run 'ray[rllib]' 'torch==2.13.0' 2>&1) || { echo "$plan" >&2; exit 1; }
if echo "$plan" | grep -E '^Would install' | grep -q 'torch-'; then
    echo "pip would replace torch 2.13.0; refusing" >&2
    exit 1
fi
$PIP install 'ray[rllib]' 'torch==2.13.0'
# nle 1.3.0 pins gymnasium==1.2.0 and RLlib pins gymnasium==1.2.2 (the same API; 1.2.1/1.2.2
# are bug-fix releases), so nle goes in without its pin, its other requirements by hand.
$PIP install pybind11
$PIP install --no-deps nle==1.3.0
$VENV/bin/python -c "import ray, ray.rllib, nle, torch; print('ray', ray.__version__, 'nle', nle.__version__, 'torch', torch.__version__)"
