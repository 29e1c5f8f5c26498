"""Damaged data for the fault-isolation tests: what a bit flip, a half-synced copy or a
hand-written file leaves in a logdir, beside healthy runs.

`write_damaged_logdir(logdir, cases, seed)` writes:

- `healthy_a`, `healthy_b`: our summaries of a few learning and frozen layers;
- `keras_like/train`: healthy plain histograms;
- `damaged`: `cases` tags of our plugin, each a series of 3 steps of which one (or
  all) is a random float64 vector of any length and value class (NaN, +-inf,
  +-1e308, subnormals, negative and fractional counts, ...), some of them
  valid-looking vectors with a few fields broken; beside one healthy tag;
- `damaged_histograms`: `cases // 4` tags of TensorBoard's histogram plugin
  holding random arrays (of shape `[k, 3]`, mostly, or not), beside one
  healthy tag.

Returns `{run: [damaged tags]}`.
"""

import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.histogram import summary_v2 as histogram_summary
from tensorboard.util import tensor_util

from tb_weightdiff import metadata
from tb_weightdiff import summary
from conftest import write_events

_CLASSES = (
    lambda rng, n: rng.standard_normal(n),
    lambda rng, n: np.full(n, np.nan),
    lambda rng, n: np.full(n, np.inf) * rng.choice([-1.0, 1.0], n),
    lambda rng, n: np.full(n, 1e308) * rng.choice([-1.0, 1.0], n),
    lambda rng, n: rng.choice([0.0, -1.0, -5.5, 1e-320, 2.0**53, 0.5], n),
    lambda rng, n: rng.integers(-10, 10**6, n).astype(np.float64),
    lambda rng, n: np.zeros(n),
)


def _raw(tag, values, plugin_metadata):
    value = summary_pb2.Summary()
    value.value.add(tag=tag, metadata=plugin_metadata, tensor=tensor_util.make_tensor_proto(values))
    return value


def damaged_vector(rng):
    """A float64 vector our plugin might find: random, or a real one with fields broken."""
    header = len(metadata.STAT_FIELDS) + len(metadata.QUANTILE_PROBABILITIES)
    if rng.random() < 0.5:
        vector = summary.weight_statistics(rng.standard_normal(int(rng.integers(1, 200))), buckets=int(rng.integers(0, 40)))
        positions = rng.choice(vector.size, size=int(rng.integers(1, 4)), replace=False)
        vector[positions] = _CLASSES[int(rng.integers(len(_CLASSES)))](rng, positions.size)
        return vector
    length = header + 3 * int(rng.integers(0, 40)) if rng.random() < 0.8 else int(rng.integers(0, 300))
    vector = np.empty(length)
    for start in range(0, length, 16):
        vector[start : start + 16] = _CLASSES[int(rng.integers(len(_CLASSES)))](rng, min(16, length - start))
    return vector


def damaged_histogram(rng):
    """A random array where TensorBoard expects a `[k, 3]` histogram."""
    k = int(rng.integers(0, 40))
    shape = (k, 3) if rng.random() < 0.85 else [(k,), (k, 2), (k, 3, 1), ()][int(rng.integers(4))]
    size = int(np.prod(shape))
    values = np.concatenate([_CLASSES[int(rng.integers(len(_CLASSES)))](rng, 1) for _ in range(size)]) if size else np.zeros(0)
    return values.reshape(shape)


def _healthy(rng, tag, steps=3, frozen=False, reference=True):
    start = rng.standard_normal((16, 8))
    arrays = [start if frozen else start * (1 + 0.1 * step) + 0.05 * step * rng.standard_normal(start.shape)
              for step in range(steps)]
    return [summary.weights_pb(tag, a, reference=start if reference else None, trainable=not frozen) for a in arrays]


def write_healthy_runs(logdir, seed=0):
    rng = np.random.default_rng(seed)
    for run in ("healthy_a", "healthy_b"):
        series = [_healthy(rng, "net/l%d/kernel" % i) for i in range(3)] + [_healthy(rng, "net/frozen/kernel", frozen=True)]
        write_events(logdir / run, {step: [s[step] for s in series] for step in range(3)})
    histograms = {}
    for step in range(3):
        histograms[step] = [
            histogram_summary.histogram_pb("seq/l%d/kernel/histogram" % i, rng.standard_normal((16, 8)) * (1 + 0.1 * step + i))
            for i in range(3)
        ]
    write_events(logdir / "keras_like" / "train", histograms)


def write_damaged_logdir(logdir, cases=200, seed=0):
    write_healthy_runs(logdir, seed)
    rng = np.random.default_rng(seed + 1)
    ours = metadata.create_summary_metadata()
    events = {step: [] for step in range(3)}
    damaged = {"damaged": [], "damaged_histograms": []}
    for index in range(cases):
        tag = "bad/t%04d/kernel" % index
        damaged["damaged"].append(tag)
        healthy = summary.weight_statistics(rng.standard_normal(40) * (1 + index % 3))
        broken_steps = {int(rng.integers(3))} if rng.random() < 0.7 else {0, 1, 2}
        for step in range(3):
            values = damaged_vector(rng) if step in broken_steps else healthy * 1.0
            events[step].append(_raw(tag, values, ours))
    for step, healthy in enumerate(_healthy(rng, "good/dense/kernel")):
        events[step].append(healthy)
    write_events(logdir / "damaged", events)
    plain = histogram_metadata.create_summary_metadata(display_name="", description="")
    events = {step: [] for step in range(3)}
    for index in range(max(1, cases // 4)):
        tag = "bad/h%04d/kernel/histogram" % index
        damaged["damaged_histograms"].append(tag)
        for step in range(3):
            if step == int(index % 3):
                values = damaged_histogram(rng)
            else:
                values = tensor_util.make_ndarray(histogram_summary.histogram_pb(tag, rng.standard_normal(30)).value[0].tensor)
            events[step].append(_raw(tag, values, plain))
    for step in range(3):
        events[step].append(histogram_summary.histogram_pb("good/dense/kernel/histogram", rng.standard_normal(50) * (1 + step)))
    write_events(logdir / "damaged_histograms", events)
    return damaged
