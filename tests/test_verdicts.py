"""tb_weightdiff.verdicts: the thresholds, the verdict rules and the JSON / CSV contract."""

import csv
import io
import json
import warnings

import numpy as np
import pytest

from tb_weightdiff import judge
from tb_weightdiff import metadata
from tb_weightdiff import verdicts
from series import by_layer, by_variable, histograms, ours, planted_model, walk


@pytest.fixture
def model(rng):
    """Our summaries of a small model with planted layers, over 5 steps."""
    return planted_model(rng)


def test_thresholds_validate_and_parse():
    defaults = verdicts.Thresholds()
    assert defaults.to_json() == {name: getattr(defaults, name) for name in verdicts.Thresholds.names()}
    assert set(verdicts.Thresholds.names()) == {
        "min_relative_change", "min_shift", "min_ratio_to_median", "max_rescale_residual",
        "max_histogram_rescale_residual", "min_update_ratio", "settled_fraction",
        "max_robust_reset", "min_critical_reset",
    }
    for bad in (-1e-3, float("nan"), float("inf"), "0.1", None, True):
        with pytest.raises(ValueError, match="min_shift"):
            verdicts.Thresholds(min_shift=bad)
    parsed = verdicts.Thresholds.from_strings({"min_shift": "0.5", "min_relative_change": "", "other": "x"})
    assert parsed == verdicts.Thresholds(min_shift=0.5)
    with pytest.raises(ValueError, match="min_ratio_to_median must be a number"):
        verdicts.Thresholds.from_strings({"min_ratio_to_median": "lots"})
    with pytest.raises(ValueError, match=">= 0"):
        verdicts.Thresholds.from_strings({"min_ratio_to_median": "-1"})
    # Nothing stays below its own peak: a settled fraction of 1 or more would settle nothing.
    for bad in (1.0, 2.0):
        with pytest.raises(ValueError, match="settled_fraction must be below 1"):
            verdicts.Thresholds(settled_fraction=bad)
    assert verdicts.Thresholds(settled_fraction=0.99).settled_fraction == 0.99


def test_verdicts_of_planted_layers(model):
    [run] = judge.analyze_series(model)
    layers = by_layer(run)
    assert {name: layer["verdict"] for name, layer in layers.items()} == {
        "m/healthy": "learning",
        "m/other": "learning",
        "m/third": "learning",
        "m/slow": "not_learning",
        "m/frozen": "frozen",
        "m/nan": "diverged",
        "m/permuted": "learning",
        "m/norm": "learning",
    }
    assert run["source"] == metadata.PLUGIN_NAME
    assert run["steps"] == [0, 1, 2, 3, 4] and run["baseline_step"] == 0
    # Any diverged variable makes the layer diverged, from the first step it appeared.
    assert layers["m/nan"]["diverged_step"] == 3
    assert by_variable(layers["m/nan"])["bias"]["verdict"] == "learning"
    # The slow layer's bias learns; its larger kernel decides the layer.
    slow = by_variable(layers["m/slow"])
    assert slow["bias"]["verdict"] == "learning" and slow["kernel"]["verdict"] == "not_learning"
    assert layers["m/slow"]["driver"] == "kernel"
    # Weights that move under an unchanged histogram are not frozen.
    permuted = by_variable(layers["m/permuted"])["kernel"]
    assert permuted["shift"] == 0.0 and permuted["relative_change"] > 0.5
    assert permuted["trainable"] is False
    # A non-trainable variable that moves is judged on what it does.
    moving = by_variable(layers["m/norm"])["moving_mean"]
    assert moving["trainable"] is False and moving["verdict"] == "learning"
    # Worst first.
    ranks = [verdicts.VERDICTS.index(layer["verdict"]) for layer in run["layers"]]
    assert ranks == sorted(ranks)


def test_scores_are_aligned_with_steps_and_strict_json(model):
    result = {"thresholds": verdicts.Thresholds().to_json(), "runs": judge.analyze_series(model)}
    text = verdicts.to_json(result)

    def reject(constant):
        raise AssertionError("%s in strict JSON" % constant)

    parsed = json.loads(text, parse_constant=reject)
    for layer in parsed["runs"][0]["layers"]:
        assert layer["verdict"] in verdicts.VERDICTS
        assert len(layer["per_step_shift"]) == len(layer["steps"])
        for variable in layer["variables"]:
            assert variable["verdict"] in verdicts.VERDICTS
            steps = variable["steps"]
            assert len(variable["per_step_shift"]) == len(steps)
            assert len(variable["shift_from_baseline"]) == len(steps)
            assert variable["per_step_shift"][0] is None
            assert variable["shift_from_baseline"][0] == 0.0
            assert isinstance(variable["trainable"], bool)
            assert variable["tag"].endswith("/" + variable["name"])


def test_frozen_needs_bit_identical_weights(rng):
    weights = rng.normal(size=50)
    nudged = weights.copy()
    nudged[7] = np.nextafter(nudged[7], 1)
    [run] = judge.analyze_series([ours("a/frozen", [weights] * 3), ours("b/nudged", [weights, weights, nudged])])
    layers = by_layer(run)
    assert layers["a"]["verdict"] == "frozen"
    assert layers["b"]["verdict"] == "not_learning"  # moved, by one ulp


def test_unknown_with_one_step_and_diverged_even_then(rng):
    weights = rng.normal(size=10)
    broken = weights.copy()
    broken[0] = np.inf
    [run] = judge.analyze_series([ours("a/w", [weights]), ours("b/w", [broken])])
    layers = by_layer(run)
    assert layers["a"]["verdict"] == "unknown"
    assert layers["b"]["verdict"] == "diverged" and layers["b"]["diverged_step"] == 0


def test_thresholds_move_the_verdicts(model):
    strict = verdicts.Thresholds(min_relative_change=10.0)
    [run] = judge.analyze_series(model, strict)
    assert by_layer(run)["m/healthy"]["verdict"] == "not_learning"
    lenient = verdicts.Thresholds(min_relative_change=0, min_shift=0, min_ratio_to_median=0)
    [run] = judge.analyze_series(model, lenient)
    assert by_layer(run)["m/slow"]["verdict"] == "learning"


def test_ratio_to_median_flags_a_layer_far_below_the_others(rng):
    series = [ours("l%d/kernel" % i, walk(rng, rng.normal(size=(8, 8)), 3, 0.5)) for i in range(4)]
    series.append(ours("lazy/kernel", walk(rng, rng.normal(size=(8, 8)), 3, 0.0015)))
    [run] = judge.analyze_series(series)
    lazy = by_layer(run)["lazy"]
    assert lazy["movement"] > verdicts.Thresholds().min_relative_change  # clears the floor...
    assert lazy["ratio_to_median"] < verdicts.Thresholds().min_ratio_to_median  # ...not the median
    assert lazy["verdict"] == "not_learning"
    assert "median" in lazy["reason"]


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # histogram_pb of a NaN
def test_plain_histograms(rng):
    # 1,024 values: in a histogram of a few hundred, one value crossing a bucket
    # edge already moves it by ~1e-3 of its spread (README, "Blind spots").
    kernel = rng.normal(0, 0.2, (32, 32))
    others = [histograms("s/l%d/kernel/histogram" % i, walk(rng, rng.normal(0, 0.2, (32, 32)), 4, 0.1)) for i in range(3)]
    broken = walk(rng, kernel, 4, 0.1)
    broken[2] = broken[2].copy()
    broken[2][0, 0] = np.nan
    series = others + [
        histograms("s/frozen/kernel/histogram", [kernel] * 4),
        histograms("s/permuted/kernel/histogram", [rng.permutation(kernel.ravel()) for _ in range(4)]),
        histograms("s/slow/kernel/histogram", walk(rng, kernel, 4, 1e-5)),
        histograms("s/nan/kernel/histogram", broken),
    ]
    [run] = judge.analyze_series(series)
    assert run["source"] == metadata.HISTOGRAM_PLUGIN_NAME
    assert any("not the weights before training" in w for w in run["warnings"])
    verdicts = {name: layer["verdict"] for name, layer in by_layer(run).items()}
    assert verdicts == {
        "s/l0": "learning", "s/l1": "learning", "s/l2": "learning",
        "s/frozen": "frozen",
        "s/permuted": "frozen",  # the blind spot of histograms
        "s/slow": "not_learning",
        "s/nan": "diverged",
    }
    assert by_layer(run)["s/nan"]["diverged_step"] == 2
    assert all(layer["trainable"] is None for layer in run["layers"])


def test_csv_guards_cells_a_spreadsheet_would_run():
    variable = {
        "name": "+kernel", "tag": "=cmd/+kernel", "verdict": "learning", "steps": [0, 1], "movement": -0.5,
        "reason": "@SUM(1)", "trainable": True,
    }
    result = {"runs": [{"run": "-run", "source": "tb_weightdiff", "layers": [
        {"name": "=cmd", "verdict": "learning", "variables": [variable]}]}]}
    rows = list(csv.reader(io.StringIO(verdicts.to_csv(result))))
    assert tuple(rows[0]) == verdicts.CSV_COLUMNS
    row = dict(zip(verdicts.CSV_COLUMNS, rows[1]))
    assert (row["run"], row["layer"], row["variable"], row["tag"], row["reason"]) == (
        "'-run", "'=cmd", "'+kernel", "'=cmd/+kernel", "'@SUM(1)")
    # Numbers are numbers: a negative one is not a formula.
    assert row["movement"] == "-0.5" and row["last_step"] == "1" and row["trainable"] == "True"
    assert row["diverged_step"] == ""


def test_strict_replaces_every_non_finite_number():
    value = {"a": [1.0, float("nan"), {"b": float("inf")}], "c": (float("-inf"), 2), "d": "nan"}
    assert verdicts.strict(value) == {"a": [1.0, None, {"b": None}], "c": [None, 2], "d": "nan"}
    assert verdicts.finite(float("nan")) is None and verdicts.finite(3) == 3.0


def _kernels(rng, rates, steps=4, shape=(16, 16)):
    return [ours("m/l%d/kernel" % i, walk(rng, rng.normal(0, 0.2, shape), steps, rate)) for i, rate in enumerate(rates)]


def test_a_layer_is_judged_against_the_median_of_its_peers_in_log_space(rng):
    series = _kernels(rng, [0.1, 0.1, 0.1, 1e-5])
    [run] = judge.analyze_series(series)
    layers = by_layer(run)
    slow = layers["m/l3"]
    assert slow["verdict"] == "not_learning" and "median" in slow["reason"]
    assert slow["hint"] == verdicts.HINTS["not_learning"]
    # Leave-one-out: the others' geometric median, not a median the slow layer drags down.
    others = [layers["m/l%d" % i]["movement"] for i in range(3)]
    assert slow["ratio_to_median"] == pytest.approx(slow["movement"] / np.exp(np.median(np.log(others))))
    assert slow["margin"] == pytest.approx(np.log10(verdicts.Thresholds().min_ratio_to_median / slow["ratio_to_median"]))
    assert run["peer_medians"]["weights"]["relative_change"] > 0


def test_a_run_that_moves_little_everywhere_is_learning_everywhere(rng):
    """Fine-tuning at a small learning rate: every layer moves 1e-5 relative, alike."""
    [run] = judge.analyze_series(_kernels(rng, [1e-5, 1.2e-5, 0.8e-5]))
    assert {layer["verdict"] for layer in run["layers"]} == {"learning"}
    assert all(layer["hint"] is None for layer in run["layers"])


def test_a_layer_without_peers_of_its_kind_is_not_held_to_other_kinds(rng):
    series = _kernels(rng, [0.1, 0.1]) + [ours("m/embedding/embeddings", walk(rng, rng.normal(0, 0.05, (50, 8)), 4, 1e-4))]
    [run] = judge.analyze_series(series)
    embedding = by_layer(run)["m/embedding"]
    assert embedding["peer_group"] == "embedding" and embedding["ratio_to_median"] is None
    assert embedding["verdict"] == "learning"


def test_decay_only_from_our_summaries(rng):
    start = rng.normal(0, 0.2, (16, 16))
    series = _kernels(rng, [0.1, 0.1]) + [ours("m/dead/kernel", [start * 0.99 ** step for step in range(4)])]
    [run] = judge.analyze_series(series)
    dead = by_layer(run)["m/dead"]
    assert dead["verdict"] == "decay_only"
    assert "only weight decay" in dead["reason"] and dead["hint"] == verdicts.HINTS["decay_only"]
    assert dead["rescale_residual"] < 1e-6 and dead["margin"] > 4
    # A tensor that grew by a rescaling is not decay.
    grown = [ours("m/grown/kernel", [start * 1.01 ** step for step in range(4)])]
    [run] = judge.analyze_series(_kernels(rng, [0.1, 0.1]) + grown)
    assert by_layer(run)["m/grown"]["verdict"] == "learning"


def test_decay_only_from_plain_histograms_needs_a_proportional_histogram(rng):
    start = rng.uniform(-0.3, 0.3, (32, 32))
    live = [histograms("s/l%d/kernel/histogram" % i, walk(rng, rng.uniform(-0.3, 0.3, (32, 32)), 4, 0.1)) for i in range(2)]
    dead = histograms("s/dead/kernel/histogram", [start * 0.98 ** step for step in range(4)])
    [run] = judge.analyze_series(live + [dead])
    assert by_layer(run)["s/dead"]["verdict"] == "decay_only"
    # Shrinking while learning keeps a Gaussian's shape: histograms cannot tell, and say so.
    gaussian = rng.normal(0, 0.2, (32, 32))
    blurred = [histograms("s/gauss/kernel/histogram", [gaussian * 0.98 ** step + 0.0005 * step * rng.standard_normal(gaussian.shape) for step in range(4)])]
    [run] = judge.analyze_series(live + blurred)
    layer = by_layer(run)["s/gauss"]
    assert layer["verdict"] == "learning" and "cannot tell" in layer["reason"]


def test_moved_only_at_floating_point_precision(rng):
    start = rng.normal(0, 0.2, (16, 16)).astype(np.float32)
    nudged = start.copy()
    nudged[0, 0] = np.nextafter(nudged[0, 0], np.float32(1))
    [run] = judge.analyze_series(_kernels(rng, [0.1, 0.1]) + [ours("m/rounding/kernel", [start, nudged])])
    layer = by_layer(run)["m/rounding"]
    assert layer["verdict"] == "not_learning" and "floating-point precision" in layer["reason"]
    assert "round away" in layer["hint"]


def test_a_non_trainable_tensor_that_changes_is_judged_on_the_facts_only(rng):
    kernel = rng.normal(0, 0.2, (8, 8))
    series = _kernels(rng, [0.1, 0.1]) + [ours("m/set_by_hand/kernel", [kernel, kernel * 0.5], trainable=False)]
    [run] = judge.analyze_series(series)
    layer = by_layer(run)["m/set_by_hand"]
    assert layer["peer_group"] == "statistics" and layer["verdict"] == "learning" and "not trainable" in layer["reason"]


def test_a_run_that_barely_moves_per_update_is_a_finding_not_a_verdict(rng):
    series = _kernels(rng, [1e-6, 1.2e-6, 0.9e-6])
    optimizer = {"steps": [0, 1, 2, 3], "updates": [0.0, 1000.0, 2000.0, 3000.0], "learning_rate": [1e-7] * 4}
    [run] = judge.analyze_series(series, optimizers={"run": optimizer})
    assert {layer["verdict"] for layer in run["layers"]} == {"learning"}
    (finding,) = run["findings"]
    assert finding["kind"] == "barely_moving" and finding["learning_rate"] == 1e-7
    assert finding["update_ratio"] < verdicts.Thresholds().min_update_ratio
    assert run["optimizer"]["updates"] == [0.0, 1000.0, 2000.0, 3000.0]
    # Moving normally: no finding.
    [run] = judge.analyze_series(_kernels(rng, [0.1, 0.1, 0.1]), optimizers={"run": optimizer})
    assert run["findings"] == []


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, -1.0, 2.0, 8.0], [-np.inf, 0.5, 2.0], [1.0, np.nan, 2.0], []])
def test_the_median_is_numpys(values):
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns for the empty one
        expected = np.median(np.asarray(values, dtype=np.float64))
    got = verdicts._median(values)  # pylint: disable=protected-access
    assert (np.isnan(got) and np.isnan(expected)) or got == expected


@pytest.mark.parametrize("values", [
    [2.0], [1.0, 5.0], [3.0, 1.0, 2.0], [4.0, 4.0, 1.0, 4.0], [-np.inf, 0.5, 2.0, 7.0, 7.0],
    [1.0, np.nan, 2.0], list(np.random.default_rng(3).normal(size=101)), list(np.random.default_rng(4).normal(size=100)),
])
def test_the_median_of_the_others_is_the_median_without_each(values):
    expected = [verdicts._median(np.delete(np.asarray(values), i)) for i in range(len(values))]  # pylint: disable=protected-access
    got = verdicts._medians_without_each(values)  # pylint: disable=protected-access
    assert len(got) == len(expected)
    assert all((np.isnan(a) and np.isnan(b)) or a == b for a, b in zip(got, expected))
