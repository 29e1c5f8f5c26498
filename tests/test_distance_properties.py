"""Property tests of tb_weightdiff.distance on random histograms and quantiles.

The exact W1 (computed in p-space, over the quantile functions) is checked
against an independent x-space oracle (the integral of |F_a - F_b| over the
union of the edges), and everything must hold at any scale from 1e-30 to 1e30
without raising or returning NaN/Inf.
"""

import math
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from tb_weightdiff import distance
from tb_weightdiff import metadata

# ~200 examples keep each test to a second or two in CI; raise the count locally
# (TBWD_HYPOTHESIS_EXAMPLES=5000) for a deeper search.
SETTINGS = settings(
    max_examples=int(os.environ.get("TBWD_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

scales = st.integers(-30, 30).map(lambda exponent: 10.0**exponent)
counts = st.one_of(st.just(0.0), st.integers(1, 1000).map(float), st.floats(1e-3, 1e3))


@st.composite
def buckets(draw, scale=None, max_buckets=6):
    """A `[k, 3]` histogram: any order and overlap, zero widths and zero counts allowed."""
    scale = draw(scales) if scale is None else scale
    k = draw(st.integers(0, max_buckets))
    layout = draw(st.sampled_from(["free", "contiguous", "equal_edges"]))
    if layout == "contiguous":
        edges = sorted(draw(st.lists(st.floats(-100, 100), min_size=k + 1, max_size=k + 1)))
        rows = [(edges[i], edges[i + 1]) for i in range(k)]
    elif layout == "equal_edges":
        # What TensorBoard writes when every value is equal.
        value = draw(st.floats(-100, 100))
        rows = [(value, value)] * k
    else:
        rows = []
        for _ in range(k):
            left = draw(st.floats(-100, 100))
            width = draw(st.one_of(st.just(0.0), st.floats(0, 100)))
            rows.append((left, left + width))
    weights = [draw(counts) for _ in range(k)]
    return np.array([(l * scale, r * scale, c) for (l, r), c in zip(rows, weights)], dtype=np.float64).reshape(-1, 3)


@st.composite
def histogram_pairs(draw):
    scale = draw(scales)
    return draw(buckets(scale)), draw(buckets(scale)), scale


def oracle(a, b):
    """W1 in x-space: the integral of |F_a(x) - F_b(x)| over the union of all edges."""

    def parts(h):
        h = h[h[:, 2] > 0]
        total = h[:, 2].sum()
        return [(float(min(l, r)), float(max(l, r)), float(c / total)) for l, r, c in h]

    pa, pb = parts(a), parts(b)
    points = sorted({edge for part in (pa, pb) for low, high, _ in part for edge in (low, high)})

    def continuous(part, x):
        return sum(m * min(max((x - low) / (high - low), 0.0), 1.0) for low, high, m in part if high > low)

    def atoms(part, x):
        return sum(m for low, high, m in part if high == low and low <= x)

    total = 0.0
    for x0, x1 in zip(map(float, points), map(float, points[1:])):
        d0 = continuous(pa, x0) + atoms(pa, x0) - continuous(pb, x0) - atoms(pb, x0)
        d1 = continuous(pa, x1) + atoms(pa, x0) - continuous(pb, x1) - atoms(pb, x0)
        if d0 * d1 < 0:
            piece = (d0 * d0 + d1 * d1) / (2 * (abs(d0) + abs(d1)))
        else:
            piece = (abs(d0) + abs(d1)) / 2
        total += (x1 - x0) * piece
    return total


def defined(h):
    return h.shape[0] > 0 and h[:, 2].sum() > 0


@SETTINGS
@given(histogram_pairs())
def test_w1_is_exact_finite_and_symmetric(pair):
    a, b, scale = pair
    forward = distance.wasserstein_histograms(a, b)
    backward = distance.wasserstein_histograms(b, a)
    if not (defined(a) and defined(b)):
        assert forward is None and backward is None
        return
    assert forward is not None and math.isfinite(forward) and forward >= 0
    tolerance = 1e-9 * scale * 200
    assert abs(forward - backward) <= tolerance
    assert abs(forward - oracle(a, b)) <= tolerance + 1e-9 * forward
    assert distance.wasserstein_histograms(a, a) == 0.0


@SETTINGS
@given(histogram_pairs(), st.integers(-60, 60), st.randoms(use_true_random=False))
def test_w1_is_equivariant_and_ignores_bucket_order(pair, power, random):
    a, b, _ = pair
    if not (defined(a) and defined(b)):
        return
    w1 = distance.wasserstein_histograms(a, b)
    # Scaling by a power of two is exact in floating point, and so is the answer.
    factor = 2.0**power
    assert distance.wasserstein_histograms(a * [factor, factor, 1], b * [factor, factor, 1]) == w1 * factor
    shuffled = a[random.sample(range(len(a)), len(a))]
    # Summing the masses in another order rounds differently: ~1e-16 of the range.
    extent = float(np.max(np.abs(np.concatenate([a[:, :2], b[:, :2]]))))
    assert math.isclose(
        distance.wasserstein_histograms(shuffled, b), w1, rel_tol=1e-9, abs_tol=1e-12 * extent
    )


@SETTINGS
@given(st.data())
def test_w1_triangle_inequality(data):
    scale = data.draw(scales)
    a, b, c = (data.draw(buckets(scale)) for _ in range(3))
    if not all(defined(h) for h in (a, b, c)):
        return
    ab, bc, ac = (
        distance.wasserstein_histograms(a, b),
        distance.wasserstein_histograms(b, c),
        distance.wasserstein_histograms(a, c),
    )
    assert ac <= ab + bc + 1e-9 * scale * 200


@SETTINGS
@given(
    st.lists(
        st.tuples(st.floats(allow_nan=True, allow_infinity=True, width=64), st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True)),
        max_size=5,
    ),
    buckets(),
)
def test_w1_never_raises_on_anything(rows, other):
    # Backwards buckets, NaN, Inf, negative counts, 1e308 edges: None or a finite number.
    junk = np.array(rows, dtype=np.float64).reshape(-1, 3)
    for first, second in ((junk, other), (other, junk), (junk, junk)):
        result = distance.wasserstein_histograms(first, second)
        assert result is None or (math.isfinite(result) and result >= 0)


quantile_vectors = st.builds(
    lambda values, scale: np.sort(np.asarray(values)) * scale,
    st.lists(st.floats(-100, 100), min_size=len(metadata.QUANTILE_PROBABILITIES), max_size=len(metadata.QUANTILE_PROBABILITIES)),
    scales,
)


@SETTINGS
@given(quantile_vectors, quantile_vectors, st.floats(-1e3, 1e3))
def test_quantile_w1(qa, qb, offset):
    forward = distance.wasserstein_quantiles(qa, qb)
    assert forward is not None and math.isfinite(forward) and forward >= 0
    assert math.isclose(forward, distance.wasserstein_quantiles(qb, qa), rel_tol=1e-12, abs_tol=1e-300)
    assert distance.wasserstein_quantiles(qa, qa) == 0.0
    # Translating a distribution moves it by exactly that much.
    shifted = distance.wasserstein_quantiles(qa, qa + offset)
    assert math.isclose(shifted, abs(offset), rel_tol=1e-9, abs_tol=1e-9 * float(np.max(np.abs(qa), initial=0)))
    nan = qa.copy()
    nan[3] = np.nan
    assert distance.wasserstein_quantiles(nan, qb) is None
