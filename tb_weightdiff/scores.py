"""Per-variable scores: how far each weight tensor moved, in units that compare across layers.

From `reader.Series` (steps strictly increasing) this module builds one
`Variable` per weight tensor and fills its scores; it judges nothing (the
verdicts are `tb_weightdiff.verdicts`'). What it owns:

- reading the stored columns of our summaries (`metadata`'s layout) and the
  `[k, 3]` arrays of plain histograms into `distance.Distributions`,
  several series at a time;
- the W1 distances each variable needs: from its baseline (first logged
  step) and between consecutive logged steps;
- **the scale rule**: what a W1 distance is divided by so that layers of any
  scale compare (`choose_scale`; README, "Scores");
- **movement**, the one number a verdict tests: the largest relative change
  from the reference where our summaries carry one, else the largest shift;
- how much of a change one rescaling explains (`rescale_residual`: weight
  decay on a tensor no gradient reaches), and where a layer settled;
- the deciding variable of a layer (`driver`), which peers a variable is
  compared with (`peer_group`), and how tags name layers (`split_tag`).

`shift_between` gives the shift between any two logged steps by the same rule,
for the tab's A/B readout.
"""

import collections
import dataclasses
import math
import operator
import re
import threading

import numpy as np

from tb_weightdiff import distance
from tb_weightdiff import metadata

RELATIVE_CHANGE = "relative_change"
SHIFT = "shift"

_HISTOGRAM_SUFFIX = "/histogram"

# Peer groups: a layer is compared with layers whose deciding variable is of
# the same kind (like with like). Weight matrices and kernels move in units
# of their random initialisation; embeddings move only where rows are looked
# up; what starts constant (normalisation scales at one, biases and shifts at
# zero) moves far less in relative terms; what no optimizer trains (moving
# statistics, weights set by hand) has no peers at all.
WEIGHTS = "weights"
EMBEDDING = "embedding"
CONSTANT_INIT = "constant_init"
STATISTICS = "statistics"
PEER_GROUPS = (WEIGHTS, EMBEDDING, CONSTANT_INIT, STATISTICS)

# Variable names of the usual layers (Keras, PyTorch), read as hints only:
# the writer's `layer_type` and the variable's own data come first.
_STATISTICS_NAMES = frozenset(
    {"moving_mean", "moving_variance", "running_mean", "running_var", "num_batches_tracked"}
)
_OFFSET_NAMES = frozenset({"bias", "beta"})
_NORMALIZATION_NAMES = frozenset({"gamma", "beta"})
_EMBEDDING_LAYER = re.compile(r"(^|[./_])(embed\w*|emb|wte|wpe|tok_embeddings)$", re.IGNORECASE)
_NORMALIZATION_TYPES = re.compile(r"norm", re.IGNORECASE)
_EMBEDDING_TYPES = re.compile(r"embed", re.IGNORECASE)

def split_tag(tag):
    """`(layer, variable)` of a tag: `sequential/conv2d/kernel[/histogram]` -> (`sequential/conv2d`, `kernel`).

    Tags without `/` split at their last `.` (torch parameter names such as
    `layer1.0.conv1.weight`); a tag with neither is its own layer.
    """
    path = tag[: -len(_HISTOGRAM_SUFFIX)] if tag.endswith(_HISTOGRAM_SUFFIX) and tag != _HISTOGRAM_SUFFIX else tag
    for separator in ("/", "."):
        layer, found, variable = path.rpartition(separator)
        if found and layer and variable:
            return layer, variable
    return path, path


@dataclasses.dataclass
class Variable:
    """Everything the verdicts need about one series (one weight tensor).

    Per-step scores are float arrays aligned with `steps`, NaN where a value
    cannot be computed (the JSON contract turns those into null).
    """

    run: str
    tag: str
    layer: str
    name: str
    source: str
    steps: list
    elements: int
    trainable: object  # True, False or None
    distributions: distance.Distributions
    layer_type: str = None  # the writer's layer class (Dense, Embedding, LayerNorm...), if it said
    diverged_step: object = None
    frozen: bool = False
    relative_change: np.ndarray = None  # [n] or None
    cosine_distance: np.ndarray = None
    reference_distance: np.ndarray = None
    has_reference: bool = False
    norm_ratio: np.ndarray = None  # [n] ||W|| / ||W0||, ours with a reference
    # filled by score_layers
    scale: float = None
    scale_basis: str = None
    shift_from_baseline: np.ndarray = None
    per_step_shift: np.ndarray = None  # NaN at the first step: no previous one
    distance_from_baseline: np.ndarray = None
    movement: float = None
    movement_kind: str = None
    movement_step: int = None  # the logged step where `movement` was reached
    rescale_residual: float = None  # the part of the movement a rescaling leaves unexplained
    rescale: float = None  # that rescaling: ||W|| / ||W0||, or the fitted scale of a histogram
    fixed_edges: bool = False  # histograms whose bucket edges stay put (torch's add_histogram)
    settled_step: int = None
    peer_group: str = None
    updates: float = None  # the optimizer's update count at `movement_step`, if its writer logged it
    update_ratio: float = None  # movement / sqrt(updates)
    # filled by the verdicts
    peer_median: float = None
    ratio_to_median: float = None
    verdict: str = None
    reason: str = ""
    hint: str = None
    margin: float = None  # decades from the threshold that would flip the verdict


def _first_step_where(steps, mask):
    hits = np.flatnonzero(mask)
    return int(steps[hits[0]]) if hits.size else None


def _steps_of(series):
    """The series' steps as ints; they must increase (the judge applies the restart rule first)."""
    steps = [int(step) for step in series.steps]
    if any(a >= b for a, b in zip(steps, steps[1:])):
        raise ValueError("steps must increase, got %s" % steps[:10])
    return steps


_OUR_COLUMNS = (
    "count", "finite_count", "nan_count", "posinf_count", "neginf_count", "std",
    "l2_norm", "trainable", "fingerprint", "reference_l2_norm", "reference_distance",
    "relative_change", "cosine_distance",
)
_our_columns_of = operator.itemgetter(*_OUR_COLUMNS)


_OUR_COLUMN_INDEX = [metadata.stat_index(name) for name in _OUR_COLUMNS]
_QUANTILE_COLUMNS = slice(len(metadata.STAT_FIELDS), len(metadata.STAT_FIELDS) + len(metadata.QUANTILE_PROBABILITIES))


def _prepare_ours(series):
    """`(steps, columns, quantiles)` of one series of our summaries; raises if malformed."""
    steps = _steps_of(series)
    stacked = getattr(series, "table", None)
    if stacked is not None and stacked.shape[0] == len(steps):
        # The reader's stacked tensors: their columns, without a summary per step.
        table = stacked[:, _OUR_COLUMN_INDEX]
        quantiles = stacked[:, _QUANTILE_COLUMNS]
    else:
        summaries = series.summaries
        table = np.array([_our_columns_of(s.stats) for s in summaries], dtype=np.float64).reshape(
            len(summaries), len(_OUR_COLUMNS)
        )
        quantiles = np.array([s.quantiles for s in summaries], dtype=np.float64).reshape(len(summaries), -1)
    column = {name: table[:, i] for i, name in enumerate(_OUR_COLUMNS)}
    if quantiles.shape[1] != len(metadata.QUANTILE_PROBABILITIES):
        raise ValueError(
            "quantiles must have shape [steps, %d], got %s"
            % (len(metadata.QUANTILE_PROBABILITIES), quantiles.shape)
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = column["l2_norm"] / np.sqrt(column["finite_count"])
    return steps, column, (quantiles, column["std"], rms)


def _new_variable(series, steps, distributions, elements, trainable):
    layer, name = split_tag(series.tag)
    return Variable(
        run=series.run,
        tag=series.tag,
        layer=layer,
        name=name,
        source=series.source,
        steps=steps,
        elements=elements,
        trainable=trainable,
        distributions=distributions,
        layer_type=getattr(series, "layer_type", None),
    )


def _variable_from_ours(series, steps, column, distributions):
    trainable_flags = column["trainable"][np.isfinite(column["trainable"])]
    variable = _new_variable(
        series, steps, distributions,
        elements=int(np.max(column["count"], initial=0)),
        trainable=bool(trainable_flags[-1]) if trainable_flags.size else None,
    )
    counts = np.nan_to_num(np.stack([column[name] for name in ("nan_count", "posinf_count", "neginf_count")]))
    nonfinite = (counts[0] + counts[1] + counts[2]) > 0
    variable.diverged_step = _first_step_where(variable.steps, nonfinite)
    fingerprints = column["fingerprint"]
    distances = column["reference_distance"]
    present = np.isfinite(distances)
    variable.frozen = bool(
        len(steps) > 0
        and np.all(fingerprints == fingerprints[0])
        and np.all(distances[present] == 0)
    )
    variable.has_reference = bool(np.any(column["reference_l2_norm"] > 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        variable.norm_ratio = column["l2_norm"] / column["reference_l2_norm"]
    variable.relative_change = column["relative_change"]
    variable.cosine_distance = column["cosine_distance"]
    variable.reference_distance = distances
    return variable


def _prepare_histograms(series):
    """`(steps, histograms)` of one series of plain histograms: a float64 `[steps, k, 3]`
    array when the reader stacked them, else a list of `[k, 3]` arrays; raises if malformed."""
    stacked = metadata.stacked_rows(series.summaries)
    if stacked is not None and stacked.ndim == 3 and stacked.shape[2] == 3:
        return _steps_of(series), stacked.astype(np.float64, copy=False)
    return _steps_of(series), [distance.as_histogram_array(h) for h in series.summaries]


def _variable_from_histograms(series, steps, distributions, facts):
    elements, diverged, frozen = facts
    variable = _new_variable(series, steps, distributions, elements=elements, trainable=None)
    variable.diverged_step = None if diverged is None else int(steps[diverged])
    variable.frozen = frozen
    return variable


def _histogram_facts(many):
    """`(elements, first non-finite step index or None, frozen)` of each of `many`
    histogram `Distributions`, computed per batch they belong to, not per series.

    elements: the largest finite sum of a step's counts (0 if none); frozen:
    every step's buckets as logged equal the first's, padding included."""
    found = [None] * len(many)
    roots = {}
    for number, distributions in enumerate(many):
        root = distributions.batch or distributions
        roots.setdefault(id(root), (root, []))[1].append(number)
    for root, numbers in roots.values():
        offsets = np.array([many[n].offset if many[n].batch is not None else 0 for n in numbers], dtype=np.int64)
        lengths = np.array([many[n].valid.shape[0] for n in numbers], dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        # Each series' rows of the batch, laid end to end (no copy when they already are).
        rows = np.repeat(offsets - starts, lengths) + np.arange(int(lengths.sum()))
        whole = rows.size == root.valid.shape[0] and np.array_equal(rows, np.arange(rows.size))
        totals, nonfinite = root.logged_row_stats()
        raw = root.raw.reshape(root.raw.shape[0], -1)
        if not whole:
            totals, nonfinite, raw, counts = totals[rows], nonfinite[rows], raw[rows], root.rows[rows]
        else:
            counts = root.rows
        # A series is frozen when each step equals the one before (== is transitive, and a NaN breaks both).
        same = np.ones(rows.size, dtype=bool)
        same[1:] = (counts[1:] == counts[:-1]) & np.all(raw[1:] == raw[:-1], axis=1)
        filled = np.flatnonzero(lengths > 0)
        cuts = starts[filled]
        same[cuts] = True
        frozen = np.zeros(len(numbers), dtype=bool)
        elements = np.zeros(len(numbers))
        first_bad = np.full(len(numbers), -1, dtype=np.int64)
        if filled.size:
            frozen[filled] = np.logical_and.reduceat(same, cuts)
            elements[filled] = np.maximum(np.maximum.reduceat(np.where(np.isfinite(totals), totals, -np.inf), cuts), 0.0)
            bad = np.flatnonzero(nonfinite)
            if bad.size:
                at = np.searchsorted(bad, cuts)
                hit = bad[np.minimum(at, bad.size - 1)]
                inside = (at < bad.size) & (hit < cuts + lengths[filled])
                first_bad[filled[inside]] = (hit - cuts)[inside]
        for position, number in enumerate(numbers):
            bad_index = int(first_bad[position])
            found[number] = (int(elements[position]), None if bad_index < 0 else bad_index, bool(frozen[position]))
    return found


def _histogram_batches(prepared):
    """`{id(series): distance.Distributions}` for prepared histogram series, computed in batches.

    Each step's distribution depends on that step alone, and per series the
    cost is mostly numpy's per-call overhead; so the steps of every series
    with the same bucket count are computed as one stack and sliced per
    series: the same numbers, row by row. A batch whose buckets had to be
    rebuilt into more rows (overlapping or unsorted buckets) is redone series
    by series, so that no series is padded beyond its own width.
    """
    groups = {}
    for series, _, arrays in prepared:
        if isinstance(arrays, np.ndarray):
            width = max(arrays.shape[1], 1)
        else:
            width = max([array.shape[0] for array in arrays] + [1])
        groups.setdefault(width, []).append((series, arrays))
    found = {}
    for width, members in groups.items():
        if all(isinstance(arrays, np.ndarray) and arrays.shape[1] == width for _, arrays in members):
            # Stacked by the reader: one concatenation, not one row per step.
            batch = distance.histogram_distributions(np.concatenate([arrays for _, arrays in members]))
        else:
            batch = distance.histogram_distributions([array for _, arrays in members for array in arrays])
        if batch.left.shape[1] != width:
            for series, arrays in members:
                found[id(series)] = distance.histogram_distributions(arrays)
            continue
        offset = 0
        for series, arrays in members:
            found[id(series)] = batch.take_rows(offset, len(arrays))
            offset += len(arrays)
    return found


def _quantile_batches(prepared):
    """`{id(series): distance.Distributions}` for prepared series of ours, as one batch."""
    if not prepared:
        return {}
    batch = distance.quantile_distributions(
        *(np.concatenate([inputs[i] for _, _, inputs in prepared]) for i in range(3))
    )
    found, offset = {}, 0
    for series, steps, _ in prepared:
        found[id(series)] = batch.take_rows(offset, len(steps))
        offset += len(steps)
    return found


def build_variables(series_list, warnings):
    """`Variable`s for the series of one run; unreadable series become warnings."""
    # What malformed data raises here; anything else is a bug, and the judge's
    # own isolation (`judge._analyze_run`) logs it.
    unreadable = (ValueError, KeyError, TypeError, OverflowError, FloatingPointError)
    ours, histograms = [], []
    for series in series_list:
        try:
            if series.source == metadata.PLUGIN_NAME:
                ours.append((series, *_prepare_ours(series)))
            else:
                histograms.append((series, *_prepare_histograms(series)))
        except unreadable as error:
            warnings.append("%s: skipped, unreadable: %s" % (series.tag, error))
    distributions = _quantile_batches([(series, steps, inputs) for series, steps, _, inputs in ours])
    distributions.update(_histogram_batches(histograms))
    built = {}
    for series, steps, column, _ in ours:
        try:
            built[id(series)] = _variable_from_ours(series, steps, column, distributions[id(series)])
        except unreadable as error:
            warnings.append("%s: skipped, unreadable: %s" % (series.tag, error))
    facts = _histogram_facts([distributions[id(series)] for series, _, _ in histograms])
    for (series, steps, _), known in zip(histograms, facts):
        try:
            built[id(series)] = _variable_from_histograms(series, steps, distributions[id(series)], known)
        except unreadable as error:
            warnings.append("%s: skipped, unreadable: %s" % (series.tag, error))
    return [built[id(series)] for series in series_list if id(series) in built]


def _distance_requests(variable):
    """The W1 pairs one variable needs: from the baseline, and between consecutive steps.

    Returns `(mantissa, exponent, requests)`: per-step arrays to fill (NaN
    where a distance cannot be computed) and `(key, first, second)` step
    index pairs into the variable's own distributions.
    """
    distributions = variable.distributions
    n = len(variable.steps)
    valid = distributions.valid
    mantissa = {"baseline": np.full(n, np.nan), "step": np.full(n, np.nan)}
    exponent = {"baseline": np.zeros(n, np.int64), "step": np.zeros(n, np.int64)}
    if n == 0:
        return mantissa, exponent, []
    if valid[0]:
        mantissa["baseline"][0], exponent["baseline"][0] = 0.0, distributions.exponent[0]
    later = np.arange(1, n)
    requests = []
    if valid[0]:
        ok = later[valid[later]]
        requests.append(("baseline", np.zeros_like(ok), ok))
    ok = later[valid[later] & valid[later - 1]]
    requests.append(("step", ok - 1, ok))
    return mantissa, exponent, requests


class DistanceMemo:
    """The per-step W1 distances of series judged before, so that a series that
    only gained steps costs the new steps' distances, not all of them again.

    A poll after a run logs one epoch judges that run again: every step's
    distance from the baseline and from the step before would be recomputed,
    though only the last step is new. An entry is kept per series (source,
    run, tag, width, digest of its first step) with each step's digest
    (`Distributions.row_digests`); a judging reuses the distances of the
    steps up to the first whose digest differs. Reuse follows from content
    alone: a W1 depends on the two steps' rows only. At most `max_steps` steps
    are kept (48 bytes each), least recently used first out. Rescale fits
    (`distance.rescale_fits`) are kept the same way, by the digests and RMS of
    the two steps they compare (`max_fits` of them).
    """

    def __init__(self, max_steps=1_000_000, max_fits=100_000, max_deferred_bytes=64 << 20):
        self._max_steps = max_steps
        self._steps = 0
        self._entries = collections.OrderedDict()
        # Rescale fits (`rescale_fit`), by the two steps' digests and RMS values.
        self._max_fits = max_fits
        self._fits = collections.OrderedDict()
        # What judgings left to store (`defer`), until `flush`: (task, bytes it holds).
        self._deferred = []
        self._max_deferred_bytes = max_deferred_bytes
        self._lock = threading.Lock()

    def defer(self, task, size=0):
        """Keeps `task()`, which stores a judging's entries, for `flush`: the first
        judging of a batch hashes its steps after its answer, not before.
        `size`: the bytes `task` holds; past `max_deferred_bytes` in all, the
        oldest tasks are run now (a logdir judged in many batches keeps one or
        two batches' rows, not all)."""
        with self._lock:
            self._deferred.append((task, size))
            due = []
            while len(self._deferred) > 1 and sum(size for _, size in self._deferred) > self._max_deferred_bytes:
                due.append(self._deferred.pop(0)[0])
        for task in due:
            task()

    def flush(self):
        """Stores what judgings deferred: the plugin does once its answer has gone
        out. (Until then a judging of the same steps reuses nothing of them.)"""
        with self._lock:
            tasks, self._deferred = self._deferred, []
        for task, _ in tasks:
            task()

    def reuse(self, key, digests):
        """`(count, mantissa, exponent)`: the first `count` steps' stored distances
        (dicts of arrays, as `_distance_requests` makes them), or `(0, None, None)`."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return 0, None, None
            self._entries.move_to_end(key)
        stored, mantissa, exponent = entry
        length = min(len(stored), len(digests))
        differs = np.flatnonzero(np.any(stored[:length] != digests[:length], axis=1))
        count = int(differs[0]) if differs.size else length
        return count, mantissa, exponent

    def has(self, key):
        """Whether an entry is stored under `key`."""
        with self._lock:
            return key in self._entries

    def store(self, key, digests, mantissa, exponent):
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._steps -= len(previous[0])
            self._entries[key] = (digests, mantissa, exponent)
            self._steps += len(digests)
            while self._steps > self._max_steps and len(self._entries) > 1:
                _, (dropped, _, _) = self._entries.popitem(last=False)
                self._steps -= len(dropped)

    def fit(self, key):
        """A stored `rescale_fit` answer, or None."""
        with self._lock:
            return self._fits.get(key)

    def store_fit(self, key, value):
        with self._lock:
            self._fits[key] = value
            self._fits.move_to_end(key)
            while len(self._fits) > self._max_fits:
                self._fits.popitem(last=False)

    def __len__(self):
        """Entries stored (deferred ones once flushed)."""
        return len(self._entries)


class _Deferred:
    """A batch's entries for the memo, stored when it is flushed: every step's
    digest is computed then, and the distances and rescale fits kept now."""

    def __init__(self, memo, root):
        self.memo = memo
        # What the digests read, without the buckets as logged or the W1 tables.
        self.rows = dataclasses.replace(root, raw=None, rows=None)
        self.size = sum(
            getattr(self.rows, name).nbytes
            for name in ("valid", "exponent", "left", "right", "cumulative", "quantiles")
            if getattr(self.rows, name) is not None
        )
        self.entries = []  # (key, offset, steps, mantissa, exponent)
        self.fits = []  # (offset, first, second, kind, rms first, rms second, (residual, scale))

    def store(self):
        digests = self.rows.row_digests()
        for key, offset, steps, mantissa, exponent in self.entries:
            self.memo.store(key, digests[offset : offset + steps].copy(), mantissa, exponent)
        for offset, first, second, kind, rms_first, rms_second, found in self.fits:
            key = (kind, digests[offset + first].tobytes(), digests[offset + second].tobytes(), rms_first, rms_second)
            self.memo.store_fit(key, found)


# The memo every judging in this process shares (the plugin's polls; the CLI judges once).
DISTANCES = DistanceMemo()


def _baseline_distances(variables, memo):
    """`({id(variable): (mantissa, exponent)}, {id(variable): step digests},
    {id(variable): (_Deferred, offset)})`: W1 from the baseline and between
    consecutive steps, per step; one `pairs` call per batch of distributions.

    `memo`: a `DistanceMemo` whose distances of steps judged before are taken
    and only the others computed, or None (no memo, and no digests). A batch
    with nothing stored gets no digests now: its entries are deferred
    (`_Deferred`), to be stored when the memo is flushed (`DistanceMemo.flush`)."""
    groups = {}
    for variable in variables:
        root = variable.distributions.batch or variable.distributions
        groups.setdefault(id(root), (root, []))[1].append(variable)
    found, digests_of, deferred_of = {}, {}, {}
    for root, members in groups.values():
        offsets = [variable.distributions.offset if variable.distributions.batch is not None else 0
                   for variable in members]
        keys, digests, deferred = [None] * len(members), None, None
        if memo is not None:
            # A series' entry is named by its first step's digest. With none of
            # this batch's stored, nothing can be reused: every step's digest
            # (kept for the next judging) is computed when the memo is
            # flushed, after this judging's answer (~10 % of judging a batch,
            # and hashing short rows holds the GIL).
            # (A variable without steps has no first step, and no key.)
            with_steps = [index for index, variable in enumerate(members) if len(variable.steps)]
            heads = root.row_digests([offsets[index] for index in with_steps])
            width = (root.quantiles if root.kind == "quantiles" else root.left).shape[1]
            for index, head in zip(with_steps, heads):
                variable = members[index]
                keys[index] = (variable.run, variable.source, variable.tag, root.kind, width, head.tobytes())
            if any(key is not None and memo.has(key) for key in keys):
                digests = root.row_digests()
            else:
                deferred = _Deferred(memo, root)
        plans, firsts, seconds = [], [], []
        for variable, offset, key in zip(members, offsets, keys):
            mantissa, exponent, requests = _distance_requests(variable)
            if key is not None and digests is not None:
                own = digests[offset : offset + len(variable.steps)]
                count, known_mantissa, known_exponent = memo.reuse(key, own)
                if count:
                    for name in mantissa:
                        mantissa[name][:count] = known_mantissa[name][:count]
                        exponent[name][:count] = known_exponent[name][:count]
                    requests = [(name, first[second >= count], second[second >= count])
                                for name, first, second in requests]
            for _, first, second in requests:
                firsts.append(first + offset)
                seconds.append(second + offset)
            plans.append((variable, mantissa, exponent, requests, key, offset))
            found[id(variable)] = (mantissa, exponent)
        if firsts:
            values, exponents = root.pairs(np.concatenate(firsts), np.concatenate(seconds))
            position = 0
            for variable, mantissa, exponent, requests, _, _ in plans:
                for name, _, targets in requests:
                    mantissa[name][targets] = values[position : position + targets.size]
                    exponent[name][targets] = exponents[position : position + targets.size]
                    position += targets.size
        if memo is not None:
            for variable, mantissa, exponent, _, key, offset in plans:
                if key is None:
                    continue
                # Copies: the variable's own arrays are its to use.
                kept = ({k: v.copy() for k, v in mantissa.items()}, {k: v.copy() for k, v in exponent.items()})
                if deferred is not None:
                    deferred.entries.append((key, offset, len(variable.steps)) + kept)
                    deferred_of[id(variable)] = (deferred, offset)
                else:
                    own = digests_of[id(variable)] = digests[offset : offset + len(variable.steps)]
                    memo.store(key, own.copy(), *kept)
    return found, digests_of, deferred_of


def _usable(value):
    return value is not None and math.isfinite(value) and value > 0


def choose_scale(variable, layer_scale):
    """The spread that divides W1, and where it came from (README, "Scores")."""
    std = variable.distributions.std
    rms = variable.distributions.rms
    n = len(variable.steps)
    baseline = float(std[0]) if n else None
    if _usable(baseline):
        return baseline, "baseline_std"
    if _usable(layer_scale):
        return layer_scale, "layer_baseline_std"
    last = float(std[-1]) if n else None
    if _usable(last):
        return last, "last_std"
    candidates = [float(rms[0]), float(rms[-1])] if n else []
    candidates = [c for c in candidates if _usable(c)]
    if candidates:
        return max(candidates), "rms"
    return None, None


def _finite_or_nan(values):
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values), values, np.nan)


def _scaled(mantissa, exponent, scale):
    """W1 = mantissa * 2**exponent, divided by `scale` without overflow; NaN where undefined.

    `scale`: a number, or an array of them (NaN: none); None, or NaN, means no
    spread at any step: every value was identical, so only 0 is meaningful."""
    if scale is None:
        return np.where(mantissa == 0, 0.0, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scaled = _finite_or_nan(mantissa / distance.ldexp(np.broadcast_to(scale, np.shape(mantissa)), -exponent))
    return np.where(np.isnan(scale), np.where(mantissa == 0, 0.0, np.nan), scaled)


def _scale_distances(variables, distances):
    """Sets each variable's `distance_from_baseline`, `shift_from_baseline` and
    `per_step_shift` (its `scale` chosen): every variable's steps in one pass.

    Element by element the same numbers as one variable at a time; per
    variable the cost was numpy's per-call overhead (a tenth of judging a
    run of 2,000 series). Each variable gets views of the joined arrays."""
    if not variables:
        return
    lengths = [len(variable.steps) for variable in variables]

    def joined(part, name):
        return np.concatenate([distances[id(variable)][part][name] for variable in variables])

    scale = np.repeat([np.nan if v.scale is None else v.scale for v in variables], lengths)
    from_baseline = _finite_or_nan(distance.ldexp(joined(0, "baseline"), joined(1, "baseline")))
    shift = _scaled(joined(0, "baseline"), joined(1, "baseline"), scale)
    per_step = _scaled(joined(0, "step"), joined(1, "step"), scale)
    end = 0
    for variable, length in zip(variables, lengths):
        start, end = end, end + length
        variable.distance_from_baseline = from_baseline[start:end]
        variable.shift_from_baseline = shift[start:end]
        variable.per_step_shift = per_step[start:end]


def _score(variable, values, index, distances):
    """Sets a variable's movement: the largest of its per-step `values` of
    its movement kind, at `index` (None: none is finite). Returns what
    `_rescale` needs for it, `(variable, step index, W1 to the baseline
    there)`, or None."""
    mantissa, exponent = distances
    variable.movement = None if index is None else float(values[index])
    variable.movement_step = None if index is None else variable.steps[index]
    if index is not None and variable.movement > 0:
        return variable, index, (mantissa["baseline"][index], exponent["baseline"][index])
    return None


def _rescale(pending, digests_of=None, memo=None, deferred_of=None):
    """How much of each variable's movement a rescaling explains, at its largest movement.

    `pending`: `_score`'s answers. Distributions are fitted in one batch
    (`distance.rescale_fits`): a run of thousands of histogram series fits them
    in a few dozen numpy calls per grid instead of a few dozen per variable.
    With `memo` and the steps' digests, fits of the same two steps judged
    before are taken from it; a variable whose batch's entries are deferred
    (`deferred_of`) has its fit kept with them."""
    digests_of = digests_of or {}
    deferred_of = (deferred_of or {}) if memo is not None else {}
    fitted, keys = [], []
    for variable, index, known in pending:
        if variable.movement_kind == RELATIVE_CHANGE:
            variable.rescale_residual, variable.rescale = _exact_rescaling(variable, index)
        else:
            own = digests_of.get(id(variable)) if memo is not None else None
            key = None
            if own is not None:
                rms = variable.distributions.rms
                key = (variable.distributions.kind, own[0].tobytes(), own[index].tobytes(),
                       float(rms[0]), float(rms[index]))
                hit = memo.fit(key)
                if hit is not None:
                    variable.rescale_residual, variable.rescale = hit
                    key = False
            if key is not False:
                fitted.append((variable, index, known))
                keys.append(key)
    histograms = [(v, index) for v, index, _ in pending if v.distributions.kind == "histogram"]
    for (variable, _), fixed in zip(histograms, _fixed_edges_each([(v.distributions, 0, i) for v, i in histograms])):
        variable.fixed_edges = fixed
    found = distance.rescale_fits([(v.distributions, 0, index, known) for v, index, known in fitted])
    for (variable, index, _), key, (residual, scale) in zip(fitted, keys, found):
        variable.rescale_residual, variable.rescale = residual, scale
        if key is not None:
            memo.store_fit(key, (residual, scale))
        elif id(variable) in deferred_of:
            deferred, offset = deferred_of[id(variable)]
            rms = variable.distributions.rms
            deferred.fits.append(
                (offset, 0, index, variable.distributions.kind, float(rms[0]), float(rms[index]), (residual, scale))
            )


def _fixed_edges_each(pairs):
    """For each `(distributions, first, second)`, whether the two steps' histograms
    share most inner bucket edges (fixed buckets, as torch's `add_histogram`
    writes by default) instead of spanning each its own range: whether more
    than half of the second step's inner edges (each bucket's left edge but the
    first's) are among the first step's. One sort of all the pairs' edges.
    """
    if not pairs:
        return []
    edges, owners, second_side = [], [], []
    sizes = np.zeros((len(pairs), 2), dtype=np.int64)
    for number, (distributions, first, second) in enumerate(pairs):
        for side, row in enumerate((first, second)):
            inner = distributions.raw[row, 1 : int(distributions.rows[row]), 0]
            sizes[number, side] = inner.size
            edges.append(inner)
    counts = sizes.reshape(-1)
    values = np.concatenate(edges)
    owners = np.repeat(np.arange(len(pairs)), sizes.sum(axis=1))
    second_side = np.repeat(np.tile([False, True], len(pairs)), counts)
    # Sorted by pair, then value, the first step's edges before the second's at
    # equal values: a second-step edge is known when the last first-step edge at
    # or before it is of its pair and equal to it (NaN equals nothing).
    order = np.lexsort((second_side, values, owners))
    values, owners, second_side = values[order], owners[order], second_side[order]
    last_first = np.maximum.accumulate(np.where(second_side, -1, np.arange(values.size)))
    before = np.maximum(last_first, 0)
    known = second_side & (last_first >= 0) & (owners[before] == owners) & (values[before] == values)
    shared = np.bincount(owners[known], minlength=len(pairs))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = shared / sizes[:, 1]
    return ((sizes.min(axis=1) >= 2) & (share > 0.5)).tolist()


def _segments(arrays):
    """`(joined, starts, lengths)` of 1-D float arrays laid end to end."""
    lengths = np.array([len(values) for values in arrays], dtype=np.int64)
    joined = np.concatenate([np.asarray(values, dtype=np.float64) for values in arrays]) if arrays else np.zeros(0)
    return joined, np.cumsum(lengths) - lengths, lengths


def _largest_each(arrays):
    """For each array, the index of its largest finite value (the first of
    equals), or None: one pass over all of them joined."""
    values, starts, lengths = _segments(arrays)
    found = [None] * len(arrays)
    filled = np.flatnonzero(lengths > 0)
    if not filled.size:
        return found
    finite = np.isfinite(values)
    masked = np.where(finite, values, -np.inf)
    # Empty arrays hold no elements: the filled ones' starts cut the joined array exactly.
    peaks = np.maximum.reduceat(masked, starts[filled])
    any_finite = np.logical_or.reduceat(finite, starts[filled])
    hits = np.flatnonzero(masked == np.repeat(peaks, lengths[filled]))
    firsts = hits[np.searchsorted(hits, starts[filled])] - starts[filled]
    for number, first, has in zip(filled.tolist(), firsts.tolist(), any_finite.tolist()):
        if has:
            found[number] = first
    return found


def _exact_rescaling(variable, index):
    """`(residual, scale)` from the distance to a reference (ours), at step `index`.

    This is exact: W - c W0 is smallest for the projection, `||W|| sin(angle)`,
    so the unexplained part is `||W|| sin(angle) / ||W - W0||` (0 for pure
    decay, whose direction never changes). Without a reference the
    distributions are compared (`distance.rescale_fits`).
    """
    cosine = float(variable.cosine_distance[index])
    ratio = float(variable.norm_ratio[index])
    change = float(variable.relative_change[index])
    if not (math.isfinite(cosine) and math.isfinite(ratio) and change > 0):
        return None, None
    sine = math.sqrt(max(cosine * (2.0 - cosine), 0.0))
    return ratio * sine / change, ratio


def settled_step(steps, per_step_shift, fraction):
    """The logged step after which a variable's per-step shift stays below `fraction` of its peak.

    None when it never moved, or its last two intervals are not both below
    (still moving, or too few steps to say).
    """
    return settled_steps([steps], [per_step_shift], fraction)[0]


def settled_steps(steps_list, shifts_list, fraction):
    """`settled_step` of many series, in one pass over their per-step shifts joined."""
    values, starts, lengths = _segments(shifts_list)
    found = [None] * len(shifts_list)
    filled = np.flatnonzero(lengths >= 3)
    if not filled.size:
        return found
    finite = np.isfinite(values)
    # Every array shorter than 3 is left out: the joined arrays of the others.
    keep = np.repeat(lengths >= 3, lengths)
    values, finite = values[keep], finite[keep]
    starts, lengths = np.cumsum(lengths[filled]) - lengths[filled], lengths[filled]
    moved = finite.copy()
    moved[starts] = False  # an interval after the first step must be finite
    moved = np.logical_or.reduceat(moved, starts)
    peaks = np.maximum.reduceat(np.where(finite, values, -np.inf), starts)
    with np.errstate(invalid="ignore"):  # 0 x the -inf peak of a series with nothing finite
        above = finite & (values > fraction * np.repeat(peaks, lengths))
    lasts = np.maximum.reduceat(np.where(above, np.arange(values.size), -1), starts) - starts
    for number, has, peak, last, length in zip(filled.tolist(), moved.tolist(), peaks.tolist(), lasts.tolist(),
                                               lengths.tolist()):
        # (With nothing above, which a fraction below 1 rules out, `last` is negative.)
        if has and peak > 0 and 0 <= last and length - 1 - last >= 2:
            found[number] = int(steps_list[number][last])
    return found


def peer_group(variable):
    """Which run peers a variable is compared with (`PEER_GROUPS`)."""
    layer_type = variable.layer_type or ""
    if variable.trainable is False or variable.name in _STATISTICS_NAMES:
        return STATISTICS
    if _EMBEDDING_TYPES.search(layer_type) or variable.name == "embeddings":
        return EMBEDDING
    if _NORMALIZATION_TYPES.search(layer_type) or variable.name in _NORMALIZATION_NAMES:
        return CONSTANT_INIT
    if not layer_type and _EMBEDDING_LAYER.search(variable.layer):
        return EMBEDDING
    if variable.steps:
        # Constant at its baseline (ones, zeros) or nearly so: a scale or an
        # offset, not a matrix drawn at random.
        std, rms = float(variable.distributions.std[0]), float(variable.distributions.rms[0])
        if std == 0 or (math.isfinite(std) and math.isfinite(rms) and rms > 0 and std < 0.3 * rms):
            return CONSTANT_INIT
    return WEIGHTS


def score_layers(variables, settled_fraction=0.1, memo=None):
    """Scores every variable of one run; returns `{layer: [variables]}` in their order.

    `memo`: a `DistanceMemo` (default `DISTANCES`; False: none)."""
    memo = DISTANCES if memo is None else (None if memo is False else memo)
    distances, digests_of, deferred_of = _baseline_distances(variables, memo)
    layers = {}
    for variable in variables:
        layers.setdefault(variable.layer, []).append(variable)
    for members in layers.values():
        # A zero-initialised bias has no spread of its own; its layer's largest
        # variable (the kernel) gives the scale its movement is measured in.
        with_spread = [v for v in members if v.steps and _usable(float(v.distributions.std[0]))]
        layer_scale = float(driver(with_spread).distributions.std[0]) if with_spread else None
        for variable in members:
            variable.scale, variable.scale_basis = choose_scale(variable, layer_scale)
    ordered = [variable for members in layers.values() for variable in members]
    _scale_distances(ordered, distances)
    movements = []
    for variable in ordered:
        # Relative change where our summaries have a reference; the shift otherwise.
        exact = variable.source == metadata.PLUGIN_NAME and variable.has_reference
        variable.movement_kind = RELATIVE_CHANGE if exact else SHIFT
        movements.append(variable.relative_change if exact else variable.shift_from_baseline)
    largest = _largest_each(movements)
    settled = settled_steps([v.steps for v in ordered], [v.per_step_shift for v in ordered], settled_fraction)
    pending = []
    for variable, values, index, step in zip(ordered, movements, largest, settled):
        rescaling = _score(variable, values, index, distances[id(variable)])
        if rescaling is not None:
            pending.append(rescaling)
        variable.settled_step = step
        variable.peer_group = peer_group(variable)
    _rescale(pending, digests_of, memo, deferred_of)
    for deferred in {id(deferred): deferred for deferred, _ in deferred_of.values()}.values():
        memo.defer(deferred.store, deferred.size)
    return layers


def shift_between(series, step_a, step_b, scale):
    """`(w1, shift)` between two logged steps of one series, by the rule of the scores.

    `scale` is the variable's scale as judged with its run (`Variable.scale`);
    the W1 is computed as for the run's table, so the A/B readout of the
    baseline against the last step equals that row's `shift`.

    Raises:
      KeyError: a step is not logged.
      ValueError: the series cannot be read.
    """
    warnings = []
    variables = build_variables([series], warnings)
    if not variables:
        raise ValueError(warnings[0].split(": ", 1)[-1] if warnings else "unreadable series")
    (variable,) = variables
    index = {step: i for i, step in enumerate(variable.steps)}
    first, second = index[step_a], index[step_b]
    distributions = variable.distributions
    if not (distributions.valid[first] and distributions.valid[second]):
        return None, None
    mantissa, exponent = distributions.pairs([first], [second])
    w1 = _finite_or_nan(distance.ldexp(mantissa, exponent))[0]
    shift = _scaled(mantissa, exponent, scale)[0]
    return (None if np.isnan(w1) else float(w1)), (None if np.isnan(shift) else float(shift))


def shift_across(series_a, step_a, series_b, step_b, scale):
    """`(w1, shift)` between step A of one series and step B of another (two runs' same variable).

    The two steps are judged as one series of two steps, by the rule of
    `shift_between`; where one source is plain histograms and the other our
    summaries, both are compared as histograms (what they share).

    Raises:
      KeyError: a step is not logged.
      ValueError: a series cannot be read.
    """
    first = series_a.summaries[series_a.steps.index(step_a)] if step_a in series_a.steps else None
    second = series_b.summaries[series_b.steps.index(step_b)] if step_b in series_b.steps else None
    if first is None or second is None:
        raise KeyError(step_a if first is None else step_b)
    source = series_a.source
    if series_a.source != series_b.source:
        source = metadata.HISTOGRAM_PLUGIN_NAME
        first, second = (
            getattr(summary, "histogram", summary) for summary in (first, second)
        )
    pair = dataclasses.replace(series_a, steps=[0, 1], summaries=[first, second], table=None, source=source)
    return shift_between(pair, 0, 1, scale)


_BASIS_RANK = {"baseline_std": 1, "layer_baseline_std": 2, "last_std": 3, "rms": 4, None: 5}


def driver(variables):
    """The variable that decides its layer's verdict: the largest.

    Ties (BatchNorm's four vectors) go to a trainable variable, then to one
    that is not a moving statistic, then to one that is not an offset (a
    bias or beta starts at zero and is measured in borrowed units), then to
    the one measured best: relative change, then a shift scaled by its own
    baseline spread, and so on; then to the first tag.
    """

    def key(variable):
        measured = 0 if variable.movement_kind == RELATIVE_CHANGE else _BASIS_RANK.get(variable.scale_basis, 5)
        return (
            -variable.elements,
            variable.trainable is False,
            variable.name in _STATISTICS_NAMES,
            variable.name in _OFFSET_NAMES,
            measured,
            variable.tag,
        )

    return min(variables, key=key)


def attach_updates(variables, steps, updates):
    """Adds each variable's update count at its movement step and its `update_ratio`.

    `update_ratio = movement / sqrt(updates)` (relative change only): what
    each update moved the tensor, relative to its norm, were the updates a
    random walk; more coherent updates make it an upper bound. CS231n's rule
    of thumb puts a healthy update-to-weight ratio near 1e-3 per update.
    """
    if not updates:
        return
    by_step = {step: count for step, count in zip(steps, updates) if count is not None}
    for variable in variables:
        count = by_step.get(variable.movement_step)
        if count is None or not count > 0:
            continue
        variable.updates = float(count)
        if variable.movement_kind == RELATIVE_CHANGE and variable.movement is not None:
            variable.update_ratio = variable.movement / math.sqrt(count)
