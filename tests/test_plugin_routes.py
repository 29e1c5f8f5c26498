"""The plugin's routes through werkzeug's test client over TensorBoardWSGI, both loaders."""

import json
import os

import numpy as np
import pytest
from tensorboard import errors

from tb_weightdiff import plugin as plugin_lib
from tb_weightdiff import verdicts
from conftest import plugin_client
from conftest import requires_tf
from logdirs import PLANTED
from logdirs import write_planted_logdir

PREFIX = "/data/plugin/tb_weightdiff"


def _client(logdir, loader):
    return plugin_client(logdir, loader)


@pytest.fixture
def client(tmp_path, loader):
    write_planted_logdir(tmp_path)
    test_client, opened = _client(tmp_path, loader)
    yield test_client
    opened.__exit__(None, None, None)


def _json(response, status=200):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.get_data())


def test_every_frontend_file_is_served_from_one_static_root(client):
    response = client.get(PREFIX + "/static/index.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert b"export async function render" in response.get_data()
    for module in ("dom.js", "model.js", "views.js", "charts.js", "style.css"):
        assert client.get(PREFIX + "/static/" + module).status_code == 200, module
    assert client.get(PREFIX + "/index.js").status_code == 404  # no second base
    # The modules import one another relative to that root, and nothing else.
    for module in ("index.js", "views.js", "charts.js"):
        text = client.get(PREFIX + "/static/" + module).get_data(as_text=True)
        imports = [line for line in text.splitlines() if line.startswith("import ")]
        assert imports and all("from './" in line and "/static/" not in line for line in imports), module


def test_contract_names_the_verdicts_and_thresholds_of_the_analysis(client):
    body = _json(client.get(PREFIX + "/contract"))
    assert body["verdicts"] == list(verdicts.VERDICTS)
    assert [t["name"] for t in body["thresholds"]] == list(verdicts.Thresholds.names())
    assert {t["name"]: t["default"] for t in body["thresholds"]} == verdicts.Thresholds().to_json()
    assert all(t["help"] and t["label"] for t in body["thresholds"])
    assert body["csv_columns"] == list(verdicts.CSV_COLUMNS)


def test_runs(client):
    body = _json(client.get(PREFIX + "/runs"))
    assert {(r["run"], r["source"]) for r in body["runs"]} == {
        ("planted", "tb_weightdiff"),
        ("keras_like/train", "histograms"),
    }


def test_verdicts_of_the_whole_logdir(client):
    body = _json(client.get(PREFIX + "/verdicts"))
    assert set(body["thresholds"]) == set(verdicts.Thresholds.names())
    runs = {run["run"]: run for run in body["runs"]}
    planted = runs["planted"]
    assert planted["source"] == "tb_weightdiff"
    assert planted["steps"] == [0, 1, 2, 3, 4, 5]
    assert planted["baseline_step"] == 0
    assert {layer["name"]: layer["verdict"] for layer in planted["layers"]} == PLANTED
    # Worst first.
    assert [layer["verdict"] for layer in planted["layers"]] == ["diverged", "not_learning", "frozen", "learning"]
    exploding = next(layer for layer in planted["layers"] if layer["name"] == "model/exploding")
    assert exploding["diverged_step"] == 3
    assert {v["name"] for v in exploding["variables"]} == {"kernel", "bias"}
    keras_like = runs["keras_like/train"]
    assert keras_like["source"] == "histograms"
    assert {layer["name"]: layer["verdict"] for layer in keras_like["layers"]} == {
        "sequential/dense": "learning",
        "sequential/frozen": "frozen",
    }
    assert any("first logged step" in warning for warning in keras_like["warnings"])


def test_verdicts_filtered_by_run_and_thresholds(client):
    body = _json(client.get(PREFIX + "/verdicts?run=planted&min_relative_change=1e-9"))
    assert [run["run"] for run in body["runs"]] == ["planted"]
    assert body["thresholds"]["min_relative_change"] == 1e-9
    layer_verdicts = {layer["name"]: layer["verdict"] for layer in body["runs"][0]["layers"]}
    assert layer_verdicts["model/slow"] == "not_learning"  # still far below the run's median
    body = _json(client.get(PREFIX + "/verdicts?run=planted&min_relative_change=1e-9&min_ratio_to_median=0"))
    layer_verdicts = {layer["name"]: layer["verdict"] for layer in body["runs"][0]["layers"]}
    assert layer_verdicts["model/slow"] == "learning"


@pytest.mark.parametrize(
    "query, status, message",
    [
        ("run=nope", 404, "no weight data for run 'nope'"),
        ("min_shift=abc", 400, "min_shift must be a number"),
        ("min_shift=-1", 400, "min_shift must be a finite number >= 0"),
        ("min_shift=nan", 400, "min_shift"),
        ("min_relative_change=1e999", 400, "min_relative_change"),
        ("settled_fraction=1", 400, "settled_fraction must be below 1"),
        ("min_ratio_to_median=" + "9" * 5000, 400, "too long"),
    ],
)
def test_verdicts_bad_requests(client, query, status, message):
    response = client.get(PREFIX + "/verdicts?" + query)
    assert response.status_code == status
    assert message in response.get_data(as_text=True)


def test_variable_detail_of_our_summaries(client):
    body = _json(client.get(PREFIX + "/variable?run=planted&tag=model/dense/kernel"))
    assert body["source"] == "tb_weightdiff"
    assert body["steps"] == [0, 1, 2, 3, 4, 5]
    assert len(body["histograms"]) == 6 and len(body["histograms"][0]) == 30
    assert len(body["quantiles"]["values"]) == 6
    assert len(body["quantiles"]["probabilities"]) == 65
    assert len(body["stats"]["relative_change"]) == 6
    assert body["scores"]["verdict"] == "learning"
    assert body["scores"]["layer"] == "model/dense"
    assert len(body["scores"]["per_step_shift"]) == 6
    assert body["caveats"] == []


def test_variable_export_as_csv_holds_what_the_detail_shows(client):
    import csv
    import io

    detail = _json(client.get(PREFIX + "/variable?run=planted&tag=model/dense/kernel"))
    response = client.get(PREFIX + "/variable?run=planted&tag=model/dense/kernel&format=csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert tuple(rows[0]) == verdicts.VARIABLE_CSV_COLUMNS
    by_kind = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    assert len(by_kind["bucket"]) == 6 * 30 and len(by_kind["quantile"]) == 6 * 65
    assert len(by_kind["stat"]) == 6 * len(detail["stats"])
    last = [r for r in by_kind["bucket"] if r["step"] == "5"]
    assert [float(r["value"]) for r in last] == [bucket[2] for bucket in detail["histograms"][5]]
    assert [float(r["left"]) for r in last] == [bucket[0] for bucket in detail["histograms"][5]]
    change = next(r for r in by_kind["stat"] if r["step"] == "5" and r["key"] == "relative_change")
    assert float(change["value"]) == detail["stats"]["relative_change"][5]
    median = next(r for r in by_kind["quantile"] if r["step"] == "5" and r["key"] == "0.5")
    assert float(median["value"]) == detail["quantiles"]["values"][5][32]
    # Plain histograms: only their buckets; a bad format is a 400 with a message.
    plain = client.get(PREFIX + "/variable?run=keras_like/train&tag=sequential/frozen/kernel/histogram&format=csv")
    kinds = {row["kind"] for row in csv.DictReader(io.StringIO(plain.get_data(as_text=True)))}
    assert kinds == {"bucket"}
    bad = client.get(PREFIX + "/variable?run=planted&tag=model/dense/kernel&format=xml")
    assert bad.status_code == 400 and "format must be one of" in bad.get_data(as_text=True)


def test_variable_detail_of_plain_histograms_names_what_they_cannot_tell(client):
    body = _json(client.get(PREFIX + "/variable?run=keras_like/train&tag=sequential/frozen/kernel/histogram"))
    assert body["source"] == "histograms"
    assert body["quantiles"] is None and body["stats"] is None
    assert body["scores"]["verdict"] == "frozen"
    assert "no epoch-0 baseline" in body["caveats"][0]
    assert "WeightDiffCallback" in body["caveats"][0]


def test_variable_detail_with_nan_is_strict_json(client):
    body = _json(client.get(PREFIX + "/variable?run=planted&tag=model/exploding/kernel"))
    assert body["stats"]["nan_count"][3] == 1
    assert body["scores"]["verdict"] == "diverged"


@pytest.mark.parametrize(
    "query, status",
    [
        ("", 400),
        ("run=planted", 400),
        ("tag=model/dense/kernel", 400),
        ("run=planted&tag=nope", 404),
        ("run=nope&tag=model/dense/kernel", 404),
    ],
)
def test_variable_bad_requests(client, query, status):
    assert client.get(PREFIX + "/variable?" + query).status_code == status


def test_compare_two_steps(client):
    body = _json(client.get(PREFIX + "/compare?run=planted&tag=model/dense/kernel&a=0&b=5"))
    assert (body["a"], body["b"]) == (0, 5)
    assert body["w1"] > 0 and body["shift"] > 0
    same = _json(client.get(PREFIX + "/compare?run=planted&tag=model/dense/kernel&a=2&b=2"))
    assert same["w1"] == 0
    frozen = _json(client.get(PREFIX + "/compare?run=keras_like/train&tag=sequential/frozen/kernel/histogram&a=0&b=4"))
    assert frozen["w1"] == 0


def test_compare_scales_as_the_table_row_does(client):
    """A/B = baseline against last reads as the row's `shift`, for every variable:
    a zero-initialised bias (no spread of its own) included."""
    runs = _json(client.get(PREFIX + "/verdicts"))["runs"]
    checked = set()
    for run in runs:
        for layer in run["layers"]:
            for variable in layer["variables"]:
                steps = variable["steps"]
                query = "run=%s&tag=%s&a=%d&b=%d" % (run["run"], variable["tag"], steps[0], steps[-1])
                body = _json(client.get(PREFIX + "/compare?" + query))
                assert body["shift"] == variable["shift"], query
                assert (body["scale"], body["scale_basis"]) == (variable["scale"], variable["scale_basis"]), query
                checked.add(variable["scale_basis"])
    planted = {run["run"]: run for run in runs}["planted"]
    dense = next(layer for layer in planted["layers"] if layer["name"] == "model/dense")
    bias = next(variable for variable in dense["variables"] if variable["name"] == "bias")
    assert bias["scale_basis"] == "layer_baseline_std" and bias["shift"] > 0
    assert {"baseline_std", "layer_baseline_std"} <= checked
    # Between two later steps the shift is in the same unit: W1 / the row's scale.
    later = _json(client.get(PREFIX + "/compare?run=planted&tag=model/dense/bias&a=2&b=4"))
    assert later["shift"] == pytest.approx(later["w1"] / bias["scale"], rel=1e-12)


def test_csv_export_is_the_cli_schema(client):
    response = client.get(PREFIX + "/verdicts?format=csv&run=planted")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0] == ",".join(verdicts.CSV_COLUMNS)
    body = _json(client.get(PREFIX + "/verdicts?run=planted"))
    assert response.get_data(as_text=True) == verdicts.to_csv(body)
    assert len(lines) == 1 + sum(len(layer["variables"]) for layer in body["runs"][0]["layers"])
    assert client.get(PREFIX + "/verdicts?format=xml").status_code == 400


def test_compare_across_runs(tmp_path, loader):
    """The cross-run overlay's number: run A step i against run B step j, in run A's row unit."""
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary

    from conftest import write_events
    from logdirs import planted_weights
    from tb_weightdiff import summary

    series = planted_weights()["model/dense/kernel"]
    for run in ("a", "twin"):  # the same weights in two runs
        write_events(tmp_path / run, {step: [summary.weights_pb("model/dense/kernel", value, reference=series[0])]
                                      for step, value in enumerate(series)})
    write_events(tmp_path / "plain", {step: [histogram_summary.histogram_pb("model/dense/kernel", value)]
                                      for step, value in enumerate(series)})
    client, opened = _client(tmp_path, loader)
    try:
        within = _json(client.get(PREFIX + "/compare?run=a&tag=model/dense/kernel&a=0&b=5"))
        across = _json(client.get(PREFIX + "/compare?run=a&tag=model/dense/kernel&a=0&b=5&run_b=twin"))
        assert across["run_b"] == "twin" and within["run_b"] == "a"
        assert (across["w1"], across["shift"], across["scale"]) == (within["w1"], within["shift"], within["scale"])
        same = _json(client.get(PREFIX + "/compare?run=a&tag=model/dense/kernel&a=3&b=3&run_b=twin"))
        assert same["w1"] == 0
        # Our summaries against plain histograms of the same weights: compared as histograms.
        mixed = _json(client.get(PREFIX + "/compare?run=a&tag=model/dense/kernel&a=5&b=5&run_b=plain"))
        assert 0 <= mixed["w1"] < 0.2 * within["w1"]
        missing = client.get(PREFIX + "/compare?run=a&tag=model/dense/kernel&a=0&b=9&run_b=twin")
        assert missing.status_code == 404 and "in run twin" in missing.get_data(as_text=True)
        assert client.get(PREFIX + "/compare?run=a&tag=model/dense/kernel&a=0&b=1&run_b=nope").status_code == 404
    finally:
        opened.__exit__(None, None, None)


@pytest.mark.parametrize(
    "query, status",
    [
        ("run=planted&tag=model/dense/kernel&a=x&b=1", 400),
        ("run=planted&tag=model/dense/kernel&a=0", 400),
        ("run=planted&tag=model/dense/kernel&a=0&b=99", 404),
        ("run=planted&tag=nope&a=0&b=1", 404),
    ],
)
def test_compare_bad_requests(client, query, status):
    assert client.get(PREFIX + "/compare?" + query).status_code == status


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
    assert b"import " not in response.get_data()
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


@requires_tf
@pytest.mark.slow
def test_verdicts_on_a_real_keras_training(tmp_path, loader):
    """A Keras model with a frozen layer, logged by our callback and by Keras's own."""
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 8)).astype(np.float32)
    y = (x @ rng.standard_normal((8, 1))).astype(np.float32)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="frozen"),
         keras.layers.Dense(8, activation="relu", name="hidden"), keras.layers.Dense(1, name="head")],
        name="sequential",
    )
    model.get_layer("frozen").trainable = False
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, epochs=4, verbose=0, callbacks=[
        keras.callbacks.TensorBoard(str(tmp_path / "both"), histogram_freq=1), WeightDiffCallback(str(tmp_path / "both"))])
    keras.utils.set_random_seed(3)
    model2 = keras.models.clone_model(model)
    model2.get_layer("frozen").trainable = False
    model2.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model2.fit(x, y, epochs=4, verbose=0, callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "keras_only"), histogram_freq=1)])

    test_client, opened = _client(tmp_path, loader)
    try:
        body = _json(test_client.get(PREFIX + "/verdicts"))
    finally:
        opened.__exit__(None, None, None)
    runs = {run["run"]: run for run in body["runs"]}
    assert runs["both/train"]["source"] == "tb_weightdiff"
    assert runs["keras_only/train"]["source"] == "histograms"
    for run in ("both/train", "keras_only/train"):
        layer_verdicts = {layer["name"]: layer["verdict"] for layer in runs[run]["layers"]}
        assert layer_verdicts == {"sequential/frozen": "frozen", "sequential/hidden": "learning", "sequential/head": "learning"}, run
