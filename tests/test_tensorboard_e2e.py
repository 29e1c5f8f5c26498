"""A real `tensorboard --logdir` process with the plugin installed, under both loaders."""

import os
import signal
import time

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
    assert not any("TensorBoard kept" in warning for warning in verdicts["runs"][0]["warnings"])


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_without_the_flag_the_tab_says_tensorboard_kept_fewer_steps(tmp_path, tensorboard_process, load_fast):
    import numpy as np

    from tb_weightdiff import summary
    from conftest import write_events

    logdir = tmp_path / "logs"
    data = np.arange(8.0)
    write_events(logdir / "long", {step: [summary.weights_pb("w", data * (step + 1))] for step in range(150)})
    server = tensorboard_process(logdir, load_fast=load_fast)
    kept = {"true": 100, "false": 10}[load_fast]  # the Rust data server's default, the Python loader's
    body = server.wait_for(lambda j: len(j["runs"]) == 1 and j["runs"][0]["steps"][-1] == 149, "/data/plugin/tb_weightdiff/verdicts")
    (run,) = body["runs"]
    assert len(run["steps"]) == kept
    (note,) = [warning for warning in run["warnings"] if "TensorBoard kept" in warning]
    assert "kept %d steps" % kept in note and "--samples_per_plugin tb_weightdiff=0,histograms=0" in note


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


@pytest.mark.slow
def test_a_stopped_data_server_is_a_503_with_a_message(tmp_path, tensorboard_process):
    """TensorBoard (2.21) does not restart its data server: the tab says so, the process lives."""
    logdir = tmp_path / "logs"
    write_planted_logdir(logdir)
    server = tensorboard_process(logdir)  # the Rust data server, TensorBoard's default
    server.wait_for(lambda j: len(j["runs"]) == 2, "/data/plugin/tb_weightdiff/verdicts")
    (data_server,) = [pid for pid in _children(server.process.pid) if "server" in open("/proc/%d/cmdline" % pid).read()]
    os.kill(data_server, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, headers, body = server.get("/data/plugin/tb_weightdiff/verdicts?min_shift=0.5")
        if status != 200:
            break
        time.sleep(0.5)
    assert status == 503, body[:300]
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "data server did not answer" in text and "restart TensorBoard" in text
    assert server.process.poll() is None
    assert "Traceback" not in server.output()
