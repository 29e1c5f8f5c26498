"""Shared fixtures: TensorFlow detection, event-file writing, opening logdirs both ways."""

import importlib.util
import os
import time

import numpy as np
import pytest

from tb_weightdiff import reader

# Quiet TensorFlow's C++ start-up chatter in test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HAVE_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None

requires_tf = pytest.mark.skipif(
    not HAVE_TENSORFLOW, reason="TensorFlow is not installed (the no-TF job)"
)


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
    """In the no-TensorFlow job (run_tests.sh), browser tests not marked
    `also_without_tf` are skipped: the tab and its server are the same code
    with or without TensorFlow, the TensorFlow job runs them all, and the
    marked ones show that the tab works where only TensorBoard is installed."""
    if not os.environ.get("TBWD_EXPECT_NO_TF"):
        return
    skip = pytest.mark.skip(reason="browser test run by the TensorFlow job; this job runs the also_without_tf ones")
    for item in items:
        if item.get_closest_marker("browser") and not item.get_closest_marker("also_without_tf"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_startup_warm_up(monkeypatch):
    """In-process plugins do not judge on their own after construction (tests count
    judgings); `tensorboard` processes started by tests do, as for a user."""
    from tb_weightdiff import plugin as plugin_lib

    monkeypatch.setattr(plugin_lib, "STARTUP_WARM_UP", False)


def write_events(run_dir, summaries_by_step, suffix=""):
    """Writes `{step: [Summary, ...]}` to one event file with TensorBoard's own writer."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer import event_file_writer

    writer = event_file_writer.EventFileWriter(run_dir, filename_suffix=suffix)
    for step in sorted(summaries_by_step):
        for summary in summaries_by_step[step]:
            writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))
    writer.close()


@pytest.fixture(params=["python", "rust"])
def loader(request):
    """Each reading test runs against both of TensorBoard's loaders."""
    return request.param


@pytest.fixture
def read_logdir(loader):
    """`read_logdir(path, plugin_name=...)` -> {(run, tag): Series}, with no warnings."""

    def read(path, **kwargs):
        with reader.open_logdir(str(path), loader=loader) as opened:
            series, warnings = reader.read_series(opened, **kwargs)
        assert warnings == []
        return {(s.run, s.tag): s for s in series}

    return read


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


class TensorBoardProcess:
    """A real `tensorboard --logdir` process on a free loopback port."""

    def __init__(self, logdir, load_fast="true", extra_args=()):
        import re
        import shutil
        import subprocess
        import sys

        executable = shutil.which("tensorboard", path=os.path.dirname(sys.executable)) or shutil.which("tensorboard")
        assert executable, "the tensorboard command is not installed"
        self.log_path = os.path.join(str(logdir), os.pardir, "tensorboard-%d.log" % id(self))
        self._log = open(self.log_path, "w+")
        self.process = subprocess.Popen(
            [executable, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0",
             "--load_fast", load_fast, "--reload_interval", "1", *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            self._log.seek(0)
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", self._log.read())
            if match:
                self.url = "http://127.0.0.1:%s" % match.group(1)
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError("tensorboard did not start:\n" + self.output())

    def output(self):
        self._log.seek(0)
        return self._log.read()

    def get(self, path, timeout=30):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def get_json(self, path):
        import json

        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def wait_for(self, predicate, path, timeout=60):
        """Polls `path` until `predicate(json)` holds; returns that JSON."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.get_json(path)
            if predicate(last):
                return last
            time.sleep(0.3)
        raise AssertionError("timed out waiting on %s; last answer: %r" % (path, last))

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:  # pylint: disable=broad-except
                self.process.kill()
        self._log.close()


@pytest.fixture
def tensorboard_process():
    """`tensorboard_process(logdir, load_fast="true")` starts TensorBoard; all stop at teardown."""
    started = []

    def start(logdir, load_fast="true", extra_args=()):
        server = TensorBoardProcess(logdir, load_fast, extra_args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = os.environ.get(
    "TBWD_ARTIFACTS", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts")
)


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright (never a downloaded browser)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("%s is missing: run the README's test command, which installs it" % CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    """A fresh 1280x800 page that records page errors in `page.errors`."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    new_page = context.new_page()
    new_page.errors = []
    new_page.on("pageerror", lambda error: new_page.errors.append(str(error)))
    yield new_page
    context.close()


def plugin_frame(page, timeout=30):
    """The iframe TensorBoard loads the Weight Diff tab into."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "plugin_entry.html" in frame.url and "name=tb_weightdiff" in frame.url:
                return frame
        page.wait_for_timeout(100)  # lets Playwright process frame events
    raise AssertionError("no tb_weightdiff iframe; frames: %r" % [f.url for f in page.frames])


def plugin_client(logdir, loader):
    """`(werkzeug client over TensorBoardWSGI with the plugin, opened logdir)`; exit the latter."""
    from tensorboard.backend import application
    from tensorboard.plugins import base_plugin
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    from tb_weightdiff import plugin as plugin_lib

    opened = reader.open_logdir(str(logdir), loader=loader)
    handle = opened.__enter__()
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=handle.provider)
    app = application.TensorBoardWSGI([plugin_lib.WeightDiffPlugin(context)])
    return werkzeug_test.Client(app, wrappers.Response), opened
