"""The Keras callback on every Keras 3 backend: TensorFlow, PyTorch and JAX, each in its own process."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras_backend_run.py")
BACKENDS = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_callback_records_and_is_judged_right_on_every_backend(tmp_path, backend):
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec(BACKENDS[backend]) is None:
        pytest.skip("Keras or %s is not installed" % backend)
    result = subprocess.run(
        [sys.executable, SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600,
        env=dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["backend"] == backend
    assert found["warnings"] == []
    assert found["steps"] == [0, 1, 2, 3]
    assert found["updates"] == [0.0, 16.0, 32.0, 48.0]
    assert found["step0_matches"]  # step 0 is the weights before training, bit for bit
    assert found["verdicts"] == {"a": "learning", "bn": "learning", "frozen": "frozen", "out": "learning"}
    assert "a/kernel" in found["tags"] and "bn/moving_mean" in found["tags"]
