"""One set of cases, run against the TensorFlow op and the numpy-only pb function.

Every case checks the recorded numbers against numpy computed independently
here. The op's half skips where TensorFlow is absent (the no-TF CI job).
"""

import glob
import pathlib
import tempfile
import zlib

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import summary_pb2
from tensorboard.util import tensor_util

from tb_weightdiff import metadata
from tb_weightdiff import summary
from conftest import HAVE_TENSORFLOW
from conftest import requires_tf


def _read_single_value(logdir):
    values = []
    for path in glob.glob(str(logdir / "*tfevents*")):
        for event in event_file_loader.EventFileLoader(path).Load():
            for value in event.summary.value:
                values.append((event.step, value))
    assert len(values) == 1, values
    return values[0]


def _run_pb(tmp_path, data, **kwargs):
    pb = summary.weights_pb("layer/kernel", data, **kwargs)
    value = pb.value[0]
    assert value.tag == "layer/kernel"
    assert value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME
    assert value.metadata.data_class == summary_pb2.DATA_CLASS_TENSOR
    return metadata.decode(tensor_util.make_ndarray(value.tensor))


def _run_op(tmp_path, data, use_tf_function=False, **kwargs):
    import tensorflow as tf

    tmp_path = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))  # one event file per call
    writer = tf.summary.create_file_writer(str(tmp_path))
    tensor = tf.constant(data)
    reference = kwargs.pop("reference", None)
    if reference is not None:
        reference = tf.constant(reference)

    def write():
        return summary.weights("layer/kernel", tensor, step=7, reference=reference, **kwargs)

    with writer.as_default():
        result = tf.function(write)() if use_tf_function else write()
    writer.close()
    assert bool(result)
    step, value = _read_single_value(tmp_path)
    assert step == 7
    assert value.tag == "layer/kernel"
    assert value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME
    assert value.metadata.data_class == summary_pb2.DATA_CLASS_TENSOR
    return metadata.decode(tensor_util.make_ndarray(value.tensor))


IMPLEMENTATIONS = [
    pytest.param(_run_pb, id="weights_pb"),
    pytest.param(_run_op, id="weights_op", marks=requires_tf),
    pytest.param(
        lambda tmp_path, data, **kw: _run_op(tmp_path, data, use_tf_function=True, **kw),
        id="weights_op_in_tf_function",
        marks=requires_tf,
    ),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def record(request, tmp_path):
    """`record(data, **kwargs)` -> WeightSummary, through one implementation."""
    return lambda data, **kwargs: request.param(tmp_path, data, **kwargs)


def expected_summary(data, reference=None, buckets=30):
    """The recorded numbers, computed the plain way."""
    array = np.asarray(data)
    values = array.astype(np.float64).ravel()
    finite = values[np.isfinite(values)]
    expected = {
        "count": values.size,
        "finite_count": finite.size,
        "nan_count": np.isnan(values).sum(),
        "posinf_count": (values == np.inf).sum(),
        "neginf_count": (values == -np.inf).sum(),
        "zero_fraction": np.mean(values == 0) if values.size else np.nan,
        "fingerprint": zlib.crc32(np.ascontiguousarray(array).tobytes()),
    }
    if finite.size:
        expected.update(
            mean=finite.mean(),
            std=finite.std(),
            min=finite.min(),
            max=finite.max(),
            l2_norm=np.linalg.norm(finite),
        )
        quantiles = np.quantile(finite, metadata.QUANTILE_PROBABILITIES)
        if finite.min() < finite.max():
            counts, edges = np.histogram(finite, bins=buckets, range=(finite.min(), finite.max()))
        else:
            counts = np.zeros(buckets)
            counts[-1] = finite.size
            edges = np.full(buckets + 1, finite.min())
    else:
        expected.update(mean=np.nan, std=np.nan, min=np.nan, max=np.nan)
        quantiles = np.full(len(metadata.QUANTILE_PROBABILITIES), np.nan)
        counts, edges = np.zeros(buckets), np.zeros(buckets + 1)
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64).ravel()
        distance = np.linalg.norm(values - ref)
        expected.update(
            reference_l2_norm=np.linalg.norm(ref),
            reference_distance=distance,
            relative_change=distance / np.linalg.norm(ref),
            cosine_distance=1 - values @ ref / (np.linalg.norm(values) * np.linalg.norm(ref)),
        )
    return expected, quantiles, counts, edges


def assert_matches(recorded, data, reference=None, buckets=30, rtol=1e-9):
    expected, quantiles, counts, edges = expected_summary(data, reference, buckets)
    for name, value in expected.items():
        np.testing.assert_allclose(
            recorded.stat(name), value, rtol=rtol, atol=1e-12, err_msg=name, equal_nan=True
        )
    np.testing.assert_allclose(recorded.quantiles, quantiles, rtol=1e-12, equal_nan=True)
    assert recorded.histogram.shape == (buckets, 3)
    np.testing.assert_array_equal(recorded.histogram[:, 2], counts)
    np.testing.assert_allclose(recorded.histogram[:, 0], edges[:-1], rtol=1e-12)
    np.testing.assert_allclose(recorded.histogram[:, 1], edges[1:], rtol=1e-12)
    if reference is None:
        for name in ("reference_l2_norm", "reference_distance", "relative_change", "cosine_distance"):
            assert np.isnan(recorded.stat(name)), name


def test_gaussian_weights(record, rng):
    data = rng.standard_normal((64, 32)).astype(np.float32)
    assert_matches(record(data), data)


def test_reference_statistics(record, rng):
    reference = rng.standard_normal((16, 8)).astype(np.float32)
    data = reference + 0.05 * rng.standard_normal((16, 8)).astype(np.float32)
    recorded = record(data, reference=reference)
    assert_matches(recorded, data, reference=reference, rtol=1e-6)
    assert 0 < recorded.stat("relative_change") < 0.2


def test_identical_reference_is_exactly_zero(record, rng):
    data = rng.standard_normal(100).astype(np.float32)
    recorded = record(data, reference=data.copy())
    assert recorded.stat("reference_distance") == 0.0
    assert recorded.stat("relative_change") == 0.0
    assert recorded.stat("cosine_distance") == 0.0


def test_permuted_weights_keep_their_histogram_but_not_their_distance(record, rng):
    reference = rng.standard_normal(500).astype(np.float32)
    permuted = rng.permutation(reference)
    a, b = record(reference, reference=reference), record(permuted, reference=reference)
    np.testing.assert_array_equal(a.histogram, b.histogram)
    np.testing.assert_array_equal(a.quantiles, b.quantiles)
    assert b.stat("reference_distance") > 1.0
    assert a.stat("fingerprint") != b.stat("fingerprint")


def test_tiny_rotation_keeps_precision(record, rng):
    reference = rng.standard_normal(10000)
    rotated = reference + 1e-7 * rng.standard_normal(10000)
    cosine = record(rotated, reference=reference).stat("cosine_distance")
    # 1 - cos for a perturbation eps*z is about eps^2 |z_perp|^2 / (2|W|^2) ~ 5e-15;
    # the naive 1 - dot/(|a||b|) would round that to 0 or to noise of 1e-16.
    assert 1e-15 < cosine < 1e-14


def test_zero_reference_has_no_relative_change(record):
    recorded = record(np.ones(4, np.float32), reference=np.zeros(4, np.float32))
    assert recorded.stat("reference_distance") == 2.0
    assert np.isnan(recorded.stat("relative_change"))
    assert np.isnan(recorded.stat("cosine_distance"))


def test_empty_tensor(record):
    recorded = record(np.zeros((0, 3), np.float32))
    assert recorded.stat("count") == 0
    assert recorded.stat("l2_norm") == 0
    assert np.isnan(recorded.stat("mean"))
    assert np.isnan(recorded.quantiles).all()
    np.testing.assert_array_equal(recorded.histogram, np.zeros((30, 3)))


def test_scalar(record):
    recorded = record(np.float32(2.5))
    assert_matches(recorded, np.float32(2.5))
    np.testing.assert_array_equal(recorded.histogram[-1], [2.5, 2.5, 1])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_integer_tensor(record, dtype):
    data = np.arange(-20, 80).astype(dtype) if dtype != np.uint8 else np.arange(100).astype(dtype)
    assert_matches(record(data), data)


def test_bool_tensor(record):
    data = np.array([True, False, True, True])
    recorded = record(data)
    assert_matches(recorded, data)
    assert recorded.stat("zero_fraction") == 0.25


def test_float16_tensor(record, rng):
    data = rng.standard_normal(300).astype(np.float16)
    assert_matches(record(data), data, rtol=1e-6)


def test_all_equal_values(record):
    data = np.full((5, 5), -0.125, np.float32)
    recorded = record(data)
    assert_matches(recorded, data)
    assert recorded.stat("std") == 0.0
    assert recorded.histogram[:, 2].sum() == 25


def test_nan_and_inf_mixed_in(record):
    data = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, 3.0, np.nan], np.float32)
    recorded = record(data)
    assert_matches(recorded, data)
    assert (recorded.stat("nan_count"), recorded.stat("posinf_count"), recorded.stat("neginf_count")) == (2, 1, 1)
    assert recorded.stat("finite_count") == 3
    assert recorded.histogram[:, 2].sum() == 3  # over the finite values only
    assert recorded.stat("min") == 0.0 and recorded.stat("max") == 3.0


def test_only_non_finite_values(record):
    data = np.array([np.nan, np.inf], np.float32)
    recorded = record(data)
    assert recorded.stat("finite_count") == 0
    assert np.isnan(recorded.stat("l2_norm"))
    np.testing.assert_array_equal(recorded.histogram, np.zeros((30, 3)))


def test_nan_against_reference_is_nan_not_an_error(record):
    recorded = record(np.array([np.nan, 1.0], np.float32), reference=np.ones(2, np.float32))
    assert np.isnan(recorded.stat("reference_distance"))


def test_custom_bucket_count(record, rng):
    data = rng.standard_normal(1000)
    assert_matches(record(data, buckets=7), data, buckets=7)
    assert record(data, buckets=0).histogram.shape == (0, 3)


def test_trainable_flag(record):
    assert record(np.ones(3), trainable=True).stat("trainable") == 1.0
    assert record(np.ones(3), trainable=False).stat("trainable") == 0.0
    assert np.isnan(record(np.ones(3)).stat("trainable"))


def test_extreme_magnitudes(record):
    data = np.array([-1.7e308, 1.7e308, 0.0])
    recorded = record(data)
    assert recorded.histogram[:, 2].sum() == 3
    assert np.isfinite(recorded.histogram[:, :2]).all()
    tiny = np.array([1e-320, 2e-320, 3e-320])
    assert record(tiny).histogram[:, 2].sum() == 3


def test_ten_million_values(record, rng):
    data = rng.standard_normal(10_000_000, dtype=np.float32)
    recorded = record(data)
    assert recorded.stat("count") == 10_000_000
    assert recorded.histogram[:, 2].sum() == 10_000_000
    np.testing.assert_allclose(recorded.stat("mean"), data.astype(np.float64).mean(), atol=1e-12)
    np.testing.assert_allclose(recorded.stat("std"), data.astype(np.float64).std(), rtol=1e-9)


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        (np.array([1 + 2j]), {}, "dtype complex"),
        (np.array(["a", "b"]), {}, "dtype <U1"),
        (np.ones(3), {"reference": np.ones(4)}, "reference has 4 elements"),
        (np.ones(3), {"buckets": -1}, "buckets"),
        (np.ones(3), {"buckets": 2.5}, "buckets"),
    ],
)
def test_bad_input_raises_value_error_pb(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        summary.weights_pb("t", data, **kwargs)


def test_check_buckets_returns_the_count_and_rejects_what_weights_pb_rejects():
    assert summary.check_buckets(None) == metadata.DEFAULT_BUCKET_COUNT == 30
    assert summary.check_buckets(7) == 7
    assert summary.check_buckets(0) == 0
    count = summary.check_buckets(np.int64(5))
    assert count == 5 and type(count) is int
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="buckets"):
            summary.check_buckets(bad)


def test_weights_pb_overwrite_input_records_the_same_summary(rng):
    data = rng.standard_normal((64, 9)).astype(np.float32)
    reference = rng.standard_normal((64, 9)).astype(np.float32)
    kept = data.copy()
    expected = summary.weights_pb("t", data, reference=reference, trainable=True)
    np.testing.assert_array_equal(data, kept)  # by default the caller's array is left alone
    given_up = data.copy()
    assert summary.weights_pb("t", given_up, reference=reference, trainable=True, overwrite_input=True) == expected
    # Sorted where it lay: no second host copy of the tensor was made.
    np.testing.assert_array_equal(given_up, np.sort(kept.reshape(-1)).reshape(kept.shape))


@requires_tf
@pytest.mark.parametrize(
    "make_data, kwargs, message",
    [
        (lambda tf: tf.constant([1 + 2j]), {}, "dtype complex"),
        (lambda tf: tf.constant(["a"]), {}, "dtype string"),
        (lambda tf: tf.ones(3), {"reference": np.ones(4, np.float32)}, "reference has 4 elements"),
        (lambda tf: tf.ones(3), {"buckets": -1}, "buckets"),
    ],
)
def test_bad_input_raises_value_error_op(tmp_path, make_data, kwargs, message):
    import tensorflow as tf

    with tf.summary.create_file_writer(str(tmp_path)).as_default():
        with pytest.raises(ValueError, match=message):
            summary.weights("t", make_data(tf), step=0, **kwargs)


@requires_tf
def test_op_and_pb_record_identical_numbers(tmp_path, rng):
    data = rng.standard_normal((33, 17)).astype(np.float32)
    reference = rng.standard_normal((33, 17)).astype(np.float32)
    from_pb = _run_pb(tmp_path, data, reference=reference, trainable=True)
    from_op = _run_op(tmp_path, data, reference=reference, trainable=True)
    assert from_pb.stats == from_op.stats
    np.testing.assert_array_equal(from_pb.quantiles, from_op.quantiles)
    np.testing.assert_array_equal(from_pb.histogram, from_op.histogram)


@requires_tf
def test_op_without_writer_returns_false_and_computes_nothing():
    import tensorflow as tf

    assert not bool(summary.weights("t", tf.ones(3), step=0))


@requires_tf
def test_op_accepts_variables_and_bfloat16(tmp_path):
    import tensorflow as tf

    variable = tf.Variable(tf.cast([[1.0, 2.0], [3.0, 4.0]], tf.bfloat16))
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        assert bool(summary.weights("v", variable, step=1))
    writer.close()
    _, value = _read_single_value(tmp_path)
    recorded = metadata.decode(tensor_util.make_ndarray(value.tensor))
    assert recorded.stat("mean") == 2.5


def test_weights_without_tensorflow_names_the_install(monkeypatch):
    if HAVE_TENSORFLOW:
        import builtins

        real_import = builtins.__import__

        def no_tensorflow(name, *args, **kwargs):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError("No module named 'tensorflow'")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'tb-weightdiff\[tf\]'"):
        summary.weights("t", np.ones(3), step=0)
