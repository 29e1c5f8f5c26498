"""The plugin's routes through werkzeug's test client over TensorBoardWSGI."""

import json
import os

import numpy as np
import pytest
from tensorboard import errors
from tensorboard.backend import application
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test
from werkzeug import wrappers

from tb_weightdiff import plugin as plugin_lib
from tb_weightdiff import reader
from tb_weightdiff import summary
from conftest import write_events

PREFIX = "/data/plugin/tb_weightdiff"


@pytest.fixture
def client(tmp_path, loader):
    write_events(tmp_path / "run1", {step: [summary.weights_pb("dense/kernel", np.ones(3) * step)] for step in range(2)})
    with reader.open_logdir(str(tmp_path), loader=loader) as opened:
        context = base_plugin.TBContext(logdir=str(tmp_path), data_provider=opened.provider)
        app = application.TensorBoardWSGI([plugin_lib.WeightDiffPlugin(context)])
        yield werkzeug_test.Client(app, wrappers.Response)


def test_index_module_and_series(client):
    response = client.get(PREFIX + "/index.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    response = client.get(PREFIX + "/series")
    assert response.status_code == 200
    assert json.loads(response.get_data()) == {
        "runs": [{"run": "run1", "source": "tb_weightdiff", "tags": ["dense/kernel"], "max_step": 1}]
    }


@pytest.mark.parametrize(
    "path",
    [
        "/static/../plugin.py",
        "/static/..%2fplugin.py",
        "/static/%2e%2e%2fplugin.py",
        "/static/%2e%2e/%2e%2e/setup.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/..%5cplugin.py",
        "/static/index.js%00.py",
        "/static/",
        "/static/missing.js",
        "/static/../../../../../../etc/passwd",
    ],
)
def test_static_route_never_serves_outside_the_package(client, path):
    response = client.get(PREFIX + path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert b"import" not in response.get_data()
    assert b"root:" not in response.get_data()


def test_static_file_impl_refuses_symlinks_out_of_the_static_dir(tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "ok.js").write_text("export const ok = 1;")
    secret = tmp_path / "secret.js"
    secret.write_text("secret")
    os.symlink(secret, static / "link.js")
    body, mime_type = plugin_lib.static_file_impl("ok.js", static_dir=str(static))
    assert (body, mime_type) == (b"export const ok = 1;", "text/javascript")
    for bad in ["link.js", "../secret.js", str(secret), "..\\secret.js", ""]:
        with pytest.raises(errors.NotFoundError):
            plugin_lib.static_file_impl(bad, static_dir=str(static))
