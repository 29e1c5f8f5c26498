"""Summaries written to real event files and read back by both of TensorBoard's loaders.

The Python loader (`EventMultiplexer` + `MultiplexerDataProvider`) and the Rust
data server (started as TensorBoard starts it) must both keep our summaries
(they drop tensors without DATA_CLASS_TENSOR) and hand back the numbers numpy
computes.
"""

import numpy as np
import pytest

from tb_weightdiff import metadata
from tb_weightdiff import summary
from conftest import requires_tf
from conftest import write_events
from test_summary import assert_matches


def _training_like_steps(rng, steps=4):
    initial = rng.standard_normal((20, 10)).astype(np.float32)
    weights = [initial + 0.1 * step * rng.standard_normal((20, 10)).astype(np.float32) for step in range(steps)]
    return initial, weights


def test_pb_round_trip(tmp_path, rng, read_logdir):
    initial, weights = _training_like_steps(rng)
    bias = np.zeros(10, np.float32)
    write_events(
        tmp_path / "run_a",
        {
            step: [
                summary.weights_pb("model/dense/kernel", w, reference=initial, trainable=True),
                summary.weights_pb("model/dense/bias", bias, reference=bias, trainable=False),
            ]
            for step, w in enumerate(weights)
        },
    )
    series = read_logdir(tmp_path)
    assert set(series) == {("run_a", "model/dense/kernel"), ("run_a", "model/dense/bias")}
    kernel = series[("run_a", "model/dense/kernel")]
    assert kernel.source == metadata.PLUGIN_NAME
    assert kernel.steps == [0, 1, 2, 3]
    for step, recorded in zip(kernel.steps, kernel.summaries):
        assert_matches(recorded, weights[step], reference=initial, rtol=1e-6)
        assert recorded.stat("trainable") == 1.0
    bias_series = series[("run_a", "model/dense/bias")]
    assert [s.stat("reference_distance") for s in bias_series.summaries] == [0.0] * 4
    assert bias_series.summaries[0].stat("trainable") == 0.0


@requires_tf
def test_op_round_trip(tmp_path, rng, read_logdir):
    import tensorflow as tf

    initial, weights = _training_like_steps(rng, steps=3)
    variable = tf.Variable(initial)
    writer = tf.summary.create_file_writer(str(tmp_path / "run_op"))

    @tf.function
    def log(step):
        summary.weights("layer/kernel", variable, step=step, reference=initial, trainable=True)

    with writer.as_default():
        for step, w in enumerate(weights):
            variable.assign(w)
            log(tf.constant(step, tf.int64))
    writer.close()
    series = read_logdir(tmp_path)
    recorded = series[("run_op", "layer/kernel")]
    assert recorded.steps == [0, 1, 2]
    for step, values in zip(recorded.steps, recorded.summaries):
        assert_matches(values, weights[step], reference=initial, rtol=1e-6)


def test_many_steps_are_all_kept(tmp_path, rng, read_logdir):
    # Both loaders would keep only 10 (Python) or 100 (Rust) by default.
    data = rng.standard_normal(50)
    write_events(tmp_path / "long", {step: [summary.weights_pb("w", data + step)] for step in range(150)})
    recorded = read_logdir(tmp_path)[("long", "w")]
    assert recorded.steps == list(range(150))
    assert recorded.summaries[149].stat("mean") == pytest.approx(data.mean() + 149)


def test_plain_histograms_are_read_too(tmp_path, rng, read_logdir):
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary

    data = rng.standard_normal(100)
    write_events(
        tmp_path / "keras_like" / "train",
        {step: [histogram_summary.histogram_pb("dense/kernel/histogram", data * (1 + step))] for step in range(3)},
    )
    series = read_logdir(tmp_path, plugin_name=metadata.HISTOGRAM_PLUGIN_NAME)
    recorded = series[("keras_like/train", "dense/kernel/histogram")]
    assert recorded.source == metadata.HISTOGRAM_PLUGIN_NAME
    assert recorded.steps == [0, 1, 2]
    assert recorded.summaries[2].shape == (30, 3)
    assert recorded.summaries[2][:, 2].sum() == 100


def test_unknown_future_version_is_skipped_with_a_warning(tmp_path, rng, loader):
    from tb_weightdiff import reader

    good = summary.weights_pb("good", rng.standard_normal(10))
    future = summary.weights_pb("future", rng.standard_normal(10))
    future.value[0].metadata.plugin_data.content = b'{"version": 99}'
    write_events(tmp_path / "run", {0: [good, future], 1: [good, future]})
    with reader.open_logdir(str(tmp_path), loader=loader) as opened:
        series, warnings = reader.read_series(opened)
    assert [(s.run, s.tag) for s in series] == [("run", "good")]
    assert len(warnings) == 1
    run, tag, message = warnings[0]
    assert (run, tag) == ("run", "future")
    assert "version 99 is not supported" in message
