"""tb_weightdiff.distance: exact Wasserstein-1 between histograms and between quantile functions."""

import math

import numpy as np
import pytest
from scipy import stats

from tb_weightdiff import distance
from tb_weightdiff import metadata
from tb_weightdiff import summary
from series import histogram

PROBABILITIES = np.asarray(metadata.QUANTILE_PROBABILITIES)


def sample_histogram(values, edges):
    counts, edges = np.histogram(values, bins=edges)
    return np.stack([edges[:-1], edges[1:], counts], axis=1).astype(np.float64)


# -- Wasserstein-1: exact cases -------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # Two point masses: the distance between them.
        (histogram([0, 0, 1]), histogram([3, 3, 5]), 3.0),
        # A uniform bucket and the same shifted by a quarter.
        (histogram([0, 1, 1]), histogram([0.25, 1.25, 1]), 0.25),
        # The same uniform mass over different edges: identical distributions.
        (histogram([0, 2, 2]), histogram([0, 1, 1], [1, 2, 1]), 0.0),
        (histogram([0, 1, 3], [1, 3, 6]), histogram([0, 0.5, 3], [0.5, 1, 3], [1, 2, 6], [2, 3, 6]), 0.0),
        # Uniform on [0, 1] against a point mass at 1/2: E|U - 1/2| = 1/4.
        (histogram([0, 1, 1]), histogram([0.5, 0.5, 7]), 0.25),
        # Uniform on [0, 2] against a point mass at 1: the CDF difference changes sign at 1.
        (histogram([0, 2, 1]), histogram([1, 1, 1]), 0.5),
        # U[0, 1] against U[0.2, 0.8]: the difference changes sign inside [0.2, 0.8].
        (histogram([0, 1, 1]), histogram([0.2, 0.8, 1]), 0.1),
        # A gap between buckets: half the mass at [0, 1], half at [3, 4], against U[0, 4].
        (histogram([0, 1, 1], [1, 3, 0], [3, 4, 1]), histogram([0, 4, 2]), 0.5),
        # Counts are relative: scaling them changes nothing.
        (histogram([0, 1, 10], [1, 2, 30]), histogram([0, 1, 1], [1, 2, 3]), 0.0),
    ],
)
def test_exact_cases(a, b, expected):
    assert distance.wasserstein_histograms(a, b) == pytest.approx(expected, abs=1e-12)
    assert distance.wasserstein_histograms(b, a) == pytest.approx(expected, abs=1e-12)


def test_point_masses_match_scipy_exactly(rng):
    # Zero-width buckets are point masses, which scipy's weighted W1 handles exactly.
    for _ in range(20):
        u, v = rng.normal(size=7), rng.normal(1, 2, size=4)
        wu, wv = rng.integers(1, 9, size=7).astype(float), rng.integers(1, 9, size=4).astype(float)
        expected = stats.wasserstein_distance(u, v, wu, wv)
        got = distance.wasserstein_histograms(
            np.stack([u, u, wu], axis=1), np.stack([v, v, wv], axis=1)
        )
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_histograms_of_samples_approach_scipy(rng):
    x = rng.standard_normal(50_000)
    y = 1.3 * rng.standard_normal(50_000) + 0.4
    expected = stats.wasserstein_distance(x, y)
    # Different edges for the two histograms, as Keras writes them (min..max each step).
    got = distance.wasserstein_histograms(
        sample_histogram(x, np.linspace(x.min(), x.max(), 401)),
        sample_histogram(y, np.linspace(y.min(), y.max(), 257)),
    )
    assert got == pytest.approx(expected, rel=5e-3)
    # TensorBoard's 30 buckets are coarser, but still close.
    coarse = distance.wasserstein_histograms(
        sample_histogram(x, np.linspace(x.min(), x.max(), 31)),
        sample_histogram(y, np.linspace(y.min(), y.max(), 31)),
    )
    assert coarse == pytest.approx(expected, rel=0.05)


def test_quantiles_of_samples_approach_scipy(rng):
    x = rng.standard_normal(50_000)
    y = rng.uniform(-1, 2, 50_000)
    expected = stats.wasserstein_distance(x, y)
    got = distance.wasserstein_quantiles(np.quantile(x, PROBABILITIES), np.quantile(y, PROBABILITIES))
    assert got == pytest.approx(expected, rel=0.05)
    # Our summaries' own quantiles give the same number.
    ours_x = metadata.decode(summary.weight_statistics(x))
    ours_y = metadata.decode(summary.weight_statistics(y))
    assert distance.wasserstein_quantiles(ours_x.quantiles, ours_y.quantiles) == pytest.approx(got, rel=1e-12)


def test_quantiles_exact_for_uniform_distributions():
    # Quantile functions linear in p: U[0, 1] vs U[0.2, 0.8] crosses at p = 1/2.
    assert distance.wasserstein_quantiles(PROBABILITIES, 0.2 + 0.6 * PROBABILITIES) == pytest.approx(0.1, abs=1e-15)
    assert distance.wasserstein_quantiles(PROBABILITIES, PROBABILITIES + 3) == pytest.approx(3.0)
    # A coarse grid whose sign change falls inside a piece.
    grid = [0.0, 0.3, 1.0]
    assert distance.wasserstein_quantiles([0, 0.3, 1], [0.2, 0.38, 0.8], grid) == pytest.approx(0.1, abs=1e-15)


def test_quantile_and_histogram_routes_agree_on_uniform_buckets():
    a = histogram([-1, 0, 2], [0, 3, 2])
    b = histogram([1, 2, 1], [2, 2, 1], [2, 5, 2])
    # Quantiles of the same piecewise-uniform distributions, on a grid holding every kink.
    grid = np.unique(np.concatenate([PROBABILITIES, [0.5, 0.25, 0.75]]))

    def quantile_function(h, p):
        cumulative = np.concatenate([[0], np.cumsum(h[:, 2]) / h[:, 2].sum()])
        index = np.clip(np.searchsorted(cumulative, p, side="right") - 1, 0, len(h) - 1)
        mass = np.diff(cumulative)[index]
        fraction = np.where(mass > 0, (p - cumulative[index]) / np.where(mass > 0, mass, 1), 0)
        return h[index, 0] + (h[index, 1] - h[index, 0]) * np.clip(fraction, 0, 1)

    # Evaluate just inside each piece so jumps do not blur.
    quantile_a = quantile_function(a, np.clip(grid, 1e-15, 1 - 1e-15))
    quantile_b = quantile_function(b, np.clip(grid, 1e-15, 1 - 1e-15))
    assert distance.wasserstein_quantiles(quantile_a, quantile_b, grid) == pytest.approx(
        distance.wasserstein_histograms(a, b), rel=1e-9
    )


@pytest.mark.parametrize(
    "bad",
    [
        histogram([0, 1, 0]),  # empty
        np.zeros((0, 3)),  # no buckets
        histogram([np.nan, np.nan, 0], [np.nan, np.nan, 0]),  # TensorBoard's histogram of NaNs
        histogram([0, np.inf, 3]),
        histogram([0, 1, -1], [1, 2, 3]),  # a negative count
    ],
)
def test_undefined_distances_are_none(bad):
    assert distance.wasserstein_histograms(bad, histogram([0, 1, 1])) is None
    assert distance.wasserstein_histograms(histogram([0, 1, 1]), bad) is None


def test_extreme_scales_neither_overflow_nor_underflow():
    a, b = histogram([0, 1, 1]), histogram([0.25, 1.25, 1])
    for scale in (2.0**-1000, 1e-300, 1e-30, 1e30, 1e300):
        scaled = lambda h: h * [scale, scale, 1]  # noqa: E731
        assert distance.wasserstein_histograms(scaled(a), scaled(b)) == pytest.approx(0.25 * scale, rel=1e-12)
    # Edges near the float64 limit: the width itself would overflow, the answer does not.
    huge = histogram([-1.5e308, 1.5e308, 1])
    assert distance.wasserstein_histograms(huge, histogram([0, 0, 1])) == pytest.approx(0.75e308, rel=1e-12)
    # A distance beyond float64 is None, not inf.
    assert distance.wasserstein_histograms(histogram([-1.7e308, -1.7e308, 1]), histogram([1.7e308, 1.7e308, 1])) is None


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[k, 3\]"):
        distance.wasserstein_histograms(np.zeros((3, 2)), histogram([0, 1, 1]))
    with pytest.raises(ValueError, match="probabilities"):
        distance.wasserstein_quantiles([0, 1], [0, 1], [0.5, 0.2])
    with pytest.raises(ValueError):
        distance.wasserstein_quantiles([0, 1, 2], [0, 1], [0, 0.5, 1])


def test_histogram_moments_treat_buckets_as_uniform():
    mean, std = distance.histogram_moments(histogram([0, 1, 1]))
    assert mean == pytest.approx(0.5) and std == pytest.approx(math.sqrt(1 / 12))
    assert distance.histogram_moments(histogram([0, 1, 0])) == (None, None)


def test_a_pure_rescaling_is_explained_exactly_and_diffusion_is_not(rng):
    values = rng.uniform(-1, 1, 5000)
    decayed = values * 0.97
    diffused = values + 0.05 * rng.standard_normal(values.size)
    hist = lambda x: sample_histogram(x, np.linspace(x.min(), x.max(), 31))  # noqa: E731, TensorBoard's min-to-max buckets
    found = distance.histogram_distributions([distance.as_histogram_array(hist(x)) for x in (values, decayed, diffused)])
    residual, scale = distance.rescale_fit(found, 0, 1)
    assert residual < 1e-9 and scale == pytest.approx(0.97, rel=1e-9)
    residual, _ = distance.rescale_fit(found, 0, 2)
    assert residual > 0.5
    # From quantiles (our summaries without a reference), the same.
    quantiles = np.stack([np.quantile(x, PROBABILITIES) for x in (values, decayed, diffused)])
    rms = [float(np.sqrt(np.mean(x * x))) for x in (values, decayed, diffused)]
    found = distance.quantile_distributions(quantiles, [float(x.std()) for x in (values, decayed, diffused)], rms)
    residual, scale = distance.rescale_fit(found, 0, 1)
    assert residual < 1e-9 and scale == pytest.approx(0.97, rel=1e-9)
    assert distance.rescale_fit(found, 0, 2)[0] > 0.5
    assert distance.rescale_fit(found, 0, 0) == (None, None)  # no change: nothing to explain
