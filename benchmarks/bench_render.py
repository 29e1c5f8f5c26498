"""Benchmark 4: opening the Weight Diff tab in a browser until its table and heatmap are drawn.

  python benchmarks/bench_render.py [--mode smoke|quick|default|full]

Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) opens
http://127.0.0.1:PORT/#tb_weightdiff of a real TensorBoard serving the logdir
of benchmark 3 (5 runs x 40 weight tensors x 100 epochs of Keras-style
histograms). Timed from the start of `page.goto` until, inside the plugin's
iframe, the layer table (`section.run table.layers tr.layer-row`) and the
heatmap (`svg.heatmap`) of every run are in the page:

- the first navigation after TensorBoard started: nothing cached, the
  plugin computes the verdicts;
- the tab reopened in the same browser (the median of several): the
  browser has TensorBoard's scripts, the plugin has its answer;
- each time in a fresh browser context: no HTTP cache, so TensorBoard's own
  page (~1.9 MB of script) loads from scratch.

For scale, the time until TensorBoard's own page has created the plugin's
iframe (its app shell loaded) is the "peer" of every row.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "4 render"


def _plugin_frame(page, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "name=tb_weightdiff" in frame.url:
                return frame
        page.wait_for_timeout(5)
    raise RuntimeError("no tb_weightdiff iframe; frames: %r" % [f.url for f in page.frames])


def navigate(page, url, runs):
    """`(seconds until the iframe exists, seconds until table and heatmap are drawn)`."""
    page.goto("about:blank")
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    started = time.perf_counter()
    page.goto(url + "/#tb_weightdiff", wait_until="commit")
    frame = _plugin_frame(page)
    framed = time.perf_counter() - started
    frame.wait_for_function(
        "runs => document.querySelectorAll('section.run table.layers tr.layer-row').length > 0"
        " && document.querySelectorAll('section.run svg.heatmap').length >= runs",
        arg=runs, timeout=120_000, polling="raf",
    )
    drawn = time.perf_counter() - started
    if errors:
        raise RuntimeError("page errors: %s" % errors)
    return framed, drawn


def fresh_context(browser, function):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        return function(context.new_page())
    finally:
        context.close()


def _row(figure, times, note=""):
    framed = common.median([f for f, _ in times])
    drawn = common.median([d for _, d in times])
    item = common.row(
        BENCH, figure, drawn * 1e3, framed * 1e3, peer_name="TensorBoard's shell (iframe created)",
        target="<= 1000 ms",
        note=("%sthe tab's own part (iframe to drawn) %.0f ms; each navigation (ms): %s"
              % (note, (drawn - framed) * 1e3, ", ".join("%.0f" % (d * 1e3) for _, d in times))),
    )
    item["met"] = item["ours"] <= 1000
    return item


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    if not os.path.exists(common.CHROMIUM) or not common.have_module("playwright"):
        common.emit([common.skipped(BENCH, "needs /usr/bin/chromium and playwright")], args.rows_out, args.mode)
        return 0
    from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel

    runs, tensors, steps = (2, 4, 5) if args.mode == "smoke" else (5, 40, 100)
    repeats = {"smoke": 1, "quick": 3, "default": 7, "full": 9}[args.mode]
    path = common.benchmark_logdir(runs, tensors, steps, source="histograms")
    size = "%d runs x %d tensors x %d steps" % (runs, tensors, steps)
    with common.TensorBoard(path) as server, sync_playwright() as playwright:
        server.wait_for_data(runs, steps - 1)
        browser = playwright.chromium.launch(executable_path=common.CHROMIUM, args=common.CHROMIUM_FLAGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            first = navigate(page, server.url, runs)
            again = [navigate(page, server.url, runs) for _ in range(repeats)]
            context.close()
            fresh = [fresh_context(browser, lambda p: navigate(p, server.url, runs)) for _ in range(repeats)]
        finally:
            browser.close()
    rows = [
        _row("tab drawn (table + heatmap), %s, reopened in the same browser" % size, again),
        _row("  same, each time in a fresh browser context (nothing cached)", fresh,
             note="TensorBoard's own page downloads ~1.9 MB of script first; "),
        _row("  first navigation after TensorBoard started (verdicts computed, nothing cached)", [first]),
    ]
    common.emit(rows, args.rows_out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
