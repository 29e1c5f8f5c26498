"""Summaries of weight tensors: `weights` (TensorFlow) and `weights_pb` (numpy only).

Both compute the same numbers with the same numpy code (`weight_statistics`);
the TensorFlow op runs it through `tf.numpy_function`, so it works eagerly and
inside `tf.function` on CPU hosts. TensorFlow is imported only when `weights`
is called: `weights_pb` serves PyTorch, JAX and plain numpy code.

What is recorded for one tensor at one step (the layout is documented, and
decoded, in `tb_weightdiff.metadata`):

- a histogram of the finite values in TensorBoard's own `[k, 3]` form, each
  bucket a triple `[left edge, right edge, count]`, k equal-width buckets from
  the minimum to the maximum (k = 30 by default). As in TensorBoard: when all
  finite values are equal every edge is that value and the last bucket holds
  the count; without finite values the buckets are all zero;
- quantiles of the finite values at `metadata.QUANTILE_PROBABILITIES` (0, 1/64,
  ..., 1), linearly interpolated; edge-free, so any two steps compare exactly;
- count, counts of NaN, +Inf and -Inf, and over the finite values: mean, std
  (population), min, max, L2 norm; the fraction of exact zeros among all
  values; whether the variable is trainable (if the caller says);
- a CRC-32 fingerprint of the raw bytes, so a reader can tell a tensor that
  never changed from one whose values moved but whose histogram did not;
- given a reference W0 of the same size (typically the weights before
  training): `||W0||`, the distance `||W - W0||`, the relative change
  `||W - W0|| / ||W0||` and the cosine distance `1 - cos(W, W0)` (layer
  rotation), computed as `||W/||W|| - W0/||W0|| ||^2 / 2`, which keeps its
  precision for tiny rotations. Histograms cannot show these: weights that
  move while their distribution stays the same look frozen to them.

Accepted data: bool, integer and floating tensors of any shape (bfloat16 is
read as float32). Anything else (complex, strings, objects) raises a
`ValueError`, as does a reference whose size differs from the data's.
"""

import zlib

import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.util import tensor_util

from tb_weightdiff import metadata

_QUANTILE_PROBABILITIES = np.asarray(metadata.QUANTILE_PROBABILITIES)


def _get_tensorflow():
    try:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ModuleNotFoundError(
            "tb_weightdiff.summary.weights needs TensorFlow, which is not "
            "installed. Please install it with `pip install 'tb-weightdiff[tf]'`, "
            "or write summaries without TensorFlow through "
            "tb_weightdiff.summary.weights_pb."
        ) from error
    return tf


def _check_bucket_count(buckets):
    if buckets is None:
        return metadata.DEFAULT_BUCKET_COUNT
    if isinstance(buckets, bool) or not isinstance(buckets, (int, np.integer)):
        raise ValueError("buckets must be a non-negative int, got %r" % (buckets,))
    if buckets < 0:
        raise ValueError("buckets must be a non-negative int, got %d" % buckets)
    return int(buckets)


def _as_numeric_array(values, what):
    """`values` as a numpy array whose dtype is bool, integer or floating."""
    array = np.asarray(values)
    if array.dtype.kind == "V" and "float" in array.dtype.name:
        # ml_dtypes' bfloat16 and float8 types, as TensorFlow hands them over.
        array = array.astype(np.float32)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            "%s must be a bool, integer or floating tensor, got dtype %s"
            % (what, array.dtype)
        )
    return array


def _as_float(array):
    """A flat floating view of `array` for arithmetic, copying only if needed."""
    flat = array.reshape(-1)
    if flat.dtype == np.float16:
        return flat.astype(np.float32)
    if flat.dtype.kind != "f":
        return flat.astype(np.float64)
    return flat


def _fingerprint(array):
    return float(zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))


def _histogram(sorted_finite, bucket_count):
    """TensorBoard's `[k, 3]` histogram of already sorted finite values.

    Buckets are equal-width from the minimum to the maximum, each closed on
    the left and the last one also on the right (numpy's `histogram` rule);
    counting is k + 1 binary searches in the sorted values.
    """
    if bucket_count == 0:
        return np.zeros((0, 3))
    if sorted_finite.size == 0:
        return np.zeros((bucket_count, 3))
    minimum, maximum = float(sorted_finite[0]), float(sorted_finite[-1])
    if minimum == maximum:
        edges = np.full(bucket_count, minimum, dtype=np.float64)
        counts = np.zeros(bucket_count)
        counts[-1] = sorted_finite.size
        return np.stack([edges, edges, counts], axis=1)
    # When the range itself overflows (values near +-1.8e308) the edges are
    # spaced on halves: halving and doubling are exact.
    scale = 1.0 if np.isfinite(maximum - minimum) else 0.5
    edges = np.linspace(minimum * scale, maximum * scale, bucket_count + 1) / scale
    edges[0], edges[-1] = minimum, maximum
    positions = np.searchsorted(sorted_finite, edges[1:-1], side="left")
    counts = np.diff(np.concatenate([[0], positions, [sorted_finite.size]])).astype(np.float64)
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def _quantiles(sorted_finite):
    """Quantiles at the fixed probabilities, exactly as `np.quantile`'s default
    (linear) method computes them, read off the sorted values."""
    size = sorted_finite.size
    positions = _QUANTILE_PROBABILITIES * (size - 1)
    below = np.floor(positions).astype(np.intp)
    above = np.minimum(below + 1, size - 1)
    fraction = positions - below
    low = sorted_finite[below].astype(np.float64)
    high = sorted_finite[above].astype(np.float64)
    difference = high - low
    result = low + difference * fraction
    # numpy's _lerp: interpolate from the nearer end, for monotonicity.
    np.subtract(high, difference * (1 - fraction), out=result, where=fraction >= 0.5)
    return result


def _reference_statistics(values, reference):
    """`(||W0||, ||W - W0||, relative change, cosine distance)` as floats."""
    current = values.astype(np.float64, copy=False)
    ref = _as_float(reference).astype(np.float64, copy=False)
    with np.errstate(all="ignore"):
        difference = current - ref
        distance = float(np.sqrt(np.dot(difference, difference)))
        reference_norm = float(np.sqrt(np.dot(ref, ref)))
        current_norm = float(np.sqrt(np.dot(current, current)))
        if distance == 0.0:
            return reference_norm, 0.0, 0.0, 0.0
        relative_change = distance / reference_norm if reference_norm > 0 else np.nan
        if reference_norm > 0 and current_norm > 0:
            direction_change = current / current_norm - ref / reference_norm
            cosine_distance = float(
                min(2.0, 0.5 * np.dot(direction_change, direction_change))
            )
        else:
            cosine_distance = np.nan
    return reference_norm, distance, float(relative_change), cosine_distance


def weight_statistics(data, reference=None, buckets=None, trainable=None):
    """Computes the stored tensor for one weight tensor (numpy only).

    Args:
      data: array-like of any shape; bool, integer or floating.
      reference: optional array-like with as many elements as `data` (the
        weights before training); adds the reference statistics.
      buckets: optional non-negative int, the histogram's bucket count
        (default 30).
      trainable: optional bool, recorded as 1.0 / 0.0 (NaN when `None`).

    Returns:
      A rank-1 float64 numpy array in the layout of `tb_weightdiff.metadata`.

    Raises:
      ValueError: unsupported dtype, bad `buckets`, or a reference of another size.
    """
    bucket_count = _check_bucket_count(buckets)
    array = _as_numeric_array(data, "data")
    if reference is not None:
        reference = _as_numeric_array(reference, "reference")
        if reference.size != array.size:
            raise ValueError(
                "reference has %d elements but data has %d; pass the same "
                "tensor's earlier value" % (reference.size, array.size)
            )
    values = _as_float(array)
    count = values.size
    # One sort serves the quantiles, the extremes, the non-finite and zero
    # counts and the histogram (binary searches); numpy's SIMD sort of a
    # float32 tensor costs a few passes over it.
    sorted_values = np.sort(values)
    nan_count = count - int(np.searchsorted(sorted_values, np.nan, side="left"))
    neginf_count = int(np.searchsorted(sorted_values, -np.inf, side="right"))
    posinf_count = count - nan_count - int(np.searchsorted(sorted_values, np.inf, side="left"))
    sorted_finite = sorted_values[neginf_count : count - nan_count - posinf_count]
    finite_count = sorted_finite.size
    zero_count = int(
        np.searchsorted(sorted_finite, 0, side="right") - np.searchsorted(sorted_finite, 0, side="left")
    )

    if finite_count:
        as_float64 = sorted_finite.astype(np.float64, copy=False)
        minimum = float(sorted_finite[0])
        maximum = float(sorted_finite[-1])
        with np.errstate(over="ignore", invalid="ignore"):
            mean = float(as_float64.sum() / finite_count)
            deviations = as_float64 - mean
            std = float(np.sqrt(np.dot(deviations, deviations) / finite_count))
            l2_norm = float(np.sqrt(np.dot(as_float64, as_float64)))
        quantiles = _quantiles(sorted_finite)
    else:
        minimum = maximum = mean = std = np.nan
        l2_norm = 0.0 if count == 0 else np.nan
        quantiles = np.full(len(_QUANTILE_PROBABILITIES), np.nan)
    zero_fraction = zero_count / count if count else np.nan

    if reference is not None:
        reference_stats = _reference_statistics(values, reference)
    else:
        reference_stats = (np.nan,) * 4

    stats = {
        "count": count,
        "finite_count": finite_count,
        "nan_count": nan_count,
        "posinf_count": posinf_count,
        "neginf_count": neginf_count,
        "mean": mean,
        "std": std,
        "min": minimum,
        "max": maximum,
        "l2_norm": l2_norm,
        "zero_fraction": zero_fraction,
        "trainable": np.nan if trainable is None else float(bool(trainable)),
        "fingerprint": _fingerprint(array),
        "reference_l2_norm": reference_stats[0],
        "reference_distance": reference_stats[1],
        "relative_change": reference_stats[2],
        "cosine_distance": reference_stats[3],
    }
    histogram = _histogram(sorted_finite, bucket_count)
    return metadata.encode(
        [stats[name] for name in metadata.STAT_FIELDS], quantiles, histogram
    )


def weights_pb(
    name, data, reference=None, buckets=None, description=None, trainable=None
):
    """Creates a weight summary protobuf, with numpy only.

    For code without TensorFlow (PyTorch, JAX, numpy): write the result with
    any TensorBoard event writer, e.g.
    `torch.utils.tensorboard.SummaryWriter(...).file_writer.add_summary(pb, step)`.

    Args:
      name: the summary's tag, e.g. `"encoder/dense/kernel"`; the tab groups
        tags into layers by their path.
      data: array-like of any shape; bool, integer or floating.
      reference: optional array-like of the same size: the weights to measure
        the distance from (usually the weights before training).
      buckets: optional non-negative int, histogram buckets (default 30).
      description: optional long-form description (markdown).
      trainable: optional bool, whether the optimizer updates this tensor.

    Returns:
      A `tensorboard.compat.proto.summary_pb2.Summary` with one value.

    Raises:
      ValueError: as `weight_statistics`.
    """
    values = weight_statistics(
        data, reference=reference, buckets=buckets, trainable=trainable
    )
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=name,
        metadata=metadata.create_summary_metadata(description=description),
        tensor=tensor_util.make_tensor_proto(values, dtype=np.float64),
    )
    return summary


def weights(
    name,
    data,
    step=None,
    reference=None,
    buckets=None,
    description=None,
    trainable=None,
):
    """Writes a weight summary to the default `tf.summary` writer.

    Works eagerly and inside `tf.function`; the statistics are computed on the
    host (through `tf.numpy_function`) only when the summary is recorded.

    Example:

    ```python
    writer = tf.summary.create_file_writer("logs/run1")
    initial = {v.path: v.numpy() for v in model.trainable_variables}
    with writer.as_default():
        for epoch in range(epochs):
            train_one_epoch()
            for v in model.trainable_variables:
                tb_weightdiff.summary.weights(
                    v.path, v, step=epoch + 1, reference=initial[v.path])
    ```

    Args:
      name: a name for this summary; the tag is this name prefixed by any
        active name scopes.
      data: a `Tensor` or `Variable` of any shape; bool, integer or floating.
      step: explicit `int64`-castable step; defaults to
        `tf.summary.experimental.get_step()`.
      reference: optional `Tensor` or array of the same size (the weights
        before training) to measure the distance from.
      buckets: optional non-negative int, histogram buckets (default 30).
      description: optional long-form description (markdown).
      trainable: optional Python bool, recorded with every step.

    Returns:
      True on success, or False if no default summary writer was available.

    Raises:
      ValueError: unsupported dtype, bad `buckets`, or no step set.
      ModuleNotFoundError: TensorFlow is not installed.
    """
    tf = _get_tensorflow()
    bucket_count = _check_bucket_count(buckets)
    data = tf.stop_gradient(tf.convert_to_tensor(data))
    inputs = [data]
    if reference is not None:
        reference = tf.stop_gradient(tf.convert_to_tensor(reference))
        inputs.append(reference)
    for tensor, what in zip(inputs, ("data", "reference")):
        dtype = tensor.dtype
        if not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
            raise ValueError(
                "%s must be a bool, integer or floating tensor, got dtype %s"
                % (what, dtype.name)
            )
    if reference is not None:
        sizes = (data.shape.num_elements(), reference.shape.num_elements())
        if None not in sizes and sizes[0] != sizes[1]:
            raise ValueError(
                "reference has %d elements but data has %d; pass the same "
                "tensor's earlier value" % (sizes[1], sizes[0])
            )
    summary_metadata = metadata.create_summary_metadata(description=description)
    summary_scope = (
        getattr(tf.summary.experimental, "summary_scope", None)
        or tf.summary.summary_scope
    )

    def compute(*arrays):
        return weight_statistics(
            arrays[0],
            reference=arrays[1] if len(arrays) > 1 else None,
            buckets=bucket_count,
            trainable=trainable,
        )

    with summary_scope(name, "weights_summary", values=[data, reference, step]) as (
        tag,
        _,
    ):

        def lazy_tensor():
            result = tf.numpy_function(compute, inputs, tf.float64, stateful=False)
            result.set_shape([None])
            return result

        return tf.summary.write(
            tag=tag, tensor=lazy_tensor, step=step, metadata=summary_metadata
        )
