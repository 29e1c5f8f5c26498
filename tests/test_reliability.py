"""Hostile requests, corrupted logs and bad weights: clear errors, nothing lost, no 5xx."""

import json
import urllib.parse

import numpy as np
import pytest
from tensorboard.plugins.histogram import summary_v2 as histogram_summary

from tb_weightdiff import plugin as plugin_lib
from tb_weightdiff import summary
from conftest import plugin_client
from conftest import write_events
from logdirs import write_corrupted_logdir
from logdirs import write_planted_logdir

PREFIX = "/data/plugin/tb_weightdiff"

HOSTILE_VALUES = [
    "", "nope", "x" * 100_000, "%ff%fe", "%c3%28", "<script>alert(1)</script>", "\"'><img src=x onerror=alert(1)>",
    "../../etc/passwd", "..%2f..%2fetc%2fpasswd", "/etc/passwd", "NaN", "nan", "-1", "-0", "1e999", "inf", "-inf",
    "0x10", " 1 ", "1" * 400, "ü名前", "%00", "%0a%0d", "planted", "model/dense/kernel", "0", "5", "3.5", "1e-300",
    "9" * 30, "[]", "{}", "null", "true",
]

ROUTES = {
    "/verdicts": ({}, ["run", "min_shift", "min_relative_change", "min_ratio_to_median", "format"]),
    "/variable": ({"run": "planted", "tag": "model/dense/kernel"}, ["run", "tag", "min_shift"]),
    "/compare": ({"run": "planted", "tag": "model/dense/kernel", "a": "0", "b": "5"}, ["run", "tag", "a", "b", "min_shift"]),
    "/runs": ({}, ["run"]),
    "/contract": ({}, ["run"]),
}


def _client(logdir, loader):
    return plugin_client(logdir, loader)


def _hostile_queries():
    """Every route x every parameter x every hostile value (or the parameter left out)."""
    for route, (base, parameters) in ROUTES.items():
        for parameter in parameters:
            for value in HOSTILE_VALUES + [None]:
                query = dict(base)
                if value is None:
                    query.pop(parameter, None)
                else:
                    query[parameter] = value
                # Values holding '%' go in raw: percent-escapes of invalid UTF-8 and NUL.
                encoded = "&".join(
                    "%s=%s" % (key, v if "%" in v else urllib.parse.quote(v, safe="")) for key, v in query.items()
                )
                yield route, parameter, value, encoded


def test_hostile_requests_get_a_4xx_with_a_message_never_a_5xx(tmp_path, loader):
    write_planted_logdir(tmp_path)
    client, opened = _client(tmp_path, loader)
    tried = 0
    try:
        for route, parameter, value, encoded in _hostile_queries():
            response = client.get(PREFIX + route + "?" + encoded)
            tried += 1
            case = (route, parameter, (value or "")[:40], response.status_code)
            assert response.status_code in (200, 400, 404), case
            if response.status_code != 200:
                assert response.headers["Content-Type"].startswith("text/plain"), case
                assert response.get_data(as_text=True).strip(), case
            else:
                json.loads(response.get_data())  # strict JSON, even for odd input
    finally:
        opened.__exit__(None, None, None)
    assert tried == len(list(_hostile_queries())) >= 400


def test_corrupted_logs_leave_the_other_runs_judged_as_before(tmp_path, loader):
    problems = write_corrupted_logdir(tmp_path / "corrupted")
    write_corrupted_logdir(tmp_path / "alone")  # the same good run, with nothing else around
    for run in list(problems):
        if run != "good":
            import shutil

            shutil.rmtree(tmp_path / "alone" / run)
    client, opened = _client(tmp_path / "alone", loader)
    try:
        alone = json.loads(client.get(PREFIX + "/verdicts").get_data())
    finally:
        opened.__exit__(None, None, None)
    client, opened = _client(tmp_path / "corrupted", loader)
    try:
        response = client.get(PREFIX + "/verdicts")
        assert response.status_code == 200
        body = json.loads(response.get_data())
        detail = client.get(PREFIX + "/variable?run=malformed&tag=m/shape/kernel")
        assert detail.status_code == 404
        assert "malformed tb_weightdiff tensor: rank 2" in detail.get_data(as_text=True)
    finally:
        opened.__exit__(None, None, None)
    runs = {run["run"]: run for run in body["runs"]}
    assert runs["good"]["layers"] == alone["runs"][0]["layers"]
    assert runs["truncated"]["steps"] == [0, 1, 2, 3, 4]  # the complete records
    warnings = "\n".join(runs["malformed"]["warnings"])
    assert "m/shape/kernel: skipped: malformed tb_weightdiff tensor: rank 2" in warnings
    assert "m/dtype/kernel: skipped: malformed tb_weightdiff tensor: dtype" in warnings
    assert "m/short/kernel: skipped: malformed tb_weightdiff tensor: length 5" in warnings
    assert [layer["name"] for layer in runs["malformed"]["layers"]] == ["m/ok"]
    assert "format version 7 is not supported" in "\n".join(runs["future"]["warnings"])
    assert [layer["name"] for layer in runs["future"]["layers"]] == ["m/ok"]
    # A restarted job: both loaders show the restart's steps only.
    restarted = runs["restarted"]
    assert restarted["steps"] == [0, 1, 2, 3]
    variable = restarted["layers"][0]["variables"][0]
    assert variable["relative_change"] == pytest.approx(0.6)
    if loader == "python":  # the Rust data server drops the old steps itself, silently
        assert "steps went back from 5 to 0" in "\n".join(restarted["warnings"])
    if loader == "python":  # the Rust data server does not list a run it could not parse
        assert "garbage" in body["runs_without_weights"]
    assert "garbage" not in runs


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_corrupted_logs_in_a_real_tensorboard_log_no_traceback(tmp_path, tensorboard_process, load_fast):
    write_corrupted_logdir(tmp_path / "logs")
    server = tensorboard_process(tmp_path / "logs", load_fast=load_fast)
    body = server.wait_for(lambda j: len(j["runs"]) >= 5, "/data/plugin/tb_weightdiff/verdicts")
    assert {run["run"] for run in body["runs"]} >= {"good", "truncated", "malformed", "future", "restarted"}
    for path in ("/variable?run=malformed&tag=m/shape/kernel", "/variable?run=future&tag=m/future/kernel",
                 "/compare?run=restarted&tag=m/dense/kernel&a=0&b=5"):
        status, _, _ = server.get("/data/plugin/tb_weightdiff" + path)
        assert status == 404, path
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_mid_training_are_diverged_at_their_step(tmp_path, loader, bad):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((16, 8))
    ours, histograms = {}, {}
    for step in range(6):
        w = w0 + 0.05 * step * rng.standard_normal((16, 8))
        if step >= 4:
            w[3, 3] = bad
        ours[step] = [summary.weights_pb("net/dense/kernel", w, reference=w0)]
        histograms[step] = [histogram_summary.histogram_pb("net/dense/kernel/histogram", w)]
    write_events(tmp_path / "ours", ours)
    write_events(tmp_path / "keras_like" / "train", histograms)
    client, opened = _client(tmp_path, loader)
    try:
        body = json.loads(client.get(PREFIX + "/verdicts").get_data())
        detail = client.get(PREFIX + "/variable?run=ours&tag=net/dense/kernel")
        compare = client.get(PREFIX + "/compare?run=keras_like/train&tag=net/dense/kernel/histogram&a=0&b=5")
    finally:
        opened.__exit__(None, None, None)
    for run in body["runs"]:
        (layer,) = run["layers"]
        assert (layer["verdict"], layer["diverged_step"]) == ("diverged", 4), run["run"]
    assert detail.status_code == 200 and compare.status_code == 200
    stats = json.loads(detail.get_data())["stats"]
    counts = {np.nan: "nan_count", np.inf: "posinf_count", -np.inf: "neginf_count"}
    key = [name for value, name in counts.items() if value is bad or value == bad][0]
    assert stats[key] == [0, 0, 0, 0, 1, 1]


class _FailingProvider:
    """A data provider whose data server stopped answering (what gRPC raises then)."""

    def __init__(self, provider):
        self._provider = provider
        self.failing = True

    def __getattr__(self, name):
        attribute = getattr(self._provider, name)
        if not callable(attribute) or name not in ("list_tensors", "read_tensors", "list_runs", "list_scalars"):
            return attribute

        def call(*args, **kwargs):
            if self.failing:
                import grpc

                class Unavailable(grpc.RpcError):
                    def code(self):
                        return grpc.StatusCode.UNAVAILABLE

                    def details(self):
                        return "failed to connect to all addresses; last error: connection refused"

                raise Unavailable()
            return attribute(*args, **kwargs)

        return call


def test_a_data_server_failure_is_a_503_with_a_message_then_answers_again(tmp_path):
    from tensorboard.backend import application
    from tensorboard.plugins import base_plugin
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    from tb_weightdiff import reader

    write_planted_logdir(tmp_path)
    with reader.open_logdir(str(tmp_path), loader="rust") as opened:
        provider = _FailingProvider(opened.provider)
        context = base_plugin.TBContext(logdir=str(tmp_path), data_provider=provider)
        client = werkzeug_test.Client(application.TensorBoardWSGI([plugin_lib.WeightDiffPlugin(context)]), wrappers.Response)
        for route in ("/verdicts", "/runs", "/variable?run=planted&tag=model/dense/kernel",
                      "/compare?run=planted&tag=model/dense/kernel&a=0&b=5"):
            response = client.get(PREFIX + route)
            assert response.status_code == 503, route
            text = response.get_data(as_text=True)
            assert response.headers["Content-Type"].startswith("text/plain")
            assert "data server did not answer (UNAVAILABLE" in text and "retry" in text
            assert "Traceback" not in text and text.count("\n") <= 1
        provider.failing = False
        assert client.get(PREFIX + "/verdicts").status_code == 200
