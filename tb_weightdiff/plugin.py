"""The Weight Diff tab's routes: parse a request, call one `*_impl`, respond.

The routes read through `context.data_provider` (TensorBoard's Rust data
server by default, its Python loader with `--load_fast=false`) and never
import TensorFlow or Keras. Each `*_impl` takes parsed values and returns
the answer; every score and verdict in it comes from `tb_weightdiff.judge`
(through the caches of `tb_weightdiff.cache`). Bad requests raise
TensorBoard's errors, which it answers with 400 / 404 and the message.
`http_api.md` documents the routes with example JSON.
"""

import json
import logging
import mimetypes
import os
import threading
import time

from tensorboard import context as tb_context
from tensorboard import errors
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_weightdiff import cache
from tb_weightdiff import judge
from tb_weightdiff import metadata
from tb_weightdiff import reader
from tb_weightdiff import scores
from tb_weightdiff import verdicts

_LOGGER = logging.getLogger(__name__)

# For this long after TensorBoard starts, the logdir is judged the first time
# its listing holds weight data, then each time the listing has stayed the
# same for STARTUP_SETTLE_SECONDS and differs from the one judged last
# (TensorBoard may load a large logdir in stages; each judging after the
# first computes only what is new).
# TB_WEIGHTDIFF_WARM_UP=0 in TensorBoard's environment: never judge before the tab asks.
WARM_UP = os.environ.get("TB_WEIGHTDIFF_WARM_UP", "1").strip() != "0"
STARTUP_WARM_UP = WARM_UP  # (in-process tests that count judgings turn it off)
STARTUP_SETTLE_SECONDS = 0.5
# The first looks come sooner (0.05 s, then 25 % later each, up to the settle
# time): TensorBoard's data server lists a logdir 0.1-0.3 s after the plugin
# is built, usually whole, and judging a 2,000-series run takes seconds.
STARTUP_FIRST_LOOK_SECONDS = 0.05
STARTUP_DEADLINE_SECONDS = 120.0

# The frontend's ES modules and CSS, installed with the package; served under /static/.
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frontend")
_STATIC_PREFIX = "/data/plugin/%s/static/" % metadata.PLUGIN_NAME
_MIME_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

# Query parameters longer than this are refused before any work: no run or
# tag name, and no number, needs more.
_MAX_PARAMETER_LENGTH = 4096

_FORMATS = {"json": "application/json", "csv": "text/csv"}


class DataUnavailableError(errors.PublicError):
    """TensorBoard's data server did not answer: 503, retry later."""

    http_code = 503

    def __init__(self, error):
        code = getattr(error, "code", None)
        name = getattr(code(), "name", None) if callable(code) else None
        details = getattr(error, "details", None)
        text = details() if callable(details) else str(error)
        super().__init__(
            "TensorBoard's data server did not answer (%s: %s); retry in a moment. "
            "TensorBoard does not restart a data server that stopped: if this lasts, "
            "restart TensorBoard." % (name or type(error).__name__, " ".join(str(text).split())[:200])
        )
        # The reader still tells an answer too large to send (RESOURCE_EXHAUSTED) by its code.
        self.code = code


class _GuardedProvider:
    """TensorBoard's data provider, with its transport failures (gRPC) turned into
    `DataUnavailableError`; everything else, our bugs included, passes through."""

    # Reads may go to the data server's stub behind this wrapper (reader._data_server_stub):
    # a failure there is asked again through the provider, so this guard still reports it.
    READS_PASS_THROUGH = True

    def __init__(self, provider):
        self._provider = provider

    def __getattr__(self, name):
        attribute = getattr(self._provider, name)
        if not callable(attribute):
            return attribute

        def guarded(*args, **kwargs):
            try:
                return attribute(*args, **kwargs)
            except errors.PublicError:
                raise
            except Exception as error:  # pylint: disable=broad-except
                if _is_transport_failure(error):
                    raise DataUnavailableError(error) from None
                raise

        return guarded


def _flush_distance_memo():
    """Stores what judgings deferred for the distance memo (after an answer has gone out)."""
    try:
        scores.DISTANCES.flush()
    except Exception:  # pylint: disable=broad-except
        # Only the next judging's reuse is lost; the answer was sent.
        _LOGGER.warning("tb_weightdiff: storing distances for the next judging failed", exc_info=True)


def _is_transport_failure(error):
    try:
        import grpc  # pylint: disable=import-outside-toplevel
    except ImportError:
        return False
    return isinstance(error, grpc.RpcError)


# -- parsing ------------------------------------------------------------------


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
    """`verdicts.Thresholds` from query parameters, or a 400 naming the bad one."""
    for name in verdicts.Thresholds.names():
        _parameter(args, name, required=False)
    try:
        return verdicts.Thresholds.from_strings(args)
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


def _format_from_args(args):
    name = _parameter(args, "format", required=False) or "json"
    if name not in _FORMATS:
        raise errors.InvalidArgumentError("format must be one of %s, got %r" % (", ".join(_FORMATS), name))
    return name


def _parse_verdicts(args):
    return {"thresholds": thresholds_from_args(args), "runs": _runs_from_args(args), "output": _format_from_args(args)}


def _parse_variable(args):
    return {
        "run": _parameter(args, "run"), "tag": _parameter(args, "tag"), "thresholds": thresholds_from_args(args),
        "output": _format_from_args(args),
    }


def _parse_compare(args):
    return {
        "run": _parameter(args, "run"),
        "tag": _parameter(args, "tag"),
        "step_a": _step_parameter(args, "a"),
        "step_b": _step_parameter(args, "b"),
        "thresholds": thresholds_from_args(args),
        "run_b": _parameter(args, "run_b", required=False) or None,
    }


# -- the answers ----------------------------------------------------------------


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


def contract_impl():
    """What the tab builds its controls from: verdict names worst first, the thresholds."""
    return {
        "verdicts": list(verdicts.VERDICTS),
        "thresholds": verdicts.Thresholds.describe(),
        "csv_columns": list(verdicts.CSV_COLUMNS),
    }


def runs_impl(logdir):
    """Runs with weight data: `{"runs": [{"run", "source", "tags", "max_step"}]}`."""
    runs = []
    for plugin_name, listing in judge.listings(logdir).items():
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


def verdicts_impl(logdir, run_verdicts, thresholds, runs=None, output="json"):
    """The body of GET /verdicts: every run's verdicts (those of `runs` if given).

    Returns:
      Bytes: the JSON contract of `judge.analyze_logdir` (plus
      `runs_without_weights` when no run was asked for), or with
      `output="csv"` its CSV (`verdicts.to_csv`).
    """
    if runs is None:
        wanted = judge.runs_with_weights(judge.listings(logdir))
    else:
        wanted = sorted(set(runs))  # an unknown run: `encoded` raises the 404 naming it
    encoded = run_verdicts.encoded(logdir, wanted, thresholds)
    judged = [run for run in sorted(encoded) if encoded[run] is not None]
    parts = [
        b'{"thresholds": ',
        json.dumps(thresholds.to_json(), allow_nan=False).encode("utf-8"),
        b', "runs": [',
        b", ".join(encoded[run] for run in judged),
        b"]",
    ]
    if runs is None:
        without = sorted(set(judge.listed_runs(logdir)) - set(judged))
        parts += [b', "runs_without_weights": ', json.dumps(without).encode("utf-8")]
    parts.append(b"}")
    body = b"".join(parts)
    if output == "csv":
        return verdicts.to_csv(json.loads(body)).encode("utf-8")
    return body


def _judged_variable(run_entry, tag):
    for layer in run_entry["layers"]:
        for variable in layer["variables"]:
            if variable["tag"] == tag:
                return dict(variable, layer=layer["name"])
    return None


def variable_impl(logdir, run_verdicts, run, tag, thresholds, output="json"):
    """One variable's detail: per-step histograms (and quantiles, stats) plus its scores.

    Enough to draw an A/B overlay, a ridgeline and the scores over steps. The
    scores are its row of the run's verdicts (they depend on the run's other
    layers, so the run is judged, or its cached verdicts used). With
    `output="csv"`: the histograms, quantiles and statistics as CSV
    (`verdicts.variable_to_csv`), what the detail's export downloads.
    """
    series = judge.read_variable(logdir, run, tag)
    run_entry = run_verdicts.entry(logdir, run, thresholds)
    ours = series.source == metadata.PLUGIN_NAME
    body = {
        "run": run,
        "tag": tag,
        "source": series.source,
        "steps": series.steps,
        "histograms": [(summary.histogram if ours else summary).tolist() for summary in series.summaries],
        "quantiles": None,
        "stats": None,
        "scores": _judged_variable(run_entry, tag),
        "caveats": verdicts.source_caveats(series.source),
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
    if output == "csv":
        return verdicts.variable_to_csv(body).encode("utf-8")
    return verdicts.strict(body)


def compare_impl(logdir, run_verdicts, run, tag, step_a, step_b, thresholds, run_b=None):
    """The shift between steps A and B of one variable (the A/B overlay's number).

    W1 is divided by the variable's `scale`, the one its table row uses, so
    A = baseline against B = last step reads as that row's `shift`. With
    `run_b`, step B is of the same tag in that run (the cross-run overlay),
    still in the unit of run A's row.
    """
    series = judge.read_variable(logdir, run, tag)
    series_b = series if run_b in (None, run) else judge.read_variable(logdir, run_b, tag)
    for name, step, of in (("a", step_a, series), ("b", step_b, series_b)):
        if step not in of.steps:
            raise errors.NotFoundError("step %s=%d is not logged for %s in run %s" % (name, step, tag, of.run))
    judged = _judged_variable(run_verdicts.entry(logdir, run, thresholds), tag) or {}
    scale = judged.get("scale")
    try:
        if series_b is series:
            w1, shift = scores.shift_between(series, step_a, step_b, scale)
        else:
            w1, shift = scores.shift_across(series, step_a, series_b, step_b, scale)
    except ValueError as error:
        raise errors.NotFoundError("%s in run %s cannot be compared: %s" % (tag, run, error)) from None
    return verdicts.strict(
        {
            "run": run, "tag": tag, "a": step_a, "b": step_b, "run_b": series_b.run, "w1": w1, "shift": shift,
            "scale": scale, "scale_basis": judged.get("scale_basis"),
        }
    )


# -- the plugin -------------------------------------------------------------------


class WeightDiffPlugin(base_plugin.TBPlugin):
    """Serves the Weight Diff tab."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        # TensorBoard's own data server: each call on a connection of its own,
        # which spares each one its 40 ms wait for a delayed ACK.
        self._data_provider = reader.connection_per_call(
            context.data_provider, getattr(getattr(context, "flags", None), "grpc_creds_type", None)
        )
        self._cache = cache.AnswerCache()
        self._run_verdicts = cache.RunVerdicts(self._cache)
        self._warm_lock = threading.Lock()
        self._warming = None  # the warm-up thread, while one runs
        if self._data_provider is not None and STARTUP_WARM_UP:
            # Once TensorBoard has loaded the logdir, judge it: the first
            # visit of the tab then finds its verdicts ready.
            threading.Thread(target=self._warm_when_loaded, name="tb_weightdiff-startup", daemon=True).start()

    def get_plugin_apps(self):
        run_verdicts = self._run_verdicts
        return {
            "/static/*": self._serve_static,
            "/contract": self._route(lambda args: {}, lambda logdir: contract_impl(), cached=False),
            "/runs": self._route(lambda args: {}, runs_impl),
            "/verdicts": self._route(
                _parse_verdicts, lambda logdir, **parsed: verdicts_impl(logdir, run_verdicts, **parsed)
            ),
            "/variable": self._route(
                _parse_variable, lambda logdir, **parsed: variable_impl(logdir, run_verdicts, **parsed)
            ),
            "/compare": self._route(
                _parse_compare, lambda logdir, **parsed: compare_impl(logdir, run_verdicts, **parsed)
            ),
        }

    def is_active(self):
        return False  # Superseded by data_plugin_names().

    def data_plugin_names(self):
        # TensorBoard asks this on every plugins listing, i.e. whenever its
        # page loads or reloads, well before it creates this tab's iframe.
        self.warm_up()
        # Active for our own summaries and for plain weight histograms, so a
        # logdir written only by Keras's TensorBoard callback enables the tab.
        return judge.WEIGHT_PLUGINS

    def warm_up(self):
        """Starts judging the logdir with the default thresholds in the background.

        So that the tab's first GET /verdicts finds the runs judged, or being
        judged (it then waits for that instead of judging again): on a run of
        2,000 series judging takes seconds, and TensorBoard's own page takes
        one before it creates the tab. Runs already judged at their current
        version cost a listing; one thread at a time; errors are logged,
        never raised (the request that needs the answer reports its own).
        Returns the thread, or None when one is already running.
        """
        if not WARM_UP:
            return None
        with self._warm_lock:
            if self._warming is not None and self._warming.is_alive():
                return None
            thread = threading.Thread(target=self._warm, name="tb_weightdiff-warm-up", daemon=True)
            thread.start()
            self._warming = thread
            return thread

    def _warm_when_loaded(self):
        """At startup: for `STARTUP_DEADLINE_SECONDS`, looks at TensorBoard's
        listing of the logdir every `STARTUP_SETTLE_SECONDS` (sooner at first:
        `STARTUP_FIRST_LOOK_SECONDS`, 25 % longer each time) and judges it
        (`warm_up`) the first time it holds weight data, and then whenever
        it has not changed since the look before and is not what was judged
        last. TensorBoard's data server has usually loaded the logdir before
        TensorBoard serves its page, so the first look that sees weights
        judges at once; a logdir that loads in stages is judged again after
        each, at the cost of what is new (the distance memo keeps the rest);
        after the first judging it looks a quarter as often. A logdir still
        changing at the deadline is judged then; one that never holds weight
        data, never."""
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        previous = judged = None
        pause = STARTUP_FIRST_LOOK_SECONDS
        while True:
            time.sleep(pause)
            try:
                logdir = self._background_logdir()
                version = cache.data_version(logdir)
                has_weights = bool(judge.runs_with_weights(judge.listings(logdir)))
            except Exception:  # pylint: disable=broad-except
                version, has_weights = None, False  # not up yet: try again
            late = time.monotonic() > deadline
            if has_weights and version != judged and (judged is None or version == previous or late):
                thread = self.warm_up()
                if thread is not None:
                    thread.join()
                # (None: a judging the page asked for is running; it judges this data.)
                judged = version
            if late:
                return
            previous = version
            # Quick looks until the first judging; then fewer (each costs a listing).
            if judged is None:
                pause = min(pause * 1.25, STARTUP_SETTLE_SECONDS)
            else:
                pause = STARTUP_SETTLE_SECONDS * 4

    def _background_logdir(self):
        # No request: the one experiment of `tensorboard --logdir`.
        return self._logdir_of(experiment_id="", ctx=tb_context.RequestContext())

    def _warm(self):
        if self._data_provider is None:
            return
        logdir = self._background_logdir()
        try:
            runs = judge.runs_with_weights(judge.listings(logdir))
            if runs:
                self._run_verdicts.encoded(logdir, runs, verdicts.Thresholds())
        except Exception:  # pylint: disable=broad-except
            _LOGGER.info("tb_weightdiff: judging ahead of the tab failed; the tab judges when asked", exc_info=True)
        # The answers are cached (a request that waited for them has them): now
        # the steps' digests, for the next judging's reuse.
        _flush_distance_memo()

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/static/index.js", tab_name="Weight Diff")

    def _logdir(self, request):
        return self._logdir_of(plugin_util.experiment_id(request.environ), plugin_util.context(request.environ))

    def _logdir_of(self, experiment_id, ctx):
        return reader.Logdir(
            # Each listing once per request: every one is a round trip to the data server.
            provider=reader.ListingMemo(_GuardedProvider(self._data_provider)),
            loader="tensorboard",
            experiment_id=experiment_id,
            ctx=ctx,
        )

    def _route(self, parse, impl, cached=True):
        """A route: `parse(args)` first (a malformed request costs no data
        access), then `impl(logdir, **parsed)`, whose answer is bytes or a
        JSON-ready value; answers are cached per data version."""

        def answer(logdir, parsed):
            body = impl(logdir, **parsed)
            return body if isinstance(body, bytes) else json.dumps(body, allow_nan=False).encode("utf-8")

        @wrappers.Request.application
        def route(request):
            parsed = parse(request.args)
            mime_type = _FORMATS[parsed.get("output", "json")]
            logdir = self._logdir(request)
            tag = None
            try:
                if cached:
                    # Same question, same data: the same answer.
                    key = (request.path, logdir.experiment_id, tuple(sorted(request.args.items(multi=True))))
                    version = cache.data_version(logdir)
                    body = self._cache.get(key, version, lambda: answer(logdir, parsed))
                    tag = self._cache.get(("etag",) + key, version, lambda: cache.entity_tag(body))
                else:
                    body = answer(logdir, parsed)
            except (judge.UnknownRunError, judge.UnknownSeriesError) as error:
                raise errors.NotFoundError(str(error)) from None
            except judge.AnalysisError as error:
                raise errors.InvalidArgumentError(str(error)) from None
            if tag is None:
                response = http_util.Respond(request, body, mime_type)
            elif request.if_none_match.contains(tag):
                # The tab asks again every few seconds: an answer it holds already
                # costs no transfer, no gzip and no parsing (304).
                response = wrappers.Response(
                    status=304, headers=[("ETag", '"%s"' % tag), ("Cache-Control", "no-cache, must-revalidate")]
                )
            else:
                response = http_util.Respond(request, body, mime_type, headers=[("ETag", '"%s"' % tag)])
            # What a judging left for the distance memo (its steps' digests) is
            # stored once the answer has gone out, not before it.
            response.call_on_close(_flush_distance_memo)
            return response

        return route

    @wrappers.Request.application
    def _serve_static(self, request):
        relative = request.path.split(_STATIC_PREFIX, 1)[-1] if _STATIC_PREFIX in request.path else ""
        body, mime_type = static_file_impl(relative)
        return http_util.Respond(request, body, mime_type)
