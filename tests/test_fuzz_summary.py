"""Fuzzing weights_pb: random arrays, dtypes, shapes, references and bucket counts.

Short in CI (200 examples); the long run is documented in the README:
`TBWD_HYPOTHESIS_EXAMPLES=20000 pytest tests/test_fuzz_summary.py tests/test_distance_properties.py tests/test_judge_properties.py`.
"""

import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from tensorboard.util import tensor_util

from tb_weightdiff import metadata
from tb_weightdiff import summary

SETTINGS = settings(
    max_examples=int(os.environ.get("TBWD_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NUMERIC_DTYPES = st.one_of(
    hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
)
ANY_DTYPES = st.one_of(NUMERIC_DTYPES, hnp.complex_number_dtypes(), hnp.datetime64_dtypes(), hnp.byte_string_dtypes())
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12)


def _arrays(dtypes):
    return dtypes.flatmap(lambda dtype: hnp.arrays(dtype, SHAPES))


def _check(values, data):
    decoded = metadata.decode(values)
    stats = decoded.stats
    flat = np.asarray(data).astype(np.float64, copy=False).ravel() if np.asarray(data).dtype.kind != "f" else np.asarray(data, dtype=np.float64).ravel()
    assert stats["count"] == flat.size
    assert stats["finite_count"] + stats["nan_count"] + stats["posinf_count"] + stats["neginf_count"] == flat.size
    assert decoded.histogram[:, 2].sum() == stats["finite_count"] or decoded.histogram.shape[0] == 0
    assert np.all(decoded.histogram[:, 2] >= 0)
    finite_quantiles = decoded.quantiles[np.isfinite(decoded.quantiles)]
    if stats["finite_count"]:
        assert finite_quantiles.size == len(metadata.QUANTILE_PROBABILITIES)
        assert np.all(np.diff(finite_quantiles) >= 0)
        assert stats["min"] <= stats["max"]
    else:
        assert finite_quantiles.size == 0
    assert 0 <= stats["zero_fraction"] <= 1 or np.isnan(stats["zero_fraction"])
    for name in ("cosine_distance",):
        assert np.isnan(stats[name]) or 0 <= stats[name] <= 2
    # What every writer produces passes the readers' check for damaged tensors.
    metadata.check_summaries(np.asarray(values)[None, :])


@SETTINGS
@given(data=_arrays(ANY_DTYPES), buckets=st.one_of(st.none(), st.integers(-3, 64)), trainable=st.one_of(st.none(), st.booleans()))
def test_weights_pb_gives_a_summary_or_a_value_error(data, buckets, trainable):
    try:
        pb = summary.weights_pb("fuzz", data, buckets=buckets, trainable=trainable)
    except ValueError:
        assert data.dtype.kind not in "biuf" or (buckets is not None and buckets < 0)
        return
    assert data.dtype.kind in "biuf"
    _check(tensor_util.make_ndarray(pb.value[0].tensor), data)


@SETTINGS
@given(data=hnp.arrays(np.float64, SHAPES, elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_weights_pb_of_any_float64_values_passes_the_damage_check(data):
    _check(summary.weight_statistics(data, reference=data.ravel()[::-1].copy() if data.size else None), data)


@SETTINGS
@given(
    data=hnp.arrays(np.float32, SHAPES, elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
    perturbation=st.floats(-1e3, 1e3, allow_nan=False),
    same_size=st.booleans(),
)
def test_weights_pb_with_a_reference(data, perturbation, same_size):
    reference = data * np.float32(1 + perturbation) if same_size else np.zeros(data.size + 1, np.float32)
    try:
        values = summary.weight_statistics(data, reference=reference)
    except ValueError:
        assert not same_size
        return
    assert same_size
    _check(values, data)
    stats = metadata.decode(values).stats
    if np.all(np.isfinite(data)) and np.all(np.isfinite(reference)):
        assert stats["reference_distance"] >= 0 or np.isinf(stats["reference_distance"])
    if np.array_equal(data, reference) and np.all(np.isfinite(data)):
        # (With +-Inf in both, W - W0 holds inf - inf = NaN: such a tensor is
        # `diverged` anyway, and `frozen` is told by the fingerprint.)
        assert stats["reference_distance"] == 0 and stats["relative_change"] == 0
