"""The demo (the README's main command) on a few hundred synthetic images."""

import os
import subprocess
import sys

import pytest

from tb_weightdiff import judge
from tb_weightdiff import metadata
from tb_weightdiff import reader
from conftest import requires_tf

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "train_cifar10.py")


@requires_tf
@pytest.mark.slow
def test_demo_writes_a_healthy_and_a_frozen_run(tmp_path):
    logdir = tmp_path / "cifar10"
    result = subprocess.run(
        [sys.executable, DEMO, "--synthetic", "--samples", "600", "--epochs", "2", "--logdir", str(logdir)],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorboard --logdir %s" % logdir in result.stdout
    with reader.open_logdir(str(logdir), loader="python") as opened:
        ours, warnings = reader.read_series(opened)
        keras_histograms, _ = reader.read_series(opened, plugin_name=metadata.HISTOGRAM_PLUGIN_NAME)
    assert warnings == []
    assert {s.run for s in ours} == {s.run for s in keras_histograms} == {"healthy/train", "frozen_conv2d_1/train"}
    by_key = {(s.run, s.tag): s for s in ours}
    assert len(by_key) == 16  # 8 weight tensors per run
    frozen = by_key[("frozen_conv2d_1/train", "sequential/conv2d_1/kernel")]
    assert frozen.steps == [0, 1, 2]
    assert [s.stat("reference_distance") for s in frozen.summaries] == [0.0, 0.0, 0.0]
    assert [s.stat("trainable") for s in frozen.summaries] == [0.0, 0.0, 0.0]
    healthy = by_key[("healthy/train", "sequential/conv2d_1/kernel")]
    assert healthy.summaries[-1].stat("relative_change") > 1e-3

    # The analysis flags the planted layer in the fault run, and nothing in the healthy run.
    with reader.open_logdir(str(logdir), loader="rust") as opened:
        judged = judge.analyze_logdir(opened)
    verdicts = {run["run"]: {layer["name"]: layer["verdict"] for layer in run["layers"]} for run in judged["runs"]}
    assert verdicts["frozen_conv2d_1/train"] == {
        "sequential/conv2d": "learning",
        "sequential/conv2d_1": "frozen",
        "sequential/dense": "learning",
        "sequential/dense_1": "learning",
    }
    assert set(verdicts["healthy/train"].values()) == {"learning"}
    # The reset check on the held-out images: the frozen convolution's reset costs exactly 0.
    resets = {run["run"]: {layer["name"]: layer["reset"] for layer in run["layers"]} for run in judged["runs"]}
    assert resets["frozen_conv2d_1/train"]["sequential/conv2d_1"]["increase"] == 0.0
    assert all(reset["examples"] == 120 for run in resets.values() for reset in run.values())
    assert max(reset["increase"] for reset in resets["healthy/train"].values()) > 0
    # The demo ends with the CLI's verdict table, then the command that opens the tab.
    printed = result.stdout
    table = printed[printed.index("== verdicts"):printed.index("Now run:")]
    assert "frozen_conv2d_1/train" in table and "healthy/train" in table
    assert "sequential/conv2d_1" in table and "frozen" in table


TORCH_DEMO = os.path.join(os.path.dirname(DEMO), "train_cifar10_torch.py")


@pytest.mark.slow
def test_the_pytorch_demo_writes_the_same_two_runs(tmp_path):
    pytest.importorskip("torch")
    logdir = tmp_path / "cifar10_torch"
    result = subprocess.run(
        [sys.executable, TORCH_DEMO, "--synthetic", "--samples", "600", "--epochs", "2", "--logdir", str(logdir)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with reader.open_logdir(str(logdir), loader="rust") as opened:
        judged = judge.analyze_logdir(opened)
    runs = {run["run"]: run for run in judged["runs"]}
    verdicts = {name: {layer["name"]: layer["verdict"] for layer in run["layers"]} for name, run in runs.items()}
    assert verdicts["frozen_conv2d_1"] == {
        "conv2d": "learning", "conv2d_1": "frozen", "dense": "learning", "dense_1": "learning",
    }
    assert set(verdicts["healthy"].values()) == {"learning"}
    assert runs["frozen_conv2d_1"]["layers"][0]["reset"] is not None
    resets = {name: {layer["name"]: layer["reset"] for layer in run["layers"]} for name, run in runs.items()}
    assert resets["frozen_conv2d_1"]["conv2d_1"]["increase"] == 0.0
    assert max(reset["increase"] for reset in resets["healthy"].values()) > 0
    assert all(run["steps"] == [0, 1, 2] and run["source"] == metadata.PLUGIN_NAME for run in runs.values())
    printed = result.stdout
    table = printed[printed.index("== verdicts"):printed.index("Now run:")]
    assert "frozen_conv2d_1" in table and "conv2d_1" in table
