"""The Weight Diff tab in headless Chromium (Playwright) against a real TensorBoard.

Screenshots land in artifacts/ (or $TBWD_ARTIFACTS).
"""

import json
import os

import numpy as np
import pytest

from tb_weightdiff import summary
from tb_weightdiff import verdicts
from conftest import ARTIFACTS
from conftest import plugin_frame
from conftest import write_events
from logdirs import append_step
from logdirs import write_planted_logdir

pytestmark = [pytest.mark.slow, pytest.mark.browser]

HOSTILE = "<img src=x onerror=alert(1)>"


def _screenshot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path, full_page=True)
    return path


@pytest.fixture
def planted(tmp_path):
    logdir = tmp_path / "logs"
    series = write_planted_logdir(logdir)
    # Names from logs are data: a run and a tag that look like markup.
    write_events(logdir / ("run" + HOSTILE), {step: [summary.weights_pb(HOSTILE + "/kernel", np.arange(6.0) * (step + 1))] for step in range(3)})
    return logdir, series


def _serve(logdir, tensorboard_process):
    server = tensorboard_process(logdir)
    server.wait_for(lambda j: len(j["runs"]) == 3, "/data/plugin/tb_weightdiff/runs")
    return server


def _open_tab(page, server, dialogs, rows="section.run table.layers tr.layer-row"):
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(server.url + "/#tb_weightdiff")
    frame = plugin_frame(page)
    frame.wait_for_selector(rows)
    return frame


@pytest.mark.also_without_tf
def test_table_heatmap_overlay_slider_and_export(planted, tensorboard_process, page):
    server = _serve(planted[0], tensorboard_process)
    dialogs = []
    frame = _open_tab(page, server, dialogs)

    # The planted frozen layer is flagged, worst verdicts first.
    planted_run = frame.locator('section.run[data-run="planted"]')
    rows = planted_run.locator("tr.layer-row")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.verdict)") == ["diverged", "not_learning", "frozen", "learning"]
    frozen = planted_run.locator('tr.layer-row[data-layer="model/frozen"]')
    assert frozen.locator(".badge").inner_text() == "frozen"
    assert "bit-identical" in frozen.inner_text()

    # The heatmap: one cell per layer and step after the baseline, with a legend and hover values.
    heat = planted_run.locator("canvas.heatmap")
    assert (heat.get_attribute("data-rows"), heat.get_attribute("data-columns")) == ("4", "5")
    assert planted_run.locator("svg.legend").count() == 1
    heat.hover(position=_cell_position(heat, 2, 0))
    assert planted_run.locator(".heatmap-readout").inner_text() == planted_run.locator(".heatmap-tip").inner_text()
    assert planted_run.locator(".heatmap-readout").inner_text().startswith("model/frozen, step 1: per-step shift 0")
    _screenshot(page, "tab-table-heatmap.png")

    # Expand a layer, open a variable: the A/B overlay defaults to baseline vs last.
    planted_run.locator('tr.layer-row[data-layer="model/dense"]').click()
    planted_run.locator('tr.variable-row[data-tag="model/dense/kernel"]').click()
    overlay = frame.locator("section.detail svg.overlay")
    overlay.wait_for()
    assert (overlay.get_attribute("data-step-a"), overlay.get_attribute("data-step-b")) == ("0", "5")
    assert frame.locator("section.detail svg.ridgeline path.ridge").count() == 6
    assert frame.locator("section.detail svg.overlay rect.difference-bar").count() > 0
    frame.locator("section.detail .comparison").filter(has_text="×").wait_for()
    before = frame.locator("section.detail svg.overlay path.density-A").get_attribute("d")
    comparison_before = frame.locator("section.detail .comparison").inner_text()

    # Moving slider A changes the overlay (and the A/B distance).
    slider = frame.locator('section.detail input[name="a"]')
    slider.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    overlay = frame.locator("section.detail svg.overlay")
    assert overlay.get_attribute("data-step-a") == "2"
    assert frame.locator("section.detail svg.overlay path.density-A").get_attribute("d") != before
    frame.wait_for_function(
        "before => document.querySelector('section.detail .comparison').textContent !== before "
        "&& document.querySelector('section.detail .comparison').textContent.includes('×')",
        arg=comparison_before,
    )
    assert frame.locator('section.detail .step-a').inner_text().strip() == "step 2"
    # The readout is in the unit of the table row: the variable's baseline std.
    assert "× its baseline's std" in frame.locator("section.detail .comparison").inner_text()
    _screenshot(page, "tab-detail.png")

    # Export what the detail shows: the variable's histograms, quantiles and statistics.
    with page.expect_download() as download_info:
        frame.locator("button.export-variable-csv").click()
    assert download_info.value.suggested_filename == "weightdiff-planted-model_dense_kernel.csv"
    variable_csv = open(download_info.value.path(), encoding="utf-8").read()
    status, _, body = server.get("/data/plugin/tb_weightdiff/variable?run=planted&tag=model/dense/kernel&format=csv")
    assert status == 200 and body.decode("utf-8") == variable_csv
    assert variable_csv.splitlines()[0] == ",".join(verdicts.VARIABLE_CSV_COLUMNS)
    with page.expect_download() as download_info:
        frame.locator("button.export-variable-json").click()
    exported = json.loads(open(download_info.value.path(), encoding="utf-8").read())
    assert exported["tag"] == "model/dense/kernel" and len(exported["histograms"]) == 6
    assert len(exported["quantiles"]["values"][5]) == 65

    # Export the verdict table.
    with page.expect_download() as download_info:
        frame.locator("button.export-csv").click()
    csv_text = open(download_info.value.path(), encoding="utf-8").read()
    # The CLI's schema, written by the plugin: the same bytes as its CSV route.
    assert csv_text.splitlines()[0] == ",".join(verdicts.CSV_COLUMNS)
    assert "planted,tb_weightdiff,model/frozen,frozen,kernel,model/frozen/kernel,frozen" in csv_text
    status, _, body = server.get("/data/plugin/tb_weightdiff/verdicts?format=csv")
    assert status == 200 and body.decode("utf-8") == csv_text
    with page.expect_download() as download_info:
        frame.locator("button.export-json").click()
    assert '"runs"' in open(download_info.value.path(), encoding="utf-8").read()

    # Names from logs are text, never markup.
    hostile = frame.locator("section.run").filter(has_text="run" + HOSTILE)
    assert hostile.locator(".run-name").inner_text() == "run" + HOSTILE
    assert hostile.locator("tr.layer-row").inner_text().startswith("▸ " + HOSTILE)
    assert frame.locator("img").count() == 0
    assert dialogs == []
    assert page.errors == []


def test_verdict_filter_and_thresholds(planted, tensorboard_process, page):
    server = _serve(planted[0], tensorboard_process)
    frame = _open_tab(page, server, [])
    planted_run = frame.locator('section.run[data-run="planted"]')
    frame.locator('.verdict-filter input[value="learning"]').uncheck()
    assert "learning" not in planted_run.locator("tr.layer-row").evaluate_all("rows => rows.map(r => r.dataset.verdict)")
    frame.locator('.verdict-filter input[value="learning"]').check()
    # Lowering the floors turns the barely moving layer into a learning one.
    frame.locator('input[name="min_relative_change"]').fill("1e-12")
    frame.locator('input[name="min_ratio_to_median"]').fill("0")
    frame.locator(".thresholds button[type=submit]").click()
    frame.locator('section.run[data-run="planted"] tr.layer-row[data-layer="model/slow"][data-verdict="learning"]').wait_for()
    # Bad input gets the server's message, not a broken page.
    frame.locator('input[name="min_shift"]').evaluate("input => { input.type = 'text'; input.value = 'oops'; }")
    frame.locator(".thresholds button[type=submit]").click()
    frame.locator(".message .error").filter(has_text="min_shift").wait_for()
    assert page.errors == []


def _write_decay_and_tiny_runs(logdir, rng):
    from tb_weightdiff import events

    def walk(start, rate, steps=5):
        arrays = [start]
        for _ in range(steps - 1):
            arrays.append(arrays[-1] + rate * rng.standard_normal(start.shape).astype(np.float32) * start.std())
        return arrays

    for run, rates, dead in (("decay", [0.1, 0.12, 0.08], True), ("tiny", [1e-6, 1.2e-6, 0.9e-6], False)):
        writer = events.create_writer(logdir / run)
        layers = {"net/l%d/kernel" % i: walk(rng.normal(0, 0.2, (32, 32)).astype(np.float32), rate) for i, rate in enumerate(rates)}
        if dead:
            start = rng.normal(0, 0.2, (32, 32)).astype(np.float32)
            layers["net/dead/kernel"] = [start * np.float32(0.99) ** step for step in range(5)]
        for step in range(5):
            for tag, arrays in layers.items():
                events.write_weights(writer, tag, arrays[step], step, reference=arrays[0], trainable=True, layer_type="Dense")
            events.write_optimizer(writer, step, updates=1000 * step, learning_rate=1e-7)
        writer.close()


def test_decay_only_hints_settled_steps_and_run_findings(tmp_path, tensorboard_process, page):
    logdir = tmp_path / "logs"
    _write_decay_and_tiny_runs(logdir, np.random.default_rng(3))
    server = tensorboard_process(logdir)
    server.wait_for(lambda j: len(j["runs"]) == 2, "/data/plugin/tb_weightdiff/runs")
    frame = _open_tab(page, server, [])
    # The verdicts the filter offers are the analysis's own, decay_only among them.
    offered = frame.locator(".verdict-filter input").evaluate_all("inputs => inputs.map(i => i.value)")
    assert offered == list(verdicts.VERDICTS)
    dead = frame.locator('section.run[data-run="decay"] tr.layer-row[data-layer="net/dead"]')
    assert dead.get_attribute("data-verdict") == "decay_only"
    assert dead.locator(".badge").inner_text() == "decay only"
    colour = dead.locator(".badge").evaluate("badge => getComputedStyle(badge).backgroundColor")
    others = frame.locator(".verdict-filter .badge").evaluate_all("badges => badges.map(b => getComputedStyle(b).backgroundColor)")
    assert others.count(colour) == 1  # a colour of its own
    assert "No gradient reaches it" in dead.locator(".hint").inner_text()
    assert "decades from flipping" in dead.locator("td.verdict").get_attribute("title")
    assert frame.locator('section.run[data-run="decay"] th').filter(has_text="settled at").count() == 1
    # A run that barely moves anywhere: one finding about the run, no layer flagged.
    tiny = frame.locator('section.run[data-run="tiny"]')
    assert "barely moves" in tiny.locator(".findings li").inner_text()
    assert set(tiny.locator("tr.layer-row").evaluate_all("rows => rows.map(r => r.dataset.verdict)")) == {"learning"}
    _screenshot(page, "tab-decay-findings.png")
    assert page.errors == []


def test_auto_refresh_picks_up_a_new_step(planted, tensorboard_process, page):
    logdir, series = planted
    server = _serve(logdir, tensorboard_process)
    frame = _open_tab(page, server, [])
    frame.locator('select[name="interval"]').select_option(str(5000))
    summary_line = frame.locator('section.run[data-run="planted"] .run-summary')
    assert summary_line.inner_text().startswith("6 logged steps")
    # A poll that finds nothing new redraws nothing: the same table element stays, an open row stays open.
    frame.locator('section.run[data-run="planted"] tr.layer-row[data-layer="model/dense"]').click()
    frame.locator("section.run table.layers").evaluate_all("tables => tables.forEach(t => { t.dataset.marked = 'yes'; })")
    before = frame.locator(".updated").inner_text()
    page.wait_for_timeout(1100)  # "last updated" shows seconds: let the next one differ
    frame.locator("button", has_text="Refresh now").click()
    frame.wait_for_function("before => document.querySelector('.updated').textContent !== before", arg=before, timeout=20000)
    assert frame.locator('section.run[data-run="planted"] table.layers[data-marked="yes"]').count() == 1
    # The answer the browser held was revalidated by its ETag (a 304: headers only), not sent again.
    # (Playwright reports such a response as the 200 the page sees; its resource timing does not.)
    sizes = frame.evaluate(
        "() => performance.getEntriesByType('resource').filter(e => e.name.includes('/verdicts'))"
        ".map(e => [e.transferSize, e.encodedBodySize])"
    )
    assert any(0 < sent < body for sent, body in sizes[1:]), sizes
    append_step(logdir, series, 6)
    summary_line.filter(has_text="7 logged steps").wait_for(timeout=40000)
    heat = frame.locator('section.run[data-run="planted"] canvas.heatmap')
    assert (heat.get_attribute("data-rows"), heat.get_attribute("data-columns")) == ("4", "6")
    # New data in one run: that run's section is drawn again, the others stay as they were,
    # and the row the user opened is still open.
    assert frame.locator('section.run[data-run="planted"] table.layers[data-marked="yes"]').count() == 0
    assert frame.locator('section.run:not([data-run="planted"]) table.layers[data-marked="yes"]').count() == 2
    assert frame.locator('section.run[data-run="planted"] tr.variable-row[data-tag="model/dense/kernel"]').count() == 1
    assert "last updated" in frame.locator(".updated").inner_text()
    assert page.errors == []


def test_empty_state_shows_the_code_that_produces_data(tmp_path, tensorboard_process, page):
    logdir = tmp_path / "empty"
    logdir.mkdir()
    server = tensorboard_process(logdir)
    page.goto(server.url + "/#tb_weightdiff")
    frame = plugin_frame(page)
    frame.locator("section.empty").wait_for()
    text = frame.locator("section.empty").inner_text()
    assert "WeightDiffCallback" in text and "weights_pb" in text and "wd.weights(" in text
    _screenshot(page, "tab-empty.png")
    assert page.errors == []


def test_readme_screenshot_script_runs(planted, tmp_path):
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "screenshots.py")
    out = tmp_path / "images"
    result = subprocess.run(
        [sys.executable, script, "--logdir", str(planted[0]), "--out", str(out), "--run", "planted"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("tab-verdicts.png", "tab-detail.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10000, name


def test_reset_column_sorts_and_explains(tmp_path, tensorboard_process, page):
    from logdirs import write_reset_logdir

    logdir = tmp_path / "logs"
    final = write_reset_logdir(logdir)
    server = tensorboard_process(logdir)
    server.wait_for(lambda j: len(j["runs"]) == 1, "/data/plugin/tb_weightdiff/runs")
    frame = _open_tab(page, server, [])
    run = frame.locator('section.run[data-run="checked"]')
    assert "Reset check at step 4" in run.locator(".reset-summary").inner_text()
    header = run.locator("th.sortable")
    assert header.inner_text().startswith("reset Δloss")
    frozen = run.locator('tr.layer-row[data-layer="model/frozen"] td.reset')
    assert frozen.inner_text().startswith("0 (0%)") and frozen.get_attribute("data-impact") == "robust"
    order = lambda: run.locator("tr.layer-row").evaluate_all("rows => rows.map(r => r.dataset.layer)")
    assert order()[0] == "model/frozen"  # worst verdict first
    header.click()
    by_cost = sorted(final, key=lambda name: final[name]["loss_reset"] - final[name]["loss"], reverse=True)
    assert order() == by_cost
    assert "▾" in header.inner_text()
    header.click()
    assert order()[0] == "model/frozen"
    # With thresholds that call every layer robust, a learning layer says what that means.
    frame.locator('input[name="max_robust_reset"]').fill("0.999")
    frame.locator('input[name="min_critical_reset"]').fill("1")
    frame.locator("form.thresholds button[type=submit]").click()
    note = run.locator('tr.layer-row[data-layer="model/first"] .reset-note')
    note.wait_for()
    assert "robust layer" in note.inner_text()
    _screenshot(page, "tab-reset-check.png")
    assert page.errors == []


def _write_wide_run(logdir, blocks=250, steps=6):
    """A transformer-sized run: `blocks` x 8 weight tensors (2,000 series), tags as Hugging Face names them."""
    from tb_weightdiff import events

    rng = np.random.default_rng(5)
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm"]
    writer = events.create_writer(logdir / "wide")
    start = {(b, n): rng.standard_normal(16).astype(np.float32) for b in range(blocks) for n in names}
    for step in range(steps):
        for (block, name), initial in start.items():
            value = initial + np.float32(0.01 * step) * rng.standard_normal(16).astype(np.float32)
            events.write_weights(writer, "model.layers.%d.%s.weight" % (block, name), value, step, reference=initial,
                                 trainable=True, layer_type="LlamaRMSNorm" if name == "input_layernorm" else "Linear")
    writer.close()


def _cell_position(canvas, row, column):
    """Where cell (row, column) of a heatmap canvas is, in its own pixels, with its box scrolled to the top."""
    data = canvas.evaluate("c => ({...c.dataset})")
    cell, height = int(data["cell"]), int(data["rowHeight"])
    return {"x": int(data["labelWidth"]) + column * cell + cell // 2, "y": int(data["axisHeight"]) + row * height + height // 2}


def _rendered(run, selector="tr.layer-row, tr.group-row, tr.variable-row"):
    return run.locator("table.layers tbody").locator(selector).count()


@pytest.mark.also_without_tf
def test_a_2000_series_run_draws_only_what_is_on_screen(tmp_path, tensorboard_process, page):
    logdir = tmp_path / "logs"
    _write_wide_run(logdir)
    server = tensorboard_process(logdir)
    server.wait_for(lambda j: len(j["runs"]) == 1 and len(j["runs"][0]["tags"]) == 2000, "/data/plugin/tb_weightdiff/runs")
    frame = _open_tab(page, server, [], rows="section.run table.layers tr.group-row")
    run = frame.locator('section.run[data-run="wide"]')
    scroller = run.locator(".table-scroll")
    table = run.locator("table.layers")
    # Grouped by block: 250 rows in the table's model, a few dozen of them in the DOM, the scroll box as tall as all.
    assert table.get_attribute("aria-rowcount") == "251"
    drawn = _rendered(run)
    assert 10 < drawn < 200 and run.locator("tr.layer-row").count() == 0
    height = run.locator("tr.group-row").first.evaluate("r => r.offsetHeight")
    assert scroller.evaluate("s => s.scrollHeight") >= 0.9 * 250 * height
    # Scrolling brings the last blocks into the DOM, still a bounded number of rows.
    scroller.evaluate("s => { s.scrollTop = s.scrollHeight; }")
    run.locator('tr[aria-rowindex="251"]').wait_for()
    assert _rendered(run) < 200
    scroller.evaluate("s => { s.scrollTop = 0; }")
    run.locator('tr[aria-rowindex="2"]').wait_for()

    # The heatmap: one canvas row per block, painted (not blank), only as tall as its box.
    heat = run.locator("canvas.heatmap")
    assert (heat.get_attribute("data-rows"), heat.get_attribute("data-columns")) == ("250", "5")
    assert frame.locator("section.run svg.heatmap, section.run rect.heatmap-cell").count() == 0
    assert heat.evaluate("c => c.getBoundingClientRect().height") < 500
    painted = heat.evaluate("""c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) n++; return n; }""")
    assert painted > 1000
    # Hover describes a cell; scrolled to its last row and clicked, it brings that block's row into the table.
    run.locator(".heatmap-box").evaluate("b => { b.scrollTop = b.scrollHeight; }")
    frame.wait_for_function("() => document.querySelector('canvas.heatmap').dataset.lastRow === '249'")
    box = heat.bounding_box()
    heat.hover(position={"x": _cell_position(heat, 0, 4)["x"], "y": box["height"] - 5})
    described = run.locator(".heatmap-readout").inner_text()
    block = described.split(" (")[0]
    assert block.startswith("model.layers.") and ", step 5: per-step shift " in described
    heat.click(position={"x": _cell_position(heat, 0, 4)["x"], "y": box["height"] - 5})
    current = run.locator("tr.current")
    assert current.get_attribute("data-group") == block and current.get_attribute("aria-rowindex") == "251"
    assert scroller.evaluate("s => s.scrollTop") > 0

    # A block expands to its 8 layers and collapses again; the table keeps its scroll position meanwhile.
    top = scroller.evaluate("s => s.scrollTop")
    current.click()
    members = run.locator("tr.layer-row").evaluate_all("rows => rows.map(r => r.dataset.layer)")
    assert len(members) == 8 and all(name.startswith(block + ".") for name in members)
    assert table.get_attribute("aria-rowcount") == "259"
    assert run.locator("canvas.heatmap").get_attribute("data-rows") == "257"
    assert abs(scroller.evaluate("s => s.scrollTop") - top) < 2 and _rendered(run) < 200
    # The keyboard: the row clicked keeps focus across the redraw, arrows walk the rows, Enter toggles.
    focused = lambda: frame.evaluate("() => document.activeElement.dataset.group || document.activeElement.dataset.layer || ''")
    assert focused() == block
    page.keyboard.press("ArrowDown")
    assert focused() == members[0]
    page.keyboard.press("ArrowUp")
    page.keyboard.press("Enter")
    run.locator("tr.layer-row").first.wait_for(state="detached")
    assert run.locator("tr.layer-row").count() == 0 and focused() == block
    page.keyboard.press("Home")
    assert run.locator("tr.group-row").first.get_attribute("aria-rowindex") == "2" and focused() != block
    _screenshot(page, "tab-wide-grouped.png")

    # Ungrouped: 2,000 layers in the table's model, still a bounded number in the DOM; a 2,000-row heatmap.
    frame.locator('input[name="group-blocks"]').uncheck()
    assert table.get_attribute("aria-rowcount") == "2001"
    assert 10 < _rendered(run) < 200
    assert run.locator("canvas.heatmap").get_attribute("data-rows") == "2000"
    scroller.evaluate("s => { s.scrollTop = s.scrollHeight; }")
    run.locator('tr[aria-rowindex="2001"]').wait_for()
    assert _rendered(run) < 200
    frame.locator('input[name="group-blocks"]').check()
    # Found by name: a filter opens the blocks it picks layers from, and the heatmap follows it.
    box = frame.locator('input[name="layer-filter"]')
    box.fill(r"layers\.17\.")
    names = run.locator("tr.layer-row").evaluate_all("rows => rows.map(r => r.dataset.layer)")
    assert len(names) == 8 and all(name.startswith("model.layers.17.") for name in names)
    assert run.locator("tr.group-row").count() == 1
    assert "showing 8 of 2000" in run.locator(".run-summary").inner_text()
    assert run.locator("canvas.heatmap").get_attribute("data-rows") == "8"
    # Kept in the tab's URL hash: a reloaded tab keeps it.
    assert "#layers=" in frame.url
    frame.goto(frame.url)
    frame.wait_for_selector("section.run table.layers tr.layer-row")
    assert frame.locator('input[name="layer-filter"]').input_value() == r"layers\.17\."
    assert frame.locator('section.run[data-run="wide"] tr.layer-row').count() == 8
    # Text that is no regular expression is matched as it is, and the box says so.
    box = frame.locator('input[name="layer-filter"]')
    box.fill("layers.17.mlp.(")
    assert "invalid" in box.get_attribute("class")
    assert frame.locator('section.run[data-run="wide"] tr.layer-row').count() == 0
    box.fill("down_proj")
    assert frame.locator('section.run[data-run="wide"] table.layers').get_attribute("aria-rowcount") == "251"
    assert 10 < _rendered(frame.locator('section.run[data-run="wide"]'), "tr.layer-row") < 200
    _screenshot(page, "tab-wide-run.png")
    assert page.errors == []


def test_cross_run_overlay_draws_run_a_against_run_b(tmp_path, tensorboard_process, page):
    from logdirs import planted_weights

    logdir = tmp_path / "logs"
    for run, seed, steps in (("baseline_run", 0, 6), ("finetune_run", 1, 4)):
        series = planted_weights(steps=steps, seed=seed)
        write_events(logdir / run, {step: [summary.weights_pb(tag, values[step], reference=values[0]) for tag, values in series.items()]
                                    for step in range(steps)})
    server = tensorboard_process(logdir)
    server.wait_for(lambda j: len(j["runs"]) == 2, "/data/plugin/tb_weightdiff/runs")
    frame = _open_tab(page, server, [])
    run = frame.locator('section.run[data-run="baseline_run"]')
    run.locator('tr.layer-row[data-layer="model/dense"]').click()
    run.locator('tr.variable-row[data-tag="model/dense/kernel"]').click()
    frame.locator("section.detail svg.overlay").wait_for()
    picker = frame.locator('section.detail select[name="run-b"]')
    assert picker.locator("option").evaluate_all("options => options.map(o => o.value)") == ["", "finetune_run"]
    picker.select_option("finetune_run")
    frame.locator('section.detail[data-run-b="finetune_run"]').wait_for()
    # B now runs over the other run's 4 steps, defaulting to its last; A stays on this run's baseline.
    assert frame.locator('section.detail input[name="b"]').get_attribute("max") == "3"
    assert frame.locator("section.detail .step-b").inner_text().strip() == "step 3 of run finetune_run"
    legend = frame.locator("section.detail svg.overlay text.legend-b").text_content()
    assert legend == "B: step 3 of run finetune_run"
    frame.locator("section.detail .comparison").filter(has_text="×").wait_for()
    status, _, body = server.get(
        "/data/plugin/tb_weightdiff/compare?run=baseline_run&tag=model/dense/kernel&a=0&b=3&run_b=finetune_run")
    answer = json.loads(body)
    assert status == 200 and answer["run_b"] == "finetune_run"
    shown = frame.locator("section.detail .comparison").inner_text()
    assert shown.startswith("Wasserstein-1 between A and B: %s" % _formatted(answer["w1"]))
    # Back to this run: B is this run's last step again.
    frame.locator('section.detail select[name="run-b"]').select_option("")
    frame.locator('section.detail[data-run-b="baseline_run"]').wait_for()
    assert frame.locator('section.detail input[name="b"]').get_attribute("max") == "5"
    assert frame.locator("section.detail .step-b").inner_text().strip() == "step 5"
    frame.locator("section.detail .comparison").filter(has_text="×").wait_for()
    _screenshot(page, "tab-cross-run.png")
    assert page.errors == []


def _formatted(value):
    """The tab's formatNumber: 3 significant digits."""
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return "%.2e" % value
    return ("%.3g" % value)
