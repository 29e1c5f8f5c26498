#!/usr/bin/env bash
# The main job, from a fresh machine: set up a virtual environment with
# tb-weightdiff and TensorFlow, train the CIFAR10 demo (two runs) into
# logs/cifar10, then start TensorBoard with the Weight Diff tab.
#
#   bash run_demo.sh                        # defaults (real CIFAR10 if it can be downloaded)
#   bash run_demo.sh --synthetic --epochs 3 # any flag of demo/train_cifar10.py
#   LOGDIR=/tmp/wd PORT=6007 bash run_demo.sh
#
# Needs Python 3.10+ and PyPI. No root.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
LOGDIR=${LOGDIR:-logs/cifar10}
PORT=${PORT:-6006}

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "run_demo.sh: Python 3.10+ is needed ($PYTHON is older)" >&2; exit 2; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q ".[tf]"

.venv/bin/python demo/train_cifar10.py --logdir "$LOGDIR" "$@"
echo "Starting TensorBoard on http://localhost:$PORT/#tb_weightdiff (Ctrl-C to stop)"
exec .venv/bin/tensorboard --logdir "$LOGDIR" --port "$PORT"
