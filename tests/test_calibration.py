"""Verdicts on real Keras trainings with planted ground truth, from both log sources.

Two different models (an MLP with BatchNorm under SGD with momentum, and a 1-D
CNN under plain SGD, other data, other seed) are each trained once, with our
`WeightDiffCallback` and Keras's own `TensorBoard(histogram_freq=1)` writing
into the same run. Each model carries:

- `frozen_*`: `trainable=False` -> frozen;
- `slow_dense`: its kernel's gradient is scaled down by 1e4 (the forward pass
  is unchanged: `w * 1e-4 + stop_gradient(w * (1 - 1e-4))`) under SGD ->
  not_learning;
- `nan_dense`: a callback writes a NaN into its kernel after epoch 2; the
  layer zeroes non-finite weights in its forward pass, so the loss stays
  finite and every other layer keeps training -> diverged (from step 2 in our
  summaries, step 1 in Keras's histograms, which start after epoch 1);
- `permuted_dense`: `trainable=False`, its kernel permuted by a callback after
  every epoch: its histogram never changes but its weights do. Our summaries
  must not call it frozen; Keras's histograms do (the documented blind spot);
- the other layers are healthy -> learning (BatchNorm's moving statistics,
  non-trainable, must not be called not_learning).

The figures printed by `python tests/test_calibration.py` are the score table
of the README's calibration section, from which the default `Thresholds` were chosen.
"""

import math
import os
import sys

import numpy as np
import pytest

from tb_weightdiff import judge
from tb_weightdiff import verdicts
from tb_weightdiff import metadata
from tb_weightdiff import reader
from conftest import requires_tf

pytestmark = [requires_tf, pytest.mark.slow]

NAN_AFTER_EPOCH = 2  # the NaN is written after this many epochs

EXPECTED_OURS = {
    "frozen": "frozen",
    "healthy": "learning",
    "batch_norm": "learning",
    "head": "learning",
    "slow_dense": "not_learning",
    "nan_dense": "diverged",
    "permuted_dense": "learning",
}
# Keras's histograms cannot see a permutation: identical histograms are frozen.
EXPECTED_HISTOGRAMS = dict(EXPECTED_OURS, permuted_dense="frozen")


def _planted_layers(keras):
    """The custom layers; built on demand so that this module imports without Keras."""
    ops = keras.ops

    class ScaledGradientDense(keras.layers.Dense):
        """Dense whose kernel gradient is multiplied by `gradient_scale`; forward unchanged."""

        def __init__(self, units, gradient_scale=1e-4, **kwargs):
            super().__init__(units, **kwargs)
            self.gradient_scale = gradient_scale

        def call(self, inputs):
            kernel = self.kernel * self.gradient_scale + ops.stop_gradient(
                self.kernel * (1.0 - self.gradient_scale)
            )
            outputs = ops.matmul(inputs, kernel) + self.bias
            return self.activation(outputs)

    class SanitizingDense(keras.layers.Dense):
        """Dense that treats non-finite kernel entries as 0, so a NaN weight stays local."""

        def call(self, inputs):
            kernel = ops.where(ops.isfinite(self.kernel), self.kernel, ops.zeros_like(self.kernel))
            return self.activation(ops.matmul(inputs, kernel) + self.bias)

    class Sabotage(keras.callbacks.Callback):
        """Writes a NaN into `nan_dense` after epoch NAN_AFTER_EPOCH; permutes `permuted_dense`."""

        def __init__(self, seed):
            super().__init__()
            self.rng = np.random.default_rng(seed)

        def on_epoch_end(self, epoch, logs=None):
            permuted = self.model.get_layer("permuted_dense").kernel
            value = np.asarray(permuted.numpy())
            permuted.assign(self.rng.permutation(value.ravel()).reshape(value.shape))
            if epoch + 1 == NAN_AFTER_EPOCH:
                kernel = self.model.get_layer("nan_dense").kernel
                value = np.array(kernel.numpy())
                value[0, 0] = np.nan
                kernel.assign(value)

    return ScaledGradientDense, SanitizingDense, Sabotage


def _mlp(keras, seed):
    """Model A: an MLP with BatchNorm on a 4-class teacher task, SGD with momentum."""
    ScaledGradientDense, SanitizingDense, _ = _planted_layers(keras)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 16)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((16, 4)), axis=1)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu", name="frozen", trainable=False),
            keras.layers.Dense(32, activation="relu", name="healthy"),
            keras.layers.BatchNormalization(name="batch_norm"),
            ScaledGradientDense(32, activation="relu", name="slow_dense"),
            SanitizingDense(32, activation="relu", name="nan_dense"),
            keras.layers.Dense(32, activation="relu", name="permuted_dense", trainable=False),
            keras.layers.Dense(4, name="head"),
        ],
        name="mlp",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, x, y, dict(epochs=5, batch_size=32)


def _cnn(keras, seed):
    """Model B: a 1-D CNN regressing a smoothed signal, plain SGD, other data and seed."""
    ScaledGradientDense, SanitizingDense, _ = _planted_layers(keras)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((384, 24, 3)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1, keepdims=True) - 0.5 * x[:, :, 1].max(axis=1, keepdims=True)).astype(np.float32)
    model = keras.Sequential(
        [
            keras.Input((24, 3)),
            keras.layers.Conv1D(8, 3, activation="relu", name="frozen", trainable=False),
            keras.layers.Conv1D(12, 3, activation="relu", name="healthy"),
            keras.layers.BatchNormalization(name="batch_norm"),
            keras.layers.GlobalAveragePooling1D(name="pool"),
            ScaledGradientDense(16, activation="tanh", name="slow_dense"),
            SanitizingDense(16, activation="tanh", name="nan_dense"),
            keras.layers.Dense(16, activation="tanh", name="permuted_dense", trainable=False),
            keras.layers.Dense(1, name="head"),
        ],
        name="cnn",
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model, x, y, dict(epochs=6, batch_size=16)


MODELS = {"mlp": (_mlp, 7), "cnn": (_cnn, 20261122)}


def train(logdir, model_name):
    """Trains one planted model with both callbacks into `logdir/<model_name>`."""
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    build, seed = MODELS[model_name]
    keras.utils.set_random_seed(seed)
    model, x, y, fit_args = build(keras, seed)
    _, _, Sabotage = _planted_layers(keras)
    run_dir = os.path.join(str(logdir), model_name)
    model.fit(
        x,
        y,
        verbose=0,
        shuffle=True,
        callbacks=[
            Sabotage(seed),  # first: both loggers see what it did
            keras.callbacks.TensorBoard(run_dir, histogram_freq=1),
            WeightDiffCallback(run_dir),
        ],
        **fit_args,
    )
    return model


def judge_logdir(logdir, source, loader="python", thresholds=None):
    with reader.open_logdir(str(logdir), loader=loader) as opened:
        return judge.analyze_logdir(opened, thresholds=thresholds, source=source)


def _layers(run):
    """`{short layer name: layer dict}` (the model name prefix dropped)."""
    return {layer["name"].split("/", 1)[1]: layer for layer in run["layers"]}


@pytest.fixture(scope="module")
def trained_logdir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("calibration")
    for model_name in MODELS:
        train(logdir, model_name)
    return logdir


@pytest.fixture(scope="module")
def judged(trained_logdir):
    """`judged(source, loader="python")`, each judged once per module."""
    cache = {}

    def get(source, loader="python"):
        if (source, loader) not in cache:
            cache[source, loader] = judge_logdir(trained_logdir, source, loader)
        return cache[source, loader]

    return get


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_our_summaries_find_the_planted_layers(judged, model_name):
    result = judged("auto")
    run = next(r for r in result["runs"] if r["run"] == model_name + "/train")
    assert run["source"] == metadata.PLUGIN_NAME
    assert run["baseline_step"] == 0
    assert any("plain histogram series" in w for w in run["warnings"]), run["warnings"]
    layers = _layers(run)
    assert {name: layers[name]["verdict"] for name in EXPECTED_OURS} == EXPECTED_OURS
    assert layers["nan_dense"]["diverged_step"] == NAN_AFTER_EPOCH
    # BatchNorm's moving statistics are non-trainable and move: judged, not dismissed.
    moving = {v["name"]: v for v in layers["batch_norm"]["variables"]}
    for name in ("moving_mean", "moving_variance"):
        assert moving[name]["trainable"] is False
        assert moving[name]["verdict"] == "learning", moving[name]
    assert all(v["trainable"] is False for v in layers["frozen"]["variables"])
    # The permuted kernel: histogram unchanged, weights not.
    permuted = {v["name"]: v for v in layers["permuted_dense"]["variables"]}["kernel"]
    assert permuted["shift"] == 0.0
    assert permuted["relative_change"] > 0.1
    # The slow layer's bias learns normally; the layer follows its (larger) kernel.
    slow = {v["name"]: v for v in layers["slow_dense"]["variables"]}
    assert slow["bias"]["verdict"] == "learning"
    assert slow["kernel"]["verdict"] == "not_learning"


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_keras_histograms_find_the_planted_layers_but_the_permutation(judged, model_name):
    result = judged(metadata.HISTOGRAM_PLUGIN_NAME)
    run = next(r for r in result["runs"] if r["run"] == model_name + "/train")
    assert run["source"] == metadata.HISTOGRAM_PLUGIN_NAME
    # Keras logs its first histograms after epoch 1, at step 0.
    assert run["baseline_step"] == 0
    assert any("not the weights before training" in w for w in run["warnings"])
    layers = _layers(run)
    assert {name: layers[name]["verdict"] for name in EXPECTED_HISTOGRAMS} == EXPECTED_HISTOGRAMS
    assert layers["nan_dense"]["diverged_step"] == NAN_AFTER_EPOCH - 1
    assert all(layer["trainable"] is None for layer in run["layers"])
    moving = {v["name"]: v for v in layers["batch_norm"]["variables"]}
    assert moving["moving_mean"]["verdict"] == moving["moving_variance"]["verdict"] == "learning"


def test_the_rust_loader_agrees(judged):
    for source in ("auto", metadata.HISTOGRAM_PLUGIN_NAME):
        assert verdicts.to_json(judged(source, "python")) == verdicts.to_json(judged(source, "rust"))


def test_defaults_leave_a_margin(judged):
    """Healthy layers clear every floor by 3x at least, and the ratio to their peers where they
    have peers (BatchNorm's gamma has none of its kind here); the slow layers miss the ratio by 3x."""
    defaults = verdicts.Thresholds()
    for source in ("auto", metadata.HISTOGRAM_PLUGIN_NAME):
        for run in judged(source)["runs"]:
            layers = _layers(run)
            for name in ("healthy", "head", "batch_norm"):
                layer = layers[name]
                floor = (
                    defaults.min_relative_change
                    if layer["movement_kind"] == "relative_change"
                    else defaults.min_shift
                )
                assert layer["movement"] > 3 * floor, (run["run"], source, name, layer)
                ratio = layer["ratio_to_median"]
                assert ratio is None or ratio > 3 * defaults.min_ratio_to_median, (run["run"], source, name, layer)
                assert layer["margin"] > math.log10(3), (run["run"], source, name, layer)
            assert layers["healthy"]["ratio_to_median"] is not None
            slow = layers["slow_dense"]
            assert slow["ratio_to_median"] < defaults.min_ratio_to_median / 3, (run["run"], source, slow)
            assert slow["margin"] > math.log10(3)


def score_table(results):
    """Markdown rows of the README's calibration table from `{source label: result}`."""
    rows = []
    for label, result in results.items():
        for run in result["runs"]:
            model = run["run"].split("/")[0]
            for name, layer in sorted(_layers(run).items()):
                movement = fmt(layer["movement"])
                if layer["movement"] is not None:
                    movement += " (%s)" % ("rel" if layer["movement_kind"] == "relative_change" else "shift")
                verdict = layer["verdict"]
                if layer["diverged_step"] is not None:
                    verdict += " @%d" % layer["diverged_step"]
                rows.append(
                    "| %s | %s | %s | %s | %s | %s | %s | %s |"
                    % (
                        model, label, name, layer["driver"], movement,
                        fmt(layer["ratio_to_median"]), fmt(layer["shift"]), verdict,
                    )
                )
    return rows


def seed_ranges(results_by_seed):
    """`{(model, source label, layer): (verdicts, movement min, max, ratio min, max)}` over seeds."""
    ranges = {}
    for results in results_by_seed:
        for label, result in results.items():
            for run in result["runs"]:
                for name, layer in _layers(run).items():
                    key = (run["run"].split("/")[0], label, name)
                    ranges.setdefault(key, []).append(layer)
    summary = {}
    for key, layers in sorted(ranges.items()):
        movements = [l["movement"] for l in layers if l["movement"] is not None]
        ratios = [l["ratio_to_median"] for l in layers if l["ratio_to_median"] is not None]
        summary[key] = (
            sorted({l["verdict"] for l in layers}),
            min(movements, default=None), max(movements, default=None),
            min(ratios, default=None), max(ratios, default=None),
        )
    return summary


def fmt(value):
    """A score for a markdown table: 2 significant digits, '-' when absent."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return "%.2g" % value


def _main(argv):
    """Prints the README's calibration tables: `python tests/test_calibration.py [SEED...]`."""
    import tempfile

    extra_seeds = [int(seed) for seed in argv]
    results_by_seed = []
    for seed in [None] + extra_seeds:
        with tempfile.TemporaryDirectory() as directory:
            for model_name, (build, default_seed) in MODELS.items():
                if seed is not None:
                    MODELS[model_name] = (build, seed)
                train(directory, model_name)
                MODELS[model_name] = (build, default_seed)
            results_by_seed.append(
                {
                    "tb_weightdiff": judge_logdir(directory, "auto"),
                    "Keras histograms": judge_logdir(directory, metadata.HISTOGRAM_PLUGIN_NAME),
                }
            )
    print("| model | source | layer | driver | movement | x peers | shift (last) | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(score_table(results_by_seed[0])))
    if extra_seeds:
        print()
        print("| model | source | layer | verdicts | movement (min..max) | x peers (min..max) |")
        print("|---|---|---|---|---|---|")
        for (model, label, name), (verdicts, low, high, ratio_low, ratio_high) in seed_ranges(results_by_seed).items():
            print(
                "| %s | %s | %s | %s | %s..%s | %s..%s |"
                % (model, label, name, ", ".join(verdicts), fmt(low), fmt(high), fmt(ratio_low), fmt(ratio_high))
            )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _main(sys.argv[1:])
