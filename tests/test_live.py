"""Live logs: a real training process writes while a real TensorBoard serves the tab."""

import os
import subprocess
import sys
import time

import pytest

from conftest import requires_tf

_TRAINING = r"""
import sys, time
import numpy as np
import keras
from tb_weightdiff.keras import WeightDiffCallback
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 8)).astype("float32")
y = (x @ rng.standard_normal((8, 1))).astype("float32")
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="frozen"),
                          keras.layers.Dense(8, activation="relu", name="hidden"), keras.layers.Dense(1, name="head")],
                         name="sequential")
model.get_layer("frozen").trainable = False
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
pause = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(1.5))
print("training", flush=True)
model.fit(x, y, epochs=8, verbose=0, callbacks=[WeightDiffCallback(sys.argv[1]), pause])
print("done", flush=True)
"""


@requires_tf
@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_verdicts_follow_a_training_in_progress(tmp_path, tensorboard_process, load_fast):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    server = tensorboard_process(logdir, load_fast=load_fast)
    trainer = subprocess.Popen(
        [sys.executable, "-c", _TRAINING, str(logdir / "live")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    statuses, seen_steps, verdicts_by_steps = [], [], {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status, _, body = server.get("/data/plugin/tb_weightdiff/verdicts")
            statuses.append(status)
            if status == 200:
                import json

                runs = json.loads(body)["runs"]
                if runs:
                    (run,) = runs
                    steps = tuple(run["steps"])
                    seen_steps.append(steps)
                    verdicts_by_steps[steps] = {layer["name"]: layer["verdict"] for layer in run["layers"]}
                    if steps == tuple(range(9)) and trainer.poll() is not None:
                        break
            time.sleep(0.3)
    finally:
        if trainer.poll() is None:
            trainer.kill()
        _, stderr = trainer.communicate(timeout=30)
    assert trainer.returncode == 0, stderr[-2000:]
    assert set(statuses) == {200}, statuses
    # Every step became visible, and the view only ever grew.
    assert seen_steps[-1] == tuple(range(9))
    assert all(later[: len(earlier)] == earlier for earlier, later in zip(seen_steps, seen_steps[1:]))
    assert len(set(seen_steps)) >= 3, seen_steps  # watched it grow, not just the end
    # Verdicts changed as they should: unknown with one step, then the planted truth.
    if (0,) in verdicts_by_steps:
        assert set(verdicts_by_steps[(0,)].values()) == {"unknown"}
    assert verdicts_by_steps[tuple(range(9))] == {
        "sequential/frozen": "frozen", "sequential/hidden": "learning", "sequential/head": "learning",
    }
    assert "Traceback" not in server.output()
