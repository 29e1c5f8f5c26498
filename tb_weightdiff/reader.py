"""Reading weight summaries out of a logdir through TensorBoard's data providers.

The plugin gets a data provider from TensorBoard (`context.data_provider`);
the CLI and the tests open one themselves with `open_logdir`, preferring the
Rust data server TensorBoard uses by default and falling back to TensorBoard's
Python loader (`EventMultiplexer`). Either way every sample is kept: the CLI
judges the whole history, not TensorBoard's default 10 or 100 samples.

Nothing here imports TensorFlow.
"""

import bisect
import contextlib
import dataclasses
import logging
import os
import subprocess
import tempfile
import threading
import time

from tensorboard import context as tb_context

from tb_weightdiff import metadata

logger = logging.getLogger(__name__)

# `read_tensors` needs a sample count; this is "everything" for any real log.
ALL_SAMPLES = 1 << 30

LOADERS = ("auto", "rust", "python")


class LogdirError(ValueError):
    """The logdir cannot be read (missing, not a directory, no data server)."""


@dataclasses.dataclass
class Logdir:
    """An open logdir: a data provider plus what its calls need."""

    provider: object
    loader: str  # "rust" or "python"
    experiment_id: str = ""
    ctx: object = dataclasses.field(default_factory=tb_context.RequestContext)


@dataclasses.dataclass
class Series:
    """One weight tensor's time series, decoded.

    Attributes:
      run, tag: as TensorBoard names them.
      steps: list of int steps, ascending.
      summaries: for our own plugin, `metadata.WeightSummary` per step;
        for plain histograms, `[k, 3]` float64 arrays per step.
      source: `metadata.PLUGIN_NAME` or `metadata.HISTOGRAM_PLUGIN_NAME`.
    """

    run: str
    tag: str
    source: str
    steps: list
    summaries: list


def _wait_for_rust_load(process, stderr_lines, timeout):
    """Blocks until the data server logs the end of its one load cycle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("Finished load cycle" in line for line in stderr_lines):
            return
        if process.poll() is not None:
            raise LogdirError(
                "TensorBoard's data server exited (%d): %s"
                % (process.returncode, " ".join(stderr_lines[-3:]).strip())
            )
        time.sleep(0.02)
    raise LogdirError("TensorBoard's data server did not finish loading in %ds" % timeout)


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
            _wait_for_rust_load(process, stderr_lines, timeout)
            with open(port_file) as handle:
                address = "localhost:%d" % int(handle.read())
            credentials, options = grpc_util.ChannelCredsType.LOCAL.channel_config()
            # One read_tensors call carries a whole logdir; the default 4 MiB is small.
            options.append(("grpc.max_receive_message_length", 1 << 30))
            with grpc.secure_channel(address, credentials, options=options) as channel:
                stub = grpc_provider.make_stub(channel)
                yield Logdir(grpc_provider.GrpcDataProvider(address, stub), "rust")
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
    yield Logdir(data_provider.MultiplexerDataProvider(multiplexer, logdir), "python")


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


def _decode_tensor_series(plugin_name, datum_list):
    steps, summaries = [], []
    for datum in datum_list:
        if plugin_name == metadata.PLUGIN_NAME:
            summaries.append(metadata.decode(datum.numpy))
        else:
            summaries.append(datum.numpy)
        steps.append(int(datum.step))
    return steps, summaries


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
    provider, ctx, experiment_id = logdir.provider, logdir.ctx, logdir.experiment_id
    listing = provider.list_tensors(ctx, experiment_id=experiment_id, plugin_name=plugin_name)
    warnings = []
    wanted = {}
    for run, run_tags in listing.items():
        if runs is not None and run not in runs:
            continue
        for tag, time_series in run_tags.items():
            if tags is not None and tag not in tags:
                continue
            if plugin_name == metadata.PLUGIN_NAME:
                try:
                    metadata.parse_plugin_metadata(time_series.plugin_content)
                except ValueError as error:
                    warnings.append((run, tag, "skipped: %s" % error))
                    logger.warning("Skipping %s/%s: %s", run, tag, error)
                    continue
            wanted.setdefault(run, []).append(tag)
    series = []
    restarted = {}
    if not wanted:
        return series, warnings
    from tensorboard.data import provider as provider_lib  # pylint: disable=import-outside-toplevel

    data = provider.read_tensors(
        ctx,
        experiment_id=experiment_id,
        plugin_name=plugin_name,
        downsample=ALL_SAMPLES,
        run_tag_filter=provider_lib.RunTagFilter(
            runs=list(wanted), tags=sorted({t for tags in wanted.values() for t in tags})
        ),
    )
    for run in sorted(data):
        for tag in sorted(data[run]):
            if tag not in wanted.get(run, ()):
                continue
            try:
                steps, summaries = _decode_tensor_series(plugin_name, data[run][tag])
            except ValueError as error:
                warnings.append((run, tag, "skipped: %s" % error))
                logger.warning("Skipping %s/%s: %s", run, tag, error)
                continue
            steps, summaries, restarts = drop_orphaned_steps(steps, summaries)
            if restarts:
                restarted.setdefault(run, []).append((tag, restarts))
            series.append(Series(run, tag, plugin_name, steps, summaries))
    for run, affected in restarted.items():
        tag, restarts = affected[0]
        others = len(affected) - 1
        warnings.append(
            (
                run,
                tag,
                "steps went back from %d to %d (a restarted job?)%s; the values logged "
                "before the restart from that step on were dropped, as TensorBoard's "
                "data server does"
                % (
                    restarts[0][0],
                    restarts[0][1],
                    " in this and %d other series" % others if others else "",
                ),
            )
        )
    return series, warnings

