"""The stored format of tb_weightdiff summaries; the one module that knows it.

Every writer (`summary.weights`, `summary.weights_pb`, the Keras callback) and
every reader (the plugin, the CLI) goes through this module, so the layout is
written down once.

One summary value holds one weight tensor at one step, as a rank-1 `float64`
tensor laid out as::

    [0, S)              statistics, named and ordered by `STAT_FIELDS`
    [S, S + Q)          quantiles of the finite values at `QUANTILE_PROBABILITIES`
    [S + Q, S + Q + 3k) histogram of the finite values: k buckets, each a
                        `(left edge, right edge, count)` triple, i.e.
                        TensorBoard's own `[k, 3]` histogram form, flattened

with S = `len(STAT_FIELDS)` and Q = `len(QUANTILE_PROBABILITIES)`; k follows
from the length. Statistics that do not apply are NaN: moments of a tensor
without finite values, the reference statistics when no reference was given,
`trainable` when it is unknown.

The summary's `SummaryMetadata` has `plugin_name == PLUGIN_NAME`,
`data_class == DATA_CLASS_TENSOR` (without it both TensorBoard loaders drop
the data) and `content` holding JSON: `{"version": 1, "stats": S,
"quantiles": Q}`, and optionally `"layer_type"`: the class of the layer the
tensor belongs to (`Dense`, `Embedding`, `LayerNorm`...), which tells the
verdicts which layers are alike. Readers ignore keys they do not know. A
reader meeting a version it does not know raises `UnsupportedVersionError`;
callers skip that series and say so.

Beside the weights, a writer that knows its optimizer logs two ordinary
TensorBoard scalars per logged step (plugin `scalars`, so they also show in
the Scalars tab): `OPTIMIZER_UPDATES_TAG`, the optimizer's update count,
and `LEARNING_RATE_TAG`, its learning rate.

A reset check (`tb_weightdiff.reset`: each layer put back to its weights
from before training, the model evaluated, the layer restored) is a second
kind of summary of this plugin, one series per layer (or block of layers
reset together) under the tag `RESET_TAG_PREFIX + <name>`. Its content is
`{"kind": "reset", "version": 1, "name": <name>, "tags": [the weight tags
it resets], "metrics": [names]}` (`RESET_FORMAT_VERSION`), and each step's
tensor a rank-1 float64 `[RESET_FIELDS..., then per metric its value as
trained, with the layer reset, with every layer reset]`. Weight summaries
have no `kind`; readers tell the two apart with `is_reset_content`.
"""

import collections.abc
import dataclasses
import json
import logging

import numpy as np
from tensorboard.compat.proto import summary_pb2

logger = logging.getLogger(__name__)

PLUGIN_NAME = "tb_weightdiff"

# The plugin name of TensorBoard's own histograms (Keras's `TensorBoard`
# callback, `tf.summary.histogram`, `histogram_pb`, torch's `add_histogram`).
HISTOGRAM_PLUGIN_NAME = "histograms"

# Bump when the layout above changes; readers refuse versions they do not know.
FORMAT_VERSION = 1

DEFAULT_BUCKET_COUNT = 30

# The reset check's summaries: their kind in the metadata content, their own
# format version, their tags, and the fields each step's tensor starts with.
RESET_KIND = "reset"
RESET_FORMAT_VERSION = 1
RESET_TAG_PREFIX = "tb_weightdiff/reset/"
RESET_FIELDS = (
    "batches",  # batches evaluated per evaluation
    "examples",  # examples in them
    "seconds",  # wall time of this layer's evaluation (0 when nothing was reset: already initial)
    "loss",  # the loss as trained
    "loss_reset",  # with this layer (group) put back to its initial weights
    "loss_initial",  # with every layer put back: the model before training
)

# The plugin name of TensorBoard's scalars, and the tags of the optimizer's
# state that writers log beside the weights.
SCALARS_PLUGIN_NAME = "scalars"
OPTIMIZER_UPDATES_TAG = "tb_weightdiff/optimizer/updates"
LEARNING_RATE_TAG = "tb_weightdiff/optimizer/learning_rate"

STAT_FIELDS = (
    "count",  # every element, finite or not
    "finite_count",
    "nan_count",
    "posinf_count",
    "neginf_count",
    "mean",  # mean, std, min, max and l2_norm are over the finite values
    "std",
    "min",
    "max",
    "l2_norm",
    "zero_fraction",  # exact zeros / count
    "trainable",  # 1.0, 0.0, or NaN when unknown
    "fingerprint",  # CRC-32 of the raw bytes: equal means bit-identical (almost surely)
    "reference_l2_norm",  # ||W0||
    "reference_distance",  # ||W - W0||
    "relative_change",  # ||W - W0|| / ||W0||; 0 if W == W0; NaN if W0 == 0 != W
    "cosine_distance",  # 1 - cos(W, W0), in [0, 2]; 0 if W == W0; NaN if a norm is 0
)

# Evenly spaced so that the Wasserstein-1 distance between two steps is a
# simple integral over p; 0 and 1 are the finite minimum and maximum.
QUANTILE_PROBABILITIES = tuple(i / 64 for i in range(65))

_STAT_INDEX = {name: i for i, name in enumerate(STAT_FIELDS)}
_HEADER_LENGTH = len(STAT_FIELDS) + len(QUANTILE_PROBABILITIES)


class UnsupportedVersionError(ValueError):
    """The summary was written in a format version this reader does not know."""


@dataclasses.dataclass(frozen=True)
class PluginData:
    """What a summary's metadata `content` says."""

    version: int
    stat_count: int
    quantile_count: int
    layer_type: str = None


@dataclasses.dataclass(frozen=True)
class WeightSummary:
    """One weight tensor at one step, decoded.

    Attributes:
      stats: `{name: float}` for every name in `STAT_FIELDS`.
      quantiles: float64 array aligned with `QUANTILE_PROBABILITIES`
        (all NaN when there were no finite values).
      histogram: float64 array of shape `[k, 3]` (left, right, count).
    """

    stats: dict
    quantiles: np.ndarray
    histogram: np.ndarray

    def stat(self, name):
        return self.stats[name]


def create_summary_metadata(display_name=None, description=None, layer_type=None):
    """Returns the `SummaryMetadata` every tb_weightdiff summary carries.

    Args:
      display_name, description: as for any TensorBoard summary.
      layer_type: optional class name of the tensor's layer (`Dense`,
        `Embedding`, `LayerNorm`...).
    """
    fields = {
        "version": FORMAT_VERSION,
        "stats": len(STAT_FIELDS),
        "quantiles": len(QUANTILE_PROBABILITIES),
    }
    if layer_type:
        fields["layer_type"] = str(layer_type)
    return _plugin_metadata(fields, display_name or "", description or "")


def _known_version(parsed, expected, kind):
    """The `version` of parsed metadata content, which must be `expected`.

    Raises:
      UnsupportedVersionError: another version (written by a newer tb_weightdiff).
      ValueError: no version at all.
    """
    try:
        version = int(parsed["version"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError("malformed tb_weightdiff %smetadata: %s" % (kind, error)) from None
    if version != expected:
        raise UnsupportedVersionError(
            "tb_weightdiff %sformat version %d is not supported by this reader "
            "(it reads version %d); upgrade tb-weightdiff to read it" % (kind, version, expected)
        )
    return version


def _plugin_metadata(fields, display_name, description):
    """Our plugin's `SummaryMetadata` with `fields` as its JSON content (`DATA_CLASS_TENSOR`:
    without it both TensorBoard loaders drop the data)."""
    return summary_pb2.SummaryMetadata(
        display_name=display_name,
        summary_description=description,
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=json.dumps(fields, separators=(",", ":")).encode("utf-8")
        ),
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def parse_plugin_metadata(content):
    """Parses the `content` of a tb_weightdiff `SummaryMetadata`.

    Args:
      content: `bytes`, the `plugin_data.content` field.

    Returns:
      A `PluginData`.

    Raises:
      UnsupportedVersionError: written by a newer tb_weightdiff.
      ValueError: not tb_weightdiff metadata at all.
    """
    if not isinstance(content, (bytes, bytearray)):
        raise TypeError("content must be bytes, not %s" % type(content).__name__)
    try:
        parsed = json.loads(bytes(content).decode("utf-8"))
    except ValueError as error:
        raise ValueError("malformed tb_weightdiff metadata: %s" % error) from None
    version = _known_version(parsed, FORMAT_VERSION, "")
    stat_count = parsed.get("stats")
    quantile_count = parsed.get("quantiles")
    if stat_count != len(STAT_FIELDS) or quantile_count != len(
        QUANTILE_PROBABILITIES
    ):
        raise ValueError(
            "malformed tb_weightdiff metadata: layout %r/%r does not match "
            "version %d" % (stat_count, quantile_count, version)
        )
    layer_type = parsed.get("layer_type")
    return PluginData(version, stat_count, quantile_count, layer_type if isinstance(layer_type, str) else None)


def encode(stats, quantiles, histogram):
    """Packs one weight summary into the stored rank-1 float64 layout.

    Args:
      stats: sequence of floats in `STAT_FIELDS` order.
      quantiles: sequence of floats aligned with `QUANTILE_PROBABILITIES`.
      histogram: array of shape `[k, 3]`.
    """
    histogram = np.asarray(histogram, dtype=np.float64).reshape(-1, 3)
    return np.concatenate(
        [
            np.asarray(stats, dtype=np.float64),
            np.asarray(quantiles, dtype=np.float64),
            histogram.ravel(),
        ]
    )


def decode(values):
    """Unpacks a stored tensor into a `WeightSummary`.

    Raises:
      ValueError: the tensor does not have the layout of this format version
        (wrong rank or length); the message says how.
    """
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(
            "malformed tb_weightdiff tensor: rank %d, expected 1" % array.ndim
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            "malformed tb_weightdiff tensor: dtype %s, expected float64"
            % array.dtype
        )
    extra = array.size - _HEADER_LENGTH
    if extra < 0 or extra % 3:
        raise ValueError(
            "malformed tb_weightdiff tensor: length %d is not %d + 3k"
            % (array.size, _HEADER_LENGTH)
        )
    array = array.astype(np.float64, copy=False)
    stat_count = len(STAT_FIELDS)
    # One tolist() converts every statistic at once: a float() per field costs
    # several times as much, and a logdir holds tens of thousands of these.
    stats = dict(zip(STAT_FIELDS, array[:stat_count].tolist()))
    return WeightSummary(
        stats=stats,
        quantiles=array[stat_count:_HEADER_LENGTH],
        histogram=array[_HEADER_LENGTH:].reshape(-1, 3),
    )


def _integral_counts(values):
    """Finite, non-negative whole numbers (elementwise)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= 0) & (values == np.round(values))


def _damage(table):
    """`(row, reason)` of the first row of `[rows, length]` stored tensors that no writer
    could have produced (a bit flip, a half-synced copy, a hand-written file), or None.

    What `summary.weight_statistics` guarantees: whole, non-negative counts that
    add up; a spread, norms and distances >= 0 (or NaN: none defined); a
    fraction in [0, 1]; quantiles finite and non-decreasing when any value is
    finite; buckets with finite, ordered edges and whole counts that add up to
    the finite values. NaN and infinities in the weights themselves are data
    (`diverged`), not damage: they are counted, never stored as statistics.
    """
    column = {name: table[:, index] for index, name in enumerate(STAT_FIELDS)}
    quantiles = table[:, len(STAT_FIELDS):_HEADER_LENGTH]
    histogram = table[:, _HEADER_LENGTH:].reshape(table.shape[0], -1, 3)
    finite = column["finite_count"]
    problems = []
    with np.errstate(invalid="ignore", over="ignore"):
        for name in ("count", "finite_count", "nan_count", "posinf_count", "neginf_count"):
            problems.append((~_integral_counts(column[name]), "%s is not a whole number >= 0" % name))
        parts = finite + column["nan_count"] + column["posinf_count"] + column["neginf_count"]
        problems.append((parts != column["count"], "the counts of finite, NaN and infinite values do not add up to count"))
        for name in ("std", "l2_norm", "reference_l2_norm", "reference_distance", "relative_change"):
            problems.append((column[name] < 0, "%s is negative" % name))
        problems.append(((column["zero_fraction"] < 0) | (column["zero_fraction"] > 1), "zero_fraction is outside [0, 1]"))
        problems.append(((column["cosine_distance"] < 0) | (column["cosine_distance"] > 2), "cosine_distance is outside [0, 2]"))
        trainable = column["trainable"]
        problems.append((~np.isnan(trainable) & (trainable != 0) & (trainable != 1), "trainable is not 0, 1 or NaN"))
        fingerprint = column["fingerprint"]
        problems.append((~_integral_counts(fingerprint) | (fingerprint >= 2.0**32), "fingerprint is not a CRC-32"))
        some = finite > 0
        for name in ("min", "max"):
            problems.append((some & ~np.isfinite(column[name]), "%s is not finite though finite values were counted" % name))
        problems.append((some & (column["min"] > column["max"]), "min is above max"))
        unordered = (some[:, None] & ~np.isfinite(quantiles)).any(axis=1) | (np.diff(quantiles, axis=1) < 0).any(axis=1)
        problems.append((unordered, "quantiles are not finite and non-decreasing"))
        if histogram.shape[1]:
            left, right, counts = histogram[:, :, 0], histogram[:, :, 1], histogram[:, :, 2]
            problems.append(((~_integral_counts(counts)).any(axis=1), "a bucket count is not a whole number >= 0"))
            problems.append((some & (counts.sum(axis=1) != finite), "the bucket counts do not add up to finite_count"))
            edges_bad = ~np.isfinite(left).all(axis=1) | ~np.isfinite(right).all(axis=1)
            edges_bad |= (left > right).any(axis=1) | (right[:, :-1] > left[:, 1:]).any(axis=1)
            problems.append((some & edges_bad, "bucket edges are not finite and in order"))
    for rows, reason in problems:
        hits = np.flatnonzero(rows)
        if hits.size:
            return int(hits[0]), reason
    return None


def check_summaries(table, steps=None):
    """Raises ValueError naming the first damaged row of stored tensors (see `_damage`)."""
    table = np.asarray(table, dtype=np.float64)
    found = _damage(table.reshape(-1, table.shape[-1]))
    if found is not None:
        row, reason = found
        where = "step %d" % steps[row] if steps is not None else "row %d" % row
        raise ValueError("damaged tb_weightdiff tensor at %s: %s" % (where, reason))


def decode_series(values_list, steps=None):
    """Unpacks the stored tensors of one series (one tag, every step) at once.

    Args:
      values_list: the stored tensors, one per step.
      steps: optional steps, to name the one a damaged tensor is at.

    Returns:
      `(summaries, table)`: a `WeightSummary` per tensor, as `decode` gives
      them, and a `[steps, length]` float64 array of the tensors stacked (its
      rows back the summaries' arrays), or None when the tensors differ in
      length (the bucket count changed).

    Raises:
      ValueError: a tensor does not have the layout of this format version,
        as `decode` says, or holds what no writer produces (`check_summaries`).
    """
    stacked = stacked_rows(values_list)
    if stacked is not None and stacked.ndim == 2 and stacked.dtype.kind == "f":
        length = stacked.shape[1]
        if length >= _HEADER_LENGTH and (length - _HEADER_LENGTH) % 3 == 0:
            table = stacked.astype(np.float64, copy=False)
            check_summaries(table, steps)
            return SummaryRows(table), table
    arrays = [np.asarray(values) for values in values_list]
    sizes = {array.size for array in arrays}
    length = sizes.pop() if len(sizes) == 1 else None
    uniform = (
        length is not None
        and length >= _HEADER_LENGTH
        and (length - _HEADER_LENGTH) % 3 == 0
        and all(array.ndim == 1 and array.dtype.kind == "f" for array in arrays)
    )
    if not uniform:
        summaries = [decode(array) for array in arrays]
        for index, array in enumerate(arrays):
            check_summaries(array[None, :], None if steps is None else [steps[index]])
        return summaries, None
    # One stack for the whole series: a logdir holds tens of thousands of
    # these tensors, and per-tensor numpy calls would dominate. The summaries
    # are made when they are looked at (the analysis reads the table).
    table = np.stack(arrays).astype(np.float64, copy=False)
    check_summaries(table, steps)
    return SummaryRows(table), table


def stacked_rows(values_list):
    """The one array behind the tensors of a series when the reader decoded
    them as rows of one (`reader.StackedRows`), else None."""
    stacked = getattr(values_list, "stacked", None)
    return stacked if isinstance(stacked, np.ndarray) else None


def check_histograms(values_list, steps=None):
    """Raises ValueError unless every one is a TensorBoard `[k, 3]` histogram a writer
    could produce: finite, non-negative counts (usually whole, but TensorBoard does not
    require it); edges of any value (TensorBoard writes NaN or infinite edges for
    weights that hold NaN or Inf: that is `diverged`, not damage)."""
    def where(index):
        return "step %d" % steps[index] if steps is not None else "row %d" % index

    def damaged(index):
        return ValueError("damaged histogram at %s: a bucket count is not a finite number >= 0" % where(index))

    stacked = stacked_rows(values_list)
    if stacked is not None and stacked.ndim == 3 and stacked.shape[2] == 3 and stacked.dtype.kind in "fiu":
        # Every step's counts in one array: no numpy call per step.
        counts = stacked[:, :, 2].astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(counts) & (counts >= 0))
        if bad.any():
            raise damaged(int(np.flatnonzero(bad.any(axis=1))[0]))
        return
    arrays = [np.asarray(values) for values in values_list]
    for index, array in enumerate(arrays):
        if array.ndim != 2 or array.shape[1] != 3 or array.dtype.kind not in "fiu":
            message = "malformed histogram at %s: shape %s, dtype %s, expected [k, 3] numbers" % (
                where(index), array.shape, array.dtype)
            if array.ndim == 1 and array.dtype.kind == "f" and array.size >= len(STAT_FIELDS):
                # A rank-1 tensor in the histograms' series: our own summary under a tag that
                # add_histogram took first (both loaders keep one plugin per tag and run).
                message += (
                    " (it looks like a tb_weightdiff summary: add_histogram and WeightDiffLogger "
                    "wrote the same tag into one run; give add_histogram's tags a suffix, "
                    "name + '/histogram')"
                )
            raise ValueError(message)
    if not arrays:
        return
    # The counts of every step at once: a logdir holds tens of thousands of these.
    counts = np.concatenate([array[:, 2] for array in arrays]).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(counts) & (counts >= 0))
    if bad.any():
        ends = np.cumsum([array.shape[0] for array in arrays])
        index = int(np.searchsorted(ends, np.flatnonzero(bad)[0], side="right"))
        raise damaged(index)


class SummaryRows(collections.abc.Sequence):
    """The `WeightSummary` of each row of a `[steps, length]` table, made on access."""

    def __init__(self, table):
        self._table = table

    def __len__(self):
        return self._table.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = self._table[index]
        stat_count = len(STAT_FIELDS)
        return WeightSummary(
            stats=dict(zip(STAT_FIELDS, row[:stat_count].tolist())),
            quantiles=row[stat_count:_HEADER_LENGTH],
            histogram=row[_HEADER_LENGTH:].reshape(-1, 3),
        )


@dataclasses.dataclass(frozen=True)
class ResetData:
    """What a reset summary's metadata `content` says."""

    version: int
    name: str
    tags: tuple
    metrics: tuple


def _content_json(content):
    if not isinstance(content, (bytes, bytearray)):
        return None
    try:
        parsed = json.loads(bytes(content).decode("utf-8"))
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def is_reset_content(content):
    """Whether a tb_weightdiff `SummaryMetadata.plugin_data.content` is of a reset summary."""
    if not isinstance(content, (bytes, bytearray)) or b'"kind"' not in content:
        return False  # a weight summary's content: no JSON parsed per series and listing
    parsed = _content_json(content)
    return parsed is not None and parsed.get("kind") == RESET_KIND


def create_reset_metadata(name, tags, metrics=()):
    """The `SummaryMetadata` of the reset summaries of one layer (or block) `name`.

    Args:
      name: the layer or block, as the writer names it.
      tags: the tags of the weight summaries it resets.
      metrics: the names of the metrics recorded beside the loss.
    """
    fields = {
        "kind": RESET_KIND,
        "version": RESET_FORMAT_VERSION,
        "name": str(name),
        "tags": [str(tag) for tag in tags],
        "metrics": [str(metric) for metric in metrics],
    }
    return _plugin_metadata(
        fields, str(name), "tb_weightdiff reset check: the loss with this layer put back to its initial weights"
    )


def parse_reset_metadata(content):
    """Parses the `content` of a reset summary's metadata into a `ResetData`.

    Raises:
      UnsupportedVersionError: written by a newer tb_weightdiff.
      ValueError: not reset metadata, or malformed.
    """
    parsed = _content_json(content)
    if parsed is None or parsed.get("kind") != RESET_KIND:
        raise ValueError("malformed tb_weightdiff reset metadata: not a JSON object of kind %r" % RESET_KIND)
    version = _known_version(parsed, RESET_FORMAT_VERSION, "reset ")
    name, tags, metrics = parsed.get("name"), parsed.get("tags"), parsed.get("metrics", [])
    if (
        not isinstance(name, str)
        or not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
        or not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)
    ):
        raise ValueError("malformed tb_weightdiff reset metadata: name, tags and metrics must be text")
    return ResetData(version, name, tuple(tags), tuple(metrics))


def encode_reset(fields, metric_values=()):
    """Packs one reset check of one layer: `fields` in `RESET_FIELDS` order, then
    per metric `(as trained, layer reset, all reset)`."""
    values = [float(v) for v in fields] + [float(v) for triple in metric_values for v in triple]
    if len(fields) != len(RESET_FIELDS):
        raise ValueError("a reset summary has %d fields, got %d" % (len(RESET_FIELDS), len(fields)))
    return np.asarray(values, dtype=np.float64)


def decode_reset(values, metric_count):
    """`({field: float}, [(trained, reset, initial)] per metric)` of one stored reset tensor.

    Raises:
      ValueError: the tensor is not `len(RESET_FIELDS) + 3 * metric_count`
        floats, or holds counts or a time no writer produces.
    """
    array = np.asarray(values)
    expected = len(RESET_FIELDS) + 3 * metric_count
    if array.ndim != 1 or array.dtype.kind != "f" or array.size != expected:
        raise ValueError(
            "malformed tb_weightdiff reset tensor: shape %s, dtype %s, expected %d floats"
            % (array.shape, array.dtype, expected)
        )
    values = array.astype(np.float64).tolist()
    fields = dict(zip(RESET_FIELDS, values))
    for name in ("batches", "examples", "seconds"):
        value = fields[name]
        if not (value >= 0 and value < float("inf")):
            raise ValueError("damaged tb_weightdiff reset tensor: %s is %r" % (name, value))
    rest = values[len(RESET_FIELDS):]
    return fields, [tuple(rest[i:i + 3]) for i in range(0, len(rest), 3)]


def stat_index(name):
    """Position of statistic `name` in the stored tensor."""
    return _STAT_INDEX[name]
