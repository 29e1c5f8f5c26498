"""Weight summaries computed where a PyTorch tensor lives: `device_statistics`, `device_fingerprint`.

`device_statistics(tensor)` returns the stored vector of
`tb_weightdiff.summary.weight_statistics` (the same `metadata.STAT_FIELDS`,
quantiles and histogram) but computes it with PyTorch ops on the tensor's
own device (a GPU, or the CPU) and copies only the result, a few hundred
float64 values, to the host: one sort on the device serves the quantiles,
the extremes, the NaN/Inf/zero counts (binary searches) and the histogram
(k - 1 binary searches); the moments, the norms and the distance from a
reference are float64 sums over blocks of `CHUNK` elements. The last steps
(the interpolation of the quantiles, the histogram's edges, the scalar
formulas of the moments and the reference statistics) run on the host
through the very functions `weight_statistics` uses, so the numbers agree:

- counts, extremes, quantiles and the histogram (edges and counts) are
  exactly `weight_statistics`'s (both read the same sorted values at the same
  positions; the device computes the inner edges with `np.linspace`'s own
  float64 operations, which IEEE arithmetic rounds alike on every device),
  except that -0.0 and 0.0 may trade places (they compare equal);
- mean, std, norms, distance, relative change and cosine distance are float64
  sums taken in another order (numpy's blocked `dot` against PyTorch's
  reductions): equal to within a few ulps of the sums (tested: rtol 1e-12);
- the fingerprint is of another kind (`device_fingerprint`, below): CRC-32
  cannot be computed by tensor ops.

No GPU is available where this is tested: the tests run these same ops on
CPU tensors. PyTorch is imported when a function is called.

Device memory, transient, per tensor: the sort's output and its int64
indices (3x a float32 tensor's bytes), a float32 copy of a bfloat16, float16
or float8 tensor (float64 of an integer one), and float64 blocks of `CHUNK`
elements (32 MB each).
"""

import struct
import zlib

import numpy as np

from tb_weightdiff import metadata
from tb_weightdiff import summary as summary_lib

__all__ = ["CHUNK", "device_fingerprint", "device_statistics"]

# Elements per block of the float64 sums and of the fingerprint's integer
# arithmetic: bounds their temporary device memory (a float64 or int64 block
# is 32 MB) whatever the tensor's size.
CHUNK = 1 << 22

_MASK = 0xFFFFFFFF
# Odd multipliers below 2**31: a 32-bit value times one stays below 2**63, so
# int64 arithmetic never overflows and the result is exact on every device.
_MULTIPLIERS = (0x7FEB352D, 0x5BD1E995)
_SEED = 0x3C6EF372
_FINGERPRINT_TAG = b"tb_weightdiff/digest1"


def _torch():
    import torch  # pylint: disable=import-outside-toplevel

    return torch


def _mix(x):
    """A bijection of [0, 2**32) (int64 tensors): xor-shifts and odd multiplications mod 2**32."""
    x = x ^ (x >> 16)
    x = (x * _MULTIPLIERS[0]) & _MASK
    x = x ^ (x >> 15)
    x = (x * _MULTIPLIERS[1]) & _MASK
    return x ^ (x >> 16)


def _words(torch, flat):
    """The raw bits of a flat contiguous tensor as int64 words in [0, 2**32): one per element
    of 1, 2 or 4 bytes, two (low half first) per element of 8 bytes."""
    size = flat.element_size()
    if flat.dtype == torch.bool or size == 1:
        return flat.view(torch.uint8).to(torch.int64)
    if size == 2:
        return flat.view(torch.int16).to(torch.int64) & 0xFFFF
    if size in (4, 8):
        return flat.view(torch.int32).to(torch.int64) & _MASK
    raise ValueError("no fingerprint for elements of %d bytes (dtype %s)" % (size, flat.dtype))


def _digest(torch, flat):
    """The 32-bit digest of `flat`'s raw bits, a device int64 scalar (see `device_fingerprint`)."""
    total = torch.zeros((), dtype=torch.int64, device=flat.device)
    word_start = 0
    for start in range(0, flat.numel(), CHUNK):
        words = _words(torch, flat[start:start + CHUNK])
        positions = torch.arange(word_start, word_start + words.numel(), dtype=torch.int64, device=flat.device)
        word_start += words.numel()
        keys = _mix((positions & _MASK) ^ _SEED)
        total = (total + _mix(words ^ keys).sum()) & _MASK
    return total


def _fingerprint_value(digest, count, dtype):
    """The stored fingerprint: CRC-32 of the digest, the element count and the dtype (< 2**32)."""
    packed = _FINGERPRINT_TAG + str(dtype).encode("ascii") + struct.pack("<IQ", int(digest), int(count))
    return float(zlib.crc32(packed))


def device_fingerprint(tensor):
    """A fingerprint of `tensor`'s raw bits, computed on its device; an integer-valued float < 2**32.

    What `weight_statistics`'s CRC-32 is for (a reader tells a tensor that
    never changed from one whose histogram did not move), made of tensor ops:
    each 32-bit word w_i of the raw bits (an element of 1, 2 or 4 bytes is one
    word, an element of 8 bytes two) is mixed with its position i by a
    bijection of 32-bit values, h_i = mix(w_i xor mix(i xor seed)), and the
    digest is the sum of the h_i mod 2**32 (exact int64 arithmetic, so every
    device gives the same value: a model that moves between devices keeps its
    fingerprints). The host then takes the CRC-32 of that digest, the element
    count and the dtype, a map that is one-to-one in the digest.

    - equal tensors (same dtype, same bits, in logical order) give equal values;
    - changing one word (any single element of up to 4 bytes, e.g. a 1-ulp
      change of a float32, bfloat16 or float16 weight) always changes it: h_i
      is a bijection of w_i, so the sum moves by a non-zero amount mod 2**32;
    - any other change (several elements, an 8-byte element whose change
      carries across its two halves, a permutation) changes it with
      probability about 1 - 2**-32, as CRC-32 does.

    The values differ from the numpy writer's CRC-32 of the same tensor: one
    logger uses one kind for all its steps (`WeightDiffLogger`).
    """
    torch = _torch()
    flat = tensor.detach().reshape(-1)
    return _fingerprint_value(_digest(torch, flat).item(), flat.numel(), flat.dtype)


def _plain_dtypes(torch):
    names = ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64")
    return tuple(getattr(torch, name) for name in names if hasattr(torch, name))


def _check(torch, tensor, what):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError("%s must be a torch.Tensor, got %s" % (what, type(tensor).__name__))
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in _plain_dtypes(torch)):
        raise ValueError("%s must be a bool, integer or floating tensor, got dtype %s" % (what, tensor.dtype))


def _reference_blocks(torch, reference, device):
    """`block(start, stop)` -> float64 values of the flat reference on `device` (from a host
    numpy array or a tensor anywhere: only one block at a time is moved)."""
    if isinstance(reference, torch.Tensor):
        flat = reference.detach().reshape(-1)
        return flat.numel(), lambda start, stop: flat[start:stop].to(device=device, dtype=torch.float64)
    array = summary_lib._as_numeric_array(reference, "reference").reshape(-1)  # pylint: disable=protected-access
    if array.dtype == np.float16:
        array = array.astype(np.float32)

    def block(start, stop):
        part = np.ascontiguousarray(array[start:stop])
        if part.dtype.kind not in "f":
            part = part.astype(np.float64)
        return torch.from_numpy(part).to(device=device, dtype=torch.float64)

    return array.size, block


def device_statistics(tensor, reference=None, buckets=None, trainable=None):
    """The stored vector of one weight tensor, computed on the tensor's device.

    Args:
      tensor: a `torch.Tensor` of any shape, on any device; bool, integer or
        floating (bfloat16, float16 and float8 are read as float32, integers
        as float64, as `weight_statistics` reads them).
      reference: optional tensor (on any device) or host array with as many
        elements (the weights before training); a host array or a tensor on
        another device is moved to `tensor`'s device one block at a time.
      buckets: optional non-negative int, histogram buckets (default 30).
      trainable: optional bool, recorded as 1.0 / 0.0 (NaN when `None`).

    Returns:
      A rank-1 float64 numpy array in the layout of `tb_weightdiff.metadata`,
      equal to `weight_statistics` of the same values (see the module
      docstring for how equal) except for the fingerprint, which is
      `device_fingerprint(tensor)`.

    Raises:
      TypeError: `tensor` is not a tensor.
      ValueError: unsupported dtype, bad `buckets`, or a reference of another size.
    """
    torch = _torch()
    bucket_count = summary_lib.check_buckets(buckets)
    _check(torch, tensor, "data")
    if isinstance(reference, torch.Tensor):
        _check(torch, reference, "reference")
    with torch.no_grad():
        return _device_statistics(torch, tensor.detach(), reference, bucket_count, trainable)


def _device_statistics(torch, data, reference, bucket_count, trainable):
    flat = data.reshape(-1)
    device = flat.device
    count = flat.numel()
    blocks = None
    if reference is not None:
        reference_size, blocks = _reference_blocks(torch, reference, device)
        if reference_size != count:
            raise ValueError(
                "reference has %d elements but data has %d; pass the same "
                "tensor's earlier value" % (reference_size, count)
            )
    if flat.is_floating_point() and flat.dtype != torch.float64:
        work = torch.float32
    else:
        work = torch.float64
    digest = _digest(torch, flat)
    if count == 0:
        empty = np.zeros(0, dtype=np.float32 if work == torch.float32 else np.float64)
        values = summary_lib.weight_statistics(
            empty, reference=None if reference is None else empty, buckets=bucket_count, trainable=trainable
        )
        values[_FINGERPRINT] = _fingerprint_value(digest.item(), 0, flat.dtype)
        return values
    values = flat if flat.dtype == work else flat.to(work)

    parts = [digest.to(torch.float64).reshape(1)]
    if blocks is not None:
        parts.append(_reference_sums(torch, values, blocks))

    sorted_values = torch.sort(values).values
    # PyTorch's searchsorted assumes an order without NaN (NaN sorts last):
    # the binary searches run on the part before them. The one host sync
    # before the final copy; the NaN are counted only when the last value is one.
    nan_count = 0
    if bool(torch.isnan(sorted_values[-1])):
        nan_count = int(torch.isnan(sorted_values).sum())
    ordered = sorted_values[: count - nan_count]
    if ordered.numel() == 0:
        ordered = torch.full((1,), float("nan"), dtype=work, device=device)  # no finite value: read as NaN
        size = 0
    else:
        size = ordered.numel()
    keys = torch.tensor([-np.inf, np.inf, 0.0], dtype=work, device=device)
    right = torch.searchsorted(ordered, keys, right=True)
    left = torch.searchsorted(ordered, keys[1:], right=False)
    if size == 0:
        right, left = torch.zeros_like(right), torch.zeros_like(left)
    neginf = right[0]
    finite = left[0] - neginf
    posinf = size - left[0]
    zeros = right[2] - left[1]
    last = ordered.numel() - 1

    # Quantiles: the neighbours of np.quantile's linear method, gathered here
    # and interpolated on the host by the numpy writer's own code.
    probabilities = torch.tensor(metadata.QUANTILE_PROBABILITIES, dtype=torch.float64, device=device)
    positions = probabilities * (finite - 1).to(torch.float64)
    below = torch.floor(positions).to(torch.int64)
    above = torch.minimum(below + 1, finite - 1)
    low = ordered[(neginf + below).clamp(0, last)].to(torch.float64)
    high = ordered[(neginf + above).clamp(0, last)].to(torch.float64)
    shift = ordered[(neginf + finite // 2).clamp(0, last)].to(torch.float64)
    counts = torch.stack([neginf, finite, posinf, zeros]).to(torch.float64)
    parts += [counts, low, high, _moment_sums(torch, ordered, shift)]
    if bucket_count > 1:
        parts.append(_histogram_positions(torch, ordered, low[0], low[-1], neginf, bucket_count))
    gathered = torch.cat(parts).cpu().numpy()  # the one device-to-host copy
    return _assemble(torch, gathered, count, nan_count, values, blocks, bucket_count, trainable, flat.dtype)


_FINGERPRINT = metadata.STAT_FIELDS.index("fingerprint")
_QUANTILES = len(metadata.QUANTILE_PROBABILITIES)


def _reference_sums(torch, values, blocks):
    """[||W||^2, ||W0||^2, ||D||^2, D.W0] in float64 on the device, block by block (D = W - W0)."""
    sums = torch.zeros(4, dtype=torch.float64, device=values.device)
    for start in range(0, values.numel(), CHUNK):
        current = values[start:start + CHUNK].to(torch.float64)
        ref = blocks(start, start + current.numel())
        difference = current - ref
        sums += torch.stack([
            torch.dot(current, current), torch.dot(ref, ref),
            torch.dot(difference, difference), torch.dot(difference, ref),
        ])
    return sums


def _moment_sums(torch, ordered, shift):
    """[shift, sum x^2, sum (x - shift), sum (x - shift)^2] over the finite values, float64."""
    sums = torch.zeros(3, dtype=torch.float64, device=ordered.device)
    for start in range(0, ordered.numel(), CHUNK):
        block = ordered[start:start + CHUNK].to(torch.float64)
        finite = torch.isfinite(block)
        block = torch.where(finite, block, 0.0)
        shifted = torch.where(finite, block - shift, 0.0)
        sums += torch.stack([torch.dot(block, block), shifted.sum(), torch.dot(shifted, shifted)])
    return torch.cat([shift.reshape(1), sums])


def _histogram_positions(torch, ordered, minimum, maximum, neginf, bucket_count):
    """How many finite values lie below each inner bucket edge (k - 1 binary searches).

    The edges are `summary._histogram_edges`'s, computed with `np.linspace`'s
    own float64 operations (arange * step + start, or (arange / k) * delta
    when the step underflows to 0), and, for float32 values, each replaced by
    the smallest float32 not below it, as the numpy writer's `_count_below` does.
    Meaningless (and unused) when there are no finite values or all are equal.
    """
    device = ordered.device
    scale = torch.where(torch.isfinite(maximum - minimum), 1.0, 0.5).to(torch.float64)
    start, stop = minimum * scale, maximum * scale
    delta = stop - start
    step = delta / bucket_count
    ramp = torch.arange(1, bucket_count, dtype=torch.float64, device=device)
    inner = torch.where(step == 0, ramp / bucket_count * delta, ramp * step)
    inner = (inner + start) / scale
    if ordered.dtype == torch.float32:
        nearest = inner.to(torch.float32)
        inner_keys = torch.where(
            nearest.to(torch.float64) < inner, torch.nextafter(nearest, torch.full_like(nearest, np.inf)), nearest
        )
    else:
        inner_keys = inner
    inner_keys = torch.nan_to_num(inner_keys, nan=0.0)  # no finite values: searched, then ignored
    return (torch.searchsorted(ordered, inner_keys, right=False) - neginf).to(torch.float64)


def _assemble(torch, gathered, count, nan_count, values, blocks, bucket_count, trainable, dtype):
    """The stored vector from the gathered device results, finished by the numpy writer's code."""
    digest, index = gathered[0], 1
    reference_sums = None
    if blocks is not None:
        reference_sums = tuple(float(v) for v in gathered[index:index + 4])
        index += 4
    neginf, finite, posinf, zeros = (int(v) for v in gathered[index:index + 4])
    index += 4
    low = gathered[index:index + _QUANTILES]
    high = gathered[index + _QUANTILES:index + 2 * _QUANTILES]
    index += 2 * _QUANTILES
    shift, square_sum, shifted_sum, shifted_square_sum = (float(v) for v in gathered[index:index + 4])
    index += 4
    inner_positions = gathered[index:index + max(bucket_count - 1, 0)]

    if finite:
        below, above, fraction, upper_half = summary_lib._quantile_positions(finite)  # pylint: disable=protected-access
        del below, above  # the device gathered at these very positions
        quantiles = summary_lib._interpolate(low, high, fraction, upper_half)  # pylint: disable=protected-access
        minimum, maximum = float(low[0]), float(low[-1])
        mean, std, l2_norm = summary_lib._moments_from_sums(  # pylint: disable=protected-access
            finite, shift, square_sum, shifted_sum, shifted_square_sum
        )
    else:
        minimum = maximum = mean = std = np.nan
        l2_norm = np.nan
        quantiles = np.full(_QUANTILES, np.nan)
    histogram = summary_lib._assemble_histogram(  # pylint: disable=protected-access
        bucket_count, finite, minimum, maximum, lambda inner_edges: inner_positions
    )
    if reference_sums is None:
        reference_stats = (np.nan,) * 4
    else:
        reference_stats = _reference_statistics(torch, values, blocks, reference_sums)
    stats = {
        "count": count,
        "finite_count": finite,
        "nan_count": nan_count,
        "posinf_count": posinf,
        "neginf_count": neginf,
        "mean": mean,
        "std": std,
        "min": minimum,
        "max": maximum,
        "l2_norm": l2_norm,
        "zero_fraction": zeros / count,
        "trainable": np.nan if trainable is None else float(bool(trainable)),
        "fingerprint": _fingerprint_value(digest, count, dtype),
        "reference_l2_norm": reference_stats[0],
        "reference_distance": reference_stats[1],
        "relative_change": reference_stats[2],
        "cosine_distance": reference_stats[3],
    }
    return metadata.encode([stats[name] for name in metadata.STAT_FIELDS], quantiles, histogram)


def _reference_statistics(torch, values, blocks, sums):
    """The numpy writer's reference statistics from the device sums; its elementwise second
    pass (where the terms cancel, or for non-finite values) runs on the device too."""

    def direction_change_squared(current_norm, reference_norm):
        total = torch.zeros((), dtype=torch.float64, device=values.device)
        for start in range(0, values.numel(), CHUNK):
            current = values[start:start + CHUNK].to(torch.float64) / current_norm
            change = current - blocks(start, start + current.numel()) / reference_norm
            total += torch.dot(change, change)
        return float(total)

    found = summary_lib._reference_from_sums(sums, direction_change_squared)  # pylint: disable=protected-access
    if found is not None:
        return found
    current_square, reference_square, difference_square, _ = sums
    return summary_lib._reference_direct_from_squares(  # pylint: disable=protected-access
        np.float64(difference_square), np.float64(reference_square), np.float64(current_square),
        direction_change_squared,
    )
