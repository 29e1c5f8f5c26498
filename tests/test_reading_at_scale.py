"""Reading a logdir in bounded batches, once per source, and judging only what changed.

These are the behaviours the performance work relies on: a logdir larger
than one answer of TensorBoard's data server still answers (batches, and
halves on a too-large answer), a run holding both sources is read once, and
when one run logs a new step only that run is read and judged again.
"""

import numpy as np
import pytest
from tensorboard.plugins.histogram import summary_v2 as histogram_summary

from tb_weightdiff import judge
from tb_weightdiff import metadata
from tb_weightdiff import reader
from conftest import write_events
from logdirs import write_planted_logdir

PREFIX = "/data/plugin/tb_weightdiff"


class SpyProvider:
    """Passes calls through to a provider, recording each `read_tensors`."""

    def __init__(self, provider, fail_above=None):
        self._provider = provider
        self.reads = []
        self.fail_above = fail_above

    def read_tensors(self, ctx, *, experiment_id, plugin_name, downsample=None, run_tag_filter=None):
        self.reads.append((plugin_name, tuple(sorted(run_tag_filter.runs)), tuple(sorted(run_tag_filter.tags))))
        if self.fail_above is not None and len(run_tag_filter.runs) * len(run_tag_filter.tags) > self.fail_above:
            raise TooLarge()
        return self._provider.read_tensors(
            ctx, experiment_id=experiment_id, plugin_name=plugin_name,
            downsample=downsample, run_tag_filter=run_tag_filter,
        )

    def __getattr__(self, name):
        return getattr(self._provider, name)


class TooLarge(Exception):
    """What grpc raises for an answer over the channel's limit (its code() is all we look at)."""

    class _Code:
        name = "RESOURCE_EXHAUSTED"

    def code(self):
        return self._Code()


def _several_runs(tmp_path, count=4):
    for index in range(count):
        write_planted_logdir(tmp_path / ("run%d" % index))
    return tmp_path


def _flatten(series_list):
    return {
        (s.run, s.tag): (s.steps, [np.asarray(getattr(x, "histogram", x)).tolist() for x in s.summaries])
        for s in series_list
    }


def test_batched_reads_give_what_one_read_gives(tmp_path, loader):
    _several_runs(tmp_path)
    with reader.open_logdir(str(tmp_path), loader=loader) as opened:
        for plugin_name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME):
            whole, _ = reader.read_series(opened, plugin_name)
            spy = SpyProvider(opened.provider)
            small = reader.Logdir(spy, opened.loader)
            batches = list(reader.iter_read_series(small, plugin_name, budget=20))
            if plugin_name == metadata.PLUGIN_NAME:
                # 8 series x 6 steps per run: each run over the budget is split by tags.
                assert len(spy.reads) > len(batches) == 4
            else:
                # 2 series x 5 steps per run: two runs per read.
                assert len(spy.reads) == len(batches) == 2
            runs_per_batch = [{s.run for s in series} for series, _ in batches]
            assert all(a.isdisjoint(b) for i, a in enumerate(runs_per_batch) for b in runs_per_batch[i + 1 :])
            assert _flatten([s for series, _ in batches for s in series]) == _flatten(whole)
            assert len(whole) == {"tb_weightdiff": 4 * 8, "histograms": 4 * 2}[plugin_name]


def test_an_answer_too_large_is_read_again_in_halves(tmp_path):
    _several_runs(tmp_path)
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        whole, _ = reader.read_series(opened)
        spy = SpyProvider(opened.provider, fail_above=3)
        series, _ = reader.read_series(reader.Logdir(spy, opened.loader))
        assert _flatten(series) == _flatten(whole)
        assert len(spy.reads) > 8
        spy = SpyProvider(opened.provider, fail_above=0)  # even one tensor series: the error stands
        with pytest.raises(TooLarge):
            reader.read_series(reader.Logdir(spy, opened.loader))


def test_a_run_with_both_sources_is_read_once(tmp_path, loader):
    series = write_planted_logdir(tmp_path)
    # The planted run also gets Keras-style histograms of the same weights.
    write_events(
        tmp_path / "planted",
        {step: [histogram_summary.histogram_pb(tag + "/histogram", values[step]) for tag, values in series.items()]
         for step in range(1, 6)},
        suffix=".keras",
    )
    with reader.open_logdir(str(tmp_path), loader=loader) as opened:
        spy = SpyProvider(opened.provider)
        result = judge.analyze_logdir(reader.Logdir(spy, opened.loader))
    runs = {run["run"]: run for run in result["runs"]}
    assert runs["planted"]["source"] == metadata.PLUGIN_NAME
    assert any("Also holds 8 plain histogram series" in w for w in runs["planted"]["warnings"])
    histogram_reads = [read for read in spy.reads if read[0] == metadata.HISTOGRAM_PLUGIN_NAME]
    assert histogram_reads and all("planted" not in read[1] for read in histogram_reads)


