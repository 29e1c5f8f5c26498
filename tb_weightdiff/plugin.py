"""The Weight Diff tab's backend: a TensorBoard plugin reading through the data provider.

It reads only through `context.data_provider` (TensorBoard's Rust data server
by default, its Python loader with `--load_fast=false`) and never imports
TensorFlow or Keras. Every score and verdict comes from
`tb_weightdiff.analysis`; the routes are thin wrappers over `*_impl`
functions that return JSON-ready dicts and raise TensorBoard errors, which
TensorBoard answers with 400 / 404 and the message. `http_api.md` documents
the routes with example JSON.
"""

import collections
import functools
import json
import mimetypes
import os
import threading

from tensorboard import errors
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_weightdiff import analysis
from tb_weightdiff import metadata
from tb_weightdiff import reader

_MIME_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

# Query parameters longer than this are refused before any work: no run or
# tag name, and no number, needs more.
_MAX_PARAMETER_LENGTH = 4096


def _find_static_dir():
    # Installed: the wheel carries frontend/ as tb_weightdiff/static. From a
    # source checkout (editable install): frontend/ beside the package.
    package_dir = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package_dir, "static")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(package_dir), "frontend")


STATIC_DIR = _find_static_dir()


def static_file_impl(relative_path, static_dir=STATIC_DIR):
    """Returns `(bytes, mime_type)` of a frontend file, never one outside `static_dir`.

    Raises:
      errors.NotFoundError: no such file inside `static_dir` (including any
        path that would leave it, and symlinks that point out of it).
    """
    root = os.path.realpath(static_dir)
    if not relative_path or "\\" in relative_path or "\x00" in relative_path:
        raise errors.NotFoundError("no static file %r" % relative_path)
    candidate = os.path.realpath(os.path.join(root, relative_path))
    if os.path.commonpath([root, candidate]) != root or not os.path.isfile(candidate):
        raise errors.NotFoundError("no static file %r" % relative_path)
    extension = os.path.splitext(candidate)[1]
    mime_type = _MIME_TYPES.get(extension) or mimetypes.guess_type(candidate)[0]
    if mime_type is None:
        raise errors.NotFoundError("no static file %r" % relative_path)
    with open(candidate, "rb") as handle:
        return handle.read(), mime_type


def _parameter(args, name, required=True):
    value = args.get(name)
    if value is None or value == "":
        if required:
            raise errors.InvalidArgumentError("missing query parameter %r" % name)
        return None
    if len(value) > _MAX_PARAMETER_LENGTH:
        raise errors.InvalidArgumentError("query parameter %r is too long" % name)
    return value


def _step_parameter(args, name):
    raw = _parameter(args, name)
    try:
        return int(raw)
    except ValueError:
        raise errors.InvalidArgumentError("%s must be an integer step, got %r" % (name, raw)) from None


def thresholds_from_args(args):
    """`analysis.Thresholds` from query parameters, or a 400 naming the bad one."""
    for name in analysis.Thresholds.names():
        _parameter(args, name, required=False)
    try:
        return analysis.Thresholds.from_strings(args)
    except ValueError as error:
        raise errors.InvalidArgumentError(str(error)) from None


def _runs_from_args(args):
    runs = args.getlist("run")
    if not runs:
        return None
    for run in runs:
        if len(run) > _MAX_PARAMETER_LENGTH:
            raise errors.InvalidArgumentError("query parameter 'run' is too long")
    return runs


def _validate_verdicts(args):
    thresholds_from_args(args)
    _runs_from_args(args)


def _validate_variable(args):
    _parameter(args, "run")
    _parameter(args, "tag")
    thresholds_from_args(args)


def _validate_compare(args):
    _parameter(args, "run")
    _parameter(args, "tag")
    _step_parameter(args, "a")
    _step_parameter(args, "b")


def verdicts_impl(logdir, args):
    """Every run's verdicts: the JSON contract of `analysis.analyze_logdir`."""
    thresholds = thresholds_from_args(args)
    runs = _runs_from_args(args)
    try:
        result = analysis.analyze_logdir(logdir, runs=runs, thresholds=thresholds)
    except analysis.UnknownRunError as error:
        raise errors.NotFoundError(str(error)) from None
    except analysis.AnalysisError as error:
        raise errors.InvalidArgumentError(str(error)) from None
    if runs is None:
        # Runs TensorBoard lists but nothing was read from: scalars only (Keras's
        # "validation"), or event files the loaders could not parse.
        judged = {run["run"] for run in result["runs"]}
        listed = logdir.provider.list_runs(logdir.ctx, experiment_id=logdir.experiment_id)
        result["runs_without_weights"] = sorted(
            {run.run_name for run in listed} - judged
        )
    return result


def _find_series(logdir, run, tag):
    """The series of `(run, tag)` in the source the analysis judges that run from."""
    for plugin_name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME):
        listing = logdir.provider.list_tensors(
            logdir.ctx, experiment_id=logdir.experiment_id, plugin_name=plugin_name
        )
        if tag in listing.get(run, {}):
            found, skipped = reader.read_series(logdir, plugin_name=plugin_name, runs=[run], tags=[tag])
            for series in found:
                if series.tag == tag:
                    return series
            for _, skipped_tag, message in skipped:
                if skipped_tag == tag:
                    raise errors.NotFoundError("%s in run %s cannot be read: %s" % (tag, run, message))
    raise errors.NotFoundError("no weight series %r in run %r" % (tag, run))


def _caveats(source):
    if source == metadata.PLUGIN_NAME:
        return []
    return [
        "Plain histograms (e.g. Keras's TensorBoard callback): no epoch-0 baseline "
        "(the first histogram is logged after the first epoch), no distance to the "
        "initial weights, and weights that move without changing their histogram "
        "look frozen. Log with tb_weightdiff's WeightDiffCallback for those."
    ]


def judge_run(logdir, run, thresholds):
    """One run's entry of `analysis.analyze_logdir` (with no weight data: an empty one)."""
    try:
        result = analysis.analyze_logdir(logdir, runs=[run], thresholds=thresholds)
    except analysis.AnalysisError as error:
        raise errors.NotFoundError(str(error)) from None
    return result["runs"][0] if result["runs"] else {"warnings": [], "layers": []}


def variable_impl(logdir, args, judge=judge_run):
    """One variable's detail: per-step histograms (and quantiles, stats) plus its scores.

    Enough to draw an A/B overlay, a ridgeline and the scores over steps.
    `judge(logdir, run, thresholds)` gives the run's verdicts (the plugin
    passes a cached one: every variable of a run shares them).
    """
    run = _parameter(args, "run")
    tag = _parameter(args, "tag")
    thresholds = thresholds_from_args(args)
    series = _find_series(logdir, run, tag)
    # The verdict depends on the run's other layers (the median), so judge the run.
    judged = None
    run_entry = judge(logdir, run, thresholds)
    for layer in run_entry["layers"]:
        for variable in layer["variables"]:
            if variable["tag"] == tag:
                judged = dict(variable, layer=layer["name"])
    ours = series.source == metadata.PLUGIN_NAME
    histograms = [
        (summary.histogram if ours else summary).tolist() for summary in series.summaries
    ]
    body = {
        "run": run,
        "tag": tag,
        "source": series.source,
        "steps": series.steps,
        "histograms": histograms,
        "quantiles": None,
        "stats": None,
        "scores": judged,
        "caveats": _caveats(series.source),
        "run_warnings": run_entry["warnings"],
    }
    if ours:
        body["quantiles"] = {
            "probabilities": list(metadata.QUANTILE_PROBABILITIES),
            "values": [summary.quantiles.tolist() for summary in series.summaries],
        }
        body["stats"] = {
            name: [summary.stats[name] for summary in series.summaries]
            for name in metadata.STAT_FIELDS
            if name != "fingerprint"
        }
    return _strict(body)


def compare_impl(logdir, args):
    """The shift between two steps A and B of one variable (the A/B overlay's number)."""
    run = _parameter(args, "run")
    tag = _parameter(args, "tag")
    step_a = _step_parameter(args, "a")
    step_b = _step_parameter(args, "b")
    series = _find_series(logdir, run, tag)
    by_step = dict(zip(series.steps, series.summaries))
    for name, step in (("a", step_a), ("b", step_b)):
        if step not in by_step:
            raise errors.NotFoundError("step %s=%d is not logged for %s" % (name, step, tag))
    first, second = by_step[step_a], by_step[step_b]
    if series.source == metadata.PLUGIN_NAME:
        distance = analysis.wasserstein_quantiles(first.quantiles, second.quantiles)
        spread = first.stats["std"]
    else:
        distance = analysis.wasserstein_histograms(first, second)
        spread = analysis.histogram_moments(first)[1]
    shift = distance / spread if distance is not None and spread else None
    return _strict({"run": run, "tag": tag, "a": step_a, "b": step_b, "w1": distance, "shift": shift})


def _strict(value):
    """Replaces NaN and infinities by None, recursively, for strict JSON."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def runs_impl(logdir):
    """Runs with weight data: `{"runs": [{"run", "source", "tags", "max_step"}]}`."""
    runs = []
    for plugin_name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME):
        listing = logdir.provider.list_tensors(
            logdir.ctx, experiment_id=logdir.experiment_id, plugin_name=plugin_name
        )
        for run in sorted(listing):
            runs.append(
                {
                    "run": run,
                    "source": plugin_name,
                    "tags": sorted(listing[run]),
                    "max_step": max((ts.max_step for ts in listing[run].values()), default=None),
                }
            )
    return {"runs": runs}


def data_version(logdir):
    """What TensorBoard holds, in brief: every weight series' run, tag, last step
    and last wall time, and the runs it lists. Equal versions mean equal answers."""
    version = []
    for plugin_name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME):
        listing = logdir.provider.list_tensors(
            logdir.ctx, experiment_id=logdir.experiment_id, plugin_name=plugin_name
        )
        for run in sorted(listing):
            for tag in sorted(listing[run]):
                series = listing[run][tag]
                version.append((plugin_name, run, tag, series.max_step, series.max_wall_time))
    runs = logdir.provider.list_runs(logdir.ctx, experiment_id=logdir.experiment_id)
    version.append(tuple(sorted(run.run_name for run in runs)))
    return tuple(version)


class AnswerCache:
    """An LRU of route answers (JSON bytes, 64 MB at most), each valid for one data version.

    Concurrent requests for the same key wait for one computation instead of
    each judging the logdir (the tab of every open browser polls the same
    routes). Errors are not cached: they propagate to every waiter's own call.
    """

    def __init__(self, max_bytes=64 << 20):
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()
        self._key_locks = {}

    def get(self, key, version, compute):
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None and hit[0] == version:
                    self._entries.move_to_end(key)
                    return hit[1]
            try:
                value = compute()
            except BaseException:
                with self._lock:
                    if key not in self._entries:  # no lock per failed request kept
                        self._key_locks.pop(key, None)
                raise
            with self._lock:
                previous = self._entries.pop(key, None)
                if previous is not None:
                    self._bytes -= len(previous[1])
                self._entries[key] = (version, value)
                self._bytes += len(value)
                while self._bytes > self._max_bytes and len(self._entries) > 1:
                    evicted, (_, evicted_value) = self._entries.popitem(last=False)
                    self._bytes -= len(evicted_value)
                    self._key_locks.pop(evicted, None)
            return value

    def __len__(self):
        return len(self._entries)


class WeightDiffPlugin(base_plugin.TBPlugin):
    """Serves the Weight Diff tab."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        self._data_provider = context.data_provider
        self._cache = AnswerCache()

    def get_plugin_apps(self):
        return {
            "/index.js": self._serve_index,
            "/static/*": self._serve_static,
            "/runs": self._json_route(lambda logdir, args: runs_impl(logdir)),
            "/verdicts": self._json_route(verdicts_impl, _validate_verdicts),
            "/variable": self._json_route(
                lambda logdir, args, version: variable_impl(
                    logdir, args, judge=functools.partial(self._judge_run_cached, version=version)
                ),
                _validate_variable,
                needs_version=True,
            ),
            "/compare": self._json_route(compare_impl, _validate_compare),
        }

    def is_active(self):
        return False  # Superseded by data_plugin_names().

    def data_plugin_names(self):
        # Active for our own summaries and for plain weight histograms, so a
        # logdir written only by Keras's TensorBoard callback enables the tab.
        return (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME)

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Weight Diff")

    def _logdir(self, request):
        return reader.Logdir(
            provider=self._data_provider,
            loader="tensorboard",
            experiment_id=plugin_util.experiment_id(request.environ),
            ctx=plugin_util.context(request.environ),
        )

    def _json_route(self, impl, validate=None, needs_version=False):
        @wrappers.Request.application
        def route(request):
            if validate is not None:
                validate(request.args)  # a malformed request costs no data access
            logdir = self._logdir(request)
            # Same question, same data: the same answer. The tab polls, and
            # judging a large logdir takes a second; TensorBoard's listing of
            # what it holds (runs, tags, last steps) takes milliseconds.
            key = (request.path, logdir.experiment_id, tuple(sorted(request.args.items(multi=True))))
            version = data_version(logdir)

            def compute():
                body = impl(logdir, request.args, version) if needs_version else impl(logdir, request.args)
                return json.dumps(body, allow_nan=False).encode("utf-8")

            return http_util.Respond(request, self._cache.get(key, version, compute), "application/json")

        return route

    def _judge_run_cached(self, logdir, run, thresholds, version):
        key = ("judged run", logdir.experiment_id, run, tuple(sorted(thresholds.to_json().items())))
        encoded = self._cache.get(
            key, version, lambda: json.dumps(judge_run(logdir, run, thresholds), allow_nan=False).encode("utf-8")
        )
        return json.loads(encoded)

    @wrappers.Request.application
    def _serve_index(self, request):
        body, mime_type = static_file_impl("index.js")
        return http_util.Respond(request, body, mime_type)

    @wrappers.Request.application
    def _serve_static(self, request):
        prefix = "/data/plugin/%s/static/" % metadata.PLUGIN_NAME
        relative = request.path.split(prefix, 1)[-1] if prefix in request.path else ""
        body, mime_type = static_file_impl(relative)
        return http_util.Respond(request, body, mime_type)
