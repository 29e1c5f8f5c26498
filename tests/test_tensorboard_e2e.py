"""A real `tensorboard --logdir` process with the plugin installed, under both loaders."""

import os

import numpy as np
import pytest
from tensorboard.plugins.histogram import summary_v2 as histogram_summary

from tb_weightdiff import summary
from conftest import ARTIFACTS
from conftest import plugin_frame
from conftest import write_events


def _logdir(tmp_path, rng, tag="dense/kernel"):
    logdir = tmp_path / "logs"
    weights = rng.standard_normal((8, 4))
    write_events(logdir / "ours", {step: [summary.weights_pb(tag, weights * (1 + step))] for step in range(3)})
    write_events(
        logdir / "keras_only" / "train",
        {step: [histogram_summary.histogram_pb("dense/kernel/histogram", weights * (1 + step))] for step in range(3)},
    )
    return logdir


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_tab_is_listed_and_serves_its_module(tmp_path, rng, tensorboard_process, load_fast):
    server = tensorboard_process(_logdir(tmp_path, rng), load_fast=load_fast)
    listing = server.wait_for(lambda j: j.get("tb_weightdiff", {}).get("enabled"), "/data/plugins_listing")
    entry = listing["tb_weightdiff"]
    assert entry["tab_name"] == "Weight Diff"
    assert entry["loading_mechanism"] == {"type": "IFRAME", "module_path": "/data/plugin/tb_weightdiff/index.js"}
    status, headers, body = server.get("/data/plugin/tb_weightdiff/index.js")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert b"export async function render" in body
    series = server.wait_for(lambda j: len(j["runs"]) == 2, "/data/plugin/tb_weightdiff/series")
    assert {(r["run"], r["source"]) for r in series["runs"]} == {
        ("ours", "tb_weightdiff"),
        ("keras_only/train", "histograms"),
    }
    assert "Traceback" not in server.output()


@pytest.mark.slow
@pytest.mark.browser
def test_tab_renders_in_chromium_with_names_as_text(tmp_path, rng, tensorboard_process, page):
    hostile = "<img src=x onerror=alert(1)>"
    logdir = _logdir(tmp_path, rng)
    write_events(logdir / hostile, {0: [summary.weights_pb("w", rng.standard_normal(4))]})
    server = tensorboard_process(logdir)
    server.wait_for(lambda j: len(j["runs"]) == 3, "/data/plugin/tb_weightdiff/series")
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(server.url + "/#tb_weightdiff")
    frame = plugin_frame(page)
    frame.wait_for_selector("table td")
    cells = frame.locator("td").all_text_contents()
    assert "ours" in cells and "keras_only/train" in cells
    assert hostile in cells  # shown as text
    assert frame.locator("img").count() == 0
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "foundation-tab.png"))
    assert dialogs == []
    assert page.errors == []
