"""Logdirs with planted ground truth, written without TensorFlow (weights_pb, histogram_pb).

`write_planted_logdir` makes two runs:

- `planted`: our summaries, steps 0..5, with a learning layer `model/dense`,
  a frozen one `model/frozen`, one that barely moves `model/slow` (1e-7
  relative per step), and one that turns NaN at step 3 `model/exploding`;
- `keras_like/train`: plain histograms (as Keras's TensorBoard callback
  writes them, tag suffix `/histogram`), steps 0..4, a learning and a frozen
  layer.
"""

import numpy as np
from tensorboard.plugins.histogram import summary_v2 as histogram_summary

from tb_weightdiff import summary
from conftest import write_events

PLANTED = {
    "model/dense": "learning",
    "model/frozen": "frozen",
    "model/slow": "not_learning",
    "model/exploding": "diverged",
}


def planted_weights(steps=6, seed=0):
    """`{tag: [array per step]}` for the `planted` run."""
    rng = np.random.default_rng(seed)
    shape = (32, 16)
    series = {}
    for layer in PLANTED:
        initial_kernel = rng.standard_normal(shape).astype(np.float32) * 0.1
        initial_bias = np.zeros(16, np.float32)
        kernels, biases = [initial_kernel], [initial_bias]
        for step in range(1, steps):
            kernel, bias = kernels[-1].copy(), biases[-1].copy()
            if layer == "model/dense" or layer == "model/exploding":
                kernel = kernel + 0.02 * rng.standard_normal(shape).astype(np.float32)
                bias = bias + 0.01 * rng.standard_normal(16).astype(np.float32)
            elif layer == "model/slow":
                kernel = kernel * np.float32(1 + 1e-7) + np.float32(1e-9)
            if layer == "model/exploding" and step >= 3:
                kernel[0, 0] = np.nan
            kernels.append(kernel)
            biases.append(bias)
        series[layer + "/kernel"] = kernels
        series[layer + "/bias"] = biases
    return series


def write_planted_logdir(logdir, steps=6, extra_tags=None):
    """Writes both runs into `logdir`; returns `{tag: [arrays]}` of the `planted` run."""
    series = planted_weights(steps)
    if extra_tags:
        series.update(extra_tags)
    events = {}
    for tag, values in series.items():
        for step, value in enumerate(values):
            events.setdefault(step, []).append(
                summary.weights_pb(tag, value, reference=values[0], trainable=True)
            )
    write_events(logdir / "planted", events)
    rng = np.random.default_rng(1)
    learning = rng.standard_normal((16, 8))
    frozen = rng.standard_normal((16, 8))
    histograms = {}
    for step in range(5):
        learning = learning + 0.1 * rng.standard_normal((16, 8))
        histograms[step] = [
            histogram_summary.histogram_pb("sequential/dense/kernel/histogram", learning),
            histogram_summary.histogram_pb("sequential/frozen/kernel/histogram", frozen),
        ]
    write_events(logdir / "keras_like" / "train", histograms)
    return series


def append_step(logdir, series, step):
    """Appends one more step of the `planted` run in a new event file (a live training)."""
    events = []
    for tag, values in series.items():
        value = values[-1] if "frozen" in tag else values[-1] * np.float32(1.01)
        events.append(summary.weights_pb(tag, value, reference=values[0], trainable=True))
    write_events(logdir / "planted", {step: events}, suffix=".step%d" % step)
