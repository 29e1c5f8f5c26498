"""Screenshots of the Weight Diff tab for the README, taken from a real TensorBoard.

  python demo/screenshots.py --logdir logs/cifar10 --out docs/images

Starts `tensorboard --logdir` on a free loopback port, opens the tab in
Debian's headless Chromium through Playwright (never a downloaded browser),
and saves the verdict table with its heatmap and the detail of one variable.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def start_tensorboard(logdir, log_file, extra_args=None, timeout=90):
    """Starts `tensorboard --logdir` on a free loopback port; returns `(process, url)`.

    Its output goes to `log_file`. By default it keeps every sample of our
    summaries and of histograms; `extra_args` replaces that default.
    """
    executable = shutil.which("tensorboard", path=os.path.dirname(sys.executable)) or shutil.which("tensorboard")
    if not executable:
        raise RuntimeError("the tensorboard command is not installed")
    if extra_args is None:
        # TensorBoard 2.21 wants 0 ("keep every sample"), not "all".
        extra_args = ["--samples_per_plugin", "tb_weightdiff=0,histograms=0"]
    process = subprocess.Popen(
        [executable, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0", *extra_args],
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log_file.seek(0)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", log_file.read())
        if match:
            return process, "http://127.0.0.1:%s" % match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    process.wait()
    log_file.seek(0)
    raise RuntimeError("tensorboard did not start:\n" + log_file.read())


def plugin_frame(page):
    for _ in range(300):
        for frame in page.frames:
            if "name=tb_weightdiff" in frame.url:
                return frame
        page.wait_for_timeout(100)
    raise SystemExit("the Weight Diff tab did not load")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", default=os.path.join("logs", "cifar10"))
    parser.add_argument("--out", default=os.path.join("docs", "images"))
    parser.add_argument("--run", default=None, help="run whose variable is opened in the detail (default: the first run)")
    parser.add_argument("--tag", default=None, help="variable to open (default: the first variable of the run's first layer)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryFile("w+") as log_file:
        try:
            process, url = start_tensorboard(args.logdir, log_file)
        except RuntimeError as error:
            raise SystemExit(str(error)) from None
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(url + "/#tb_weightdiff")
                frame = plugin_frame(page)
                frame.wait_for_selector("section.run table.layers tr.layer-row", timeout=60000)
                page.wait_for_timeout(500)
                table = os.path.join(args.out, "tab-verdicts.png")
                page.screenshot(path=table)
                section = frame.locator("section.run").first
                if args.run:
                    section = frame.locator("section.run[data-run=\"%s\"]" % args.run)
                if args.tag:
                    layer = args.tag.rsplit("/", 1)[0]
                    section.locator("tr.layer-row[data-layer=\"%s\"]" % layer).click()
                    section.locator("tr.variable-row[data-tag=\"%s\"]" % args.tag).click()
                else:
                    section.locator("tr.layer-row").first.click()
                    section.locator("tr.variable-row").first.click()
                frame.wait_for_selector("section.detail svg.overlay", timeout=60000)
                page.wait_for_timeout(500)
                detail = os.path.join(args.out, "tab-detail.png")
                page.screenshot(path=detail)
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=10)
    print("wrote %s and %s" % (table, detail))


if __name__ == "__main__":
    main()
