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
FROZEN = "frozen"
DIVERGED = "diverged"
UNKNOWN = "unknown"

# Worst first: the order of the report and of the tab's table.
VERDICTS = (DIVERGED, NOT_LEARNING, FROZEN, UNKNOWN, LEARNING)
_VERDICT_RANK = {verdict: rank for rank, verdict in enumerate(VERDICTS)}

SOURCES = ("auto", metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME)

RELATIVE_CHANGE = scores.RELATIVE_CHANGE
SHIFT = scores.SHIFT


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The knobs behind `not_learning`; shared by the CLI flags and the plugin's query.

    A variable that moved is `not_learning` when its movement is below the
    floor of its kind, or below `min_ratio_to_median` times the run's median
    movement of that kind (over the layers' deciding variables that cleared
    the floor and are not known to be non-trainable). The defaults are
    calibrated on real Keras trainings with planted ground truth, two models
    by five seeds (README, "Calibration"): healthy layers clear every threshold by
    9x or more; layers whose kernel gradient is scaled down by 1e4 fall below
    the ratio by 10x or more, and below the relative-change floor by 18x.

    Attributes:
      min_relative_change: floor on the largest `||W - W0|| / ||W0||` over
        the logged steps (our summaries with a non-zero reference).
      min_shift: floor on the largest shift from the baseline (Wasserstein-1
        divided by the baseline's standard deviation), for everything else.
      min_ratio_to_median: floor on movement / the run's median movement.
    """

    min_relative_change: float = dataclasses.field(
        default=1e-3,
        metadata={"label": "min relative change", "help": "floor on the largest ||W - W0|| / ||W0|| (our summaries with a reference)"},
    )
    min_shift: float = dataclasses.field(
        default=1e-3,
        metadata={"label": "min shift", "help": "floor on the largest histogram shift from the baseline, W1 / scale"},
    )
    min_ratio_to_median: float = dataclasses.field(
        default=1e-2,
        metadata={"label": "min ratio to median", "help": "floor on movement / the run's median movement"},
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
          ValueError: a value is not a finite number >= 0 (the message names it).
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
    floats = np.asarray(values, dtype=np.float64).tolist()
    return [v if math.isfinite(v) else None for v in floats]


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
    array = np.array(values, dtype=np.float64)  # None -> NaN
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
    return finite_list(array)


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


def judge(layers, thresholds):
    """Verdicts for the variables of one run, given as `{layer: [variables]}`.

    The bar of the ratio test is the median movement, per kind, of the run's
    layers: of each layer's deciding variable (`_driver`) that cleared the
    floor, so that many small biases do not set it. Non-trainable variables
    (moving statistics) are judged but do not set it either.
    """
    variables = [v for members in layers.values() for v in members]
    drivers = {id(scores.driver(members)) for members in layers.values()}
    candidates = []
    for variable in variables:
        count = len(variable.steps)
        if variable.diverged_step is not None:
            variable.verdict = DIVERGED
            variable.reason = "NaN or Inf from step %d" % variable.diverged_step
        elif count < 2:
            variable.verdict = UNKNOWN
            variable.reason = "%d logged step%s; two are needed" % (count, "" if count == 1 else "s")
        elif variable.frozen:
            variable.verdict = FROZEN
            variable.reason = "bit-identical at all %d logged steps" % count
        elif variable.movement is None:
            variable.verdict = UNKNOWN
            variable.reason = "changed, but no %s could be computed" % variable.movement_kind.replace("_", " ")
        elif variable.movement < _floor(thresholds, variable.movement_kind):
            variable.verdict = NOT_LEARNING
            variable.reason = "%s %.3g is below the floor %.3g" % (
                variable.movement_kind.replace("_", " "),
                variable.movement,
                _floor(thresholds, variable.movement_kind),
            )
        else:
            candidates.append(variable)
    medians = {}
    for kind in (RELATIVE_CHANGE, SHIFT):
        of_kind = [v for v in candidates if v.movement_kind == kind]
        trainable = [v for v in of_kind if v.trainable is not False] or of_kind
        reference = [v for v in trainable if id(v) in drivers] or trainable
        if reference:
            medians[kind] = float(np.median([v.movement for v in reference]))
    for variable in variables:
        median = medians.get(variable.movement_kind)
        if variable.movement is not None and median:
            variable.ratio_to_median = variable.movement / median
    for variable in candidates:
        median = medians[variable.movement_kind]
        ratio = variable.ratio_to_median
        label = variable.movement_kind.replace("_", " ")
        if ratio is not None and ratio < thresholds.min_ratio_to_median:
            variable.verdict = NOT_LEARNING
            variable.reason = "%s %.3g is %.2g x the run's median %.3g (below %.3g x)" % (
                label, variable.movement, ratio, median, thresholds.min_ratio_to_median,
            )
        else:
            variable.verdict = LEARNING
            variable.reason = "%s %.3g%s" % (
                label,
                variable.movement,
                "" if ratio is None else " (%.2g x the run's median)" % ratio,
            )
    return medians


def _at_last_step(values):
    """The value at the last logged step, or None (not carried over from earlier steps)."""
    if values is None or len(values) == 0:
        return None
    return finite(values[-1])


def _largest(values):
    finite_values = values[np.isfinite(values)]
    return float(np.max(finite_values)) if finite_values.size else None


def _variable_json(variable):
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
        "shift_from_baseline": display_list(variable.shift_from_baseline),
        "per_step_shift": display_list(variable.per_step_shift),
        "distance_from_baseline": display_list(variable.distance_from_baseline),
        "scale": finite(variable.scale),
        "scale_basis": variable.scale_basis,
        "relative_change": _at_last_step(variable.relative_change) if ours else None,
        "cosine_distance": _at_last_step(variable.cosine_distance) if ours else None,
        "reference_distance": _at_last_step(variable.reference_distance) if ours else None,
        "relative_change_by_step": display_list(variable.relative_change) if ours else None,
        "cosine_distance_by_step": display_list(variable.cosine_distance) if ours else None,
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


def _layer_json(name, variables):
    driver = scores.driver(variables)
    diverged = [v.diverged_step for v in variables if v.diverged_step is not None]
    trainable_flags = {v.trainable for v in variables}
    if True in trainable_flags:
        trainable = True
    elif trainable_flags == {False}:
        trainable = False
    else:
        trainable = None
    entries = sorted((_variable_json(v) for v in variables), key=_sort_key)
    driver_entry = next(e for e in entries if e["tag"] == driver.tag)
    if diverged:
        verdict = DIVERGED
        culprits = [v.name for v in variables if v.diverged_step is not None]
        reason = "%s: NaN or Inf from step %d" % (", ".join(culprits), min(diverged))
    else:
        verdict = driver.verdict
        reason = "%s: %s" % (driver.name, driver.reason)
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


def run_json(run, source, layers, medians, warnings, other_source_count=0):
    """One run's entry of the contract, its layers worst first.

    Args:
      run: the run's name.
      source: the plugin it was judged from.
      layers: `{layer: [scores.Variable]}`, scored and judged.
      medians: `{movement kind: median}` from `judge`.
      warnings: the run's messages so far (unreadable series, restarts);
        what its source and steps imply is put before them.
      other_source_count: plain histogram series the run also holds but was
        not judged from.
    """
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
            "that move without changing their histogram (e.g. permuted) look frozen."
            % baseline_step
        )
    if other_source_count:
        run_warnings.append(
            "Also holds %d plain histogram series (plugin 'histograms', e.g. from "
            "keras.callbacks.TensorBoard); judged from the tb_weightdiff summaries, "
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
    layer_entries = sorted((_layer_json(name, members) for name, members in layers.items()), key=_sort_key)
    counts = {verdict: 0 for verdict in VERDICTS}
    for layer in layer_entries:
        counts[layer["verdict"]] += 1
    return {
        "run": run,
        "source": source,
        "steps": steps,
        "baseline_step": baseline_step,
        "warnings": run_warnings,
        "medians": {kind: finite(value) for kind, value in medians.items()},
        "verdict_counts": counts,
        "layers": layer_entries,
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
                writer.writerow([_csv_cell(record.get(column)) for column in CSV_COLUMNS])
    return out.getvalue()
