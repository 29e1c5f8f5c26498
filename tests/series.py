"""In-memory series for the judging tests: our summaries and plain histograms of given arrays."""

import numpy as np
from tb_weightdiff import metadata
from tb_weightdiff import reader
from tb_weightdiff import summary


def histogram(*rows):
    """A `[k, 3]` histogram from `(left, right, count)` rows."""
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def ours(tag, arrays, reference="first", trainable=True, steps=None, run="run"):
    """A `reader.Series` of our summaries over `arrays` (one per step)."""
    reference_array = arrays[0] if isinstance(reference, str) else reference
    summaries = [
        metadata.decode(summary.weight_statistics(a, reference=reference_array, trainable=trainable))
        for a in arrays
    ]
    return reader.Series(run, tag, metadata.PLUGIN_NAME, list(steps or range(len(arrays))), summaries)


def histograms(tag, arrays, steps=None, run="run"):
    """A `reader.Series` of plain `[k, 3]` histograms as TensorBoard's histogram_pb makes them."""
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary
    from tensorboard.util import tensor_util

    values = [
        tensor_util.make_ndarray(histogram_summary.histogram_pb(tag, a).value[0].tensor) for a in arrays
    ]
    return reader.Series(run, tag, metadata.HISTOGRAM_PLUGIN_NAME, list(steps or range(len(arrays))), values)


def walk(rng, start, steps, rate):
    """Weights after `steps` noisy updates of relative size `rate`."""
    arrays = [start]
    for _ in range(steps - 1):
        arrays.append(arrays[-1] + rate * (0.3 * arrays[-1] + rng.standard_normal(start.shape) * start.std()))
    return arrays


def by_layer(run):
    return {layer["name"]: layer for layer in run["layers"]}


def by_variable(layer):
    return {variable["name"]: variable for variable in layer["variables"]}


def planted_model(rng):
    """Our summaries of a small model with planted layers, over 5 steps."""
    kernel = lambda: rng.normal(0, 0.2, (16, 16))  # noqa: E731
    zeros = np.zeros(16)
    nan_walk = walk(rng, kernel(), 5, 0.05)
    nan_walk = [a if i < 3 else np.where(np.eye(16, dtype=bool)[0], np.nan, a) for i, a in enumerate(nan_walk)]
    frozen = kernel()
    permuted_start = kernel()
    return [
        ours("m/healthy/kernel", walk(rng, kernel(), 5, 0.05)),
        ours("m/healthy/bias", [zeros] + walk(rng, rng.normal(0, 0.01, 16), 4, 0.05)),
        ours("m/other/kernel", walk(rng, kernel(), 5, 0.08)),
        ours("m/third/kernel", walk(rng, kernel(), 5, 0.03)),
        ours("m/slow/kernel", walk(rng, kernel(), 5, 0.05e-4)),
        ours("m/slow/bias", [zeros] + walk(rng, rng.normal(0, 0.01, 16), 4, 0.05)),
        ours("m/frozen/kernel", [frozen] * 5, trainable=False),
        ours("m/frozen/bias", [zeros] * 5, trainable=False),
        ours("m/nan/kernel", nan_walk),
        ours("m/nan/bias", walk(rng, rng.normal(0, 0.1, 16), 5, 0.05)),
        ours("m/permuted/kernel", [rng.permutation(permuted_start.ravel()).reshape(16, 16) for _ in range(5)], reference=permuted_start, trainable=False),
        ours("m/norm/gamma", walk(rng, np.ones(16) + 1e-9 * np.arange(16), 5, 0.05)),
        ours("m/norm/moving_mean", [zeros] + walk(rng, rng.normal(0, 0.3, 16), 4, 0.1), trainable=False),
    ]
