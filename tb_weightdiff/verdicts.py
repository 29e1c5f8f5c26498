"""Verdicts, and the JSON and CSV contract every consumer reads them in.

The one place that judges: from the scores of `tb_weightdiff.scores` it
gives each variable and each layer a verdict with a reason, and shapes a run
into the dict that `/verdicts`, `tb-weightdiff report --json` and the tests
read (README, "Scores and verdicts"; `http_api.md`). What it owns:

- the verdict names, worst first (`VERDICTS`), and `Thresholds`, the knobs
  behind `not_learning`, with their defaults and help (the CLI's flags and
  the plugin's query parameters are generated from them);
- the verdict rules (`judge`) and a layer's roll-up (its deciding variable's
  verdict, unless a variable diverged);
- the run's entry (`run_json`) with what its source cannot tell;
- strict JSON (`finite`, `strict`, `to_json`: null, never NaN) and the one
  CSV schema, with the guard against cells a spreadsheet would run as
  formulas (`CSV_COLUMNS`, `to_csv`).
"""

import csv
import dataclasses
import io
import json
import math

import numpy as np

from tb_weightdiff import metadata
from tb_weightdiff import scores

LEARNING = "learning"
NOT_LEARNING = "not_learning"
DECAY_ONLY = "decay_only"
FROZEN = "frozen"
DIVERGED = "diverged"
UNKNOWN = "unknown"

# Worst first: the order of the report and of the tab's table.
VERDICTS = (DIVERGED, DECAY_ONLY, NOT_LEARNING, FROZEN, UNKNOWN, LEARNING)
_VERDICT_RANK = {verdict: rank for rank, verdict in enumerate(VERDICTS)}

SOURCES = ("auto", metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME)

RELATIVE_CHANGE = scores.RELATIVE_CHANGE
SHIFT = scores.SHIFT


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The knobs of the verdict rules; the CLI's flags and the plugin's query parameters.

    Every one is scale-free: none depends on the learning rate, the
    optimizer or the length of training (README, "Verdicts", has the rules;
    "Calibration" the corpus of training recipes the defaults were chosen on,
    with each verdict's margin).

    Attributes:
      min_relative_change: the noise floor of `||W - W0|| / ||W0||`: a
        tensor that moved less changed only at floating-point precision.
      min_shift: the same floor for the histogram shift (W1 / scale).
      min_ratio_to_median: a layer moving less than this times the median
        movement of its peers (the run's other layers of its kind, compared
        in log space) is `not_learning`.
      max_rescale_residual: a tensor that shrank and whose movement from
        its reference is all a rescaling but this fraction (the rotation
        `||W|| sin(angle) / ||W - W0||`, from our summaries) moved only by
        weight decay: `decay_only`.
      max_histogram_rescale_residual: the same from distributions only
        (plain histograms, or our summaries without a reference): the W1
        left after the best rescaling, over the W1 before it. Stricter,
        because a Gaussian-initialised tensor that learns can also keep its
        shape while its spread shrinks.
      min_update_ratio: a run whose learning layers all move less than
        this per update (relative change / sqrt(update count), where the
        writer logged the optimizer's update count) barely moves: reported
        as a finding about the run, with its learning rate, not as a verdict
        on every layer.
      settled_fraction: a layer has settled once its per-step shift stays
        below this fraction of its own peak (`settled_step`).
      max_robust_reset, min_critical_reset: where a reset check was
        recorded, the share of what training gained (loss before training
        minus loss as trained) that putting one layer back to its initial
        weights undoes: below the first the layer is `robust`, from the
        second on `critical` (Zhang, Bengio and Singer, 2022). They label a
        layer's `reset` entry; they do not change verdicts.
    """

    min_relative_change: float = dataclasses.field(
        default=1e-6,
        metadata={
            "label": "noise floor, relative change",
            "help": "below this ||W - W0|| / ||W0||, a tensor moved only at floating-point precision",
        },
    )
    min_shift: float = dataclasses.field(
        default=1e-6,
        metadata={
            "label": "noise floor, shift",
            "help": "below this histogram shift (W1 / scale), a tensor moved only at floating-point precision",
        },
    )
    min_ratio_to_median: float = dataclasses.field(
        default=4e-3,
        metadata={
            "label": "min ratio to peers",
            "help": "a layer moving less than this times the median of its peers (layers of its kind) is not learning",
        },
    )
    max_rescale_residual: float = dataclasses.field(
        default=0.09,
        metadata={
            "label": "max rescale residual",
            "help": "a tensor that shrank and whose movement from its reference is a rescaling but this fraction "
            "(its rotation) is decay_only",
        },
    )
    max_histogram_rescale_residual: float = dataclasses.field(
        default=3e-3,
        metadata={
            "label": "max histogram rescale residual",
            "help": "the same from distributions alone (plain histograms): the W1 a rescaling leaves, as a fraction",
        },
    )
    min_update_ratio: float = dataclasses.field(
        default=1e-4,
        metadata={
            "label": "min update ratio",
            "help": "a run whose learning layers all move less than this relative change per sqrt(update) "
            "barely moves (a finding about the run, not a verdict)",
        },
    )
    settled_fraction: float = dataclasses.field(
        default=0.1,
        metadata={
            "label": "settled fraction",
            "help": "a layer settled once its per-step shift stays below this fraction of its peak",
            "below": 1.0,  # nothing stays below its own peak
        },
    )
    max_robust_reset: float = dataclasses.field(
        default=0.1,
        metadata={
            "label": "max undone, robust",
            "help": "a layer whose reset to its initial weights undoes less than this fraction of what training "
            "gained (reset check) is robust",
        },
    )
    min_critical_reset: float = dataclasses.field(
        default=0.5,
        metadata={
            "label": "min undone, critical",
            "help": "a layer whose reset undoes at least this fraction of what training gained is critical",
        },
    )

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ValueError("%s must be a number, got %r" % (field.name, value))
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    "%s must be a finite number >= 0, got %r" % (field.name, value)
                )
            below = field.metadata.get("below")
            if below is not None and not value < below:
                raise ValueError("%s must be below %g, got %r" % (field.name, below, value))
            object.__setattr__(self, field.name, float(value))

    @classmethod
    def names(cls):
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def describe(cls):
        """`[{name, label, help, default}]` of every threshold: what the CLI's
        flags and the tab's form are made from."""
        return [
            {
                "name": field.name,
                "label": field.metadata["label"],
                "help": field.metadata["help"],
                "default": field.default,
            }
            for field in dataclasses.fields(cls)
        ]

    @classmethod
    def from_strings(cls, mapping, base=None):
        """Thresholds from `{name: "1e-3"}` (query parameters); other keys are ignored.

        Raises:
          ValueError: a value is not a finite number >= 0, or not below its bound (the message names it).
        """
        base = base or cls()
        values = {}
        for name in cls.names():
            if name not in mapping or mapping[name] in (None, ""):
                continue
            raw = mapping[name]
            try:
                values[name] = float(raw)
            except (TypeError, ValueError):
                raise ValueError("%s must be a number, got %r" % (name, raw)) from None
        return dataclasses.replace(base, **values)

    def to_json(self):
        return dataclasses.asdict(self)



# ---------------------------------------------------------------------------
# Strict JSON
# ---------------------------------------------------------------------------


def finite(value):
    """A JSON-safe float: None for NaN, Inf and None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def finite_list(values):
    """A JSON-safe list of floats (None for NaN and Inf) from an array or list."""
    array = np.asarray(values, dtype=np.float64)
    floats = array.tolist()
    for index in np.flatnonzero(~np.isfinite(array)).tolist():
        floats[index] = None
    return floats


# Significant digits of the per-step lists in the JSON (what the heatmap,
# sparklines and charts draw): enough for any chart, and a large logdir's
# answer shrinks by almost half. Verdicts and the scalar scores are computed,
# and reported, at full precision.
DISPLAY_DIGITS = 7


def display_list(values):
    """`finite_list` of per-step values rounded to `DISPLAY_DIGITS` significant digits.

    m / 10**k with an integer m and an exact power of ten (k <= 22) is the
    double nearest the decimal, so JSON writes the short decimal. Values
    below 1e-17 or above 1e22 keep every digit.
    """
    return display_lists([values])[0]


def display_lists(many):
    """`display_list` of each of `many` per-step lists, rounded in one numpy pass.

    (A run of 2,000 variables has 6,000 such lists: one pass per list was
    a tenth of judging it.)
    """
    arrays = [np.array(values, dtype=np.float64).reshape(-1) for values in many]  # None -> NaN
    if not arrays:
        return []
    array = np.concatenate(arrays)
    with np.errstate(all="ignore"):
        power = (DISPLAY_DIGITS - 1) - np.floor(np.log10(np.abs(array)))
        finite = np.isfinite(array) & np.isfinite(power)
        small = finite & (power >= 0) & (power <= 22)
        large = finite & (power < 0) & (power >= -22)
        if small.any():
            scale = 10.0 ** power[small]
            array[small] = np.round(array[small] * scale) / scale
        if large.any():
            scale = 10.0 ** -power[large]
            array[large] = np.round(array[large] / scale) * scale
    shown = finite_list(array)
    ends = np.cumsum([a.size for a in arrays]).tolist()
    return [shown[end - a.size : end] for a, end in zip(arrays, ends)]


def strict(value):
    """`value` (dicts, lists, floats) with NaN and infinities replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


# ---------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------


def _floor(thresholds, kind):
    return thresholds.min_relative_change if kind == RELATIVE_CHANGE else thresholds.min_shift


def _median(values):
    """The median, as `np.median` gives it (NaN if any value is NaN), without
    its first call's import of `numpy.ma` (~30 ms of a cold /verdicts)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64).ravel())
    middle = ordered.size // 2
    if ordered.size == 0 or np.isnan(ordered[-1]):
        return math.nan
    if ordered.size % 2:
        return float(ordered[middle])
    return float((ordered[middle - 1] + ordered[middle]) / 2)


def _medians_without_each(values):
    """`[_median(np.delete(values, i)) for i in range(n)]`, the same numbers, from
    one sort instead of n (a peer group of 2,000 layers took 0.1 s the other way)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    if n < 2 or np.isnan(values).any():
        return [_median(np.delete(values, index)) for index in range(n)]
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)

    def kept(position):
        # The `position`-th smallest of the others: one past the removed rank.
        return ordered[position + (position >= rank)]

    middle = (n - 1) // 2
    if (n - 1) % 2:
        return kept(np.full(n, middle)).tolist()
    return ((kept(np.full(n, middle - 1)) + kept(np.full(n, middle))) / 2).tolist()


def _label(kind):
    return kind.replace("_", " ")


def _decades(value, bar):
    """How far `value` is from `bar`, in decades (log10); None when either is not a positive number."""
    if value is None or bar is None or not (value > 0 and bar > 0):
        return None
    return abs(math.log10(value / bar))


HINTS = {
    FROZEN: "Never changed: trainable=False (Keras), requires_grad=False (PyTorch), "
    "or not among the optimizer's parameters. Expected for a frozen backbone.",
    DECAY_ONLY: "No gradient reaches it, only weight decay shrinks it: a dead branch, a "
    "detached output, an unused head, an output multiplied by zero.",
    NOT_LEARNING: "It moves, but far less than its peers: a scaled-down gradient (a small "
    "loss weight, a stop_gradient mix), a per-layer learning-rate multiplier, "
    "or vanishing gradients.",
    DIVERGED: "NaN or Inf appeared: a learning rate too high, bad input (NaN or Inf in a "
    "batch), or loss-scaling overflow in mixed precision.",
}
_FLOOR_HINT = (
    "It moved only at floating-point precision: its updates round away (a learning rate "
    "far too small for its scale), or something rewrites it without changing it."
)


def _facts(variable, thresholds):
    """The verdict a variable's own data settles, or None when its peers must decide."""
    count = len(variable.steps)
    if variable.diverged_step is not None:
        return DIVERGED, "NaN or Inf from step %d" % variable.diverged_step, None, HINTS[DIVERGED]
    if count < 2:
        return UNKNOWN, "%d logged step%s; two are needed" % (count, "" if count == 1 else "s"), None, None
    if variable.frozen:
        return FROZEN, "bit-identical at all %d logged steps" % count, None, HINTS[FROZEN]
    if variable.movement is None:
        return UNKNOWN, "changed, but no %s could be computed" % _label(variable.movement_kind), None, None
    floor = _floor(thresholds, variable.movement_kind)
    if variable.movement < floor:
        reason = "%s %.3g: moved only at floating-point precision (below %.3g)" % (
            _label(variable.movement_kind), variable.movement, floor,
        )
        return NOT_LEARNING, reason, _decades(variable.movement, floor), _FLOOR_HINT
    if variable.peer_group == scores.STATISTICS:
        reason = "%s %.3g; not trainable: statistics the layer keeps, or weights set outside the optimizer" % (
            _label(variable.movement_kind), variable.movement,
        )
        return LEARNING, reason, _decades(variable.movement, floor), None
    residual, limit = variable.rescale_residual, _rescale_limit(variable, thresholds)
    if residual is not None and residual < limit and variable.rescale < 1:
        reason = "%s %.3g, all but %.2g of it a rescaling by %.6g: only weight decay moved it" % (
            _label(variable.movement_kind), variable.movement, residual, variable.rescale,
        )
        return DECAY_ONLY, reason, _decades(residual, limit), HINTS[DECAY_ONLY]
    return None


def _rescale_limit(variable, thresholds):
    if variable.movement_kind == RELATIVE_CHANGE:
        return thresholds.max_rescale_residual
    return thresholds.max_histogram_rescale_residual


# torch's add_histogram buckets are fixed and 10 % of a value wide: a rescaling
# by (1 - e) moves each value by e |x|, a shift of about 0.8 e in units of the
# spread, so below ~0.1 a rescaling can hide inside the buckets.
_SUB_BUCKET_SHIFT = 0.1


def _ambiguous_rescaling(variable, thresholds):
    """What plain distributions cannot say of a tensor that shrank, in words (or None).

    A shrink that is mostly a rescaling, but not close enough to call, may
    be weight decay alone or learning that kept a Gaussian shape; and
    fixed bucket edges cannot resolve a rescaling smaller than a bucket.
    """
    if variable.movement_kind != SHIFT:
        return None
    if variable.fixed_edges and variable.movement < _SUB_BUCKET_SHIFT and not (variable.rescale or 0) < 1:
        # A shrink of a few per cent stays inside torch's 10 %-wide buckets:
        # the fitted rescaling is then noise, and can even come out above 1.
        return (
            "it moved by %.2g, less than one of its fixed buckets is wide, and fixed bucket edges "
            "cannot resolve a rescaling from learning" % variable.movement
        )
    if variable.rescale is None or not variable.rescale < 1:
        return None
    residual = variable.rescale_residual
    if residual is not None and residual < thresholds.max_rescale_residual:
        return (
            "all but %.2g of it a rescaling by %.4g: weight decay alone, or learning that kept a "
            "Gaussian shape" % (residual, variable.rescale)
        )
    if variable.fixed_edges:
        return "it shrank by %.2g%%, and fixed bucket edges cannot resolve a rescaling from learning" % (
            100 * (1 - variable.rescale)
        )
    return None


def judge(layers, thresholds):
    """Verdicts for the variables of one run, given as `{layer: [variables]}`.

    First what each variable's own data settles (`diverged`, `unknown`,
    `frozen`, moved only at floating-point precision, non-trainable,
    `decay_only`). Then each layer's deciding variable is compared with its
    peers: the deciding variables of the run's other layers of the same
    peer group and movement kind that were not settled above. Its
    `ratio_to_median` is its movement over their median (geometric: the
    comparison is in log space), and below `min_ratio_to_median` it is
    `not_learning`. Other variables, and a deciding variable without peers,
    are `learning` once their own data did not settle them.

    Each variable gets a `margin`: how many decades (log10) its deciding
    figure is from the threshold that would flip its verdict (None for facts
    such as bit-identical or NaN).

    Returns:
      `{peer group: {movement kind: median}}` of the peers.
    """
    variables = [v for members in layers.values() for v in members]
    drivers = {id(scores.driver(members)) for members in layers.values()}
    undecided = []
    for variable in variables:
        settled = _facts(variable, thresholds)
        if settled is None:
            undecided.append(variable)
        else:
            variable.verdict, variable.reason, variable.margin, variable.hint = settled
    peers = {}
    for variable in undecided:
        if id(variable) in drivers:
            peers.setdefault((variable.peer_group, variable.movement_kind), []).append(variable)
    medians = {}
    for (group, kind), members in peers.items():
        logs = np.log([v.movement for v in members])
        medians.setdefault(group, {})[kind] = float(np.exp(_median(logs)))
        if len(members) > 1:
            for variable, others in zip(members, _medians_without_each(logs)):
                variable.peer_median = float(np.exp(others))
                variable.ratio_to_median = variable.movement / variable.peer_median
    for variable in undecided:
        label = _label(variable.movement_kind)
        ratio = variable.ratio_to_median
        floor_margin = _decades(variable.movement, _floor(thresholds, variable.movement_kind))
        residual_margin = None
        if variable.rescale_residual is not None and variable.rescale is not None and variable.rescale < 1:
            residual_margin = _decades(variable.rescale_residual, _rescale_limit(variable, thresholds))
        if ratio is not None and ratio < thresholds.min_ratio_to_median:
            variable.verdict = NOT_LEARNING
            variable.reason = "%s %.3g is %.2g x the median %.3g of its peers (%s; below %.3g x)" % (
                label, variable.movement, ratio, variable.peer_median, variable.peer_group,
                thresholds.min_ratio_to_median,
            )
            variable.margin = _decades(ratio, thresholds.min_ratio_to_median)
            variable.hint = HINTS[NOT_LEARNING]
            continue
        variable.verdict = LEARNING
        variable.reason = "%s %.3g%s" % (
            label,
            variable.movement,
            "" if ratio is None else " (%.2g x the median of its peers, %s)" % (ratio, variable.peer_group),
        )
        ambiguity = _ambiguous_rescaling(variable, thresholds)
        if ambiguity:
            variable.reason += (
                "; %s. Plain histograms cannot tell whether only weight decay moved it; a reference "
                "(WeightDiffCallback, weights_pb(reference=...)) can" % ambiguity
            )
        margins = [floor_margin, residual_margin]
        if ratio is not None:
            margins.append(_decades(ratio, thresholds.min_ratio_to_median))
        margins = [m for m in margins if m is not None]
        variable.margin = min(margins) if margins else None
    return medians


def _at_last_step(values):
    """The value at the last logged step, or None (not carried over from earlier steps)."""
    if values is None or len(values) == 0:
        return None
    return finite(values[-1])


def _largest(values):
    finite_values = values[np.isfinite(values)]
    return float(np.max(finite_values)) if finite_values.size else None


# A variable's per-step lists in its JSON entry, in the order `_displayed` rounds them.
_DISPLAYED = ("shift_from_baseline", "per_step_shift", "distance_from_baseline")
_DISPLAYED_OURS = (("relative_change_by_step", "relative_change"), ("cosine_distance_by_step", "cosine_distance"))


def _displayed(variables):
    """`{id(variable): {field: display list}}` for the per-step lists of `_variable_json`,
    rounded for all `variables` at once (`display_lists`)."""
    wanted = []
    for variable in variables:
        wanted.extend((variable, field, getattr(variable, field)) for field in _DISPLAYED)
        if variable.source == metadata.PLUGIN_NAME:
            wanted.extend((variable, field, getattr(variable, name)) for field, name in _DISPLAYED_OURS)
    shown = {id(variable): {field: None for field, _ in _DISPLAYED_OURS} for variable in variables}
    for (variable, field, _), values in zip(wanted, display_lists([values for _, _, values in wanted])):
        shown[id(variable)][field] = values
    return shown


def _variable_json(variable, shown):
    """One variable's entry; `shown`: its per-step lists (`_displayed`)."""
    ours = variable.source == metadata.PLUGIN_NAME
    return {
        "name": variable.name,
        "tag": variable.tag,
        "verdict": variable.verdict,
        "reason": variable.reason,
        "trainable": variable.trainable,
        "elements": variable.elements,
        "steps": variable.steps,
        "baseline_step": variable.steps[0] if variable.steps else None,
        "diverged_step": variable.diverged_step,
        "movement": finite(variable.movement),
        "movement_kind": variable.movement_kind,
        "ratio_to_median": finite(variable.ratio_to_median),
        "shift": _at_last_step(variable.shift_from_baseline),
        "max_shift": _largest(variable.shift_from_baseline),
        "shift_from_baseline": shown["shift_from_baseline"],
        "per_step_shift": shown["per_step_shift"],
        "distance_from_baseline": shown["distance_from_baseline"],
        "scale": finite(variable.scale),
        "scale_basis": variable.scale_basis,
        "hint": variable.hint,
        "margin": finite(variable.margin),
        "peer_group": variable.peer_group,
        "peer_median": finite(variable.peer_median),
        "rescale_residual": finite(variable.rescale_residual),
        "rescale": finite(variable.rescale),
        "movement_step": variable.movement_step,
        "settled_step": variable.settled_step,
        "updates": finite(variable.updates),
        "update_ratio": finite(variable.update_ratio),
        "relative_change": _at_last_step(variable.relative_change) if ours else None,
        "cosine_distance": _at_last_step(variable.cosine_distance) if ours else None,
        "reference_distance": _at_last_step(variable.reference_distance) if ours else None,
        "relative_change_by_step": shown["relative_change_by_step"],
        "cosine_distance_by_step": shown["cosine_distance_by_step"],
    }


def _sort_key(entry):
    movement = entry.get("movement")
    diverged = entry.get("diverged_step")
    return (
        _VERDICT_RANK[entry["verdict"]],
        diverged if diverged is not None else float("inf"),
        movement is None,
        movement if movement is not None else 0.0,
        entry["name"],
    )


def _layer_json(name, variables, shown):
    driver = scores.driver(variables)
    diverged = [v.diverged_step for v in variables if v.diverged_step is not None]
    trainable_flags = {v.trainable for v in variables}
    if True in trainable_flags:
        trainable = True
    elif trainable_flags == {False}:
        trainable = False
    else:
        trainable = None
    entries = sorted((_variable_json(v, shown[id(v)]) for v in variables), key=_sort_key)
    driver_entry = next(e for e in entries if e["tag"] == driver.tag)
    if diverged:
        verdict = DIVERGED
        culprits = [v.name for v in variables if v.diverged_step is not None]
        reason = "%s: NaN or Inf from step %d" % (", ".join(culprits), min(diverged))
        hint, margin = HINTS[DIVERGED], None
    else:
        verdict = driver.verdict
        reason = "%s: %s" % (driver.name, driver.reason)
        hint, margin = driver_entry["hint"], driver_entry["margin"]
    return {
        "name": name,
        "verdict": verdict,
        "reason": reason,
        "driver": driver.name,
        "trainable": trainable,
        "elements": int(sum(v.elements for v in variables)),
        "diverged_step": min(diverged) if diverged else None,
        "movement": driver_entry["movement"],
        "movement_kind": driver_entry["movement_kind"],
        "ratio_to_median": driver_entry["ratio_to_median"],
        "shift": driver_entry["shift"],
        "relative_change": driver_entry["relative_change"],
        "cosine_distance": driver_entry["cosine_distance"],
        "steps": driver_entry["steps"],
        "per_step_shift": driver_entry["per_step_shift"],
        "shift_from_baseline": driver_entry["shift_from_baseline"],
        "hint": hint,
        "margin": margin,
        "peer_group": driver_entry["peer_group"],
        "rescale_residual": driver_entry["rescale_residual"],
        "settled_step": driver_entry["settled_step"],
        "update_ratio": driver_entry["update_ratio"],
        "variables": entries,
    }


def _evenly_spaced(steps):
    return len(steps) < 3 or len(set(np.diff(steps).tolist())) == 1


def source_caveats(source):
    """What a source cannot tell, for the variable detail (empty for our summaries)."""
    if source == metadata.PLUGIN_NAME:
        return []
    return [
        "Plain histograms (e.g. Keras's TensorBoard callback): no epoch-0 baseline "
        "(the first histogram is logged after the first epoch), no distance to the "
        "initial weights, and weights that move without changing their histogram "
        "look frozen. Log with tb_weightdiff's WeightDiffCallback for those."
    ]


def _findings(layers, optimizer, thresholds):
    """What the run as a whole says (not a verdict on any one layer)."""
    learning = [
        scores.driver(members) for members in layers.values()
    ]
    learning = [v for v in learning if v.verdict == LEARNING and v.peer_group == scores.WEIGHTS]
    ratios = [v.update_ratio for v in learning if v.update_ratio is not None]
    findings = []
    if ratios and max(ratios) < thresholds.min_update_ratio:
        rates = [r for r in (optimizer or {}).get("learning_rate") or [] if r is not None]
        findings.append(
            {
                "kind": "barely_moving",
                "update_ratio": _median(ratios),
                "learning_rate": rates[-1] if rates else None,
                "message": (
                    "Every layer that learns barely moves: %.2g of its norm per update at most "
                    "(relative change / sqrt(updates); CS231n's rule of thumb is ~1e-3)%s. Expected when "
                    "fine-tuning at a small learning rate; otherwise the learning rate may be too small."
                    % (max(ratios), "; learning rate %.3g" % rates[-1] if rates else "")
                ),
            }
        )
    return findings


def run_json(
    run, source, layers, medians, warnings, other_source_count=0, optimizer=None, thresholds=None, resets=None,
):
    """One run's entry of the contract, its layers worst first.

    Args:
      run: the run's name.
      source: the plugin it was judged from.
      layers: `{layer: [scores.Variable]}`, scored and judged.
      medians: `{peer group: {movement kind: median}}` from `judge`.
      warnings: the run's messages so far (unreadable series, restarts);
        what its source and steps imply is put before them.
      other_source_count: plain histogram series the run also holds but was
        not judged from.
      optimizer: the optimizer's state a writer logged (`reader.read_optimizer`'s
        entry), or None.
      thresholds: the `Thresholds` the run was judged with (for its findings).
      resets: the run's reset checks (`reader.ResetSeries`), or None.
    """
    thresholds = thresholds or Thresholds()
    variables = [v for members in layers.values() for v in members]
    steps = sorted({step for v in variables for step in v.steps})
    baseline_step = min((v.steps[0] for v in variables if v.steps), default=None)
    run_warnings = []
    if source == metadata.HISTOGRAM_PLUGIN_NAME and variables:
        run_warnings.append(
            "Judged from plain weight histograms (plugin 'histograms'): the baseline is "
            "the first logged step (%s). keras.callbacks.TensorBoard logs its first "
            "histograms after the first epoch, so this is not the weights before "
            "training; histograms give no distance to the initial weights, and weights "
            "that move without changing their histogram (e.g. permuted) look frozen. Without "
            "an update count, movement per update is unknown, and weight decay alone is told "
            "from the histograms' shape only." % baseline_step
        )
    if other_source_count:
        run_warnings.append(
            "Also holds %d plain histogram series (plugin 'histograms', e.g. from "
            "keras.callbacks.TensorBoard or add_histogram); judged from the tb_weightdiff summaries, "
            "which are exact." % other_source_count
        )
    if source == metadata.PLUGIN_NAME and baseline_step not in (None, 0):
        run_warnings.append(
            "The first logged step is %d, not 0 (downsampled, or logging started late): "
            "shifts are measured from step %d; relative change and cosine distance still "
            "compare with the reference the summaries carry." % (baseline_step, baseline_step)
        )
    if not _evenly_spaced(steps):
        run_warnings.append(
            "Logged steps are unevenly spaced (gaps or downsampling): each per-step shift "
            "covers the interval since the previous logged step."
        )
    run_warnings.extend(warnings)
    shown = _displayed(variables)
    layer_entries = sorted((_layer_json(name, members, shown) for name, members in layers.items()), key=_sort_key)
    reset_check = _attach_resets(layer_entries, resets or [], thresholds)
    counts = {verdict: 0 for verdict in VERDICTS}
    for layer in layer_entries:
        counts[layer["verdict"]] += 1
    return {
        "run": run,
        "source": source,
        "steps": steps,
        "baseline_step": baseline_step,
        "warnings": run_warnings,
        # The weight matrices' medians, as before there were peer groups.
        "medians": {kind: finite(value) for kind, value in medians.get(scores.WEIGHTS, {}).items()},
        "peer_medians": {
            group: {kind: finite(value) for kind, value in of_group.items()} for group, of_group in medians.items()
        },
        "verdict_counts": counts,
        "findings": _findings(layers, optimizer, thresholds),
        "optimizer": strict(optimizer) if optimizer else None,
        "reset_check": reset_check,
        "layers": layer_entries,
    }


# ---------------------------------------------------------------------------
# The reset check: which layers mattered
# ---------------------------------------------------------------------------

ROBUST = "robust"
CRITICAL = "critical"
PARTIAL = "partial"
IMPACTS = (CRITICAL, PARTIAL, ROBUST)

RESET_NOTES = {
    (LEARNING, ROBUST): "It learned, yet putting its initial weights back undoes only %s of what training "
    "gained: the network hardly relies on what this layer learned. A robust layer (Zhang, Bengio and Singer, "
    "2022), common in over-parameterised networks; not a fault, but it could be frozen or kept at its "
    "initialisation at almost no cost.",
    (NOT_LEARNING, CRITICAL): "It barely moved, yet putting its initial weights back undoes %s of what "
    "training gained: the little it moved matters (a first layer, an embedding, fine-tuning). Read "
    "not_learning here as 'moves far less than its peers', not as 'does nothing'.",
    (DECAY_ONLY, CRITICAL): "Only a rescaling moved it, yet putting its initial weights back undoes %s of "
    "what training gained: the rescaling itself matters (the layers after it adapted to its smaller scale).",
}


def _impact(undone, thresholds):
    if undone is None:
        return None
    if undone < thresholds.max_robust_reset:
        return ROBUST
    if undone >= thresholds.min_critical_reset:
        return CRITICAL
    return PARTIAL


def _reset_json(series, index, thresholds):
    fields = series.fields[index]
    loss, reset, initial = fields["loss"], fields["loss_reset"], fields["loss_initial"]
    increase = reset - loss
    gained = initial - loss
    undone = increase / gained if gained > 0 and math.isfinite(gained) else None
    return {
        "name": series.name,
        "tags": list(series.tags),
        "step": series.steps[index],
        "loss": finite(loss),
        "loss_reset": finite(reset),
        "loss_initial": finite(initial),
        "increase": finite(increase),
        "ratio": finite(reset / loss) if loss > 0 else None,
        "undone": finite(undone),
        "impact": _impact(finite(undone), thresholds),
        "metrics": {
            name: {"trained": finite(a), "reset": finite(b), "initial": finite(c)}
            for name, (a, b, c) in zip(series.metrics, series.metric_values[index])
        },
        "batches": int(fields["batches"]),
        "examples": int(fields["examples"]),
        "seconds": finite(fields["seconds"]),
    }


def _attach_resets(layer_entries, resets, thresholds):
    """Puts each layer's last reset check into its entry (`reset`, or None); returns the run's
    `reset_check` summary, or None when the run has none.

    A check belongs to the layers whose variables it reset (by tag), or
    whose name is the layer of a tag it reset (`scores.split_tag`: a check
    of our summaries' tags also finds the same layer judged from plain
    histograms); a block reset together belongs to each of its layers.
    """
    for entry in layer_entries:
        entry["reset"] = None
        entry["reset_note"] = None
    if not resets:
        return None
    claims = []
    for series in resets:
        claims.append((series, set(series.tags), {scores.split_tag(tag)[0] for tag in series.tags}))
    for entry in layer_entries:
        tags = {variable["tag"] for variable in entry["variables"]}
        best, overlap = None, 0
        for series, reset_tags, reset_layers in claims:
            score = len(tags & reset_tags) or (1 if entry["name"] in reset_layers else 0)
            if score > overlap:
                best, overlap = series, score
        if best is None:
            continue
        found = _reset_json(best, len(best.steps) - 1, thresholds)
        found["steps"] = list(best.steps)
        found["increase_by_step"] = display_list([f["loss_reset"] - f["loss"] for f in best.fields])
        found["block"] = len({scores.split_tag(tag)[0] for tag in best.tags}) > 1
        entry["reset"] = found
        note = RESET_NOTES.get((entry["verdict"], found["impact"]))
        if note and found["undone"] is not None:
            entry["reset_note"] = note % ("%.0f%%" % (100 * found["undone"]) if found["undone"] >= 0.01 else
                                          "%.2g%%" % (100 * found["undone"]))
    last = max(resets, key=lambda series: series.steps[-1])
    fields = last.fields[-1]
    checked = [series for series in resets if series.steps[-1] == last.steps[-1]]
    evaluated = [series.fields[-1]["seconds"] for series in checked if series.fields[-1]["seconds"] > 0]
    return {
        "steps": sorted({step for series in resets for step in series.steps}),
        "step": last.steps[-1],
        "loss": finite(fields["loss"]),
        "loss_initial": finite(fields["loss_initial"]),
        "batches": int(fields["batches"]),
        "examples": int(fields["examples"]),
        "groups": len(checked),
        "evaluated": len(evaluated),
        "seconds_per_group": finite(_median(evaluated)) if evaluated else None,
    }


def verdicts_of(result):
    """Every verdict in a result, of layers and of variables, as a set."""
    found = set()
    for run in result["runs"]:
        for layer in run["layers"]:
            found.add(layer["verdict"])
            found.update(variable["verdict"] for variable in layer["variables"])
    return found


def to_json(result, **kwargs):
    """Strict JSON text of a result (no NaN or Infinity: they are already null)."""
    return json.dumps(result, allow_nan=False, **kwargs)


# ---------------------------------------------------------------------------
# CSV: one row per variable, the same for the CLI and the tab's export
# ---------------------------------------------------------------------------

CSV_COLUMNS = (
    "run", "source", "layer", "layer_verdict", "variable", "tag", "verdict", "trainable",
    "elements", "baseline_step", "last_step", "diverged_step", "movement", "movement_kind",
    "ratio_to_median", "shift", "max_shift", "relative_change", "cosine_distance",
    "reference_distance", "scale", "scale_basis", "reason",
    "reset_increase", "reset_undone", "reset_impact",
)

# A spreadsheet runs a cell that starts like this as a formula (CSV injection):
# names from logs are data, so such a text cell gets a leading apostrophe.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(result):
    """The verdicts of a result as CSV text: `CSV_COLUMNS`, one row per variable."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in result["runs"]:
        for layer in run["layers"]:
            for variable in layer["variables"]:
                record = dict(variable)
                record.update(
                    run=run["run"],
                    source=run["source"],
                    layer=layer["name"],
                    layer_verdict=layer["verdict"],
                    variable=variable["name"],
                    last_step=variable["steps"][-1] if variable["steps"] else None,
                )
                reset = layer.get("reset") or {}
                record.update(
                    reset_increase=reset.get("increase"),
                    reset_undone=reset.get("undone"),
                    reset_impact=reset.get("impact"),
                )
                writer.writerow([_csv_cell(record.get(column)) for column in CSV_COLUMNS])
    return out.getvalue()


# One variable's data, as the detail's export gives it: long form, one value a row.
VARIABLE_CSV_COLUMNS = ("run", "tag", "source", "step", "kind", "key", "left", "right", "value")


def variable_to_csv(detail):
    """A variable's detail (the /variable answer) as CSV, `VARIABLE_CSV_COLUMNS`.

    Per step: a `stat` row per statistic (`key` its name), a `quantile` row
    per probability (`key` the probability; our summaries only), and a
    `bucket` row per histogram bucket (`key` its index, `left`, `right`, and
    its count as `value`).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(VARIABLE_CSV_COLUMNS)
    base = [_csv_cell(detail["run"]), _csv_cell(detail["tag"]), detail["source"]]
    stats = detail.get("stats") or {}
    quantiles = detail.get("quantiles") or {}
    for index, step in enumerate(detail["steps"]):
        for name, values in stats.items():
            writer.writerow(base + [step, "stat", name, "", "", _csv_cell(finite(values[index]))])
        quantile_values = quantiles["values"][index] if quantiles.get("values") else []
        for probability, value in zip(quantiles.get("probabilities", ()), quantile_values):
            writer.writerow(base + [step, "quantile", repr(float(probability)), "", "", _csv_cell(finite(value))])
        for bucket, (left, right, count) in enumerate(detail["histograms"][index]):
            writer.writerow(base + [step, "bucket", bucket, _csv_cell(finite(left)), _csv_cell(finite(right)),
                                    _csv_cell(finite(count))])
    return out.getvalue()
