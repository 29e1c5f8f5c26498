"""Benchmark 4: opening the Weight Diff tab in a browser until its table and heatmap are drawn.

  python benchmarks/bench_render.py [--mode smoke|quick|default|full] [--only small|wide]

Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) opens
http://127.0.0.1:PORT/#tb_weightdiff of a real TensorBoard and waits until,
inside the plugin's iframe, every run's section holds layer table rows and a
drawn heatmap (`canvas.heatmap[data-drawn]`). Two logdirs:

- *small*: benchmark 3's, 5 runs x 40 weight tensors x 100 epochs of
  Keras-style histograms;
- *wide*: one transformer-sized run, 250 blocks x 8 tensors = 2,000 weight
  series x 30 epochs, tags as Hugging Face names them
  (`model.layers.17.mlp.down_proj.weight`), written without TensorFlow as
  plain histograms (what `SummaryWriter.add_histogram` writes; `--wide-source
  tb_weightdiff` for our summaries). The smoke mode writes 4 blocks x 3 epochs.

Each navigation is split, in the browser's own clocks, into TensorBoard's part
(the page's navigation start until it creates the plugin's iframe: the
iframe's `performance.timeOrigin` minus the page's) and the tab's part (the
iframe's start until the tab is drawn, observed at an animation frame), and
the tab's part into its GET /verdicts (the iframe's resource timing entry) and
the rest. Cases:

- the first navigation as soon as TensorBoard has loaded the logdir: the
  plugin computes the verdicts meanwhile (it starts half a second after
  TensorBoard's listing stops changing, or when TensorBoard's page lists the
  plugins, whichever comes first);
- the first navigation of another TensorBoard process, 15 s after it loaded
  the logdir: the plugin has judged it on its own at startup;
- the tab reopened in the same browser (the median of several): the browser
  has TensorBoard's scripts, the plugin has its answer;
- (small only) each time in a fresh browser context: no HTTP cache.

The DOM the tab built is counted after each navigation: table rows, SVG rects,
canvases and all elements of the iframe.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "4 render"

# Every run section has table rows and a drawn heatmap (the SVG one of earlier versions counts too,
# so the script can time an older checkout); the answer is the iframe's clock at that frame.
DRAWN = """runs => {
  const sections = document.querySelectorAll('section.run');
  if (sections.length < runs) return false;
  for (const section of sections) {
    if (!section.querySelector('table.layers tr.layer-row, table.layers tr.group-row')) return false;
    if (!section.querySelector('canvas.heatmap[data-drawn], svg.heatmap')) return false;
  }
  return performance.now();
}"""

MEASURE = """() => {
  const verdicts = performance.getEntriesByType('resource').filter((e) => /\\/verdicts(\\?|$)/.test(e.name));
  const first = verdicts[0];
  return {
    origin: performance.timeOrigin,
    verdicts_start: first ? first.startTime : null,
    verdicts_ms: first ? first.responseEnd - first.startTime : null,
    verdicts_bytes: first ? first.encodedBodySize : null,
    rows: document.querySelectorAll('section.run table.layers tbody tr:not(.spacer)').length,
    rects: document.querySelectorAll('rect').length,
    canvases: document.querySelectorAll('canvas').length,
    elements: document.getElementsByTagName('*').length,
  };
}"""


def _plugin_frame(page, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "name=tb_weightdiff" in frame.url:
                return frame
        page.wait_for_timeout(5)
    raise RuntimeError("no tb_weightdiff iframe; frames: %r" % [f.url for f in page.frames])


def navigate(page, url, runs):
    """One navigation's figures (ms): `tensorboard`, `tab`, `verdicts_ms`, ... and the DOM counts."""
    page.goto("about:blank")
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/#tb_weightdiff", wait_until="commit")
    frame = _plugin_frame(page)
    drawn = frame.wait_for_function(DRAWN, arg=runs, timeout=300_000, polling="raf").json_value()
    figures = frame.evaluate(MEASURE)
    figures["tensorboard"] = figures["origin"] - page.evaluate("performance.timeOrigin")
    figures["tab"] = drawn
    if errors:
        raise RuntimeError("page errors: %s" % errors)
    return figures


def _launch(playwright):
    return playwright.chromium.launch(executable_path=common.CHROMIUM, args=common.CHROMIUM_FLAGS, headless=True)


def fresh_context(browser, function):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        return function(context.new_page())
    finally:
        context.close()


def _median(times, key):
    values = [t[key] for t in times if t[key] is not None]
    return common.median(values) if values else None


def _row(figure, times):
    """ours = the tab's part, peer = TensorBoard's part; target: tab <= 1x TensorBoard's."""
    tab = _median(times, "tab")
    board = _median(times, "tensorboard")
    verdicts = _median(times, "verdicts_ms")
    last = times[-1]
    note = ("TensorBoard's part + the tab's = %.0f ms; of the tab's part, GET /verdicts %s (%s of it, %s kB)"
            " and before it (contract, runs) %s; DOM: %d table rows, %d SVG rects, %d canvases, %d elements;"
            " each navigation, tab / TensorBoard (ms): %s" % (
                tab + board, "%.0f ms" % verdicts if verdicts is not None else "-",
                "%.0f %%" % (100 * verdicts / tab) if verdicts is not None and tab else "-",
                "%.0f" % (last["verdicts_bytes"] / 1e3) if last["verdicts_bytes"] else "-",
                "%.0f ms" % _median(times, "verdicts_start") if _median(times, "verdicts_start") is not None else "-",
                last["rows"], last["rects"], last["canvases"], last["elements"],
                ", ".join("%.0f / %.0f" % (t["tab"], t["tensorboard"]) for t in times)))
    return common.row(BENCH, figure, tab, board, peer_name="TensorBoard's part (until it creates the iframe)",
                      limit=1.0, note=note)


def write_wide_logdir(path, blocks, steps, source="histograms", width=64, seed=5):
    """One run `wide`: `blocks` x 8 weight series, tags as Hugging Face names them, no TensorFlow."""
    # pylint: disable=import-outside-toplevel
    import numpy as np
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary
    from tensorboard.summary.writer import event_file_writer

    from tb_weightdiff import summary as summary_lib

    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm"]
    rng = np.random.default_rng(seed)
    start = {(b, n): rng.normal(0, 0.1, width).astype(np.float32) for b in range(blocks) for n in names}
    # Block 3's attention does not learn: something for the verdicts to find.
    rates = {key: (1e-7 if key[0] == 3 and key[1].startswith("self_attn") else 1e-2 * (1 + key[0] % 7)) for key in start}
    writer = event_file_writer.EventFileWriter(os.path.join(path, "wide"), filename_suffix=".wide")
    current = dict(start)
    for step in range(steps):
        summaries = []
        for key, initial in start.items():
            if step:
                current[key] = current[key] + np.float32(rates[key]) * rng.standard_normal(width).astype(np.float32)
            tag = "model.layers.%d.%s.weight" % key
            if source == "histograms":
                summaries.append(histogram_summary.histogram_pb(tag, current[key]))
            else:
                summaries.append(summary_lib.weights_pb(tag, current[key], reference=initial, trainable=True))
        for item in summaries:
            writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=item))
    writer.close()


def wide_logdir(blocks, steps, source):
    return common.cached_logdir(
        "wide_%s_%dx8x%d" % (source, blocks, steps), lambda path: write_wide_logdir(path, blocks, steps, source)
    )


# Seconds between TensorBoard having loaded the logdir and the "later" first visit.
SETTLED_SECONDS = 15


def measure(playwright, path, runs, steps, size, repeats, fresh, settled_seconds=SETTLED_SECONDS):
    rows = []
    with common.TensorBoard(path) as server:
        server.wait_for_data(runs, steps - 1)
        browser = _launch(playwright)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            first = navigate(page, server.url, runs)
            again = [navigate(page, server.url, runs) for _ in range(repeats)]
            context.close()
            if fresh:
                fresh_times = [fresh_context(browser, lambda p: navigate(p, server.url, runs)) for _ in range(repeats)]
        finally:
            browser.close()
    rows.append(_row("tab drawn (table + heatmap), %s, reopened in the same browser" % size, again))
    if fresh:
        rows.append(_row("  same, each time in a fresh browser context (nothing cached)", fresh_times))
    rows.append(_row("  same, first navigation as soon as TensorBoard has loaded the logdir (verdicts computed)", [first]))
    if settled_seconds is None:  # (the smoke run checks this case on one logdir only)
        return rows
    # A user who opens the page a little later: the plugin has judged the
    # logdir on its own once TensorBoard's listing of it stopped changing.
    with common.TensorBoard(path) as server:
        server.wait_for_data(runs, steps - 1)
        time.sleep(settled_seconds)
        browser = _launch(playwright)
        try:
            settled = fresh_context(browser, lambda p: navigate(p, server.url, runs))
        finally:
            browser.close()
    rows.append(_row("  same, first navigation %d s after TensorBoard loaded the logdir (judged on its own at startup)"
                     % settled_seconds, [settled]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--only", choices=("small", "wide"), default=None, help="one logdir only")
    parser.add_argument("--wide-source", choices=("histograms", "tb_weightdiff"), default="histograms")
    args = parser.parse_args(argv)
    if not os.path.exists(common.CHROMIUM) or not common.have_module("playwright"):
        common.emit([common.skipped(BENCH, "needs /usr/bin/chromium and playwright")], args.rows_out, args.mode)
        return 0
    from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel

    smoke = args.mode == "smoke"
    repeats = {"smoke": 1, "quick": 3, "default": 7, "full": 9}[args.mode]
    rows = []
    with sync_playwright() as playwright:
        if args.only in (None, "small"):
            runs, tensors, steps = (2, 4, 5) if smoke else (5, 40, 100)
            path = common.benchmark_logdir(runs, tensors, steps, source="histograms")
            rows += measure(playwright, path, runs, steps, "%d runs x %d tensors x %d steps" % (runs, tensors, steps),
                            repeats, fresh=True, settled_seconds=None if smoke else SETTLED_SECONDS)
        if args.only in (None, "wide"):
            blocks, steps = (4, 3) if smoke else (250, 30)
            path = wide_logdir(blocks, steps, args.wide_source)
            size = "1 run x %d series (%d blocks x 8) x %d steps, %s" % (
                blocks * 8, blocks, steps, "plain histograms" if args.wide_source == "histograms" else "our summaries")
            rows += measure(playwright, path, 1, steps, size, repeats, fresh=False,
                            settled_seconds=1 if smoke else SETTLED_SECONDS)
    common.emit(rows, args.rows_out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
