"""The stored format: metadata create/parse and tensor encode/decode."""

import json

import numpy as np
import pytest
from tensorboard.compat.proto import summary_pb2

from tb_weightdiff import metadata


def test_metadata_is_a_tensor_of_our_plugin():
    created = metadata.create_summary_metadata(description="desc")
    assert created.plugin_data.plugin_name == "tb_weightdiff"
    # Without DATA_CLASS_TENSOR both TensorBoard loaders drop the data silently.
    assert created.data_class == summary_pb2.DATA_CLASS_TENSOR
    assert created.summary_description == "desc"
    parsed = metadata.parse_plugin_metadata(created.plugin_data.content)
    assert parsed.version == metadata.FORMAT_VERSION
    assert parsed.stat_count == len(metadata.STAT_FIELDS)
    assert parsed.quantile_count == len(metadata.QUANTILE_PROBABILITIES)


def test_unknown_future_version_is_refused_with_a_clear_error():
    content = json.dumps({"version": metadata.FORMAT_VERSION + 1, "stats": 99}).encode()
    with pytest.raises(metadata.UnsupportedVersionError, match="version 2 is not supported"):
        metadata.parse_plugin_metadata(content)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"{}", b'{"version": "x"}', b"\xff\xfe", b'{"version": 1, "stats": 3}'],
)
def test_malformed_metadata_raises_value_error(content):
    with pytest.raises(ValueError, match="malformed"):
        metadata.parse_plugin_metadata(content)


def test_parse_requires_bytes():
    with pytest.raises(TypeError):
        metadata.parse_plugin_metadata("{}")


def test_encode_decode_round_trip():
    stats = np.arange(len(metadata.STAT_FIELDS), dtype=float)
    quantiles = np.linspace(-1, 1, len(metadata.QUANTILE_PROBABILITIES))
    histogram = np.array([[0.0, 1.0, 3.0], [1.0, 2.0, 4.0]])
    decoded = metadata.decode(metadata.encode(stats, quantiles, histogram))
    assert list(decoded.stats) == list(metadata.STAT_FIELDS)
    assert decoded.stat("mean") == metadata.STAT_FIELDS.index("mean")
    np.testing.assert_array_equal(decoded.quantiles, quantiles)
    np.testing.assert_array_equal(decoded.histogram, histogram)
    assert metadata.stat_index("l2_norm") == metadata.STAT_FIELDS.index("l2_norm")


@pytest.mark.parametrize(
    "values, message",
    [
        (np.zeros((2, 50)), "rank 2"),
        (np.zeros(5), "length 5"),
        (np.zeros(len(metadata.STAT_FIELDS) + len(metadata.QUANTILE_PROBABILITIES) + 4), "3k"),
        (np.zeros(100, dtype=np.int64), "dtype int64"),
    ],
)
def test_decode_rejects_malformed_tensors(values, message):
    with pytest.raises(ValueError, match=message):
        metadata.decode(values)


def _stored(seed, buckets):
    from tb_weightdiff import summary

    rng = np.random.default_rng(seed)
    return summary.weight_statistics(rng.standard_normal(100).astype(np.float32), buckets=buckets)


@pytest.mark.parametrize("bucket_counts", [(30, 30, 30), (30, 10, 30), (0,)])
def test_decode_series_gives_what_decode_gives(bucket_counts):
    stored = [_stored(seed, buckets) for seed, buckets in enumerate(bucket_counts)]
    summaries, table = metadata.decode_series(stored)
    assert len(summaries) == len(stored)
    assert (table is not None) == (len(set(bucket_counts)) == 1)
    if table is not None:
        np.testing.assert_array_equal(table, np.stack(stored))
    for got, values in zip(summaries, stored):
        expected = metadata.decode(values)
        assert list(got.stats) == list(expected.stats)
        np.testing.assert_array_equal(list(got.stats.values()), list(expected.stats.values()))
        np.testing.assert_array_equal(got.quantiles, expected.quantiles)
        np.testing.assert_array_equal(got.histogram, expected.histogram)
    assert len(summaries[1:]) == len(stored) - 1


def test_decode_series_rejects_what_decode_rejects():
    good = _stored(0, 30)
    with pytest.raises(ValueError, match="length"):
        metadata.decode_series([good, good[:-1]])
    with pytest.raises(ValueError, match="rank"):
        metadata.decode_series([good.reshape(1, -1), good.reshape(1, -1)])
    with pytest.raises(ValueError, match="dtype"):
        metadata.decode_series([good.astype(np.int64)])


def test_layer_type_is_an_optional_key_older_readers_ignore():
    import json

    created = metadata.create_summary_metadata(layer_type="Embedding")
    content = json.loads(created.plugin_data.content)
    assert content["layer_type"] == "Embedding" and content["version"] == metadata.FORMAT_VERSION
    assert metadata.parse_plugin_metadata(created.plugin_data.content).layer_type == "Embedding"
    # Without it (older writers), and with keys this reader does not know, it still parses.
    plain = metadata.create_summary_metadata()
    assert "layer_type" not in json.loads(plain.plugin_data.content)
    assert metadata.parse_plugin_metadata(plain.plugin_data.content).layer_type is None
    future = dict(content, layer_type=7, something_new=[1, 2])
    assert metadata.parse_plugin_metadata(json.dumps(future).encode()).layer_type is None
