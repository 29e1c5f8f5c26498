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


def _runs_without_weights(logdir, judged):
    """Runs TensorBoard lists but nothing was read from: scalars only (Keras's
    "validation"), or event files the loaders could not parse."""
    listed = logdir.provider.list_runs(logdir.ctx, experiment_id=logdir.experiment_id)
    return sorted({run.run_name for run in listed} - set(judged))


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
        result["runs_without_weights"] = _runs_without_weights(logdir, [r["run"] for r in result["runs"]])
    return result


def _listings(logdir):
    return {
        plugin_name: reader.list_tensors(logdir, plugin_name)
        for plugin_name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME)
    }


def run_version(listings, run):
    """What TensorBoard holds for one run, in brief: each weight series' tag,
    last step and last wall time. Equal versions mean equal verdicts."""
    return tuple(
        (plugin_name, tag, series.max_step, series.max_wall_time)
        for plugin_name in sorted(listings)
        for tag, series in sorted(listings[plugin_name].get(run, {}).items())
    )


class RunVerdicts:
    """Each run's verdicts, computed once per run version and thresholds.

    The tab polls: when one run of many logs a new step, only that run is
    read and judged again. Entries are stored as JSON bytes in an
    `AnswerCache`, so a whole answer is put together without judging or
    parsing again.
    """

    def __init__(self, cache):
        self._cache = cache

    @staticmethod
    def _key(logdir, run, thresholds):
        return ("run verdicts", logdir.experiment_id, run, tuple(sorted(thresholds.to_json().items())))

    def encoded(self, logdir, runs, thresholds):
        """`{run: JSON bytes of its entry, or None (no weight data)}` for `runs`."""
        listings = _listings(logdir)
        versions = {run: run_version(listings, run) for run in runs}
        found, missing = {}, []
        for run in runs:
            hit = self._cache.peek(self._key(logdir, run, thresholds), versions[run])
            if hit is None:
                missing.append(run)
            else:
                found[run] = hit
        if missing:
            try:
                result = analysis.analyze_logdir(logdir, runs=missing, thresholds=thresholds)
            except analysis.UnknownRunError as error:
                raise errors.NotFoundError(str(error)) from None
            computed = {entry["run"]: entry for entry in result["runs"]}
            for run in missing:
                entry = computed.get(run)
                value = b"null" if entry is None else json.dumps(entry, allow_nan=False).encode("utf-8")
                self._cache.put(self._key(logdir, run, thresholds), versions[run], value)
                found[run] = value
        return {run: (None if value == b"null" else value) for run, value in found.items()}

    def entry(self, logdir, run, thresholds):
        """One run's entry as a dict (with no weight data: an empty one)."""
        value = self.encoded(logdir, [run], thresholds)[run]
        return json.loads(value) if value is not None else {"warnings": [], "layers": []}

    def verdicts_json(self, logdir, args):
        """The body of GET /verdicts, as JSON bytes (equal to `verdicts_impl`'s)."""
        thresholds = thresholds_from_args(args)
        runs = _runs_from_args(args)
        if runs is None:
            listings = _listings(logdir)
            wanted = sorted(set(listings[metadata.PLUGIN_NAME]) | set(listings[metadata.HISTOGRAM_PLUGIN_NAME]))
        else:
            wanted = sorted(set(runs))  # an unknown run: `encoded` raises the 404 naming it
        encoded = self.encoded(logdir, wanted, thresholds)
        entries = [encoded[run] for run in sorted(encoded) if encoded[run] is not None]
        parts = [
            b'{"thresholds": ',
            json.dumps(thresholds.to_json(), allow_nan=False).encode("utf-8"),
            b', "runs": [',
            b", ".join(entries),
            b"]",
        ]
        if runs is None:
            judged = [run for run in sorted(encoded) if encoded[run] is not None]
            parts += [b', "runs_without_weights": ', json.dumps(_runs_without_weights(logdir, judged)).encode("utf-8")]
        parts.append(b"}")
        return b"".join(parts)


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
    listings = _listings(logdir)
    version = [
        (run,) + run_version(listings, run)
        for run in sorted(set(listings[metadata.PLUGIN_NAME]) | set(listings[metadata.HISTOGRAM_PLUGIN_NAME]))
    ]
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
                self._store(key, version, value)
            return value

    def peek(self, key, version):
        """The stored value of `key` if it is of `version`, else None (no computing)."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == version:
                self._entries.move_to_end(key)
                return hit[1]
        return None

    def put(self, key, version, value):
        with self._lock:
            self._store(key, version, value)

    def _store(self, key, version, value):
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= len(previous[1])
        self._entries[key] = (version, value)
        self._bytes += len(value)
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            evicted, (_, evicted_value) = self._entries.popitem(last=False)
            self._bytes -= len(evicted_value)
            self._key_locks.pop(evicted, None)

    def __len__(self):
        return len(self._entries)


class WeightDiffPlugin(base_plugin.TBPlugin):
    """Serves the Weight Diff tab."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        self._data_provider = context.data_provider
        self._cache = AnswerCache()
        self._run_verdicts = RunVerdicts(self._cache)

    def get_plugin_apps(self):
        return {
            "/index.js": self._serve_index,
            "/static/*": self._serve_static,
            "/runs": self._json_route(lambda logdir, args: runs_impl(logdir)),
            "/verdicts": self._json_route(self._run_verdicts.verdicts_json, _validate_verdicts, encoded=True),
            "/variable": self._json_route(
                lambda logdir, args: variable_impl(logdir, args, judge=self._run_verdicts.entry),
                _validate_variable,
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
            # Each listing once per request: every one is a round trip to the data server.
            provider=reader.ListingMemo(self._data_provider),
            loader="tensorboard",
            experiment_id=plugin_util.experiment_id(request.environ),
            ctx=plugin_util.context(request.environ),
        )

    def _json_route(self, impl, validate=None, encoded=False):
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
                body = impl(logdir, request.args)
                return body if encoded else json.dumps(body, allow_nan=False).encode("utf-8")

            return http_util.Respond(request, self._cache.get(key, version, compute), "application/json")

        return route

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
