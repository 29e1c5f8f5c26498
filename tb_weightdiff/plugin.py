"""The Weight Diff tab's backend: a TensorBoard plugin reading through the data provider.

It reads only through `context.data_provider` (TensorBoard's Rust data server
by default, its Python loader with `--load_fast=false`) and never imports
TensorFlow or Keras. Routes are thin wrappers over `*_impl` functions that
return `(body, mime_type)` and raise TensorBoard errors (400 / 404).
"""

import mimetypes
import os

from tensorboard import errors
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_weightdiff import metadata
from tb_weightdiff import reader



def _find_static_dir():
    # Installed: the wheel carries frontend/ as tb_weightdiff/static. From a
    # source checkout (editable install): frontend/ beside the package.
    package_dir = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package_dir, "static")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(package_dir), "frontend")


STATIC_DIR = _find_static_dir()

_MIME_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def static_file_impl(relative_path, static_dir=STATIC_DIR):
    """Returns `(bytes, mime_type)` of a frontend file, never one outside `static_dir`.

    Raises:
      errors.NotFoundError: no such file inside `static_dir` (including any
        path that would leave it).
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


def series_impl(logdir):
    """Lists the weight series of every run: `{"runs": [{"run", "source", "tags"}]}`."""
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
                    "max_step": max(
                        (ts.max_step for ts in listing[run].values()), default=None
                    ),
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
            "/series": self._serve_series,
        }

    def is_active(self):
        return False  # Superseded by data_plugin_names().

    def data_plugin_names(self):
        # Active for our own summaries and for plain weight histograms, so a
        # logdir written only by Keras's TensorBoard callback enables the tab.
        return (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME)

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(
            es_module_path="/index.js", tab_name="Weight Diff"
        )

    def _logdir(self, request):
        return reader.Logdir(
            provider=self._data_provider,
            loader="tensorboard",
            experiment_id=plugin_util.experiment_id(request.environ),
            ctx=plugin_util.context(request.environ),
        )

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

    @wrappers.Request.application
    def _serve_series(self, request):
        return http_util.Respond(request, series_impl(self._logdir(request)), "application/json")
