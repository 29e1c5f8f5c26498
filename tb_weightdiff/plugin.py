"""The Weight Diff tab's backend: a TensorBoard plugin reading through the data provider.

It reads only through `context.data_provider` (TensorBoard's Rust data server
by default, its Python loader with `--load_fast=false`) and never imports
TensorFlow or Keras. Every score and verdict comes from
`tb_weightdiff.analysis`; the routes are thin wrappers over `*_impl`
functions that return JSON-ready dicts and raise TensorBoard errors, which
TensorBoard answers with 400 / 404 and the message. `http_api.md` documents
the routes with example JSON.
"""

import json
import mimetypes
import os

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


def verdicts_impl(logdir, args):
    """Every run's verdicts: the JSON contract of `analysis.analyze_logdir`."""
    thresholds = thresholds_from_args(args)
    try:
        return analysis.analyze_logdir(logdir, runs=_runs_from_args(args), thresholds=thresholds)
    except analysis.UnknownRunError as error:
        raise errors.NotFoundError(str(error)) from None
    except analysis.AnalysisError as error:
        raise errors.InvalidArgumentError(str(error)) from None


def _find_series(logdir, run, tag):
    """The series of `(run, tag)` in the source the analysis judges that run from."""
    for plugin_name in (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME):
        listing = logdir.provider.list_tensors(
            logdir.ctx, experiment_id=logdir.experiment_id, plugin_name=plugin_name
        )
        if tag in listing.get(run, {}):
            found, skipped = reader.read_series(logdir, plugin_name=plugin_name, runs=[run])
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


def variable_impl(logdir, args):
    """One variable's detail: per-step histograms (and quantiles, stats) plus its scores.

    Enough to draw an A/B overlay, a ridgeline and the scores over steps.
    """
    run = _parameter(args, "run")
    tag = _parameter(args, "tag")
    thresholds = thresholds_from_args(args)
    series = _find_series(logdir, run, tag)
    # The verdict depends on the run's other layers (the median), so judge the run.
    try:
        result = analysis.analyze_logdir(logdir, runs=[run], thresholds=thresholds)
    except analysis.AnalysisError as error:
        raise errors.NotFoundError(str(error)) from None
    judged = None
    run_entry = result["runs"][0] if result["runs"] else {"warnings": [], "layers": []}
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


class WeightDiffPlugin(base_plugin.TBPlugin):
    """Serves the Weight Diff tab."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        self._data_provider = context.data_provider

    def get_plugin_apps(self):
        return {
            "/index.js": self._serve_index,
            "/static/*": self._serve_static,
            "/runs": self._json_route(lambda logdir, args: runs_impl(logdir)),
            "/verdicts": self._json_route(verdicts_impl),
            "/variable": self._json_route(variable_impl),
            "/compare": self._json_route(compare_impl),
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

    def _json_route(self, impl):
        @wrappers.Request.application
        def route(request):
            body = impl(self._logdir(request), request.args)
            return http_util.Respond(
                request, json.dumps(body, allow_nan=False), "application/json"
            )

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
