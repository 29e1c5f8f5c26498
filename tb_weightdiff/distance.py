"""Wasserstein-1 distances between weight distributions, exact for what is stored.

The distance mathematics and nothing else: no scores, no verdicts, no I/O.
Two kinds of distributions are compared:

- TensorBoard's `[k, 3]` histograms (left edge, right edge, count), each
  bucket holding its mass uniformly, so the CDF is piecewise linear and the
  edges may differ between the two (`wasserstein_histograms`);
- quantile functions on one probability grid, piecewise linear in p
  (`wasserstein_quantiles`; our summaries store 65 quantiles).

Either way W1 = integral over p of |Q_a(p) - Q_b(p)|, integrated exactly
piece by piece, including where the difference changes sign inside a piece.
Values are handled divided by a power of two per distribution, so any scale
from 1e-300 to 1e300 computes without overflow. `Distributions` holds the
logged steps of one variable (or a batch of variables) ready for pairwise
distances, which run in chunks on a small thread pool (numpy releases the
GIL inside each operation).
"""

import concurrent.futures
import dataclasses
import hashlib
import math
import os
import threading

import numpy as np

from tb_weightdiff import metadata

# Step pairs per numpy pass when computing W1 distances (see `Distributions.pairs`).
_PAIR_CHUNK = 512
_WORKERS = min(4, os.cpu_count() or 1)
_EXECUTOR = []
_EXECUTOR_LOCK = threading.Lock()


def _executor():
    """A small thread pool for numpy work, started on first use."""
    with _EXECUTOR_LOCK:
        if not _EXECUTOR:
            _EXECUTOR.append(
                concurrent.futures.ThreadPoolExecutor(_WORKERS, thread_name_prefix="tb_weightdiff")
            )
        return _EXECUTOR[0]


_PROBABILITIES = np.asarray(metadata.QUANTILE_PROBABILITIES, dtype=np.float64)


def _mean_abs_linear(d0, d1, ends=None):
    """Mean of |d| over a segment on which d is linear from d0 to d1 (elementwise).

    When d changes sign inside the segment the two triangles are integrated
    separately: (d0^2 + d1^2) / (2 (|d0| + |d1|)). Between two steps of a
    training run, or a step and a rescaled one, d changes sign in about one
    segment in twelve: that formula is computed on those segments only
    (both formulas everywhere and a choice cost a third more).

    `ends(segments)`: d0 and d1 at those flat indices of the result, when
    the caller can gather them without copying non-contiguous views.
    """
    total = np.abs(d0)
    total += np.abs(d1)
    # Strictly opposite signs (a zero or a NaN never crosses). (A product
    # that underflows to 0 is taken as no crossing: both ends are then below
    # 1e-154, and so is the difference between the two formulas.)
    with np.errstate(over="ignore", under="ignore"):
        crossing = np.multiply(d0, d1)
    segments = np.flatnonzero(crossing < 0)
    mean = np.multiply(total, 0.5, out=crossing)
    if segments.size:
        low, high = ends(segments) if ends is not None else (np.ravel(d0)[segments], np.ravel(d1)[segments])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            squares = low * low
            squares += high * high
            squares /= 2 * total.reshape(-1)[segments]
        mean.reshape(-1)[segments] = squares
    return mean


def _exponent_of(peak):
    """The power of two `e` with |x| <= 2**e for all x whose maximum is `peak` (0 -> 0)."""
    peak = np.asarray(peak, dtype=np.float64)
    exponent = np.frexp(np.where(np.isfinite(peak) & (peak > 0), peak, 1.0))[1]
    return np.where(peak > 0, exponent, 0).astype(np.int64)


def ldexp(mantissa, exponent):
    """`mantissa * 2**exponent`, with overflow to inf and no warning."""
    exponent = np.asarray(exponent)
    if exponent.dtype != np.int64:
        exponent = exponent.astype(np.int64)
    if not exponent.any():
        return np.asarray(mantissa, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        if -1022 <= exponent.min() and exponent.max() <= 1023:
            # A product with a normal power of two rounds exactly as ldexp
            # does, and numpy vectorises the product (not its ldexp loop).
            return np.multiply(mantissa, np.ldexp(1.0, exponent))
        return np.ldexp(mantissa, exponent)


@dataclasses.dataclass
class Distributions:
    """The logged steps of one variable as distributions, ready for pairwise W1.

    Values are stored divided by a power of two per step (`exponent`), so that
    any scale from 1e-300 to 1e300 computes without overflow.
    """

    kind: str  # "histogram" or "quantiles"
    valid: np.ndarray  # [n] bool: a finite, non-empty distribution
    exponent: np.ndarray  # [n] int
    std: np.ndarray  # [n] float, real units (nan when not valid)
    rms: np.ndarray  # [n] float, real units
    # histogram: as logged (padded to [n, K, 3]) with each step's bucket count,
    # and left, right [n, K] and cumulative mass [n, K + 1], normalized
    raw: np.ndarray = None
    rows: np.ndarray = None
    left: np.ndarray = None
    right: np.ndarray = None
    cumulative: np.ndarray = None
    # quantiles: [n, Q] normalized, and the probabilities [Q]
    quantiles: np.ndarray = None
    probabilities: np.ndarray = None
    # Steps of several variables are computed as one batch (`rows` slices it):
    # the batch these rows belong to (None: their own) and where they start in it.
    batch: "Distributions" = None
    offset: int = 0
    _tables: tuple = dataclasses.field(default=None, init=False, repr=False)  # _piece_tables, on first use
    _logged: tuple = dataclasses.field(default=None, init=False, repr=False)  # logged_row_stats, on first use

    _ROW_FIELDS = ("valid", "exponent", "std", "rms", "raw", "rows", "left", "right", "cumulative", "quantiles")

    def take_rows(self, start, count):
        """Steps `[start, start + count)` as their own `Distributions` (views, no copies)."""
        part = slice(start, start + count)
        # A shallow copy with its row fields sliced: what dataclasses.replace
        # gives, at a fifth of its cost (a batch of 2,000 series takes 2,000).
        taken = object.__new__(Distributions)
        taken.__dict__.update(self.__dict__)
        for name in self._ROW_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(taken, name, value[part])
        taken.batch, taken.offset = self.batch or self, self.offset + start
        taken._tables = taken._logged = None
        return taken

    def logged_row_stats(self):
        """Histograms only: `(totals, nonfinite)` per step of the buckets as logged
        (`raw`), the sum of the counts (NaN or inf as they come) and whether
        any number of the step is not finite. Computed once per batch."""
        root = self.batch or self
        if root._logged is None:
            with np.errstate(invalid="ignore", over="ignore"):
                totals = np.sum(root.raw[:, :, 2], axis=1)
            root._logged = (totals, ~np.all(np.isfinite(root.raw), axis=(1, 2)))
        part = slice(self.offset, self.offset + self.valid.shape[0]) if self.batch is not None else slice(None)
        return tuple(values[part] for values in root._logged)

    def row_digests(self, rows=None):
        """`[n, 2]` uint64: a 128-bit digest (BLAKE2b) of each step's row of
        everything `pairs` reads (the normalized buckets or quantiles, the
        power of two, validity), padding and width included. Equal digests:
        equal W1 with any other step. (One hash call per row, ~2 us: half
        the cost of mixing the words with numpy.) `rows`: only those steps'."""
        if self.kind == "quantiles":
            fields = [self.quantiles]
        else:
            fields = [self.left, self.right, self.cumulative]
        fields += [self.exponent.astype(np.int64), self.valid.astype(np.uint64)]
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            fields = [field[rows] for field in fields]
        n = fields[-1].shape[0]
        if n == 0:
            return np.zeros((0, 2), dtype=np.uint64)
        words = np.concatenate(
            [np.ascontiguousarray(field).reshape(n, -1).view(np.uint64) for field in fields], axis=1
        )
        size = words.shape[1] * words.itemsize
        buffer = memoryview(words).cast("B")
        digests = b"".join(
            [hashlib.blake2b(buffer[start : start + size], digest_size=16).digest()
             for start in range(0, n * size, size)]
        )
        return np.frombuffer(digests, dtype=np.uint64).reshape(n, 2)

    def pairs(self, first, second):
        """W1 between steps `first[i]` and `second[i]`, as `(mantissa, exponent)` arrays.

        Both steps of every pair must be valid. W1 = mantissa * 2**exponent.
        """
        first = np.asarray(first, dtype=np.int64)
        second = np.asarray(second, dtype=np.int64)
        exponent = np.maximum(self.exponent[first], self.exponent[second])
        mantissa = np.empty(first.size)
        if self.kind != "quantiles" and self._tables is None:
            self._tables = _piece_tables(self.left, self.right, self.cumulative)

        # Row by row the same numbers; in chunks, so that a batch of many
        # variables amortises numpy's per-call cost while its temporaries
        # still fit in cache. numpy releases the GIL inside each operation,
        # so the chunks run on every core.
        def chunk(start):
            part = slice(start, start + _PAIR_CHUNK)
            mantissa[part] = self._pair_mantissas(first[part], second[part], exponent[part])

        starts = range(0, first.size, _PAIR_CHUNK)
        if len(starts) > 1 and _WORKERS > 1:
            list(_executor().map(chunk, starts))
        else:
            for start in starts:
                chunk(start)
        return mantissa, exponent

    def _pair_mantissas(self, first, second, exponent):
        shift_a = (self.exponent[first] - exponent)[:, None]
        shift_b = (self.exponent[second] - exponent)[:, None]
        if self.kind == "quantiles":
            difference = ldexp(self.quantiles[first], shift_a) - ldexp(
                self.quantiles[second], shift_b
            )
            weights = np.diff(self.probabilities)
            return np.sum(
                weights * _mean_abs_linear(difference[:, :-1], difference[:, 1:]), axis=1
            )
        # The pieces of each logged step are tabulated once, not once per pair.
        if self._tables is None:
            self._tables = _piece_tables(self.left, self.right, self.cumulative)
        return _w1_between(
            self.cumulative[first], self._tables, first, shift_a,
            self.cumulative[second], self._tables, second, shift_b,
        )


def _piece_tables(left, right, cumulative):
    """Per bucket of canonical histograms (rows of `[n, K]`): the quantile
    function's pieces as `(left, width, base, mass)`, each `[n, K + 1]`.

    Bucket i holds `mass = cum[i + 1] - cum[i]` from `left` to `right`
    (`width` apart), starting at probability `base = cum[i]`; `mass` is
    +inf where it is 0, so that a point mass's fraction is 0 without a mask.
    Column K is an empty piece at 0 (`_w1_between` reads it, or the previous
    row's, only for segments of zero length).
    """
    n, k = left.shape
    # Contiguous: pairs gather from them through flat indices.
    tables = np.zeros((4, n, k + 1))
    np.subtract(right, left, out=tables[1, :, :k])
    tables[0, :, :k] = left
    tables[2, :, :k] = cumulative[:, :-1]
    mass = tables[3]
    np.subtract(cumulative[:, 1:], cumulative[:, :-1], out=mass[:, :k])
    mass[~(mass > 0)] = np.inf
    return tuple(tables)


def _w1_between(cum_a, tables_a, rows_a, shift_a, cum_b, tables_b, rows_b, shift_b):
    """W1 between pairs of canonical histograms, in p-space, given as rows of piece tables.

    A canonical histogram has sorted, non-overlapping buckets with uniform
    mass; its quantile function is linear from `left` to `right` over the
    bucket's probability interval `[cum[i], cum[i + 1]]` (flat for a point
    mass, jumping over gaps). W1 = integral over p in [0, 1] of
    |Q_a(p) - Q_b(p)|: on each interval between the union of both cumulative
    grids both functions are linear, so the integral is exact.

    Pair i compares row `rows_a[i]` of `tables_a` with row `rows_b[i]` of
    `tables_b` (`_piece_tables`), whose edges are scaled by `2**shift_a[i]`
    and `2**shift_b[i]` to a common power of two; `cum_a`, `cum_b` are those
    rows' cumulative masses. Tables computed once per logged step serve
    every pair the step is part of.
    """
    n = cum_a.shape[0]
    points_a = cum_a.shape[1]
    grid = np.concatenate([cum_a, cum_b], axis=1)
    size = grid.shape[1]
    # Stable: at equal p, a's points come first, which the index bookkeeping needs.
    order = np.argsort(grid, axis=1, kind="stable")
    # Gathers go through one flat index (numpy's 2-D fancy indexing costs
    # ~10x as much per element), and each merged point's bucket follows from
    # its own index: after position m that holds a's point i, a's points so
    # far are i + 1 and b's m - i (likewise for b's point j), so no running
    # count is needed.
    points = np.take(grid.ravel(), (order + (np.arange(n) * size)[:, None]).ravel()).reshape(n, size)
    # Segments start at every merged point but the last. A bucket index of
    # -1 or K (before a side's first point or after its last) occurs only on
    # a segment of zero length (both sides' points are 0 first and 1 last,
    # and at equal p a's come first), where it reads the empty piece at
    # column K of this row or the one before: a finite value times length 0.
    starts = order[:, :-1]
    from_a = starts < points_a
    position = np.arange(size - 1)
    bucket_a = np.where(from_a, starts, (position + points_a - 1) - starts)
    bucket_b = np.where(from_a, (position - 1) - starts, starts - points_a)
    start, end = points[:, :-1], points[:, 1:]
    shape = start.shape

    def linear_pieces(tables, rows, shift, bucket):
        left, width, base, mass = tables
        flat = (bucket + (rows * left.shape[1])[:, None]).ravel()

        def gather(table):
            return np.take(table.ravel(), flat).reshape(shape)

        low, width = gather(left), gather(width)
        if shift.any():
            # Pairs whose steps differ in power of two: this step's edges are
            # scaled to their common one (exact: a product with a power of two).
            low, width = ldexp(low, shift), ldexp(width, shift)
        base, mass = gather(base), gather(mass)

        def at(p):
            fraction = p - base
            fraction /= mass
            np.clip(fraction, 0.0, 1.0, out=fraction)
            fraction *= width
            fraction += low
            return fraction

        return at

    quantile_a = linear_pieces(tables_a, rows_a, shift_a, bucket_a)
    quantile_b = linear_pieces(tables_b, rows_b, shift_b, bucket_b)
    d_start = quantile_a(start) - quantile_b(start)
    d_end = quantile_a(end) - quantile_b(end)
    return np.sum((end - start) * _mean_abs_linear(d_start, d_end), axis=1)


def _canonical_buckets(left, right, counts):
    """Any buckets (unsorted, overlapping) as sorted, non-overlapping ones, same CDF.

    Each bucket's mass is spread uniformly over the pieces between all edges it
    covers; zero-width buckets stay point masses. Histograms that TensorBoard
    writes today never need this (their buckets are contiguous and ascending);
    it keeps the scores exact for anything else.
    """
    left, right = np.minimum(left, right), np.maximum(left, right)
    keep = counts > 0
    left, right, counts = left[keep], right[keep], counts[keep]
    points = np.unique(np.concatenate([left, right]))
    piece_mass = np.zeros(max(points.size - 1, 0))
    point_mass = np.zeros(points.size)
    lengths = np.diff(points)
    for low, high, count in zip(left, right, counts):
        first = np.searchsorted(points, low)
        if high > low:
            last = np.searchsorted(points, high)
            piece_mass[first:last] += count * (lengths[first:last] / (high - low))
        else:
            point_mass[first] += count
    rows = []
    for index, location in enumerate(points):
        if point_mass[index] > 0:
            rows.append((location, location, point_mass[index]))
        if index < piece_mass.size and piece_mass[index] > 0:
            rows.append((location, points[index + 1], piece_mass[index]))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _clip_legacy_layout(stacked, rows, finite):
    """Reads TensorBoard's conversion of legacy `HistogramProto`s the same from both loaders.

    A legacy `HistogramProto` (torch's `add_histogram`, TF1's histogram op)
    has outer bucket limits up to +-DBL_MAX. TensorBoard converts it with the
    data's min as the first bucket's left edge and its max as the last
    bucket's right edge. The Python loader first drops empty outer buckets;
    the Rust data server keeps them, and they then run backwards (left >
    right) or reach DBL_MAX. A first or last bucket running backwards marks
    that layout: every edge is clipped to [first left, last right], which is
    the Python loader's form, so both loaders score the same.
    """
    n = stacked.shape[0]
    if n == 0 or stacked.shape[1] == 0:
        return stacked
    last = stacked[np.arange(n), np.maximum(rows - 1, 0)]
    first = stacked[:, 0]
    with np.errstate(invalid="ignore"):
        legacy = (
            finite
            & (rows > 0)
            & ((first[:, 0] > first[:, 1]) | (last[:, 0] > last[:, 1]))
            & (first[:, 0] <= last[:, 1])
        )
    if not legacy.any():
        return stacked
    stacked = stacked.copy()
    low, high = first[legacy, 0][:, None], last[legacy, 1][:, None]
    stacked[legacy, :, 0] = np.clip(stacked[legacy, :, 0], low, high)
    stacked[legacy, :, 1] = np.clip(stacked[legacy, :, 1], low, high)
    return stacked


def as_histogram_array(values):
    """`values` as a float64 `[k, 3]` array; raises ValueError for any other shape."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError("a histogram must have shape [k, 3], got %s" % (array.shape,))
    return array


def histogram_distributions(arrays):
    """`Distributions` of float64 `[k, 3]` arrays (one per step), as `as_histogram_array`
    gives them, or of one float64 `[steps, k, 3]` array."""
    n = len(arrays)
    if isinstance(arrays, np.ndarray) and arrays.ndim == 3 and arrays.shape[1] > 0:
        # One array already: every step has its width.
        width = arrays.shape[1]
        rows = np.full(n, width, dtype=np.int64)
        stacked = raw = arrays
    else:
        shapes = [a.shape[0] for a in arrays]
        width = max(shapes + [1])
        rows = np.array(shapes, dtype=np.int64)
        if n and np.all(rows == width):
            stacked = np.concatenate(arrays).reshape(n, width, 3)
            raw = stacked
        else:
            stacked = np.zeros((n, width, 3))
            for index, array in enumerate(arrays):
                k = array.shape[0]
                stacked[index, :k] = array
                if 0 < k < width:
                    # Padding: empty point buckets at the last edge change nothing.
                    stacked[index, k:, :2] = array[-1, 1]
            raw = stacked.copy()
    finite = np.all(np.isfinite(stacked), axis=(1, 2))
    stacked = _clip_legacy_layout(stacked, rows, finite)
    with np.errstate(invalid="ignore", over="ignore"):
        counts = np.where(finite[:, None], stacked[:, :, 2], 0.0)
        nonnegative = np.all(counts >= 0, axis=1)
        total = np.sum(counts, axis=1)
        valid = finite & nonnegative & (total > 0) & np.isfinite(total)
        # (A copy either way: the rebuilding below writes into the edges.)
        edges = stacked[:, :, :2].copy() if valid.all() else np.where(valid[:, None, None], stacked[:, :, :2], 0.0)
        exponent = _exponent_of(np.max(np.abs(edges), axis=(1, 2)))
    edges = ldexp(edges, -exponent[:, None, None])
    left, right = edges[:, :, 0], edges[:, :, 1]
    with np.errstate(invalid="ignore"):
        canonical = np.all(left <= right, axis=1) & np.all(right[:, :-1] <= left[:, 1:], axis=1)
    slow = np.flatnonzero(valid & ~canonical)
    if slow.size:
        rebuilt = {
            int(i): _canonical_buckets(left[i, : rows[i]], right[i, : rows[i]], counts[i, : rows[i]])
            for i in slow
        }
        width = max([width] + [r.shape[0] for r in rebuilt.values()])
        pad = width - left.shape[1]
        if pad:
            left = np.concatenate([left, np.repeat(right[:, -1:], pad, axis=1)], axis=1)
            right = np.concatenate([right, np.repeat(right[:, -1:], pad, axis=1)], axis=1)
            counts = np.concatenate([counts, np.zeros((n, pad))], axis=1)
        for index, buckets in rebuilt.items():
            k = buckets.shape[0]
            left[index, :k], right[index, :k], counts[index, :k] = buckets.T
            left[index, k:] = right[index, k:] = buckets[-1, 1]
            counts[index, k:] = 0.0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cumulative = np.cumsum(counts, axis=1) / np.where(valid, total, 1.0)[:, None]
    cumulative = np.minimum(np.concatenate([np.zeros((n, 1)), cumulative], axis=1), 1.0)
    cumulative[:, -1] = 1.0
    # Steps that are not valid (NaN, negative counts) are never scored; their
    # arithmetic below may warn and is discarded.
    cumulative[~valid] = np.linspace(0.0, 1.0, cumulative.shape[1])
    with np.errstate(all="ignore"):
        mass = np.diff(cumulative, axis=1)
        centre, spread = (left + right) / 2, right - left
        mean = np.sum(mass * centre, axis=1)
        variance = np.sum(mass * ((centre - mean[:, None]) ** 2 + spread**2 / 12), axis=1)
        mean_square = np.sum(mass * (centre**2 + spread**2 / 12), axis=1)
        std = np.where(valid, ldexp(np.sqrt(np.maximum(variance, 0)), exponent), np.nan)
        rms = np.where(valid, ldexp(np.sqrt(mean_square), exponent), np.nan)
    return Distributions(
        kind="histogram",
        raw=raw,
        rows=rows,
        valid=valid,
        exponent=exponent,
        std=std,
        rms=rms,
        left=left,
        right=right,
        cumulative=cumulative,
    )


def quantile_distributions(quantiles, std, rms, probabilities=_PROBABILITIES):
    """`Distributions` for quantile vectors (one per step) aligned with `probabilities`."""
    quantiles = np.asarray(quantiles, dtype=np.float64)
    if quantiles.ndim != 2 or quantiles.shape[1] != probabilities.size:
        raise ValueError(
            "quantiles must have shape [steps, %d], got %s" % (probabilities.size, quantiles.shape)
        )
    valid = np.all(np.isfinite(quantiles), axis=1)
    clean = np.where(valid[:, None], quantiles, 0.0)
    exponent = _exponent_of(np.max(np.abs(clean), axis=1) if clean.size else np.zeros(len(clean)))
    return Distributions(
        kind="quantiles",
        valid=valid,
        exponent=exponent,
        std=np.where(valid, np.asarray(std, dtype=np.float64), np.nan),
        rms=np.where(valid, np.asarray(rms, dtype=np.float64), np.nan),
        quantiles=ldexp(clean, -exponent[:, None]),
        probabilities=probabilities,
    )


def _single_w1(distributions):
    if not distributions.valid.all():
        return None
    mantissa, exponent = distributions.pairs([0], [1])
    value = float(ldexp(mantissa, exponent)[0])
    return value if math.isfinite(value) else None


def wasserstein_histograms(a, b):
    """Exact Wasserstein-1 distance between two `[k, 3]` histograms.

    Each bucket `(left, right, count)` holds its mass uniformly (a zero-width
    bucket is a point mass), so both CDFs are piecewise linear; the edges of
    the two histograms may differ. The result is the integral of
    |F_a(x) - F_b(x)| dx, computed exactly as the integral over p of
    |Q_a(p) - Q_b(p)|, where both quantile functions are piecewise linear
    between the union of the cumulative-mass breakpoints (including where the
    difference changes sign inside a piece).

    Returns:
      A float in the histograms' units, or None when either histogram is
      empty (zero total count), has non-finite edges or counts, a negative
      count, or the distance overflows float64.

    Raises:
      ValueError: an argument is not of shape `[k, 3]`.
    """
    return _single_w1(histogram_distributions([as_histogram_array(a), as_histogram_array(b)]))


def wasserstein_quantiles(quantiles_a, quantiles_b, probabilities=metadata.QUANTILE_PROBABILITIES):
    """Exact Wasserstein-1 distance between two quantile functions on one grid.

    The quantile functions are taken as piecewise linear in p between the
    grid points (as `np.quantile` interpolates); W1 is the integral over
    `[p_0, p_last]` of |Q_a(p) - Q_b(p)| dp, exact on every piece, including
    where the difference changes sign. With the grid 0, 1/64, ..., 1 of
    `metadata.QUANTILE_PROBABILITIES` that is the whole distribution.

    Returns:
      A float, or None when a quantile is not finite (no finite values) or
      the distance overflows.

    Raises:
      ValueError: the lengths differ from the grid's, or the grid is not
        increasing within [0, 1].
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if (
        probabilities.ndim != 1
        or probabilities.size < 2
        or np.any(np.diff(probabilities) <= 0)
        or probabilities[0] < 0
        or probabilities[-1] > 1
    ):
        raise ValueError("probabilities must increase within [0, 1]")
    stacked = np.stack(
        [np.asarray(quantiles_a, dtype=np.float64), np.asarray(quantiles_b, dtype=np.float64)]
    )
    nan = np.full(2, np.nan)
    return _single_w1(quantile_distributions(stacked, nan, nan, probabilities))


def histogram_moments(histogram):
    """`(mean, std)` of a `[k, 3]` histogram with uniform mass per bucket (None, None if empty)."""
    distributions = histogram_distributions([as_histogram_array(histogram)])
    if not distributions.valid[0]:
        return None, None
    mass = np.diff(distributions.cumulative[0])
    centre = (distributions.left[0] + distributions.right[0]) / 2
    mean = float(ldexp(np.sum(mass * centre), distributions.exponent[0]))
    return mean, float(distributions.std[0])


# ---------------------------------------------------------------------------
# How much of a change a rescaling explains (weight decay on a dead path)
# ---------------------------------------------------------------------------

# Scales tried around the ratio of the two RMS values, then around the best.
_SCALE_SPAN = 0.25
_SCALE_POINTS = 41
# Pairs fitted per numpy pass (`rescale_fits`).
_FIT_CHUNK = 64


def _cdf_tables(left, right, cumulative, shifts):
    """`(x, F(x))` breakpoints of canonical histograms' CDFs, edges scaled by 2**shifts.

    `left`, `right`: `[n, K]`; `cumulative`: `[n, K + 1]`; `shifts`: `[n]`. Returns two `[n, 2K]`."""
    left = ldexp(left, shifts[:, None])
    right = ldexp(right, shifts[:, None])
    x = np.empty((left.shape[0], 2 * left.shape[1]))
    x[:, 0::2], x[:, 1::2] = left, right
    probability = np.empty_like(x)
    probability[:, 0::2], probability[:, 1::2] = cumulative[:, :-1], cumulative[:, 1:]
    return x, probability


def _interp_rows(values, x, f, left, right, after):
    """`np.interp(values[i], x[i], f[i], left, right)` for every row `i`, bit for bit.

    `values`: `[n, m]`; `x` (sorted, repeats allowed), `f`: `[n, W]`, `W >= 2`;
    `after`: `[n, m]`, the count of each row's knots `<= v` (`searchsorted`
    on the right). numpy's rule, which this follows: `j` is the last knot with
    `x[j] <= v`; a value on a knot, or on the last one, takes `f[j]`.
    """
    n, width = x.shape
    j = after - 1
    rows = np.arange(n)[:, None]
    lo = np.clip(j, 0, width - 2)
    x0, x1, f0, f1 = x[rows, lo], x[rows, lo + 1], f[rows, lo], f[rows, lo + 1]
    with np.errstate(all="ignore"):
        slope = (f1 - f0) / (x1 - x0)
        out = slope * (values - x0) + f0
        unresolved = np.isnan(out)
        if unresolved.any():
            # numpy's fallback: from the right knot, then the flat value.
            retry = slope * (values - x1) + f1
            retry = np.where(np.isnan(retry) & (f0 == f1), f0, retry)
            out = np.where(unresolved, retry, out)
    at = np.clip(j, 0, width - 1)
    out = np.where((j == width - 1) | (x[rows, at] == values), f[rows, at], out)
    out = np.where(j < 0, left, out)
    out = np.where(values > x[:, -1:], right, out)
    return np.where(np.isnan(values), values, out)


def _at_own_knots(x, f):
    """`np.interp(x[i], x[i], f[i])` row by row: `f` at the last of each run of equal knots."""
    width = x.shape[1]
    last = np.full(x.shape, width, dtype=np.intp)
    ends = np.ones(x.shape, dtype=bool)
    ends[:, :-1] = x[:, :-1] != x[:, 1:]
    np.copyto(last, np.arange(width), where=ends)
    last = np.minimum.accumulate(last[:, ::-1], axis=1)[:, ::-1]
    return np.take_along_axis(f, last, axis=1)


def _histogram_tables(x, f):
    """`_histogram_residuals`' tables from `_cdf_tables`' rows, step A and step B of each pair interleaved."""
    x_b, f_b = x[1::2], f[1::2]
    return x[0::2], f[0::2], x_b, f_b, _at_own_knots(x_b, f_b)


def _histogram_residuals(tables, scales):
    """W1 (in units of each pair's power of two) between step B and step A scaled
    by each of `scales` and rebinned onto B's edges, for a batch of pairs.

    `tables`: `(x_a, f_a, x_b, f_b, f_b at x_b)` (`_histogram_tables`), `[pairs, 2K]`;
    `scales`: `[pairs, S]`. Returns `[pairs, S]`.
    """
    x_a, f_a, x_b, f_b, f_b_knots = tables
    # One row per scale: B's breakpoints plus the scaled histogram's own
    # extremes, so that mass a wrong scale pushes outside B's range still
    # costs its distance. A point that is already on the grid repeats, and a
    # zero-length interval adds nothing (so where a repeat goes does not matter).
    pairs, width = x_b.shape
    extremes = np.stack([x_a[:, None, 0] * scales, x_a[:, None, -1] * scales], axis=2)  # [pairs, S, 2]
    # B's CDF at its own knots is the same for every scale; only the two
    # extremes are interpolated, and merged into B's sorted knots.
    after = np.empty(extremes.shape, dtype=np.intp)  # knots <= each extreme
    for pair in range(pairs):
        after[pair] = np.searchsorted(x_b[pair], extremes[pair], side="right")
    flat = (pairs, -1)
    at_extremes = _interp_rows(extremes.reshape(flat), x_b, f_b, 0.0, 1.0, after.reshape(flat)).reshape(extremes.shape)
    # Merged row: knots before the low extreme, the low extreme at `after`,
    # knots up to the high extreme, the high one at `after + 1`, the rest.
    position = np.arange(width + 2)
    head = position[:width] < after[:, :, :1]
    tail = position[2:] > after[:, :, 1:] + 1
    grid = np.empty(scales.shape + (width + 2,))
    difference = np.empty_like(grid)
    for merged, knots in ((grid, x_b), (difference, f_b_knots)):
        merged[:, :, 1:-1] = knots[:, None, :]
        merged[:, :, 0] = knots[:, None, 0]
        merged[:, :, -1] = knots[:, None, -1]
        np.copyto(merged[:, :, :width], knots[:, None, :], where=head)
        np.copyto(merged[:, :, 2:], knots[:, None, :], where=tail)
    slot = after + np.array([0, 1])
    np.put_along_axis(grid, slot, extremes, axis=2)
    np.put_along_axis(difference, slot, at_extremes, axis=2)
    unscaled = grid / scales[:, :, None]
    for pair in range(pairs):
        # np.interp takes one table: one call per pair (the rest is batched).
        difference[pair] -= np.interp(unscaled[pair], x_a[pair], f_a[pair], left=0.0, right=1.0)
    return _integral_abs_linear(grid, difference)


def _integral_abs_linear(x, d):
    """The integral of |d| over the last axis, d linear between knots `x`:
    `np.sum(np.diff(x) * _mean_abs_linear(d[..., :-1], d[..., 1:]), axis=-1)`,
    without copying the two views. `x`, `d`: C-contiguous, the same shape."""
    flat, width = d.reshape(-1), d.shape[-1] - 1

    def ends(segments):
        # Segment i of rows of `width` segments starts at knot i + i // width.
        start = segments + segments // width
        return flat[start], flat[start + 1]

    step = np.diff(x, axis=-1)
    step *= _mean_abs_linear(d[..., :-1], d[..., 1:], ends)
    return np.sum(step, axis=-1)


def _quantile_residuals(tables, scales):
    """W1 between step B's quantile function and `scales` times step A's, for a batch of pairs.

    `tables`: `(q_a, q_b, weights)`, `[pairs, Q]`, `[pairs, Q]`, `[Q - 1]`."""
    q_a, q_b, weights = tables
    difference = q_b[:, None, :] - scales[:, :, None] * q_a[:, None, :]
    return np.sum(weights * _mean_abs_linear(difference[:, :, :-1], difference[:, :, 1:]), axis=2)


def rescale_fit(distributions, first, second, known=None):
    """How much of the change from step `first` to step `second` one rescaling explains.

    Weight decay on a tensor that no gradient reaches multiplies it by a
    constant at every update: its distribution keeps its shape and only its
    spread changes. This finds the scale `c` that brings step `first`'s
    distribution closest to step `second`'s (W1 after scaling by `c`; a
    histogram is first re-binned onto `second`'s buckets, so that the
    discretisation of the two steps cancels) and returns what is left of the
    change.

    Returns:
      `(residual, scale)`: W1(second, c * first) / W1(second, first), ~0 when
      a rescaling explains all of it (exactly 0 for TensorBoard's min-to-max
      buckets), ~1 when it explains nothing; and `c`. `(None, None)` when
      either step is not valid or the two are identical.

    `known`: optionally W1 between the two steps as `pairs` returns it,
    `(mantissa, exponent)`, when the caller has it already.
    """
    return rescale_fits([(distributions, first, second, known)])[0]


def rescale_fits(requests):
    """`rescale_fit` of many pairs at once: a list of `(distributions, first, second, known)`.

    Returns a list of `(residual, scale)`, one per request. Pairs of one kind
    and width (a run's histograms usually share theirs) are fitted together,
    each exactly as alone: a run of 2,000 variables is a few dozen numpy calls
    per grid, not a few dozen per variable.
    """
    results = [(None, None)] * len(requests)
    groups = {}
    for number, (distributions, first, second, known) in enumerate(requests):
        if not (distributions.valid[first] and distributions.valid[second]):
            continue
        exponent = max(int(distributions.exponent[first]), int(distributions.exponent[second]))
        shift_a = int(distributions.exponent[first]) - exponent
        shift_b = int(distributions.exponent[second]) - exponent
        mantissa, pair_exponent = known if known is not None else distributions.pairs([first], [second])
        unscaled = float(np.reshape(ldexp(mantissa, np.asarray(pair_exponent) - exponent), -1)[0])
        rms_a, rms_b = float(distributions.rms[first]), float(distributions.rms[second])
        if not (unscaled > 0 and rms_a > 0 and rms_b > 0 and math.isfinite(rms_b / rms_a)):
            continue
        if distributions.kind == "histogram":
            key = ("histogram", distributions.left.shape[1])
        else:
            key = ("quantiles", tuple(np.asarray(distributions.probabilities).tolist()))
        groups.setdefault(key, []).append((number, distributions, first, second, shift_a, shift_b, unscaled, rms_b / rms_a))
    # Chunks of a few dozen pairs: each grid is then a few MB (cache-sized),
    # and chunks run on the thread pool (numpy releases the GIL).
    chunks = [
        (kind, members[start : start + _FIT_CHUNK])
        for (kind, _), members in groups.items()
        for start in range(0, len(members), _FIT_CHUNK)
    ]
    if len(chunks) > 1 and _WORKERS > 1:
        fitted = list(_executor().map(lambda chunk: _fit_group(*chunk), chunks))
    else:
        fitted = [_fit_group(*chunk) for chunk in chunks]
    for (_, members), found in zip(chunks, fitted):
        for member, answer in zip(members, found):
            results[member[0]] = answer
    return results


def _fit_group(kind, members):
    """`(residual, scale)` for pairs of one kind and width (see `rescale_fits`)."""
    shifts = np.array([(m[4], m[5]) for m in members], dtype=np.int64).reshape(-1)

    def rows(field):
        # Step A and step B of every pair, interleaved: [2 * pairs, ...].
        return np.concatenate([getattr(m[1], field)[[m[2], m[3]]] for m in members])

    if kind == "histogram":
        tables = _histogram_tables(*_cdf_tables(rows("left"), rows("right"), rows("cumulative"), shifts))
        residuals = _histogram_residuals
    else:
        q = ldexp(rows("quantiles"), shifts[:, None])
        tables = (q[0::2], q[1::2], np.diff(members[0][1].probabilities))
        residuals = _quantile_residuals
    # A grid of scales around the RMS ratio (exact for a pure rescaling), then
    # two finer grids around the best: each 20x finer than the one before.
    count = len(members)
    scale = np.array([m[7] for m in members], dtype=np.float64)
    residual = np.full(count, np.inf)
    searching = np.ones(count, dtype=bool)
    span = _SCALE_SPAN
    with np.errstate(all="ignore"):
        for _ in range(3):
            scales = scale[:, None] * np.exp(np.linspace(-span, span, _SCALE_POINTS))[None, :]
            values = residuals(tables, scales)
            # A pair whose grid is all NaN stops searching there, keeping what it had.
            searching &= ~np.all(np.isnan(values), axis=1)
            best = np.argmin(np.where(np.isnan(values), np.inf, values), axis=1)
            value = values[np.arange(count), best]
            better = searching & (value <= residual)
            scale = np.where(better, scales[np.arange(count), best], scale)
            residual = np.where(better, value, residual)
            span = 2 * span / (_SCALE_POINTS - 1)
    return [
        (float(residual[i]) / members[i][6], float(scale[i])) if math.isfinite(residual[i]) else (None, None)
        for i in range(count)
    ]
