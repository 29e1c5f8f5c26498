#!/usr/bin/env bash
# The test suite, from a fresh machine: install Debian's chromium for the
# browser tests (apt, needs root), build a wheel of this checkout, install it
# as a user would into a fresh virtual environment with TensorFlow and run
# every test; then install the same wheel into a second environment WITHOUT
# TensorFlow (where TensorBoard often runs) and run the suite again there:
# the plugin, weights_pb and the CLI must work; TensorFlow-only tests skip, and of the
# browser tests only those marked also_without_tf run there (the TensorFlow job runs all).
# The first environment also has PyTorch (CPU), Lightning, tensorboardX and JAX: the corpus's
# PyTorch recipes, the PyTorch logger and Lightning callback, Keras on its three backends.
#
#   bash run_tests.sh              # everything
#   bash run_tests.sh -k summary   # extra arguments go to both pytest runs
#   TBWD_TEST_JOBS=0 bash run_tests.sh   # without pytest-xdist's workers
#
# Needs Python 3.10+, PyPI, and root (or chromium already at /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
# pytest-xdist workers; a test file stays on one worker (its module fixtures are
# built once). Most of the suite waits on TensorBoard, Chromium and training, so
# two workers on two cores halve its wall time. TBWD_TEST_JOBS=0: one process.
JOBS=${TBWD_TEST_JOBS:-2}
STARTED=$SECONDS
elapsed() { echo "($((SECONDS - STARTED)) s since run_tests.sh started)"; }
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "run_tests.sh: Python 3.10+ is needed ($PYTHON is older)" >&2; exit 2; }

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  else
    echo "run_tests.sh: /usr/bin/chromium is missing; run as root or 'sudo apt-get install chromium'" >&2
    exit 2
  fi
fi

rm -rf .venv-test .venv-notf dist-test
"$PYTHON" -m venv .venv-test
.venv-test/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv-test/bin/python -m pip wheel -q --no-deps --no-build-isolation -w dist-test .
WHEEL=$(ls dist-test/tb_weightdiff-*.whl)
# PyTorch's CPU build, pinned: a plain `torch` from PyPI is a CUDA build of several GB.
.venv-test/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0+cpu}"
# Lightning, tensorboardX and JAX (CPU): the Lightning callback, a tensorboardX writer, and the
# Keras callback under KERAS_BACKEND=jax (tests/test_keras_backends.py runs all three backends).
.venv-test/bin/python -m pip install -q "$WHEEL[tf,torch,lightning,test]" tensorboardX "jax==${JAX_VERSION:-0.10.2}"

echo "== tests with TensorFlow (installed wheel: $WHEEL) $(elapsed) =="
TBWD_EXPECT_INSTALLED=1 .venv-test/bin/pytest -q -p no:cacheprovider -n "$JOBS" --dist loadfile --durations=15 "$@"

"$PYTHON" -m venv .venv-notf
.venv-notf/bin/python -m pip install -q --upgrade pip
.venv-notf/bin/python -m pip install -q "$WHEEL[test]"
echo "== tests without TensorFlow $(elapsed) =="
TBWD_EXPECT_INSTALLED=1 TBWD_EXPECT_NO_TF=1 .venv-notf/bin/pytest -q -p no:cacheprovider -n "$JOBS" --dist loadfile --durations=15 "$@"
echo "== all tests passed $(elapsed) =="
