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
    run = logdir / "planted"
    before = sorted(path.name for path in run.iterdir())
    write_events(run, {step: events}, suffix=".step%d" % step)
    # TensorBoard's Python loader reads only files whose names sort after the
    # one it is reading. A writer's name carries the second and a per-process
    # counter (".9" sorts after ".10"), so within one second the new file could
    # sort first and never be read: it is named after the last file instead.
    (written,) = [path for path in run.iterdir() if path.name not in before]
    written.rename(run / (before[-1] + ".step%d" % step))


def write_corrupted_logdir(logdir, seed=0):
    """A logdir of what crashing and restarted jobs leave behind, beside one good run.

    Returns `{run: what is wrong with it}`.
    """
    import glob
    import os

    from tensorboard.compat.proto import summary_pb2
    from tensorboard.util import tensor_util

    from tb_weightdiff import metadata

    rng = np.random.default_rng(seed)

    def moving(run, steps, scale=0.1, suffix=""):
        w0 = rng.standard_normal(50)
        write_events(
            logdir / run,
            {s: [summary.weights_pb("m/dense/kernel", w0 * (1 + scale * s), reference=w0)] for s in steps},
            suffix=suffix,
        )

    def raw(tag, tensor):
        value = summary_pb2.Summary()
        value.value.add(tag=tag, metadata=metadata.create_summary_metadata(), tensor=tensor_util.make_tensor_proto(tensor))
        return value

    moving("good", range(4))
    moving("truncated", range(6))
    (path,) = glob.glob(str(logdir / "truncated" / "*tfevents*"))
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 37)  # the last record, cut mid-way
    (logdir / "garbage").mkdir(parents=True)
    (logdir / "garbage" / "events.out.tfevents.1700000000.host").write_bytes(rng.bytes(5000))
    write_events(
        logdir / "malformed",
        {
            s: [
                raw("m/shape/kernel", np.zeros((3, 4))),
                raw("m/dtype/kernel", np.array(["a", "b"])),
                raw("m/short/kernel", np.zeros(5)),
                summary.weights_pb("m/ok/kernel", rng.standard_normal(9) * (s + 1)),
            ]
            for s in range(3)
        },
    )
    future = summary.weights_pb("m/future/kernel", np.ones(4))
    future.value[0].metadata.plugin_data.content = b'{"version": 7}'
    write_events(
        logdir / "future",
        {s: [future, summary.weights_pb("m/ok/kernel", np.ones(4) * (s + 1))] for s in range(2)},
    )
    moving("restarted", range(6))
    moving("restarted", range(4), scale=0.2, suffix=".restart")
    return {
        "good": None,
        "truncated": "last record cut",
        "garbage": "random bytes named like an event file",
        "malformed": "tensors of our plugin with a wrong shape, dtype and length",
        "future": "format version 7",
        "restarted": "steps 0..5, then 0..3 again",
    }


def write_reset_logdir(logdir, seed=0, steps=4):
    """A run `checked` with a reset check, from a numpy model trained for real (no framework).

    A two-layer linear regressor `y = x @ W1 @ W2`, trained by full-batch
    gradient descent with `model/frozen` (between the two) never updated;
    the check runs `tb_weightdiff.reset.run_check` on it. Returns the
    `{layer: fields}` of the final check.
    """
    from tb_weightdiff import events
    from tb_weightdiff import reset

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 8))
    y = x @ rng.standard_normal((8, 1))
    weights = {
        "model/first/kernel": rng.standard_normal((8, 8)) * 0.3,
        "model/frozen/kernel": np.eye(8) + rng.standard_normal((8, 8)) * 0.05,
        "model/last/kernel": rng.standard_normal((8, 1)) * 0.3,
    }
    initial = {tag: value.copy() for tag, value in weights.items()}

    def forward():
        hidden = x @ weights["model/first/kernel"]
        frozen = hidden @ weights["model/frozen/kernel"]
        return hidden, frozen, frozen @ weights["model/last/kernel"]

    def evaluate():
        prediction = forward()[2]
        return {"loss": float(np.mean((prediction - y) ** 2)), "mae": float(np.mean(np.abs(prediction - y)))}

    writer = events.create_writer(logdir / "checked")
    for step in range(steps + 1):
        if step:
            for _ in range(20):
                hidden, frozen, prediction = forward()
                grad = 2 * (prediction - y) / len(x)
                grad_last = frozen.T @ grad
                grad_first = x.T @ ((grad @ weights["model/last/kernel"].T) @ weights["model/frozen/kernel"].T)
                weights["model/last/kernel"] -= 0.05 * grad_last
                weights["model/first/kernel"] -= 0.05 * grad_first
        for tag, value in weights.items():
            events.write_weights(writer, tag, value.astype(np.float32), step, reference=initial[tag].astype(np.float32),
                                 trainable=tag != "model/frozen/kernel", layer_type="Dense")
    groups = reset.make_groups(list(weights))

    def swap(chosen):
        def assign(tag, value):
            weights[tag] = value.copy()
        return reset.swapped([(tag, tag) for group in chosen for tag in group.tags],
                             lambda tag: weights[tag].copy(), assign, initial.get)

    def unchanged(group):
        return all(np.array_equal(weights[tag], initial[tag]) for tag in group.tags)

    results = reset.run_check(groups, evaluate, swap, unchanged)
    reset.write(writer, steps, results, batches=1, examples=len(x))
    writer.close()
    return {group.name: fields for group, fields, _ in results}
