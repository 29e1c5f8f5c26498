"""Benchmark 3: the verdicts of a whole logdir, against TensorBoard's own histogram route and a raw read.

  python benchmarks/bench_logdir.py [--mode smoke|quick|default|full]

A logdir of Keras-style weight histograms (`make_logdir.py --source
histograms`: 5 runs x 40 tensors x 100 epochs; with --mode full also 20 x
100 x 200) is served by a real `tensorboard --samples_per_plugin
histograms=0,tb_weightdiff=0` (Rust data server). Measured in that process:

- ours: one GET /data/plugin/tb_weightdiff/verdicts, which reads every
  series and judges every layer of every run, judged cold: the first
  /verdicts of a fresh TensorBoard process (after one GET /runs, so that
  its gRPC channel is up), the median over several processes. The plugin
  keeps what it judged (each run's verdicts per data version and
  thresholds; each series' per-step distances and rescale fits by content),
  so three more figures come from the last process: new thresholds (what
  the tab's threshold form sends: every run judged again, its distances
  memoised), the same request repeated (answer cache), and, on a copy of
  the logdir, the request after every run logged one more step;
- peer 1: what the Histograms tab does to show them all: GET
  /data/plugin/histograms/histograms?run=..&tag=.. for every series, one
  after another;
- peer 2: the data provider's raw batched read: `read_tensors` of every run
  and tag in one call, through TensorBoard's Rust data server
  (`tb_weightdiff.reader.open_logdir(loader="rust")`), in this process,
  just before and just after each process's first /verdicts (the median of
  those reads), so that both sides see the machine at the same speed.
  It reads on a gRPC connection of its own, as the plugin does (see
  `reader.ConnectionPerCall`); on TensorBoard's one channel some of its
  answers would wait 40 ms more;
- the repeated GET (what each poll of the tab costs) is also measured with
  the plugin on TensorBoard's one gRPC channel
  (TB_WEIGHTDIFF_CONNECTION_PER_CALL=0), whose answers mostly wait 40 ms for
  a delayed ACK because the Rust data server leaves Nagle's algorithm on;
- a listing of every series on a connection of its own, with the keepalive
  pings the plugin's channels send while a call is open against the same
  listing without them (taking turns): without, a few still wait 40 ms.

The same is measured on our own summaries (`--source tb_weightdiff`, what
`WeightDiffCallback` writes) against the raw read.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "3 logdir"

SIZES = {
    "smoke": [(2, 4, 5)],
    "quick": [(5, 40, 100)],
    "default": [(5, 40, 100)],
    "full": [(5, 40, 100), (20, 100, 200)],
}


class RawRead:
    """The peer: one batched `read_tensors` of every run and tag (Rust data
    server), in this process, on a data server that stays open, so that its
    reads can take turns with the TensorBoards' requests."""

    def __init__(self, path, plugin_name):
        # pylint: disable=import-outside-toplevel
        from tensorboard.data import provider as provider_lib

        from tb_weightdiff import reader

        self._reader = reader
        self._opened = reader.open_logdir(path, loader="rust")
        self._logdir = self._opened.__enter__()
        self._plugin_name = plugin_name
        listing = self._logdir.provider.list_tensors(self._logdir.ctx, experiment_id="", plugin_name=plugin_name)
        self._filter = provider_lib.RunTagFilter(
            runs=sorted(listing), tags=sorted({tag for tags in listing.values() for tag in tags})
        )
        self.tensors = 0
        self.times = []
        self.read()  # warm-up, not counted
        self.times = []

    def read(self):
        started = time.perf_counter()
        data = self._logdir.provider.read_tensors(
            self._logdir.ctx, experiment_id="", plugin_name=self._plugin_name,
            downsample=self._reader.ALL_SAMPLES, run_tag_filter=self._filter,
        )
        self.times.append(time.perf_counter() - started)
        self.tensors = sum(len(points) for tags in data.values() for points in tags.values())

    def listing_waits(self, count):
        """A listing of every series, `count` times on a connection of its own
        with keepalive pings (what the plugin does) and `count` times without,
        taking turns. Returns `{pinging: (mean seconds, listings over 20 ms)}`:
        the Rust data server's Nagle makes a few wait 40 ms for a delayed ACK.
        (Not `common.interleaved`: its median would hide the waits.)"""
        per_call = self._logdir.provider._provider  # pylint: disable=protected-access
        if not isinstance(per_call, self._reader.ConnectionPerCall):
            return None

        def listing(ping_ms):
            per_call.PING_MS = ping_ms
            return common.time_once(lambda: per_call.list_tensors(
                self._logdir.ctx, experiment_id="", plugin_name=self._plugin_name))

        times = {True: [], False: []}
        try:
            for _ in range(count):
                times[True].append(listing(type(per_call).PING_MS))
                times[False].append(listing(2**31 - 1))  # never, within a call
        finally:
            del per_call.PING_MS  # the class's again
        return {key: (sum(values) / len(values), sum(value > 0.020 for value in values)) for key, values in times.items()}

    def close(self):
        self._opened.__exit__(None, None, None)


def histogram_loop_seconds(server):
    """Seconds to fetch every series through TensorBoard's Histograms route, one after another."""
    tags = server.get_json("/data/plugin/histograms/tags")
    pairs = [(run, tag) for run in sorted(tags) for tag in sorted(tags[run])]
    started = time.perf_counter()
    size = 0
    for run, tag in pairs:
        status, body, _ = server.get("/data/plugin/histograms/histograms?" + urllib.parse.urlencode({"run": run, "tag": tag}))
        if status != 200:
            raise RuntimeError("histograms route: %s %s" % (status, body[:200]))
        size += len(body)
    return time.perf_counter() - started, len(pairs), size


def get_verdicts(server, query=""):
    status, body, seconds = server.get("/data/plugin/tb_weightdiff/verdicts" + query)
    if status != 200:
        raise RuntimeError("HTTP %s" % status)
    return seconds, len(body)


def _served(path, runs, last_step):
    """A TensorBoard on `path`, its data loaded and its gRPC channel up."""
    server = common.TensorBoard(path)
    server.wait_for_data(runs, last_step)
    server.get_json("/data/plugin/tb_weightdiff/runs")
    return server


POLLS = 15


def _poll(server):
    """Median seconds of a repeated GET /verdicts (the answer cache): what each poll of the tab costs."""
    return common.median([get_verdicts(server)[0] for _ in range(POLLS)])


def _poll_on_tensorboards_channel(path, runs, last_step):
    """`_poll` with the plugin on TensorBoard's one gRPC channel (TB_WEIGHTDIFF_CONNECTION_PER_CALL=0)."""
    os.environ["TB_WEIGHTDIFF_CONNECTION_PER_CALL"] = "0"
    try:
        server = _served(path, runs, last_step)
    finally:
        del os.environ["TB_WEIGHTDIFF_CONNECTION_PER_CALL"]
    try:
        get_verdicts(server)
        return _poll(server)
    finally:
        server.stop()


def _log_one_more_step(path, runs, tensors, steps, source):
    """Appends step `steps` to every run of the benchmark logdir at `path` (a new event file per run)."""
    from make_logdir import make_logdir  # pylint: disable=import-outside-toplevel

    extra = path + ".extra"
    shutil.rmtree(extra, ignore_errors=True)
    make_logdir(extra, runs=runs, tensors=tensors, steps=steps, source=source, step_list=[steps])
    for run in os.listdir(extra):
        for name in os.listdir(os.path.join(extra, run)):
            shutil.move(os.path.join(extra, run, name), os.path.join(path, run, name))
    shutil.rmtree(extra, ignore_errors=True)


def measure(runs, tensors, steps, mode, source="histograms"):
    rows = []
    size = "%d runs x %d tensors x %d steps" % (runs, tensors, steps)
    label = "Keras-style histograms" if source == "histograms" else "our summaries"
    path = common.benchmark_logdir(runs, tensors, steps, source=source)
    large = runs * tensors * steps > 100_000
    repeats = 2 if large else {"smoke": 2, "quick": 3, "default": 7, "full": 7}[mode]
    processes = 1 if (large or mode in ("smoke", "quick")) else 3
    loops = 1 if (large or mode in ("smoke", "quick")) else 2
    # Judging itself is timed: the plugin must not judge ahead on its own
    # (at startup, or on a plugins listing) while requests are timed.
    os.environ["TB_WEIGHTDIFF_WARM_UP"] = "0"
    raw_read = RawRead(path, source)
    cold = []
    for process in range(processes):
        server = _served(path, runs, steps - 1)
        try:
            # The peer's read and the first /verdicts take turns, process by
            # process: this shared machine's speed drifts by 2x within minutes.
            raw_read.read()
            cold.append(get_verdicts(server)[0])
            raw_read.read()
            if process < processes - 1:
                continue
            cached = _poll(server)
            rethresholded = []
            body_size = 0
            for index in range(repeats):
                seconds, body_size = get_verdicts(server, common.fresh_verdicts_query(index))
                rethresholded.append(seconds)
            rethresholded = common.median(rethresholded)
            loop = None
            if source == "histograms":
                loop_times = []
                for _ in range(loops):
                    seconds, series, loop_bytes = histogram_loop_seconds(server)
                    loop_times.append(seconds)
                loop = common.median(loop_times)
        finally:
            server.stop()
    cold = common.median(cold)
    # One more step in every run, on a copy: what a poll costs during training.
    scratch = tempfile.mkdtemp(prefix="bench_logdir_")
    try:
        copy = os.path.join(scratch, "logdir")
        shutil.copytree(path, copy)
        server = _served(copy, runs, steps - 1)
        try:
            get_verdicts(server)
            _log_one_more_step(copy, runs, tensors, steps, source)
            server.wait_for_data(runs, steps)
            after_step = get_verdicts(server)[0]
        finally:
            server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shared_poll = _poll_on_tensorboards_channel(path, runs, steps - 1) if source == "histograms" else None
    for _ in range(max(0, (2 if large else repeats) - len(raw_read.times))):
        raw_read.read()
    listings = 40 if mode == "smoke" else 400
    waits = raw_read.listing_waits(listings) if source == "histograms" else None
    raw_read.close()
    raw, tensors_read = common.median(raw_read.times), raw_read.tensors
    figure = "GET /verdicts, %s, %s, judged cold" % (size, label)
    if loop is not None:
        rows.append(common.row(
            BENCH, figure + " vs the Histograms route for every series", cold * 1e3, loop * 1e3,
            peer_name="%d GETs /histograms" % series, limit=0.05,
            note="%d series, %.1f MB of histogram JSON vs %.1f MB of verdicts" % (series, loop_bytes / 1e6, body_size / 1e6),
        ))
    rows.append(common.row(
        BENCH, figure + " vs one raw read_tensors", cold * 1e3, raw * 1e3,
        peer_name="read_tensors (%d tensors)" % tensors_read, limit=1.2,
        note="the first /verdicts of a fresh TensorBoard, median of %d processes" % processes,
    ))
    rows.append(common.row(
        BENCH, "  same, new thresholds (every run judged again; distances memoised), %s" % size,
        rethresholded * 1e3, raw * 1e3, peer_name="read_tensors",
    ))
    rows.append(common.row(
        BENCH, "  same, after every run logged one more step, %s" % size, after_step * 1e3, raw * 1e3,
        peer_name="read_tensors",
    ))
    if shared_poll is not None:
        rows.append(common.row(
            BENCH, "  repeated GET /verdicts (answer cache: a poll of the tab), a gRPC connection per call, %s" % size,
            cached * 1e3, shared_poll * 1e3, peer_name="same on TensorBoard's one channel",
            note="median of %d polls each; TensorBoard's Rust data server leaves Nagle on" % POLLS,
        ))
    else:
        rows.append(common.row(
            BENCH, "  repeated GET /verdicts (answer cache), %s" % size, cached * 1e3, raw * 1e3,
            peer_name="read_tensors",
        ))
    if waits is not None:
        (pinging, pinging_waits), (silent, silent_waits) = waits[True], waits[False]
        rows.append(common.row(
            BENCH, "  a listing of every series (%d), a gRPC connection per call, mean of %d" % (runs * tensors, listings),
            pinging * 1e3, silent * 1e3, peer_name="same without keepalive pings",
            note="%d / %d of %d listings over 20 ms, pinging / not" % (pinging_waits, silent_waits, listings),
        ))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    rows = []
    for runs, tensors, steps in SIZES[args.mode]:
        print("== %d runs x %d tensors x %d steps" % (runs, tensors, steps), flush=True)
        first = (runs, tensors, steps) == SIZES[args.mode][0]
        rows.extend(measure(runs, tensors, steps, args.mode, "histograms"))
        if first and args.mode != "smoke":
            rows.extend(measure(runs, tensors, steps, args.mode, "tb_weightdiff"))
    common.emit(rows, args.rows_out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
