#!/usr/bin/env bash
# The main job, from a fresh machine: set up a virtual environment with
# tb-weightdiff and TensorFlow (or PyTorch, with --torch), train the CIFAR10
# demo (two runs) into logs/cifar10 (logs/cifar10_torch), then start TensorBoard with the Weight Diff tab.
#
#   bash run_demo.sh                        # defaults (real CIFAR10 if it can be downloaded)
#   bash run_demo.sh --synthetic --epochs 3 # any flag of demo/train_cifar10.py
#   LOGDIR=/tmp/wd PORT=6007 bash run_demo.sh
#   bash run_demo.sh --torch --synthetic    # the PyTorch twin (demo/train_cifar10_torch.py)
#   TORCH_SPEC="==2.13.0+cpu" bash run_demo.sh --torch   # which torch to install (default ==2.13.0)
#
# Needs Python 3.10+ and PyPI. No root.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
PORT=${PORT:-6006}
SCRIPT=demo/train_cifar10.py
EXTRA=tf
if [ "${1:-}" = "--torch" ]; then
  shift
  SCRIPT=demo/train_cifar10_torch.py
  EXTRA=torch
fi
LOGDIR=${LOGDIR:-logs/$([ "$EXTRA" = torch ] && echo cifar10_torch || echo cifar10)}

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "run_demo.sh: Python 3.10+ is needed ($PYTHON is older)" >&2; exit 2; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$EXTRA" = torch ]; then
  # Pinned first: where no torch is installed, a plain `torch` can pull a CUDA build of several GB.
  .venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q "torch${TORCH_SPEC:-==2.13.0}"
fi
.venv/bin/python -m pip install -q ".[$EXTRA]"

.venv/bin/python "$SCRIPT" --logdir "$LOGDIR" "$@"
echo "Starting TensorBoard on http://localhost:$PORT/#tb_weightdiff (Ctrl-C to stop)"
exec .venv/bin/tensorboard --logdir "$LOGDIR" --port "$PORT"
