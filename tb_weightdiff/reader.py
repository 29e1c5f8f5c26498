"""Reading weight summaries out of a logdir through TensorBoard's data providers.

The plugin gets a data provider from TensorBoard (`context.data_provider`);
the CLI and the tests open one themselves with `open_logdir`, preferring the
Rust data server TensorBoard uses by default and falling back to TensorBoard's
Python loader (`EventMultiplexer`). Either way every sample is kept: the CLI
judges the whole history, not TensorBoard's default 10 or 100 samples.

Nothing here imports TensorFlow.
"""

import bisect
import collections.abc
import concurrent.futures
import contextlib
import dataclasses
import logging
import operator
import os
import subprocess
import tempfile
import threading
import time

import numpy as np
from tensorboard import context as tb_context

from tb_weightdiff import metadata

logger = logging.getLogger(__name__)

# `read_tensors` needs a sample count; this is "everything" for any real log.
ALL_SAMPLES = 1 << 30

LOADERS = ("auto", "rust", "python")

# Tensors asked for per `read_tensors` call. TensorBoard's channel to its data
# server accepts answers up to 256 MiB: 50,000 of our summaries with 30 buckets
# are 50,000 x 172 float64 (69 MB), 50,000 30-bucket histograms 36 MB. Reading in such batches also bounds the
# memory one request holds. The count per series is estimated from the
# listing as min(last step + 1, _POINTS_PER_SERIES_ESTIMATE); an answer that
# is still too large is read again in halves.
READ_BUDGET = 50_000
# Runs share one read until it holds this many tensors. A read costs little
# beyond its tensors (five reads of a run each take as long as one read of all
# five), and with separate reads a judge works on one batch while the next is
# read (`iter_read_series(..., ahead=True)`).
READ_GROUP = 2_000
_POINTS_PER_SERIES_ESTIMATE = 500


class LogdirError(ValueError):
    """The logdir cannot be read (missing, not a directory, no data server)."""


class SeriesTooLargeError(ValueError):
    """One series alone is larger than TensorBoard's data server can send in one answer."""

    def __init__(self, run, tag):
        super().__init__(
            "skipped: too large to read through TensorBoard's data server (over its 256 MiB answer "
            "limit); start TensorBoard with --samples_per_plugin tb_weightdiff=500,histograms=500 "
            "(or fewer) to keep fewer of its steps"
        )
        self.run, self.tag = run, tag


@dataclasses.dataclass
class Logdir:
    """An open logdir: a data provider plus what its calls need."""

    provider: object
    loader: str  # "rust" or "python"
    experiment_id: str = ""
    ctx: object = dataclasses.field(default_factory=tb_context.RequestContext)


class ListingMemo:
    """A data provider whose listings are fetched once.

    Every listing is a gRPC round trip to TensorBoard's data server, however
    small the logdir, and one request of the tab needs the same
    listings several times (its data version, which source each run is
    judged from, what to read). The plugin wraps TensorBoard's provider in one
    of these per request; a logdir the CLI opened does not change, so it keeps
    one for good. Everything else is passed through.
    """

    READS_PASS_THROUGH = True  # see `_data_server_stub`

    def __init__(self, provider):
        self._provider = provider
        self._listings = {}
        self._lock = threading.Lock()

    def _listed(self, key, fetch):
        with self._lock:
            if key in self._listings:
                return self._listings[key]
        value = fetch()
        with self._lock:
            return self._listings.setdefault(key, value)

    def list_tensors(self, ctx, *, experiment_id, plugin_name, run_tag_filter=None):
        if run_tag_filter is not None:
            return self._provider.list_tensors(
                ctx, experiment_id=experiment_id, plugin_name=plugin_name, run_tag_filter=run_tag_filter
            )
        return self._listed(
            ("tensors", experiment_id, plugin_name),
            lambda: self._provider.list_tensors(ctx, experiment_id=experiment_id, plugin_name=plugin_name),
        )

    def list_runs(self, ctx, *, experiment_id):
        return self._listed(
            ("runs", experiment_id), lambda: self._provider.list_runs(ctx, experiment_id=experiment_id)
        )

    def __getattr__(self, name):
        return getattr(self._provider, name)


def list_tensors(logdir, plugin_name):
    """`{run: {tag: TensorTimeSeries}}` of one plugin's weight series (one listing call).

    Our plugin's reset summaries (`metadata.is_reset_content`) are not
    weight series: `list_resets` lists them.
    """
    listing = _listing(logdir, plugin_name)
    if plugin_name != metadata.PLUGIN_NAME:
        return listing
    return _of_kind(listing, reset=False)


def list_resets(logdir):
    """`{run: {tag: TensorTimeSeries}}` of the reset summaries (the same listing call, memoised
    by `ListingMemo`)."""
    return _of_kind(_listing(logdir, metadata.PLUGIN_NAME), reset=True)


def _listing(logdir, plugin_name):
    return logdir.provider.list_tensors(logdir.ctx, experiment_id=logdir.experiment_id, plugin_name=plugin_name)


def _of_kind(listing, reset):
    found = {}
    for run, run_tags in listing.items():
        kept = {
            tag: series for tag, series in run_tags.items()
            if metadata.is_reset_content(series.plugin_content) == reset
        }
        if kept:
            found[run] = kept
    return found


@dataclasses.dataclass
class ResetSeries:
    """The reset checks of one layer (or block) of a run, decoded.

    Attributes:
      run, tag: as TensorBoard names them.
      name: the layer or block as its writer named it.
      tags: the weight tags it resets.
      metrics: the metric names, in the order of `metric_values`' entries.
      steps: int steps, ascending.
      fields: per step, `{field: float}` for `metadata.RESET_FIELDS`.
      metric_values: per step, `[(as trained, layer reset, all reset)]` per metric.
    """

    run: str
    tag: str
    name: str
    tags: tuple
    metrics: tuple
    steps: list
    fields: list
    metric_values: list


def read_resets(logdir, runs):
    """The reset checks of `runs`: `({run: [ResetSeries]}, [(run, tag, message)])`.

    A series with metadata of an unknown version, or damaged tensors, is
    left out with a `(run, tag, "skipped: ...")` warning, as weight series are.
    """
    listing = list_resets(logdir)
    wanted, warnings, parsed = {}, [], {}
    for run in sorted(set(runs) & set(listing)):
        for tag, time_series in sorted(listing[run].items()):
            try:
                parsed[run, tag] = metadata.parse_reset_metadata(time_series.plugin_content)
            except ValueError as error:
                warnings.append((run, tag, "skipped: %s" % error))
                continue
            wanted.setdefault(run, []).append(tag)
    found = {}
    if not wanted:
        return found, warnings
    too_large = []
    data = _read(logdir, metadata.PLUGIN_NAME, sorted(wanted), sorted({t for tags in wanted.values() for t in tags}),
                 too_large)
    warnings.extend(too_large)
    for run in sorted(wanted):
        for tag in wanted[run]:
            info = parsed[run, tag]
            steps, values, _ = drop_orphaned_steps(*data.get(run, {}).get(tag, ([], [])))
            try:
                decoded = [metadata.decode_reset(value, len(info.metrics)) for value in values]
            except ValueError as error:
                warnings.append((run, tag, "skipped: %s" % error))
                continue
            if steps:
                found.setdefault(run, []).append(ResetSeries(
                    run, tag, info.name, info.tags, info.metrics, steps,
                    [fields for fields, _ in decoded], [metric for _, metric in decoded],
                ))
    return found, warnings


@dataclasses.dataclass
class Series:
    """One weight tensor's time series, decoded.

    Attributes:
      run, tag: as TensorBoard names them.
      steps: list of int steps, ascending.
      summaries: for our own plugin, `metadata.WeightSummary` per step;
        for plain histograms, `[k, 3]` float64 arrays per step (a list, or
        `StackedRows` when the reader decoded them as one array).
      source: `metadata.PLUGIN_NAME` or `metadata.HISTOGRAM_PLUGIN_NAME`.
      table: for our own plugin, optionally the `[steps, length]` float64
        array of the stored tensors, row by row (`metadata.decode_series`);
        the analysis reads its columns directly.
      layer_type: for our own plugin, the layer class its writer recorded
        (`metadata.PluginData.layer_type`), or None.
    """

    run: str
    tag: str
    source: str
    steps: list
    summaries: list
    table: object = None
    layer_type: str = None


# What the data server logs (with --verbose) when its one load cycle ends; a
# release that rewords it costs the stable-listing wait, not a hang.
_LOADED_MARKER = "Finished load cycle"
# Without that line, the load counts as done once the listing and the log
# have not changed for this long.
_QUIET_SECONDS = 2.0
# As TensorBoard does, wait this long for the data server to write its port.
START_TIMEOUT = 60


def _exited(process, stderr_lines):
    return LogdirError(
        "TensorBoard's data server exited (%d): %s" % (process.returncode, " ".join(stderr_lines[-3:]).strip())
    )


def _wait_for_port(process, port_file, stderr_lines, timeout):
    """The port the data server listens on, once it has written it (as TensorBoard waits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(port_file):
            with open(port_file) as handle:
                text = handle.read()
            if text.endswith("\n") and text.strip().isdigit():
                return int(text)
        if process.poll() is not None:
            raise _exited(process, stderr_lines)
        time.sleep(0.02)
    raise LogdirError("TensorBoard's data server did not start in %ds" % timeout)


def _listing_state(provider):
    runs = provider.list_runs(tb_context.RequestContext(), experiment_id="")
    state = [tuple(sorted(run.run_name for run in runs))]
    for plugin_name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME):
        listing = provider.list_tensors(tb_context.RequestContext(), experiment_id="", plugin_name=plugin_name)
        state.append(tuple(sorted((run, tag, ts.max_step) for run, tags in listing.items() for tag, ts in tags.items())))
    return tuple(state)


def _wait_for_rust_load(process, provider, stderr_lines, timeout):
    """Blocks until the data server has loaded the logdir once.

    It says so in its log (`_LOADED_MARKER`); should it not (a release that
    words it otherwise), the load counts as done once neither the listing nor
    the log changed for `_QUIET_SECONDS`.
    """
    deadline = time.monotonic() + timeout
    last_state, last_lines, quiet_since = None, -1, time.monotonic()
    while time.monotonic() < deadline:
        if any(_LOADED_MARKER in line for line in stderr_lines):
            return
        if process.poll() is not None:
            raise _exited(process, stderr_lines)
        state = _listing_state(provider)
        if state != last_state or len(stderr_lines) != last_lines:
            last_state, last_lines, quiet_since = state, len(stderr_lines), time.monotonic()
        elif time.monotonic() - quiet_since >= _QUIET_SECONDS:
            logger.info("The data server logged no end of its load; its listing is stable, so it is loaded")
            return
        time.sleep(0.1)
    raise LogdirError("TensorBoard's data server did not finish loading %s in %ds" % ("the logdir", timeout))


@contextlib.contextmanager
def _open_rust(logdir, timeout):
    # Imported here: grpc is only needed for this loader.
    # pylint: disable=import-outside-toplevel
    import grpc
    from tensorboard.data import grpc_provider
    from tensorboard.data import server_ingester
    from tensorboard.util import grpc_util

    binary = server_ingester.get_server_binary()
    with tempfile.TemporaryDirectory(prefix="tb_weightdiff_server_") as tmp:
        port_file = os.path.join(tmp, "port")
        samples = "%s=all,%s=all" % (
            metadata.PLUGIN_NAME,
            metadata.HISTOGRAM_PLUGIN_NAME,
        )
        process = subprocess.Popen(
            [
                binary.path,
                "--logdir=%s" % os.path.abspath(logdir),
                "--reload=once",
                "--samples-per-plugin=%s" % samples,
                "--port=0",
                "--port-file=%s" % port_file,
                "--die-after-stdin",
                "--verbose",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        stderr_lines = []

        def drain():
            for line in process.stderr:
                stderr_lines.append(line)

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        try:
            address = "localhost:%d" % _wait_for_port(process, port_file, stderr_lines, min(timeout, START_TIMEOUT))
            credentials, options = grpc_util.ChannelCredsType.LOCAL.channel_config()
            # One read_tensors call carries a whole logdir; the default 4 MiB is small.
            options.append(("grpc.max_receive_message_length", 1 << 30))
            with grpc.secure_channel(address, credentials, options=options) as channel:
                stub = grpc_provider.make_stub(channel)
                provider = grpc_provider.GrpcDataProvider(address, stub)
                _wait_for_rust_load(process, provider, stderr_lines, timeout)
                # Loaded once (--reload=once): its listings never change.
                yield Logdir(ListingMemo(connection_per_call(provider)), "rust")
        finally:
            process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _open_python(logdir):
    # pylint: disable=import-outside-toplevel
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer

    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={
            metadata.PLUGIN_NAME: 0,
            metadata.HISTOGRAM_PLUGIN_NAME: 0,
        },
        size_guidance={"histograms": 0, "tensors": 0},
    )
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    yield Logdir(ListingMemo(provider), "python")  # loaded once: listings never change


@contextlib.contextmanager
def open_logdir(logdir, loader="auto", timeout=300):
    """Opens `logdir` with one of TensorBoard's data providers, keeping every sample.

    Args:
      logdir: a directory of runs, as passed to `tensorboard --logdir`.
      loader: "rust" (TensorBoard's data server), "python" (its
        `EventMultiplexer`) or "auto" (rust where it is installed).
      timeout: seconds to wait for the data server's load.

    Yields:
      A `Logdir`.

    Raises:
      LogdirError: the logdir does not exist, or the loader is unavailable.
    """
    if loader not in LOADERS:
        raise LogdirError("loader must be one of %s, got %r" % (", ".join(LOADERS), loader))
    if not os.path.isdir(logdir):
        raise LogdirError("logdir %s does not exist or is not a directory" % logdir)
    if loader == "auto":
        try:
            from tensorboard.data import server_ingester  # pylint: disable=import-outside-toplevel

            server_ingester.get_server_binary()
            loader = "rust"
        except Exception as error:  # pylint: disable=broad-except
            logger.info("Rust data server unavailable (%s); using the Python loader", error)
            loader = "python"
    if loader == "rust":
        opener = _open_rust(logdir, timeout)
    else:
        opener = _open_python(logdir)
    with opener as opened:
        yield opened


def drop_orphaned_steps(steps, summaries):
    """Applies a restarted job's steps the way TensorBoard's data server does.

    When a job restarts (from scratch or from a checkpoint) it logs steps it
    had logged before. TensorBoard's Rust data server then drops the earlier
    values from that step on; its Python loader hands every value over in file
    order. This makes both views the Rust one.

    Returns:
      `(steps, summaries, restarts)`: steps strictly increasing, and
      `[(from_step, to_step)]` for every place where the steps went back.
    """
    steps = list(steps)
    if all(a < b for a, b in zip(steps, steps[1:])):
        return steps, summaries, []
    kept_steps, kept, restarts = [], [], []
    for step, summary in zip(steps, summaries):
        if kept_steps and step <= kept_steps[-1]:
            restarts.append((kept_steps[-1], step))
            cut = bisect.bisect_left(kept_steps, step)
            del kept_steps[cut:]
            del kept[cut:]
        kept_steps.append(step)
        kept.append(summary)
    return kept_steps, kept, restarts


def restart_message(restarts, other_series=0):
    """What `drop_orphaned_steps` did, in words, for a run's warnings."""
    return (
        "steps went back from %d to %d (a restarted job?)%s; the values logged "
        "before the restart from that step on were dropped, as TensorBoard's "
        "data server does"
        % (
            restarts[0][0],
            restarts[0][1],
            " in this and %d other series" % other_series if other_series else "",
        )
    )


def wanted_series(listing, plugin_name, runs=None, tags=None):
    """Which series of a listing can be read: `({run: [tag]}, warnings, {(run, tag): layer type})`.

    Our own series whose metadata names a format version this package does
    not know are left out, each with a `(run, tag, "skipped: ...")` warning.
    """
    warnings = []
    wanted = {}
    layer_types = {}
    for run, run_tags in listing.items():
        if runs is not None and run not in runs:
            continue
        for tag, time_series in run_tags.items():
            if tags is not None and tag not in tags:
                continue
            if plugin_name == metadata.PLUGIN_NAME:
                try:
                    parsed = metadata.parse_plugin_metadata(time_series.plugin_content)
                except ValueError as error:
                    warnings.append((run, tag, "skipped: %s" % error))
                    logger.warning("Skipping %s/%s: %s", run, tag, error)
                    continue
                if parsed.layer_type:
                    layer_types[run, tag] = parsed.layer_type
            wanted.setdefault(run, []).append(tag)
    return wanted, warnings, layer_types


def _estimated_points(time_series):
    return max(1, min(int(time_series.max_step) + 1, _POINTS_PER_SERIES_ESTIMATE))


def read_batches(listing, wanted, budget=None):
    """Splits `{run: [tag]}` into `[(runs, tags)]` reads of about `budget` tensors.

    Whole runs are grouped while they fit; a run larger than the budget is
    read alone, its tags split into several reads. Each read's `tags` is
    the union of its runs' tags (TensorBoard filters runs x tags).
    """
    budget = budget or READ_BUDGET
    batches, group, group_tags, size = [], [], set(), 0
    for run in sorted(wanted):
        run_tags = sorted(wanted[run])
        run_size = sum(_estimated_points(listing[run][tag]) for tag in run_tags)
        if run_size > budget:
            chunk, chunk_size = [], 0
            for tag in run_tags:
                points = _estimated_points(listing[run][tag])
                if chunk and chunk_size + points > budget:
                    batches.append(([run], chunk))
                    chunk, chunk_size = [], 0
                chunk.append(tag)
                chunk_size += points
            if chunk:
                batches.append(([run], chunk))
            continue
        if group and (size + run_size > budget or size >= READ_GROUP):
            batches.append((group, sorted(group_tags)))
            group, group_tags, size = [], set(), 0
        group.append(run)
        group_tags.update(run_tags)
        size += run_size
    if group:
        batches.append((group, sorted(group_tags)))
    return batches


def _too_large(error):
    """Whether `error` is gRPC's answer to a message over the channel's limit."""
    code = getattr(error, "code", None)
    try:
        return callable(code) and getattr(code(), "name", "") == "RESOURCE_EXHAUSTED"
    except Exception:  # pylint: disable=broad-except
        return False


def _read(logdir, plugin_name, runs, tags, too_large):
    """One `read_tensors` of `runs` x `tags`; an answer too large is read again in halves.

    Returns `{run: {tag: (steps, arrays)}}`: a list of int steps and a list
    of numpy arrays, in the data server's order. A single series too large
    to send is left out, its `(run, tag, message)` appended to `too_large`.
    """
    from tensorboard.data import provider as provider_lib  # pylint: disable=import-outside-toplevel

    try:
        stub = _data_server_stub(logdir.provider)
        if stub is not None:
            try:
                return _read_from_data_server(stub, logdir.experiment_id, plugin_name, runs, tags)
            except Exception as error:  # pylint: disable=broad-except
                if _too_large(error):
                    raise
                # Anything else (the server went away, a bad request): asked
                # again through the provider, whose wrappers report it their way.
                logger.debug("reading through the data server's stub failed (%s); asking the provider", error)
        data = logdir.provider.read_tensors(
            logdir.ctx,
            experiment_id=logdir.experiment_id,
            plugin_name=plugin_name,
            downsample=ALL_SAMPLES,
            run_tag_filter=provider_lib.RunTagFilter(runs=list(runs), tags=list(tags)),
        )
        return {
            run: {tag: ([int(d.step) for d in points], [d.numpy for d in points]) for tag, points in by_tag.items()}
            for run, by_tag in data.items()
        }
    except Exception as error:  # pylint: disable=broad-except
        if not _too_large(error):
            raise
        if len(runs) == 1 and len(tags) == 1:
            skipped = SeriesTooLargeError(runs[0], tags[0])
            logger.warning("Skipping %s/%s: %s", runs[0], tags[0], skipped)
            too_large.append((runs[0], tags[0], str(skipped)))
            return {}
        logger.info("read of %d runs x %d tags too large; reading it in halves", len(runs), len(tags))
        if len(runs) > 1:
            halves = [(runs[: len(runs) // 2], tags), (runs[len(runs) // 2 :], tags)]
        else:
            halves = [(runs, tags[: len(tags) // 2]), (runs, tags[len(tags) // 2 :])]
        result = {}
        for half_runs, half_tags in halves:
            for run, series in _read(logdir, plugin_name, half_runs, half_tags, too_large).items():
                result.setdefault(run, {}).update(series)
        return result


_LOOPBACK_PREFIXES = ("localhost:", "127.0.0.1:", "[::1]:", "ipv4:127.0.0.1:", "ipv6:[::1]:")


class ConnectionPerCall:
    """TensorBoard's `GrpcDataProvider` on a data server of this machine,
    each call on a gRPC connection of its own.

    TensorBoard's Rust data server leaves Nagle's algorithm on (tonic drops
    TCP_NODELAY for a listener it is handed), so an answer it writes in two
    parts waits for the client's delayed ACK: 40 ms on Linux, for every
    listing of more than a few series and for small reads, once a connection
    has carried a call or two. A new connection ACKs at once (TCP's quick-ack
    start): a listing of 200 series on loopback takes ~3 ms, connection
    included, where TensorBoard's own channel takes 44 ms. Every `list_*`
    and `read_*` call goes through a channel of its own; the rest is
    TensorBoard's provider's.

    Even a new connection waits the 40 ms now and then (16 of 400 listings
    of 200 series on 2026-12-07; a tab's request makes four): while a call
    is open, its channel sends an HTTP/2 PING every `PING_MS`, and the
    client's packet carries the ACK the server waits for (0 of 400).
    """

    PING_MS = 2

    READS_PASS_THROUGH = False  # `data_server_stub` reads through `self.stub()`

    def __init__(self, provider, channel_config):
        self._provider = provider
        self._address = provider._addr  # pylint: disable=protected-access
        self._channel_config = channel_config

    @contextlib.contextmanager
    def _stub(self):
        """The data server's stub on a new channel, closed after use."""
        # pylint: disable=import-outside-toplevel
        import grpc
        from tensorboard.data import grpc_provider

        credentials, options = self._channel_config()
        options = list(options) + [
            # Not the subchannel (TCP connection) TensorBoard's channel uses.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 1 << 30),
            # Keepalive pings while the call is open, however many: each
            # carries the ACK a Nagle-delayed answer waits for.
            ("grpc.keepalive_time_ms", self.PING_MS),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        with grpc.secure_channel(self._address, credentials, options=options) as channel:
            yield grpc_provider.make_stub(channel)

    def stub(self):
        """An object whose `ReadTensors(request)` asks the server on a new connection."""
        return _StubPerCall(self)

    def __getattr__(self, name):
        attribute = getattr(self._provider, name)
        if not (callable(attribute) and name.startswith(("list_", "read_"))):
            return attribute

        def call(*args, **kwargs):
            from tensorboard.data import grpc_provider  # pylint: disable=import-outside-toplevel

            with self._stub() as stub:
                return getattr(grpc_provider.GrpcDataProvider(self._address, stub), name)(*args, **kwargs)

        return call


class _StubPerCall:
    def __init__(self, owner):
        self._owner = owner

    def ReadTensors(self, request):  # pylint: disable=invalid-name
        with self._owner._stub() as stub:  # pylint: disable=protected-access
            return stub.ReadTensors(request)


def connection_per_call(provider, creds_type=None):
    """`provider` as a `ConnectionPerCall` when it is TensorBoard's gRPC provider
    on a loopback address (the data server TensorBoard started), else itself.
    `creds_type`: TensorBoard's `--grpc_creds_type` (`grpc_util.ChannelCredsType`;
    None: LOCAL, its default). TB_WEIGHTDIFF_CONNECTION_PER_CALL=0 in the
    environment keeps TensorBoard's one channel."""
    if os.environ.get("TB_WEIGHTDIFF_CONNECTION_PER_CALL", "1").strip() == "0":
        return provider
    try:
        # pylint: disable=import-outside-toplevel
        from tensorboard.data import grpc_provider
        from tensorboard.util import grpc_util
    except ImportError:  # pragma: no cover - every TensorBoard 2.x has both
        return provider
    if type(provider) is not grpc_provider.GrpcDataProvider:  # pylint: disable=unidiomatic-typecheck
        return provider
    address = getattr(provider, "_addr", None)
    if not isinstance(address, str) or not address.startswith(_LOOPBACK_PREFIXES):
        return provider
    creds_type = creds_type if creds_type is not None else grpc_util.ChannelCredsType.LOCAL
    config = getattr(creds_type, "channel_config", None)
    if config is None:
        return provider
    return ConnectionPerCall(provider, config)


def _data_server_stub(provider):
    """The gRPC stub of TensorBoard's Rust data server behind `provider`, or None.

    `GrpcDataProvider.read_tensors` turns every stored tensor into an array
    on its own (`tensor_util.make_ndarray`, ~15 us each: 80 % of a raw read
    of 20,000 histograms). Asking the same server through the provider's
    stub and decoding each series' tensors as one buffer reads the same
    arrays in a fifth of the time. Any other provider is read through its
    public `read_tensors`.
    """
    # Wrappers that change nothing a read returns (ListingMemo, the plugin's
    # guard against transport failures) say so with READS_PASS_THROUGH.
    while getattr(type(provider), "READS_PASS_THROUGH", False):
        provider = provider._provider  # pylint: disable=protected-access
    if isinstance(provider, ConnectionPerCall):
        return provider.stub()
    try:
        from tensorboard.data import grpc_provider  # pylint: disable=import-outside-toplevel
        from tensorboard.data.proto import data_provider_pb2  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:  # pragma: no cover - every TensorBoard 2.x has both
        return None
    if not isinstance(provider, grpc_provider.GrpcDataProvider):
        return None
    stub = getattr(provider, "_stub", None)
    return stub if stub is not None and hasattr(stub, "ReadTensors") else None


def _read_from_data_server(stub, experiment_id, plugin_name, runs, tags):
    """`read_tensors` through the data server's stub: `{run: {tag: (steps, arrays)}}`."""
    # pylint: disable=import-outside-toplevel,protected-access
    from tensorboard.data import grpc_provider
    from tensorboard.data.proto import data_provider_pb2

    request = data_provider_pb2.ReadTensorsRequest()
    request.experiment_id = experiment_id
    request.plugin_filter.plugin_name = plugin_name
    request.run_tag_filter.runs.names.extend(sorted(runs))
    request.run_tag_filter.tags.names.extend(sorted(tags))
    request.downsample.num_points = ALL_SAMPLES
    translate = getattr(grpc_provider, "_translate_grpc_error", contextlib.nullcontext)
    with translate():
        response = stub.ReadTensors(request)
    result = {}
    for run_entry in response.runs:
        by_tag = result.setdefault(run_entry.run_name, {})
        for tag_entry in run_entry.tags:
            data = tag_entry.data
            stacked = _stacked_from_wire(data)
            values = StackedRows(stacked) if stacked is not None else decode_tensors(data.value)
            by_tag[tag_entry.tag_name] = ([int(step) for step in data.step], values)
    return result


def _varint(value):
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _stacked_from_wire(data):
    """The tensors of a data server's `TensorData` as rows of one array, cut out
    of its wire form, or None (then `decode_tensors` reads them).

    A series whose tensors share dtype and shape and hold their bytes in
    `tensor_content` serializes as records of one length: each is field 3's
    tag, the record's length, and a `TensorProto` whose bytes before the
    content (dtype, shape) are the same. Those records are the message's
    last bytes, after its steps and wall times. So the first tensor's record
    is serialized, every record's header is compared with its header at
    once, and the contents are one slice of the message's bytes: no Python
    per tensor. Header equality, record by record from the first (whose
    length is known), proves every record has that length, dtype and shape.
    """
    from tensorboard.data.proto import data_provider_pb2  # pylint: disable=import-outside-toplevel

    values = data.value
    count = len(values)
    if count == 0:
        return None
    first = values[0]
    content = first.tensor_content
    dtype = _numpy_dtype(first.dtype)
    if not content or dtype is None or dtype.kind not in "fiub":
        return None
    shape = tuple(int(dim.size) for dim in first.tensor_shape.dim)
    tensor = first.SerializeToString()
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(content) or not tensor.endswith(content):
        return None
    record = b"\x1a" + _varint(len(tensor)) + tensor  # field 3, length-delimited
    header = len(record) - len(content)
    wire = data.SerializeToString()
    start = len(wire) - count * len(record)
    before = data_provider_pb2.TensorData()
    before.step.extend(data.step)
    before.wall_time.extend(data.wall_time)
    if start < 0 or before.ByteSize() != start or wire[start : start + header] != record[:header]:
        return None
    rows = np.frombuffer(wire, dtype=np.uint8, offset=start).reshape(count, len(record))
    if not np.array_equal(rows[:, :header], np.broadcast_to(rows[:1, :header], (count, header))):
        return None
    return np.ascontiguousarray(rows[:, header:]).view(dtype).reshape((count,) + shape)


def _numpy_dtype(enum):
    """numpy's dtype for a `DataType` enum value, or None."""
    try:
        from tensorboard.compat.tensorflow_stub import dtypes  # pylint: disable=import-outside-toplevel

        return np.dtype(dtypes.as_dtype(enum).as_numpy_dtype)
    except Exception:  # pylint: disable=broad-except
        return None  # a dtype numpy has no name for


def decode_tensors(tensors):
    """`TensorProto`s as numpy arrays, the same as `tensor_util.make_ndarray` gives one by one.

    Tensors of one series share dtype and shape, and TensorBoard's writers
    store their bytes in `tensor_content`: those are decoded as one buffer
    (views of one array, each row its own tensor). Anything else (typed
    value fields, shapes that change) goes tensor by tensor.
    """
    from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel

    if not tensors:
        return []
    first = tensors[0]
    contents = [tensor.tensor_content for tensor in tensors]
    dtype = _numpy_dtype(first.dtype)  # None: make_ndarray decides
    shape = tuple(int(dim.size) for dim in first.tensor_shape.dim)
    size = int(np.prod(shape, dtype=np.int64)) * (dtype.itemsize if dtype is not None else 0)
    if (
        dtype is not None
        and dtype.kind in "fiub"
        and size > 0
        and all(length == size for length in map(len, contents))
        and all(dtype == first.dtype for dtype in map(_DTYPE_OF, tensors))
        and all(shape == first.tensor_shape for shape in map(_SHAPE_OF, tensors))
    ):
        return StackedRows(np.frombuffer(b"".join(contents), dtype=dtype).reshape((len(tensors),) + shape).copy())
    return [tensor_util.make_ndarray(tensor) for tensor in tensors]


_DTYPE_OF = operator.attrgetter("dtype")
_SHAPE_OF = operator.attrgetter("tensor_shape")


class StackedRows(collections.abc.Sequence):
    """The tensors of one series as rows of one array (`stacked`): a sequence of
    views, one per step. What reads the series can take `stacked` whole
    instead of a numpy call per step (`metadata.check_histograms`,
    `metadata.decode_series`, the analysis's histogram batches)."""

    def __init__(self, stacked):
        self.stacked = stacked

    def __len__(self):
        return self.stacked.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return StackedRows(self.stacked[index])
        return self.stacked[index]


def read_series(logdir, plugin_name=metadata.PLUGIN_NAME, runs=None, tags=None):
    """Reads every weight series of one plugin, decoded.

    Args:
      logdir: a `Logdir` from `open_logdir`, or any object with `provider`,
        `ctx` and `experiment_id` (the plugin builds one around TensorBoard's).
      plugin_name: `metadata.PLUGIN_NAME` or `metadata.HISTOGRAM_PLUGIN_NAME`.
      runs: optional iterable of run names to keep.
      tags: optional iterable of tags to keep (one variable's detail reads only it).

    Returns:
      `(series, warnings)`: a list of `Series` sorted by run and tag (steps
      strictly increasing, see `drop_orphaned_steps`), and a list of
      `(run, tag, message)`: series that were skipped (unknown format version,
      malformed tensor; the message starts with "skipped:") and one note per
      run whose steps went back.
    """
    series, warnings = [], []
    for batch in iter_read_series(logdir, plugin_name, runs=runs, tags=tags):
        series.extend(batch[0])
        warnings.extend(batch[1])
    return series, warnings


def iter_read_series(logdir, plugin_name=metadata.PLUGIN_NAME, runs=None, tags=None, budget=None, ahead=False):
    """`read_series` in batches of whole runs: yields `(series, warnings)` per batch.

    A run is never split across two batches (a run larger than the budget
    is read in several calls, then yielded whole), so each batch can be
    judged and dropped before the next is read. With `ahead`, the next batch
    is read on a thread while the caller works on this one (the data
    server's part of a read then overlaps the caller's work; two batches are
    held at a time); errors are raised where they would be without it.
    """
    batches = _iter_read_series(logdir, plugin_name, runs, tags, budget)
    return _read_ahead(batches) if ahead else batches


_DONE = object()  # what next() gives back when the batches are exhausted


def _read_ahead(batches):
    """The items of the iterator `batches`, each next one computed on a thread meanwhile."""
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tb_weightdiff_read")
    try:
        pending = executor.submit(next, batches, _DONE)
        while True:
            batch = pending.result()
            if batch is _DONE:
                return
            pending = executor.submit(next, batches, _DONE)
            yield batch
    finally:
        # A caller that stops early (or fails) waits for the read under way, then closes the reads.
        executor.shutdown(wait=True)
        batches.close()


def _iter_read_series(logdir, plugin_name, runs, tags, budget):
    listing = list_tensors(logdir, plugin_name)
    wanted, listing_warnings, layer_types = wanted_series(listing, plugin_name, runs=runs, tags=tags)
    pending_warnings = list(listing_warnings)
    reads = read_batches(listing, wanted, budget)
    index = 0
    while index < len(reads):
        data, too_large = {}, []
        batch_runs = reads[index][0]
        # A run split by tags: gather all its reads before decoding.
        while index < len(reads) and reads[index][0] == batch_runs:
            for run, run_data in _read(logdir, plugin_name, *reads[index], too_large).items():
                data.setdefault(run, {}).update(run_data)
            index += 1
            if len(batch_runs) > 1:
                break
        batch_warnings = [w for w in pending_warnings if w[0] in batch_runs]
        pending_warnings = [w for w in pending_warnings if w[0] not in batch_runs]
        series, decode_warnings = _decode_runs(plugin_name, data, wanted, layer_types)
        yield series, batch_warnings + too_large + decode_warnings
    if pending_warnings:  # runs with nothing readable
        yield [], pending_warnings


def _decode_runs(plugin_name, data, wanted, layer_types):
    series, warnings = [], []
    restarted = {}
    for run in sorted(data):
        for tag in sorted(data[run]):
            if tag not in wanted.get(run, ()):
                continue
            steps, values, restarts = drop_orphaned_steps(*data[run][tag])
            table = None
            try:
                if plugin_name == metadata.PLUGIN_NAME:
                    values, table = metadata.decode_series(values, steps)
                else:
                    metadata.check_histograms(values, steps)
            except ValueError as error:
                warnings.append((run, tag, "skipped: %s" % error))
                logger.warning("Skipping %s/%s: %s", run, tag, error)
                continue
            if restarts:
                restarted.setdefault(run, []).append((tag, restarts))
            series.append(Series(run, tag, plugin_name, steps, values, table, layer_types.get((run, tag))))
    for run, affected in restarted.items():
        tag, restarts = affected[0]
        warnings.append((run, tag, restart_message(restarts, len(affected) - 1)))
    return series, warnings


def read_optimizer(logdir, runs):
    """The optimizer's state that writers logged beside the weights, per run.

    Returns:
      `{run: {"steps": [...], "updates": [...] or None, "learning_rate": [...]
      or None}}` for the runs of `runs` that hold `metadata.OPTIMIZER_UPDATES_TAG`
      or `metadata.LEARNING_RATE_TAG` (TensorBoard scalars), steps ascending;
      the lists are aligned with `steps` (None where a step lacks the value).
    """
    from tensorboard.data import provider as provider_lib  # pylint: disable=import-outside-toplevel

    tags = (metadata.OPTIMIZER_UPDATES_TAG, metadata.LEARNING_RATE_TAG)
    listing = logdir.provider.list_scalars(
        logdir.ctx, experiment_id=logdir.experiment_id, plugin_name=metadata.SCALARS_PLUGIN_NAME,
        run_tag_filter=provider_lib.RunTagFilter(runs=list(runs), tags=list(tags)),
    )
    wanted = sorted(run for run in listing if run in set(runs))
    if not wanted:
        return {}
    data = logdir.provider.read_scalars(
        logdir.ctx, experiment_id=logdir.experiment_id, plugin_name=metadata.SCALARS_PLUGIN_NAME,
        downsample=ALL_SAMPLES, run_tag_filter=provider_lib.RunTagFilter(runs=wanted, tags=list(tags)),
    )
    found = {}
    for run in wanted:
        by_tag = {}
        for tag in tags:
            points = data.get(run, {}).get(tag, [])
            steps, values, _ = drop_orphaned_steps([int(p.step) for p in points], [float(p.value) for p in points])
            by_tag[tag] = dict(zip(steps, values))
        steps = sorted(set().union(*(set(values) for values in by_tag.values())))
        found[run] = {
            "steps": steps,
            "updates": [by_tag[metadata.OPTIMIZER_UPDATES_TAG].get(step) for step in steps] if by_tag[metadata.OPTIMIZER_UPDATES_TAG] else None,
            "learning_rate": [by_tag[metadata.LEARNING_RATE_TAG].get(step) for step in steps] if by_tag[metadata.LEARNING_RATE_TAG] else None,
        }
    return found
