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

    def __init__(self, provider, fail_above=None, too_large_tags=()):
        self._provider = provider
        self.reads = []
        self.fail_above = fail_above
        self.too_large_tags = set(too_large_tags)

    def read_tensors(self, ctx, *, experiment_id, plugin_name, downsample=None, run_tag_filter=None):
        self.reads.append((plugin_name, tuple(sorted(run_tag_filter.runs)), tuple(sorted(run_tag_filter.tags))))
        size = len(run_tag_filter.runs) * len(run_tag_filter.tags)
        if self.fail_above is not None and size > self.fail_above:
            raise TooLarge()
        if self.too_large_tags & set(run_tag_filter.tags):
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


def test_runs_of_a_few_thousand_tensors_are_read_one_by_one(monkeypatch):
    listing = {"run%d" % i: {"t%d" % t: _Listed(99) for t in range(20)} for i in range(5)}
    wanted = {run: list(tags) for run, tags in listing.items()}
    # 2,000 tensors per run: a read each, so that the next is read while one is judged.
    assert [runs for runs, _ in reader.read_batches(listing, wanted)] == [["run%d" % i] for i in range(5)]
    monkeypatch.setattr(reader, "READ_GROUP", 4_000)
    assert [runs for runs, _ in reader.read_batches(listing, wanted)] == [
        ["run0", "run1"], ["run2", "run3"], ["run4"]
    ]


class _ThirdReadFails(SpyProvider):
    def read_tensors(self, ctx, **kwargs):
        if len(self.reads) == 2:
            self.reads.append(None)
            raise RuntimeError("the data server went away")
        return super().read_tensors(ctx, **kwargs)


class _Listed:
    def __init__(self, max_step):
        self.max_step = max_step


def test_reading_ahead_gives_the_same_batches_and_raises_where_reading_would(tmp_path):
    _several_runs(tmp_path)
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        plain = list(reader.iter_read_series(opened, metadata.HISTOGRAM_PLUGIN_NAME, budget=10))
        ahead = list(reader.iter_read_series(opened, metadata.HISTOGRAM_PLUGIN_NAME, budget=10, ahead=True))
        assert len(ahead) == len(plain) == 4
        assert [_flatten(series) for series, _ in ahead] == [_flatten(series) for series, _ in plain]
        assert [warnings for _, warnings in ahead] == [warnings for _, warnings in plain]

        # The third read fails: the caller gets two batches, then the error.
        spy = _ThirdReadFails(opened.provider)
        failing = reader.Logdir(spy, opened.loader)
        got = []
        with pytest.raises(RuntimeError, match="went away"):
            for batch in reader.iter_read_series(failing, metadata.HISTOGRAM_PLUGIN_NAME, budget=10, ahead=True):
                got.append(batch)
        assert len(got) == 2

        # A caller that stops after the first batch: at most the next read was made.
        spy.reads.clear()
        for _ in reader.iter_read_series(failing, metadata.HISTOGRAM_PLUGIN_NAME, budget=10, ahead=True):
            break
        assert len(spy.reads) == 2


def test_an_answer_too_large_is_read_again_in_halves(tmp_path):
    _several_runs(tmp_path)
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        whole, _ = reader.read_series(opened)
        spy = SpyProvider(opened.provider, fail_above=3)
        series, _ = reader.read_series(reader.Logdir(spy, opened.loader))
        assert _flatten(series) == _flatten(whole)
        assert len(spy.reads) > 8
        # A single series too large to send: left out with a warning that names
        # it and says what to do; the others are read.
        spy = SpyProvider(opened.provider, fail_above=1, too_large_tags={"model/dense/kernel"})
        series, warnings = reader.read_series(reader.Logdir(spy, opened.loader))
        assert {s.tag for s in series} == {s.tag for s in whole} - {"model/dense/kernel"}
        assert {(run, tag) for run, tag, _ in warnings} == {
            (run, "model/dense/kernel") for run in {s.run for s in whole if s.tag == "model/dense/kernel"}
        }
        assert all("too large" in message and "--samples_per_plugin" in message for _, _, message in warnings)


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




def test_the_data_server_is_waited_for_even_if_it_words_its_log_otherwise(tmp_path, monkeypatch):
    """The CLI waits for the data server as TensorBoard does (its port file), then for its
    load: its log line, or, should a release reword it, a listing that stopped changing."""
    _several_runs(tmp_path, 2)
    with reader.open_logdir(str(tmp_path), loader="rust") as opened:
        expected, _ = reader.read_series(opened)
    monkeypatch.setattr(reader, "_LOADED_MARKER", "a line no data server writes")
    monkeypatch.setattr(reader, "_QUIET_SECONDS", 0.5)
    with reader.open_logdir(str(tmp_path), loader="rust", timeout=60) as opened:
        series, _ = reader.read_series(opened)
    assert _flatten(series) == _flatten(expected)


def test_a_data_server_that_never_starts_is_a_clear_error(tmp_path, monkeypatch):
    from tensorboard.data import server_ingester

    class _Binary:
        path = "/bin/sleep"  # takes none of the flags: exits at once

    monkeypatch.setattr(server_ingester, "get_server_binary", lambda: _Binary())
    with pytest.raises(reader.LogdirError, match="data server exited"):
        with reader.open_logdir(str(tmp_path), loader="rust", timeout=5):
            pass


def _tensor_protos():
    """Series as TensorBoard stores them: `tensor_content` bytes, and the other encodings."""
    from tensorboard.compat.proto import tensor_pb2
    from tensorboard.util import tensor_util

    rng = np.random.default_rng(7)
    histograms = [tensor_util.make_tensor_proto(rng.normal(size=(30, 3))) for _ in range(4)]
    stats = [tensor_util.make_tensor_proto(rng.normal(size=12).astype(np.float32)) for _ in range(3)]
    counts = [tensor_util.make_tensor_proto(np.arange(6, dtype=np.int64) * k) for k in range(3)]
    # Edges of different lengths per step: one buffer cannot hold them.
    ragged = [tensor_util.make_tensor_proto(rng.normal(size=(k, 3))) for k in (30, 29, 31)]
    # A typed value field instead of tensor_content (what a hand-written proto may use).
    typed = tensor_pb2.TensorProto(dtype=1, float_val=[1.5, 2.5, 3.5])
    typed.tensor_shape.dim.add(size=3)
    mixed = [tensor_util.make_tensor_proto(np.ones(3, dtype=np.float32)), typed]
    strings = [tensor_util.make_tensor_proto(np.array([b"a", b"bc"], dtype=object))]
    return {"histograms": histograms, "stats": stats, "counts": counts, "ragged": ragged,
            "mixed": mixed, "strings": strings, "empty": []}


@pytest.mark.parametrize("name", ["histograms", "stats", "counts", "ragged", "mixed", "strings", "empty"])
def test_tensors_decoded_as_one_buffer_equal_make_ndarray_one_by_one(name):
    from tensorboard.util import tensor_util

    tensors = _tensor_protos()[name]
    decoded = reader.decode_tensors(tensors)
    expected = [tensor_util.make_ndarray(tensor) for tensor in tensors]
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    if decoded and name in ("histograms", "stats", "counts"):
        # One buffer: rows of one array, which the caller may keep or change safely.
        assert decoded[0].base is not None and decoded[0].base is decoded[-1].base
        decoded[0][...] = 0
        assert np.array_equal(reader.decode_tensors(tensors)[0], expected[0])


def _tensor_data(tensors, steps=None):
    from tensorboard.data.proto import data_provider_pb2

    data = data_provider_pb2.TensorData()
    data.step.extend(steps if steps is not None else range(len(tensors)))
    data.wall_time.extend([1.5e9 + i for i in range(len(tensors))])
    for tensor in tensors:
        data.value.add().CopyFrom(tensor)
    return data


@pytest.mark.parametrize("name", ["histograms", "stats", "counts", "ragged", "mixed", "strings", "empty"])
def test_tensors_cut_from_the_wire_equal_make_ndarray_or_are_left_to_it(name):
    from tensorboard.util import tensor_util

    tensors = _tensor_protos()[name]
    data = _tensor_data(tensors, steps=[3, 10 ** 12, 2 ** 40 + 7][: len(tensors)] + list(range(3, len(tensors))))
    stacked = reader._stacked_from_wire(data)
    if name in ("histograms", "stats", "counts"):
        expected = [tensor_util.make_ndarray(tensor) for tensor in tensors]
        assert stacked.dtype == expected[0].dtype and stacked.shape == (len(tensors),) + expected[0].shape
        assert np.array_equal(stacked, np.stack(expected))
    else:
        assert stacked is None  # decode_tensors reads them, tensor by tensor where it must


def test_tensors_alike_in_length_but_not_in_shape_or_dtype_are_not_cut_from_the_wire():
    from tensorboard.util import tensor_util

    same = [tensor_util.make_tensor_proto(np.full((4, 3), float(k))) for k in range(3)]
    reshaped = same[:1] + [tensor_util.make_tensor_proto(np.full((3, 4), 1.0))] + same[2:]
    retyped = same[:1] + [tensor_util.make_tensor_proto(np.full((4, 3), 1, dtype=np.int64))] + same[2:]
    assert reader._stacked_from_wire(_tensor_data(same)) is not None
    for tensors in (reshaped, retyped):
        assert reader._stacked_from_wire(_tensor_data(tensors)) is None
        decoded = reader.decode_tensors(_tensor_data(tensors).value)
        assert [a.shape for a in decoded] == [tensor_util.make_ndarray(t).shape for t in tensors]
        assert [a.dtype for a in decoded] == [tensor_util.make_ndarray(t).dtype for t in tensors]


def test_the_data_server_is_read_through_its_stub_and_gives_what_read_tensors_gives(tmp_path, monkeypatch):
    _several_runs(tmp_path, count=2)
    with reader.open_logdir(str(tmp_path), loader="rust") as opened:
        assert reader._data_server_stub(opened.provider) is not None
        fast = {name: _flatten(reader.read_series(opened, name)[0])
                for name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME)}
        fast_result = judge.analyze_logdir(opened)
        monkeypatch.setattr(reader, "_data_server_stub", lambda provider: None)
        public = {name: _flatten(reader.read_series(opened, name)[0])
                  for name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME)}
        public_result = judge.analyze_logdir(opened)
    assert fast == public and all(fast.values())
    assert fast_result == public_result
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        assert reader._data_server_stub(opened.provider) is None


def test_each_call_to_tensorboards_data_server_has_a_connection_of_its_own_and_the_same_answers(tmp_path, monkeypatch):
    """The Rust data server leaves Nagle's algorithm on, so a reused connection
    waits 40 ms for a delayed ACK on most answers: every listing and read goes
    through a channel of its own, and gives what TensorBoard's channel gives."""
    _several_runs(tmp_path, count=2)
    with reader.open_logdir(str(tmp_path), loader="rust") as opened:
        per_call = opened.provider._provider  # pylint: disable=protected-access
        assert isinstance(per_call, reader.ConnectionPerCall)
        shared = per_call._provider  # TensorBoard's GrpcDataProvider on one channel
        channels = []
        real = reader.ConnectionPerCall._stub

        def counted(self):
            channels.append(1)
            return real(self)

        monkeypatch.setattr(reader.ConnectionPerCall, "_stub", counted)
        ctx, experiment = opened.ctx, opened.experiment_id
        for plugin_name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME):
            ours = per_call.list_tensors(ctx, experiment_id=experiment, plugin_name=plugin_name)
            theirs = shared.list_tensors(ctx, experiment_id=experiment, plugin_name=plugin_name)
            assert ours == theirs and ours
        assert [r.run_name for r in per_call.list_runs(ctx, experiment_id=experiment)] == [
            r.run_name for r in shared.list_runs(ctx, experiment_id=experiment)
        ]
        assert len(channels) == 3
        read, _ = reader.read_series(opened, metadata.PLUGIN_NAME)
        assert len(channels) > 3 and read  # reads through the stub, on channels of their own
        monkeypatch.setattr(reader, "_data_server_stub", lambda provider: None)
        assert _flatten(reader.read_series(opened, metadata.PLUGIN_NAME)[0]) == _flatten(read)


def test_a_connection_per_call_pings_while_its_call_is_open(tmp_path, monkeypatch):
    """Even a new connection waits now and then for the client's delayed ACK
    (40 ms): its channel sends keepalive pings every few ms while a call is
    open, whose packets carry that ACK, and none while no call is."""
    import grpc  # pylint: disable=import-outside-toplevel

    _several_runs(tmp_path, count=1)
    seen = []
    real = grpc.secure_channel

    def recorded(target, credentials, options=None, **kwargs):
        seen.append(dict(options or ()))
        return real(target, credentials, options=options, **kwargs)

    monkeypatch.setattr(grpc, "secure_channel", recorded)
    with reader.open_logdir(str(tmp_path), loader="rust") as opened:
        listed = opened.provider.list_tensors(opened.ctx, experiment_id=opened.experiment_id,
                                              plugin_name=metadata.PLUGIN_NAME)
        read, _ = reader.read_series(opened, metadata.PLUGIN_NAME)
    assert listed and read
    ours = [options for options in seen if options.get("grpc.use_local_subchannel_pool") == 1]
    assert len(ours) >= 2  # the listing and the read, each on a channel of its own
    for options in ours:
        assert 0 < options["grpc.keepalive_time_ms"] <= 5
        assert options["grpc.keepalive_permit_without_calls"] == 0
        assert options["grpc.http2.max_pings_without_data"] == 0  # however many


def test_only_tensorboards_grpc_provider_on_this_machine_gets_a_connection_per_call(monkeypatch):
    from tensorboard.data import grpc_provider  # pylint: disable=import-outside-toplevel

    local = grpc_provider.GrpcDataProvider("localhost:6806", stub=None)
    assert isinstance(reader.connection_per_call(local), reader.ConnectionPerCall)
    monkeypatch.setenv("TB_WEIGHTDIFF_CONNECTION_PER_CALL", "0")
    assert reader.connection_per_call(local) is local
    monkeypatch.delenv("TB_WEIGHTDIFF_CONNECTION_PER_CALL")
    # A data server elsewhere (--grpc_data_provider host:port): a connection per
    # call would cost a handshake over the network each time; left as it is.
    remote = grpc_provider.GrpcDataProvider("tb-data.example.com:6806", stub=None)
    assert reader.connection_per_call(remote) is remote
    other = SpyProvider(None)
    assert reader.connection_per_call(other) is other
    assert reader.connection_per_call(None) is None
