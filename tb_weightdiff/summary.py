"""Summaries of weight tensors: `weights` (TensorFlow) and `weights_pb` (numpy only).

Both compute the same numbers with the same numpy code (`weight_statistics`);
the TensorFlow op runs it through `tf.numpy_function`, so it works eagerly and
inside `tf.function` on CPU hosts. TensorFlow is imported only when `weights`
is called: `weights_pb` serves PyTorch, JAX and plain numpy code.
`check_buckets` validates a `buckets=` argument ahead of time, for callers
that take it long before they summarize (the Keras callback).

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

import functools
import math
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


def check_buckets(buckets):
    """Validates a `buckets=` argument early and returns the bucket count it means.

    For callers that take `buckets` long before they summarize anything (the
    Keras callback's constructor), so a bad value fails where it was given.

    Args:
      buckets: `None` (the default, 30 buckets) or a non-negative int.

    Returns:
      The histogram's bucket count, an int.

    Raises:
      ValueError: `buckets` is not `None` or a non-negative int.
    """
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


# Wherever a statistic needs float64 arithmetic it works through blocks of
# the tensor: a float64 copy of a 20M-element tensor would cost 160 MB and
# three passes over memory. Blocks of up to 2 MiB of float64 stay in cache;
# for smaller tensors a block is at most 1/128 of the tensor (at least 32 kB),
# so the two buffers add about 3 % to the memory the tensor's own copy takes.
# Smaller blocks would save memory but cost time: numpy's per-call overhead
# then dominates (README, "Performance", has the measurement).
_BLOCK = 1 << 18
_SMALLEST_BLOCK = 1 << 12


def _block_size(size):
    return max(1, min(size, max(_SMALLEST_BLOCK, min(_BLOCK, size // 128))))


def _fingerprint(array):
    return float(zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))


def _count_below(sorted_values, edges):
    """How many of `sorted_values` are `< edges[i]`, exactly, for float64 `edges`.

    `np.searchsorted` with float64 keys would first cast a float32 array to
    float64 (a copy and a pass over the tensor). Instead each edge is replaced
    by the smallest value of the array's dtype not below it: a value of that
    dtype is below the edge exactly when it is below that neighbour.
    """
    if sorted_values.dtype != np.float64:
        dtype = sorted_values.dtype.type
        nearest = edges.astype(dtype)
        edges = np.where(nearest < edges, np.nextafter(nearest, dtype(np.inf)), nearest)
    return np.searchsorted(sorted_values, edges, side="left")


def _histogram(sorted_finite, bucket_count):
    """TensorBoard's `[k, 3]` histogram of already sorted finite values.

    Buckets are equal-width from the minimum to the maximum, each closed on
    the left and the last one also on the right (numpy's `histogram` rule);
    counting is k - 1 binary searches in the sorted values.
    """
    if sorted_finite.size == 0:
        return _assemble_histogram(bucket_count, 0, np.nan, np.nan, None)
    return _assemble_histogram(
        bucket_count,
        sorted_finite.size,
        float(sorted_finite[0]),
        float(sorted_finite[-1]),
        lambda inner_edges: _count_below(sorted_finite, inner_edges),
    )


def _histogram_edges(minimum, maximum, bucket_count):
    """The k + 1 float64 bucket edges from `minimum` to `maximum` (`minimum < maximum`)."""
    # When the range itself overflows (values near +-1.8e308) the edges are
    # spaced on halves: halving and doubling are exact.
    scale = 1.0 if np.isfinite(maximum - minimum) else 0.5
    edges = np.linspace(minimum * scale, maximum * scale, bucket_count + 1) / scale
    edges[0], edges[-1] = minimum, maximum
    return edges


def _assemble_histogram(bucket_count, size, minimum, maximum, count_below):
    """The `[k, 3]` histogram of `size` finite values from `minimum` to `maximum`.

    `count_below(inner_edges)` says how many of the values are `< edge` for
    each of the k - 1 inner edges; it is called only when `minimum < maximum`.
    Shared by the numpy writer and `tb_weightdiff.torch_summary` (which
    counts on the tensor's device).
    """
    if bucket_count == 0:
        return np.zeros((0, 3))
    if size == 0:
        return np.zeros((bucket_count, 3))
    if minimum == maximum:
        edges = np.full(bucket_count, minimum, dtype=np.float64)
        counts = np.zeros(bucket_count)
        counts[-1] = size
        return np.stack([edges, edges, counts], axis=1)
    edges = _histogram_edges(minimum, maximum, bucket_count)
    positions = np.asarray(count_below(edges[1:-1]))
    counts = np.diff(np.concatenate([[0], positions, [size]])).astype(np.float64)
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def _quantile_positions(size):
    """Indices and weights of `np.quantile`'s linear method for `size` values."""
    positions = _QUANTILE_PROBABILITIES * (size - 1)
    below = np.floor(positions).astype(np.intp)
    above = np.minimum(below + 1, size - 1)
    fraction = positions - below
    return below, above, fraction, fraction >= 0.5


def _quantiles(sorted_finite):
    """Quantiles at the fixed probabilities, exactly as `np.quantile`'s default
    (linear) method computes them, read off the sorted values.

    Where two neighbours are so far apart that their difference overflows
    (values near +-1.8e308; np.quantile gives NaN there), the interpolation
    is a weighted mean instead, which stays finite and in order.
    """
    below, above, fraction, upper_half = _quantile_positions(sorted_finite.size)
    low = sorted_finite[below].astype(np.float64)
    high = sorted_finite[above].astype(np.float64)
    return _interpolate(low, high, fraction, upper_half)


def _interpolate(low, high, fraction, upper_half):
    """`np.quantile`'s linear interpolation between the float64 neighbours `low` and `high`."""
    with np.errstate(over="ignore", invalid="ignore"):
        difference = high - low
        result = low + difference * fraction
        # numpy's _lerp: interpolate from the nearer end, for monotonicity.
        np.subtract(high, difference * (1 - fraction), out=result, where=upper_half)
        overflowed = ~np.isfinite(difference)
        if overflowed.any():
            result[overflowed] = (low * (1 - fraction) + high * fraction)[overflowed]
    return result


def _moments(sorted_finite):
    """`(mean, std, l2_norm)` of non-empty finite values, in float64, block by block.

    The sums are taken around a shift K, the middle value: the variance is
    mean((x - K)^2) - mean(x - K)^2, and since |mean - median| <= std the
    subtraction loses nothing (all-equal values give exactly 0).
    """
    size = sorted_finite.size
    shift = float(sorted_finite[size // 2])
    step = _block_size(size)
    block = np.empty(step)
    square_sum = shifted_sum = shifted_square_sum = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, size, step):
            values = block[: min(step, size - start)]
            np.copyto(values, sorted_finite[start : start + step])
            square_sum += float(np.dot(values, values))
            values -= shift
            shifted_sum += float(np.add.reduce(values))
            shifted_square_sum += float(np.dot(values, values))
    return _moments_from_sums(size, shift, square_sum, shifted_sum, shifted_square_sum)


def _moments_from_sums(size, shift, square_sum, shifted_sum, shifted_square_sum):
    """`(mean, std, l2_norm)` from the float64 sums `_moments` gathers (Python floats)."""
    with np.errstate(over="ignore", invalid="ignore"):
        offset = shifted_sum / size
        variance = shifted_square_sum / size - offset * offset
    return shift + offset, float(np.sqrt(max(variance, 0.0))), float(np.sqrt(square_sum))


def _reference_statistics_direct(current, reference):
    """`_reference_statistics` on whole float64 copies: for non-finite values."""
    current = current.astype(np.float64, copy=False)
    ref = reference.astype(np.float64, copy=False)
    with np.errstate(all="ignore"):
        difference = current - ref
        squares = (np.dot(difference, difference), np.dot(ref, ref), np.dot(current, current))

        def direction_change_squared(current_norm, reference_norm):
            direction_change = current / current_norm - ref / reference_norm
            return np.dot(direction_change, direction_change)

        return _reference_direct_from_squares(*squares, direction_change_squared)


def _reference_direct_from_squares(difference_square, reference_square, current_square, direction_change_squared):
    """The end of `_reference_statistics_direct`, given ||D||^2, ||W0||^2 and ||W||^2 and a
    function computing ||W/||W|| - W0/||W0|| ||^2 from the two norms."""
    with np.errstate(all="ignore"):
        distance = float(np.sqrt(difference_square))
        reference_norm = float(np.sqrt(reference_square))
        current_norm = float(np.sqrt(current_square))
        if distance == 0.0:
            return reference_norm, 0.0, 0.0, 0.0
        relative_change = distance / reference_norm if reference_norm > 0 else np.nan
        if reference_norm > 0 and current_norm > 0:
            cosine_distance = float(
                min(2.0, 0.5 * direction_change_squared(current_norm, reference_norm))
            )
        else:
            cosine_distance = np.nan
    return reference_norm, distance, float(relative_change), cosine_distance


def _direction_change_squared(current, reference, current_norm, reference_norm):
    """`||W/||W|| - W0/||W0|| ||^2`, elementwise, block by block."""
    total = 0.0
    step = _block_size(current.size)
    block = np.empty(step)
    ref_block = np.empty_like(block)
    for start in range(0, current.size, step):
        values = block[: min(step, current.size - start)]
        ref_values = ref_block[: values.size]
        np.copyto(values, current[start : start + step])
        np.copyto(ref_values, reference[start : start + step])
        values /= current_norm
        ref_values /= reference_norm
        values -= ref_values
        total += float(np.dot(values, values))
    return total


def _reference_statistics(values, reference):
    """`(||W0||, ||W - W0||, relative change, cosine distance)` as floats.

    One pass in float64 blocks gathers ||W||^2, ||W0||^2, ||D||^2 and D.W0
    (D = W - W0, exact for float32 weights). The cosine distance is
    ||W/||W|| - W0/||W0|| ||^2 / 2, which keeps its precision for tiny
    rotations; with s = ||W0|| - ||W|| = -(2 D.W0 + ||D||^2) / (||W|| + ||W0||)
    it equals (||D||^2 + 2 s D.W0 / ||W0|| + s^2) / (2 ||W||^2). Where those
    terms cancel (the norm changed far more than the direction) a second pass
    computes the direction change elementwise.
    """
    reference = _as_float(reference)
    size = values.size
    step = _block_size(size)
    block = np.empty(step)
    ref_block = np.empty_like(block)
    current_square = reference_square = difference_square = cross = 0.0
    with np.errstate(all="ignore"):
        for start in range(0, size, step):
            current = block[: min(step, size - start)]
            ref = ref_block[: current.size]
            np.copyto(current, values[start : start + step])
            np.copyto(ref, reference[start : start + step])
            current_square += float(np.dot(current, current))
            reference_square += float(np.dot(ref, ref))
            current -= ref
            difference_square += float(np.dot(current, current))
            cross += float(np.dot(current, ref))
        sums = (current_square, reference_square, difference_square, cross)
        found = _reference_from_sums(
            sums, lambda current_norm, reference_norm: _direction_change_squared(
                values, reference, current_norm, reference_norm)
        )
    if found is None:
        return _reference_statistics_direct(values, reference)
    return found


def _reference_from_sums(sums, direction_change_squared):
    """The end of `_reference_statistics`, from its four float64 sums (||W||^2, ||W0||^2,
    ||D||^2, D.W0); None when a sum is not finite (then the direct route applies).
    `direction_change_squared(||W||, ||W0||)` is the elementwise second pass, called
    only where the terms cancel. Shared with `tb_weightdiff.torch_summary`."""
    current_square, reference_square, difference_square, cross = sums
    with np.errstate(all="ignore"):
        if not all(math.isfinite(s) for s in sums):
            return None
        distance = math.sqrt(difference_square)
        reference_norm = math.sqrt(reference_square)
        current_norm = math.sqrt(current_square)
        if distance == 0.0:
            return reference_norm, 0.0, 0.0, 0.0
        relative_change = distance / reference_norm if reference_norm > 0 else np.nan
        if not (reference_norm > 0 and current_norm > 0):
            return reference_norm, distance, float(relative_change), np.nan
        norm_gap = -(2 * cross + difference_square) / (current_norm + reference_norm)
        terms = (difference_square, 2 * cross * norm_gap / reference_norm, norm_gap * norm_gap)
        squared = sum(terms)
        if squared > 1e-6 * sum(abs(term) for term in terms):
            squared /= current_square
        else:
            squared = direction_change_squared(current_norm, reference_norm)
    return reference_norm, distance, float(relative_change), min(2.0, max(0.0, 0.5 * squared))


def weight_statistics(
    data, reference=None, buckets=None, trainable=None, overwrite_input=False
):
    """Computes the stored tensor for one weight tensor (numpy only).

    Args:
      data: array-like of any shape; bool, integer or floating.
      reference: optional array-like with as many elements as `data` (the
        weights before training); adds the reference statistics.
      buckets: optional non-negative int, the histogram's bucket count
        (default 30).
      trainable: optional bool, recorded as 1.0 / 0.0 (NaN when `None`).
      overwrite_input: if True and `data` is a writable numpy array, it is
        sorted in place (its values are lost) instead of sorted into a copy,
        which saves host memory as large as the tensor. For callers that own
        a fresh host copy, as the Keras callback does.

    Returns:
      A rank-1 float64 numpy array in the layout of `tb_weightdiff.metadata`.

    Raises:
      ValueError: unsupported dtype, bad `buckets`, or a reference of another size.
    """
    bucket_count = check_buckets(buckets)
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
    # The fingerprint and the distance from the reference need the values in
    # their order, so they come before the sort.
    fingerprint = _fingerprint(array)
    if reference is not None:
        reference_stats = _reference_statistics(values, reference)
    else:
        reference_stats = (np.nan,) * 4

    # One sort serves the quantiles, the extremes, the non-finite and zero
    # counts and the histogram (binary searches); numpy's SIMD sort of a
    # float32 tensor costs a few passes over it. A converted copy, or an
    # input the caller gave up, is sorted where it lies.
    owned = not np.may_share_memory(values, array)
    if (owned or (overwrite_input and isinstance(data, np.ndarray))) and values.flags.writeable:
        values.sort()
        sorted_values = values
    else:
        sorted_values = np.sort(values)
    # Keys of the array's own dtype: a float64 key would make searchsorted
    # cast the whole float32 array first.
    kind = sorted_values.dtype.type
    nan_count = count - int(np.searchsorted(sorted_values, kind(np.nan), side="left"))
    neginf_count = int(np.searchsorted(sorted_values, kind(-np.inf), side="right"))
    posinf_count = count - nan_count - int(np.searchsorted(sorted_values, kind(np.inf), side="left"))
    sorted_finite = sorted_values[neginf_count : count - nan_count - posinf_count]
    finite_count = sorted_finite.size
    zero_count = int(
        np.searchsorted(sorted_finite, kind(0), side="right")
        - np.searchsorted(sorted_finite, kind(0), side="left")
    )

    if finite_count:
        minimum = float(sorted_finite[0])
        maximum = float(sorted_finite[-1])
        mean, std, l2_norm = _moments(sorted_finite)
        quantiles = _quantiles(sorted_finite)
    else:
        minimum = maximum = mean = std = np.nan
        l2_norm = 0.0 if count == 0 else np.nan
        quantiles = np.full(len(_QUANTILE_PROBABILITIES), np.nan)
    zero_fraction = zero_count / count if count else np.nan

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
        "fingerprint": fingerprint,
        "reference_l2_norm": reference_stats[0],
        "reference_distance": reference_stats[1],
        "relative_change": reference_stats[2],
        "cosine_distance": reference_stats[3],
    }
    histogram = _histogram(sorted_finite, bucket_count)
    return metadata.encode(
        [stats[name] for name in metadata.STAT_FIELDS], quantiles, histogram
    )


@functools.lru_cache(maxsize=64)
def _shared_summary_metadata(layer_type):
    return metadata.create_summary_metadata(layer_type=layer_type)


def _summary_metadata(description, layer_type=None):
    """The summary metadata; without a description one shared, read-only instance per layer type."""
    if description:
        return metadata.create_summary_metadata(description=description, layer_type=layer_type)
    return _shared_summary_metadata(layer_type)


def _summary_pb(name, values, description=None, layer_type=None):
    """A `Summary` holding one stored tensor from `weight_statistics`."""
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=name,
        metadata=_summary_metadata(description, layer_type),
        tensor=tensor_util.make_tensor_proto(values, dtype=np.float64),
    )
    return summary


def weights_pb(
    name,
    data,
    reference=None,
    buckets=None,
    description=None,
    trainable=None,
    overwrite_input=False,
    layer_type=None,
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
      overwrite_input: as in `weight_statistics`: if True and `data` is a
        writable numpy array, it is sorted in place (its values are lost),
        which saves a host copy as large as the tensor. For callers that own a
        fresh host copy, as the Keras callback does.
      layer_type: optional class name of the tensor's layer (`"Dense"`,
        `"Embedding"`, `"LayerNorm"`): recorded in the metadata, it tells the
        verdicts which layers to compare with which (a sparse embedding is
        not held to a dense layer's movement).

    Returns:
      A `tensorboard.compat.proto.summary_pb2.Summary` with one value.

    Raises:
      ValueError: as `weight_statistics`.
    """
    values = weight_statistics(
        data,
        reference=reference,
        buckets=buckets,
        trainable=trainable,
        overwrite_input=overwrite_input,
    )
    return _summary_pb(name, values, description, layer_type)


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
    bucket_count = check_buckets(buckets)
    # Eagerly the values go to numpy directly and no tape sees them.
    detach = (lambda tensor: tensor) if tf.executing_eagerly() else tf.stop_gradient
    data = detach(tf.convert_to_tensor(data))
    inputs = [data]
    if reference is not None:
        reference = detach(tf.convert_to_tensor(reference))
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
    summary_metadata = _summary_metadata(description)
    summary_scope = (
        getattr(tf.summary.experimental, "summary_scope", None)
        or tf.summary.summary_scope
    )

    def compute(*arrays, overwrite_input=False):
        return weight_statistics(
            arrays[0],
            reference=arrays[1] if len(arrays) > 1 else None,
            buckets=bucket_count,
            trainable=trainable,
            overwrite_input=overwrite_input,
        )

    with summary_scope(name, "weights_summary", values=[data, reference, step]) as (
        tag,
        _,
    ):

        def lazy_tensor():
            if tf.executing_eagerly():
                # The tensors are at hand: compute now, without numpy_function's
                # dispatch. `numpy()` returns copies, which may be sorted in place.
                return tf.constant(compute(*[tensor.numpy() for tensor in inputs], overwrite_input=True))
            result = tf.numpy_function(compute, inputs, tf.float64, stateful=False)
            result.set_shape([None])
            return result

        return tf.summary.write(
            tag=tag, tensor=lazy_tensor, step=step, metadata=summary_metadata
        )
