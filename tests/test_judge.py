"""tb_weightdiff.judge: which source each run is judged from, reading, restarts, both loaders."""


import numpy as np
import pytest

from tb_weightdiff import distance
from tb_weightdiff import judge
from tb_weightdiff import metadata
from tb_weightdiff import reader
from tb_weightdiff import summary
from tb_weightdiff import verdicts
from conftest import write_events
from series import by_layer, histogram, histograms, ours, walk


def test_a_run_with_both_sources_is_judged_from_ours(rng):
    arrays = walk(rng, rng.normal(size=(8, 8)), 3, 0.1)
    series = [
        ours("m/d/kernel", arrays, run="both"),
        histograms("m/d/kernel/histogram", arrays[1:], run="both"),
        histograms("m/d/kernel/histogram", arrays, run="keras_only"),
    ]
    runs = {run["run"]: run for run in judge.analyze_series(series)}
    assert runs["both"]["source"] == metadata.PLUGIN_NAME
    assert any("1 plain histogram series" in w for w in runs["both"]["warnings"])
    assert runs["keras_only"]["source"] == metadata.HISTOGRAM_PLUGIN_NAME
    forced = judge.analyze_series(series, source=metadata.HISTOGRAM_PLUGIN_NAME)
    assert [r["source"] for r in forced] == [metadata.HISTOGRAM_PLUGIN_NAME] * 2
    with pytest.raises(judge.AnalysisError):
        judge.analyze_series(series, source="images")


def test_gapped_late_and_repeated_steps(rng):
    arrays = walk(rng, rng.normal(size=(8, 8)), 4, 0.1)
    [run] = judge.analyze_series([ours("m/d/kernel", arrays, steps=[3, 4, 9, 10])])
    assert run["baseline_step"] == 3
    assert any("first logged step is 3" in w for w in run["warnings"])
    assert any("unevenly spaced" in w for w in run["warnings"])
    variable = run["layers"][0]["variables"][0]
    assert variable["steps"] == [3, 4, 9, 10]
    assert variable["per_step_shift"][0] is None and None not in variable["per_step_shift"][1:]
    # A step written twice (a restart) keeps its last value.
    repeated = ours("m/d/kernel", [arrays[0], arrays[1], arrays[2], arrays[3]], steps=[0, 1, 1, 2])
    [run] = judge.analyze_series([repeated])
    variable = run["layers"][0]["variables"][0]
    assert variable["steps"] == [0, 1, 2]
    # Per-step lists carry verdicts.DISPLAY_DIGITS significant digits.
    assert variable["relative_change_by_step"][1] == pytest.approx(
        np.linalg.norm(arrays[2] - arrays[0]) / np.linalg.norm(arrays[0]), rel=1e-6
    )


def test_skipped_series_are_reported_in_their_run():
    [run] = judge.analyze_series([], skipped=[("r", "t", "skipped: version 99 is not supported")])
    assert run["run"] == "r" and run["layers"] == []
    assert run["warnings"] == ["t: skipped: version 99 is not supported"]


# -- through real event files and both loaders -----------------------------------


def _legacy_histogram(tag, minimum, maximum, limits, counts):
    from tensorboard.compat.proto import summary_pb2

    proto = summary_pb2.HistogramProto(
        min=minimum, max=maximum, num=sum(counts), sum=0.0, sum_squares=0.0,
        bucket_limit=limits, bucket=counts,
    )
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, histo=proto)])


def test_legacy_histogram_protos_are_read_by_both_loaders(tmp_path, loader, read_logdir):
    # What torch.utils.tensorboard's add_histogram writes: a HistogramProto, its
    # outer bucket limits running to +-DBL_MAX, empty buckets at both ends.
    dbl_max = 1.7976931348623157e308
    write_events(
        tmp_path / "torch_run",
        {
            0: [_legacy_histogram("fc1.weight", -1.2, 1.7, [-2.0, -1.0, 0.0, 1.0, 2.0, dbl_max], [0, 3, 5, 4, 2, 0])],
            1: [_legacy_histogram("fc1.weight", -1.5, 1.9, [-dbl_max, -1.0, 0.0, 1.0, 2.0], [0, 2, 6, 5, 1])],
            2: [_legacy_histogram("fc1.weight", -1.5, 1.9, [-dbl_max, -1.0, 0.0, 1.0, 2.0], [0, 2, 6, 5, 1])],
        },
    )
    series = read_logdir(tmp_path, plugin_name=metadata.HISTOGRAM_PLUGIN_NAME)[("torch_run", "fc1.weight")]
    assert series.source == metadata.HISTOGRAM_PLUGIN_NAME
    assert series.steps == [0, 1, 2]
    first = np.asarray(series.summaries[0], dtype=np.float64)
    assert first.ndim == 2 and first.shape[1] == 3
    assert first[:, 2].sum() == 14
    # The loaders lay the buckets out differently (the Python loader drops empty
    # outer buckets, the Rust one keeps them, running backwards); the analysis
    # reads both as this distribution: min and max as the outer edges.
    expected = distance.wasserstein_histograms(
        histogram([-1.2, -1, 3], [-1, 0, 5], [0, 1, 4], [1, 1.7, 2]),
        histogram([-1.5, -1, 2], [-1, 0, 6], [0, 1, 5], [1, 1.9, 1]),
    )
    [run] = judge.analyze_series([series])
    [layer] = run["layers"]
    assert (layer["name"], layer["variables"][0]["name"]) == ("fc1", "weight")
    variable = layer["variables"][0]
    assert variable["distance_from_baseline"][1] == pytest.approx(expected, rel=1e-6)
    assert variable["per_step_shift"][2] == 0.0
    assert layer["verdict"] == "learning"


def test_analyze_logdir_with_both_loaders(tmp_path, rng, loader):
    kernel = rng.normal(size=(8, 8))
    arrays = walk(rng, kernel, 3, 0.1)
    write_events(
        tmp_path / "a",
        {step: [summary.weights_pb("m/d/kernel", a, reference=arrays[0], trainable=True)] for step, a in enumerate(arrays)},
    )
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary

    write_events(
        tmp_path / "b" / "train",
        {step: [histogram_summary.histogram_pb("m/d/kernel/histogram", a)] for step, a in enumerate(arrays[1:])},
    )
    with reader.open_logdir(str(tmp_path), loader=loader) as opened:
        result = judge.analyze_logdir(opened)
        only_b = judge.analyze_logdir(opened, runs=["b/train"])
        with pytest.raises(judge.UnknownRunError, match="'nope'.*'a', 'b/train'"):
            judge.analyze_logdir(opened, runs=["nope"])
    assert set(result) == {"thresholds", "runs"}
    assert [(r["run"], r["source"]) for r in result["runs"]] == [("a", "tb_weightdiff"), ("b/train", "histograms")]
    assert [r["run"] for r in only_b["runs"]] == ["b/train"]
    assert result["thresholds"] == verdicts.Thresholds().to_json()
    assert verdicts.verdicts_of(result) == {"learning"}


# -- the plugin's target size (its speed is benchmark 3's, not a test's) ------------


def _synthetic_series(rng, source, runs=5, tensors=40, steps=100, buckets=30):
    """In-memory series of the plugin's target size, built without event files."""
    series = []
    for run in range(runs):
        for tensor in range(tensors):
            tag = "model/dense_%d/%s" % (tensor // 2, ("kernel", "bias")[tensor % 2])
            scale = np.cumprod(1 + 0.01 * rng.random(steps))
            if source == metadata.HISTOGRAM_PLUGIN_NAME:
                low, high = -scale, scale
                edges = low[:, None] + (high - low)[:, None] * np.linspace(0, 1, buckets + 1)[None, :]
                counts = rng.integers(0, 50, (steps, buckets)).astype(float)
                values = list(np.stack([edges[:, :-1], edges[:, 1:], counts], axis=2))
            else:
                template = metadata.decode(summary.weight_statistics(rng.normal(size=256), reference=rng.normal(size=256)))
                values = []
                for step in range(steps):
                    stats = dict(template.stats, fingerprint=float(step), relative_change=0.01 * step)
                    values.append(metadata.WeightSummary(stats, template.quantiles * scale[step], template.histogram))
            series.append(reader.Series("run_%d" % run, tag, source, list(range(steps)), values))
    return series


@pytest.mark.parametrize("source", [metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME])
def test_plugin_sized_analysis_judges_every_series(rng, source):
    runs = judge.analyze_series(_synthetic_series(rng, source))
    assert [run["run"] for run in runs] == ["run_%d" % index for index in range(5)]
    assert all(len(run["layers"]) == 20 and run["source"] == source for run in runs)
    assert all(len(run["steps"]) == 100 for run in runs)


def test_a_restarted_series_follows_the_readers_rule(rng):
    """Steps 0..5 then 0..3 again: the restart replaces the earlier values from step 0 on,
    as TensorBoard's data server (and so the reader) has it, with a warning."""
    first = walk(rng, rng.normal(size=(6, 6)), 6, 0.1)
    second = walk(rng, first[0] * 2, 4, 0.1)
    series = ours("m/d/kernel", first + second, reference=first[0], steps=list(range(6)) + list(range(4)))
    [run] = judge.analyze_series([series])
    variable = run["layers"][0]["variables"][0]
    assert variable["steps"] == [0, 1, 2, 3]
    expected = np.linalg.norm(second[3] - first[0]) / np.linalg.norm(first[0])
    assert variable["relative_change"] == pytest.approx(expected, rel=1e-12)
    assert any("steps went back from 5 to 0" in warning for warning in run["warnings"])
    steps, kept, _ = reader.drop_orphaned_steps(series.steps, list(series.summaries))
    assert steps == variable["steps"] and kept[-1] is series.summaries[-1]
