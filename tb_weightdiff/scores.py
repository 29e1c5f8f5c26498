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
- the deciding variable of a layer (`driver`) and how tags name layers
  (`split_tag`).

`shift_between` gives the shift between any two logged steps by the same rule,
for the tab's A/B readout.
"""

import dataclasses
import math
import operator

import numpy as np

from tb_weightdiff import distance
from tb_weightdiff import metadata

RELATIVE_CHANGE = "relative_change"
SHIFT = "shift"

_HISTOGRAM_SUFFIX = "/histogram"

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
    diverged_step: object = None
    frozen: bool = False
    relative_change: np.ndarray = None  # [n] or None
    cosine_distance: np.ndarray = None
    reference_distance: np.ndarray = None
    has_reference: bool = False
    # filled by score_layers
    scale: float = None
    scale_basis: str = None
    shift_from_baseline: np.ndarray = None
    per_step_shift: np.ndarray = None  # NaN at the first step: no previous one
    distance_from_baseline: np.ndarray = None
    movement: float = None
    movement_kind: str = None
    # filled by the verdicts
    ratio_to_median: float = None
    verdict: str = None
    reason: str = ""


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
    variable.relative_change = column["relative_change"]
    variable.cosine_distance = column["cosine_distance"]
    variable.reference_distance = distances
    return variable


def _prepare_histograms(series):
    """`(steps, [k, 3] arrays)` of one series of plain histograms; raises if malformed."""
    return _steps_of(series), [distance.as_histogram_array(h) for h in series.summaries]


def _variable_from_histograms(series, steps, distributions):
    raw, rows = distributions.raw, distributions.rows
    with np.errstate(invalid="ignore", over="ignore"):
        totals = np.sum(raw[:, :, 2], axis=1)
    finite_totals = totals[np.isfinite(totals)]
    variable = _new_variable(
        series, steps, distributions, elements=int(np.max(finite_totals, initial=0)), trainable=None
    )
    # Padding repeats a finite edge or is zero, so it changes neither test.
    nonfinite = ~np.all(np.isfinite(raw), axis=(1, 2))
    variable.diverged_step = _first_step_where(variable.steps, nonfinite)
    variable.frozen = bool(len(rows)) and bool(np.all(rows == rows[0]) and np.all(raw == raw[:1]))
    return variable


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
        width = max([array.shape[0] for array in arrays] + [1])
        groups.setdefault(width, []).append((series, arrays))
    found = {}
    for width, members in groups.items():
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
    unreadable = (ValueError, KeyError, TypeError, AttributeError)
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
    for series, steps, _ in histograms:
        try:
            built[id(series)] = _variable_from_histograms(series, steps, distributions[id(series)])
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


def _baseline_distances(variables):
    """`{id(variable): (mantissa, exponent)}`: W1 from the baseline and between
    consecutive steps, per step; one `pairs` call per batch of distributions."""
    groups = {}
    for variable in variables:
        root = variable.distributions.batch or variable.distributions
        groups.setdefault(id(root), (root, []))[1].append(variable)
    found = {}
    for root, members in groups.values():
        plans, firsts, seconds = [], [], []
        for variable in members:
            mantissa, exponent, requests = _distance_requests(variable)
            offset = variable.distributions.offset if variable.distributions.batch is not None else 0
            for _, first, second in requests:
                firsts.append(first + offset)
                seconds.append(second + offset)
            plans.append((variable, mantissa, exponent, requests))
            found[id(variable)] = (mantissa, exponent)
        if not firsts:
            continue
        values, exponents = root.pairs(np.concatenate(firsts), np.concatenate(seconds))
        position = 0
        for variable, mantissa, exponent, requests in plans:
            for key, _, targets in requests:
                mantissa[key][targets] = values[position : position + targets.size]
                exponent[key][targets] = exponents[position : position + targets.size]
                position += targets.size
    return found


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
    """W1 = mantissa * 2**exponent, divided by `scale` without overflow; NaN where undefined."""
    if scale is None:
        # No spread at any step: every value was identical, so only 0 is meaningful.
        return np.where(mantissa == 0, 0.0, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _finite_or_nan(mantissa / distance.ldexp(np.full(mantissa.shape, scale), -exponent))


def _score(variable, layer_scale, distances):
    mantissa, exponent = distances
    scale, basis = choose_scale(variable, layer_scale)
    variable.scale, variable.scale_basis = scale, basis
    variable.distance_from_baseline = _finite_or_nan(distance.ldexp(mantissa["baseline"], exponent["baseline"]))
    variable.shift_from_baseline = _scaled(mantissa["baseline"], exponent["baseline"], scale)
    variable.per_step_shift = _scaled(mantissa["step"], exponent["step"], scale)
    if variable.source == metadata.PLUGIN_NAME and variable.has_reference:
        changes = variable.relative_change[np.isfinite(variable.relative_change)]
        variable.movement_kind = RELATIVE_CHANGE
        variable.movement = float(np.max(changes)) if changes.size else None
    else:
        shifts = variable.shift_from_baseline[np.isfinite(variable.shift_from_baseline)]
        variable.movement_kind = SHIFT
        variable.movement = float(np.max(shifts)) if shifts.size else None


def score_layers(variables):
    """Scores every variable of one run; returns `{layer: [variables]}` in their order."""
    distances = _baseline_distances(variables)
    layers = {}
    for variable in variables:
        layers.setdefault(variable.layer, []).append(variable)
    for members in layers.values():
        # A zero-initialised bias has no spread of its own; its layer's largest
        # variable (the kernel) gives the scale its movement is measured in.
        with_spread = [v for v in members if v.steps and _usable(float(v.distributions.std[0]))]
        layer_scale = float(driver(with_spread).distributions.std[0]) if with_spread else None
        for variable in members:
            _score(variable, layer_scale, distances[id(variable)])
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


_BASIS_RANK = {"baseline_std": 1, "layer_baseline_std": 2, "last_std": 3, "rms": 4, None: 5}


def driver(variables):
    """The variable that decides its layer's verdict: the largest.

    Ties (BatchNorm's four vectors) go to a trainable variable, then to the one
    measured best: relative change, then a shift scaled by its own baseline
    spread, and so on; then to the first tag.
    """

    def key(variable):
        measured = 0 if variable.movement_kind == RELATIVE_CHANGE else _BASIS_RANK.get(variable.scale_basis, 5)
        return (-variable.elements, variable.trainable is False, measured, variable.tag)

    return min(variables, key=key)
