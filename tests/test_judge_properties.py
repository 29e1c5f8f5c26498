"""Property tests of tb_weightdiff.judge: random series of either source never raise,
and always give verdicts of the contract with finite, non-negative shifts."""

import json
import math

import numpy as np
from hypothesis import given, strategies as st

from tb_weightdiff import judge
from tb_weightdiff import metadata
from tb_weightdiff import reader
from tb_weightdiff import summary
from tb_weightdiff import verdicts
from test_distance_properties import SETTINGS, buckets, scales


def _strict(result):
    def reject(constant):
        raise AssertionError("%s in JSON" % constant)

    return json.loads(verdicts.to_json(result), parse_constant=reject)


def _check_runs(runs):
    _strict({"runs": runs})
    for run in runs:
        for layer in run["layers"]:
            assert layer["verdict"] in verdicts.VERDICTS
            for variable in layer["variables"]:
                assert variable["verdict"] in verdicts.VERDICTS
                assert len(variable["per_step_shift"]) == len(variable["steps"])
                for value in variable["per_step_shift"] + variable["shift_from_baseline"]:
                    assert value is None or (math.isfinite(value) and value >= 0)


@SETTINGS
@given(st.data())
def test_histogram_series_never_raise(data):
    series = []
    for index in range(data.draw(st.integers(1, 3))):
        steps = sorted(data.draw(st.sets(st.integers(0, 50), min_size=0, max_size=5)))
        values = []
        for _ in steps:
            h = data.draw(buckets(max_buckets=4))
            if h.size and data.draw(st.integers(0, 9)) == 0:  # now and then a NaN edge
                h = h.copy()
                h[0, 0] = np.nan
            values.append(h)
        series.append(reader.Series("run", "m/layer%d/kernel/histogram" % (index % 2), metadata.HISTOGRAM_PLUGIN_NAME, steps, values))
    _check_runs(judge.analyze_series(series))


@SETTINGS
@given(st.data())
def test_our_series_never_raise(data):
    size = data.draw(st.integers(0, 8))
    scale = data.draw(scales)
    arrays = []
    for _ in range(data.draw(st.integers(1, 4))):
        values = data.draw(st.lists(st.one_of(st.floats(-1e3, 1e3), st.sampled_from([0.0, np.nan, np.inf])), min_size=size, max_size=size))
        arrays.append(np.asarray(values, dtype=np.float64) * scale)
    reference = arrays[0] if data.draw(st.booleans()) else None
    steps = sorted(data.draw(st.sets(st.integers(0, 100), min_size=len(arrays), max_size=len(arrays))))
    series = [
        reader.Series(
            "run",
            data.draw(st.sampled_from(["a/kernel", "a/bias", "b/w"])) + str(i),
            metadata.PLUGIN_NAME,
            [step],
            [metadata.decode(summary.weight_statistics(array, reference=reference, trainable=True))],
        )
        for i, (step, array) in enumerate(zip(steps, arrays))
    ]
    one_tag = reader.Series(
        "run",
        "c/kernel",
        metadata.PLUGIN_NAME,
        steps,
        [metadata.decode(summary.weight_statistics(array, reference=reference, trainable=False)) for array in arrays],
    )
    _check_runs(judge.analyze_series(series + [one_tag]))
