"""A real `tensorboard --logdir` process with the plugin installed, under both loaders."""

import pytest

from logdirs import PLANTED
from logdirs import write_planted_logdir


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_tab_is_listed_serves_its_module_and_judges_right(tmp_path, tensorboard_process, load_fast):
    logdir = tmp_path / "logs"
    write_planted_logdir(logdir)
    server = tensorboard_process(logdir, load_fast=load_fast)
    listing = server.wait_for(lambda j: j.get("tb_weightdiff", {}).get("enabled"), "/data/plugins_listing")
    entry = listing["tb_weightdiff"]
    assert entry["tab_name"] == "Weight Diff"
    assert entry["loading_mechanism"] == {"type": "IFRAME", "module_path": "/data/plugin/tb_weightdiff/static/index.js"}
    status, headers, body = server.get("/data/plugin/tb_weightdiff/static/index.js")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert b"export async function render" in body
    # The Python loader keeps 10 samples per series of an unknown plugin unless told otherwise;
    # 6 steps fit in both loaders' defaults.
    verdicts = server.wait_for(lambda j: len(j["runs"]) == 2, "/data/plugin/tb_weightdiff/verdicts")
    runs = {run["run"]: run for run in verdicts["runs"]}
    assert {layer["name"]: layer["verdict"] for layer in runs["planted"]["layers"]} == PLANTED
    assert {layer["name"]: layer["verdict"] for layer in runs["keras_like/train"]["layers"]} == {
        "sequential/dense": "learning",
        "sequential/frozen": "frozen",
    }
    status, _, body = server.get("/data/plugin/tb_weightdiff/verdicts?min_shift=oops")
    assert status == 400 and b"min_shift" in body
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_tab_is_active_with_only_keras_histograms(tmp_path, tensorboard_process):
    import numpy as np
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary

    from conftest import write_events

    logdir = tmp_path / "logs"
    write_events(logdir / "run" / "train", {s: [histogram_summary.histogram_pb("d/kernel/histogram", np.arange(10.0) * s)] for s in range(2)})
    server = tensorboard_process(logdir)
    listing = server.wait_for(lambda j: "tb_weightdiff" in j, "/data/plugins_listing")
    assert listing["tb_weightdiff"]["enabled"] is True


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_readme_retention_flag_keeps_every_step(tmp_path, tensorboard_process, load_fast):
    import re

    import numpy as np

    from tb_weightdiff import summary
    from conftest import write_events

    readme = open(__import__("os").path.join(__import__("os").path.dirname(__file__), "..", "README.md")).read()
    flag = re.search(r"tensorboard --logdir logs (--samples_per_plugin \S+)", readme).group(1).split(" ")
    logdir = tmp_path / "logs"
    data = np.arange(8.0)
    write_events(logdir / "long", {step: [summary.weights_pb("w", data * step)] for step in range(120)})
    server = tensorboard_process(logdir, load_fast=load_fast, extra_args=flag)
    verdicts = server.wait_for(lambda j: len(j["runs"]) == 1 and len(j["runs"][0]["steps"]) == 120, "/data/plugin/tb_weightdiff/verdicts")
    assert verdicts["runs"][0]["steps"] == list(range(120))
