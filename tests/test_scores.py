"""tb_weightdiff.scores: how tags name layers, the scale rule, the scores of each variable."""

import numpy as np
import pytest

from tb_weightdiff import judge
from tb_weightdiff import scores
from series import by_variable, ours


@pytest.mark.parametrize(
    "tag, expected",
    [
        ("sequential/conv2d/kernel", ("sequential/conv2d", "kernel")),
        ("sequential/conv2d/kernel/histogram", ("sequential/conv2d", "kernel")),
        ("model/inner/dense/bias", ("model/inner/dense", "bias")),
        ("layer1.0.conv1.weight", ("layer1.0.conv1", "weight")),  # torch's parameter names
        ("w", ("w", "w")),
        ("histogram", ("histogram", "histogram")),
    ],
)
def test_split_tag(tag, expected):
    assert scores.split_tag(tag) == expected


def test_relative_change_and_cosine_are_the_summaries_own(rng):
    start = rng.normal(size=100)
    end = start * 1.5 + 0.1
    [run] = judge.analyze_series([ours("a/w", [start, end])])
    variable = run["layers"][0]["variables"][0]
    assert variable["relative_change"] == pytest.approx(np.linalg.norm(end - start) / np.linalg.norm(start))
    cosine = end @ start / np.linalg.norm(end) / np.linalg.norm(start)
    assert variable["cosine_distance"] == pytest.approx(1 - cosine, rel=1e-6)
    assert variable["reference_distance"] == pytest.approx(np.linalg.norm(end - start))
    assert variable["movement_kind"] == "relative_change"
    assert variable["movement"] == variable["relative_change"]


def test_shift_is_w1_over_the_baseline_std(rng):
    start = rng.normal(size=1000)
    moved = start + 0.5
    [run] = judge.analyze_series([ours("a/w", [start, moved], reference=None)])
    variable = run["layers"][0]["variables"][0]
    assert variable["scale_basis"] == "baseline_std"
    assert variable["scale"] == pytest.approx(start.std())
    assert variable["distance_from_baseline"][1] == pytest.approx(0.5, rel=1e-9)
    assert variable["shift"] == pytest.approx(0.5 / start.std(), rel=1e-9)
    # Without a reference the shift is the movement.
    assert variable["movement_kind"] == "shift" and variable["relative_change"] is None


def test_zero_spread_falls_back_to_the_layers_kernel(rng):
    kernel = rng.normal(0, 0.5, (8, 8))
    bias = [np.zeros(8), np.full(8, 0.01)]
    [run] = judge.analyze_series(
        [ours("d/kernel", [kernel, kernel * 1.1]), ours("d/bias", bias)]
    )
    variables = by_variable(run["layers"][0])
    assert variables["bias"]["scale_basis"] == "layer_baseline_std"
    assert variables["bias"]["scale"] == pytest.approx(kernel.std())
    assert variables["bias"]["shift"] == pytest.approx(0.01 / kernel.std())
    # A lone zero-initialised vector: its own spread at the last step, then its RMS.
    [alone] = judge.analyze_series([ours("e/bias", [np.zeros(4), np.array([0.0, 0.0, 0.0, 1.0])])])
    assert alone["layers"][0]["variables"][0]["scale_basis"] == "last_std"
    [constant] = judge.analyze_series([ours("f/scale", [np.zeros(3), np.full(3, 2.0)])])
    variable = constant["layers"][0]["variables"][0]
    assert variable["scale_basis"] == "rms" and variable["shift"] == pytest.approx(1.0)
