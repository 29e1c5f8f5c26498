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


def _bits(values):
    return np.asarray(values, dtype=np.float64).view(np.int64)


def test_interp_rows_is_np_interp_bit_for_bit(rng):
    # Repeated knots (padding, touching buckets), values on knots, outside, NaN; scales of 1e-30 to 1e30.
    for _ in range(300):
        n, width, m = rng.integers(1, 5), rng.integers(2, 16), rng.integers(1, 12)
        x = np.sort(rng.standard_normal((n, width)) * 10.0 ** rng.uniform(-30, 30), axis=1)
        x[:, 1:][rng.random((n, width - 1)) < 0.3] = np.nan
        x = np.fmax.accumulate(np.where(np.isnan(x), -np.inf, x), axis=1)  # a NaN repeats the knot before
        f = np.sort(np.round(rng.random((n, width)), int(rng.integers(1, 4))), axis=1)
        values = np.concatenate([rng.choice(x.ravel(), (n, m)), rng.standard_normal((n, m)) * np.abs(x).max() * 1.5], 1)
        values[rng.random(values.shape) < 0.05] = np.nan
        if rng.random() < 0.2:
            # A jump over a subnormal gap: the slope overflows, and a value on the knot must still take f there.
            x[0, :2], f[0, :2], values[0, 0] = (0.0, 5e-324), (0.0, 1.0), 0.0
            x[0] = np.maximum.accumulate(x[0])
            f[0] = np.maximum.accumulate(f[0])
        expected = [np.interp(values[i], x[i], f[i], left=0.0, right=1.0) for i in range(n)]
        after = np.stack([np.searchsorted(x[i], values[i], side="right") for i in range(n)])
        np.testing.assert_array_equal(_bits(distance._interp_rows(values, x, f, 0.0, 1.0, after)), _bits(expected))
        np.testing.assert_array_equal(
            _bits(distance._at_own_knots(x, f)), _bits([np.interp(x[i], x[i], f[i]) for i in range(n)])
        )


def test_mean_abs_linear_computes_the_crossing_formula_only_where_it_crosses(rng):
    def both_formulas(d0, d1):  # what it computed before: both everywhere, then a choice
        total = np.abs(d0) + np.abs(d1)
        with np.errstate(all="ignore"):
            return np.where(d0 * d1 < 0, (d0 * d0 + d1 * d1) / (2 * total), total * 0.5)

    d = rng.standard_normal((40, 9, 30)) * 10.0 ** rng.integers(-160, 160, (40, 9, 1))
    d[rng.random(d.shape) < 0.1] = 0.0
    d[rng.random(d.shape) < 0.02] = np.nan
    x = np.cumsum(rng.random(d.shape), axis=-1)
    expected = both_formulas(d[..., :-1], d[..., 1:])
    np.testing.assert_array_equal(_bits(distance._mean_abs_linear(d[..., :-1], d[..., 1:])), _bits(expected))
    np.testing.assert_array_equal(
        _bits(distance._integral_abs_linear(x, d)), _bits(np.sum(np.diff(x, axis=-1) * expected, axis=-1))
    )


def _sorted_grid_residuals(tables, scales):
    """The rescale fits' residuals as first written: every grid sorted, B's CDF
    interpolated at every point. (The reference `_histogram_residuals` must equal.)"""
    x_a, f_a, x_b, f_b, _ = tables
    width = x_b.shape[1]
    grid = np.empty(scales.shape + (width + 2,))
    grid[:, :, :width] = x_b[:, None, :]
    grid[:, :, width:] = x_a[:, None, [0, -1]] * scales[:, :, None]
    grid.sort(axis=2)
    unscaled = grid / scales[:, :, None]
    difference = np.empty_like(grid)
    for pair in range(grid.shape[0]):
        difference[pair] = np.interp(grid[pair], x_b[pair], f_b[pair], left=0.0, right=1.0)
        difference[pair] -= np.interp(unscaled[pair], x_a[pair], f_a[pair], left=0.0, right=1.0)
    total = np.abs(difference[:, :, :-1]) + np.abs(difference[:, :, 1:])
    product = difference[:, :, :-1] * difference[:, :, 1:]
    with np.errstate(all="ignore"):
        squares = (difference[:, :, :-1] ** 2 + difference[:, :, 1:] ** 2) / (2 * total)
    return np.sum(np.diff(grid, axis=2) * np.where(product < 0, squares, total * 0.5), axis=2)


def test_rescale_fits_equal_the_sorted_grid_they_replace(rng, monkeypatch):
    # Steps with their own min-to-max edges, fixed edges (torch), touching and
    # padded buckets, point masses, decay, drift and noise; both sides of B's range.
    arrays = []
    for _ in range(60):
        values = rng.standard_normal(400) * rng.uniform(0.01, 3)
        # (Halving is exact: the middle scale of the first grid puts A's extremes on B's end knots.)
        changes = (values * rng.uniform(0.7, 1.1), values + rng.normal(0.2, 0.3, values.size), values * 0.9 + 0.01, values * 0.5)
        for change in changes:
            for step in (values, change):
                if rng.random() < 0.3:
                    edges = np.linspace(-4, 4, 25)
                elif rng.random() < 0.1:
                    step = np.round(step)  # a few point masses
                    edges = np.linspace(step.min(), step.max(), 13)
                else:
                    edges = np.linspace(step.min(), step.max(), int(rng.integers(5, 31)))
                arrays.append(distance.as_histogram_array(sample_histogram(step, edges)))
    found = distance.histogram_distributions(arrays)
    requests = [(found, i, i + 1, None) for i in range(0, len(arrays), 2)]
    got = distance.rescale_fits(requests)
    monkeypatch.setattr(distance, "_histogram_residuals", _sorted_grid_residuals)
    expected = distance.rescale_fits(requests)
    assert sum(r is not None for r, _ in got) > 200
    assert got == expected
    # Extremes of A that land exactly on B's knots (repeated ones too), at scales 1/2, 1 and 2.
    rows = len(arrays)
    x, f = distance._cdf_tables(found.left, found.right, found.cumulative, np.zeros(rows, np.int64))
    x_a, x_b = x[0::2].copy(), x[1::2]
    pairs, width = x_b.shape
    inner = rng.integers(1, width // 2, pairs), rng.integers(width // 2, width - 1, pairs)
    x_a[:, 0], x_a[:, -1] = x_b[np.arange(pairs), inner[0]] * 2, x_b[np.arange(pairs), inner[1]] * 2
    x_a.sort(axis=1)
    tables = distance._histogram_tables(np.stack([x_a, x_b], 1).reshape(rows, width), f)
    scales = np.array([[0.5, 1.0, 2.0, 0.37]] * pairs)
    np.testing.assert_array_equal(
        _bits(distance._histogram_residuals(tables, scales)), _bits(_sorted_grid_residuals(tables, scales))
    )


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
