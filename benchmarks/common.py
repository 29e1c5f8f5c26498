"""What the benchmarks share: modes, timing, result rows, a TensorBoard process, the machine.

Every benchmark script measures tb_weightdiff against a named peer in the
same process run and reports *rows*: one figure of ours, the peer's figure,
their ratio (ours / peer), the target and whether it was met. `run_all.py`
runs the scripts one after another (each in its own process) and prints all
rows as one table.

A row is a dict:

    {"bench": "1 write", "figure": "...", "ours": 12.3, "peer": 250.0, "unit": "ms",
     "peer_name": "Keras _log_weights", "ratio": 0.049, "target": "<= 0.25x",
     "limit": 0.25, "met": True, "note": "..."}

`limit` is the ratio the target allows (ratio <= limit); `met` is None for
rows that only inform.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo"))

# The demo's: one way to start TensorBoard and one set of Chromium flags.
from screenshots import CHROMIUM, CHROMIUM_FLAGS, start_tensorboard  # noqa: E402,F401

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODES = ("smoke", "quick", "default", "full")

# Where generated logdirs are kept between runs (writing 20 x 100 x 200 takes minutes).
CACHE_DIR = os.environ.get("TBWD_BENCH_CACHE", os.path.join(tempfile.gettempdir(), "tb_weightdiff_bench"))



def add_common_arguments(parser):
    parser.add_argument("--mode", choices=MODES, default="default",
                        help="smoke: tiny sizes (the test suite); quick: fewer repeats; full: the largest sizes too")
    parser.add_argument("--rows-out", default=None, help="append the result rows to this file, one JSON object a line")


def load_demo(name):
    """The demo module `demo/<name>.py` (its models and data), imported from the checkout."""
    import importlib.util  # pylint: disable=import-outside-toplevel

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "demo", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def have_module(name):
    import importlib.util  # pylint: disable=import-outside-toplevel

    return importlib.util.find_spec(name) is not None


def quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


# -- timing -------------------------------------------------------------------


def median(values):
    return statistics.median(values)


def time_once(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def interleaved(functions, repeats, warmup=1):
    """Median seconds of each of `{name: function}`, called in turn `repeats` times.

    Taking turns (A B A B ...) spreads any drift of the machine evenly over
    the contenders instead of charging it to whichever ran last.
    """
    for _ in range(warmup):
        for function in functions.values():
            function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            times[name].append(time_once(function))
    return {name: median(values) for name, values in times.items()}


# -- rows ---------------------------------------------------------------------


def row(bench, figure, ours, peer=None, unit="ms", peer_name="", limit=None, target=None, note="", higher_is_better=False):
    """One result row. `ratio` = ours / peer; met = ratio <= limit (or >= for `higher_is_better`)."""
    ratio = None
    if peer not in (None, 0) and ours is not None:
        ratio = ours / peer
    met = None
    if limit is not None and ratio is not None:
        met = bool(ratio >= limit) if higher_is_better else bool(ratio <= limit)
    if target is None and limit is not None:
        target = "%s %sx" % (">=" if higher_is_better else "<=", _number(limit))
    return {
        "bench": bench,
        "figure": figure,
        "ours": ours,
        "peer": peer,
        "unit": unit,
        "peer_name": peer_name,
        "ratio": ratio,
        "target": target or "",
        "limit": limit,
        "met": met,
        "note": note,
    }


def skipped(bench, reason):
    return row(bench, "skipped: %s" % reason, None)


def emit(rows, rows_out, mode="default"):
    """Prints the rows and appends them to `rows_out`. At smoke size no target is judged."""
    if mode == "smoke":
        for item in rows:
            if item["met"] is not None:
                item["met"] = None
                item["target"] += " (not judged at smoke size)"
    print_table(rows)
    if rows_out:
        with open(rows_out, "a") as handle:
            for item in rows:
                handle.write(json.dumps(item) + "\n")


def _number(value, unit=""):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    magnitude = abs(value)
    if magnitude == 0:
        text = "0"
    elif magnitude >= 1000:
        text = "{:,.0f}".format(value)
    elif magnitude >= 100:
        text = "%.0f" % value
    elif magnitude >= 10:
        text = "%.1f" % value
    elif magnitude >= 0.01:
        text = "%.3g" % value
    else:
        text = "%.2g" % value
    return text + (" " + unit if unit else "")


def format_ratio(ratio):
    if ratio is None:
        return "-"
    return "%sx" % _number(ratio)


def verdict(item):
    return {True: "met", False: "MISSED", None: ""}[item["met"]]


COLUMNS = ("bench", "figure", "ours", "peer", "ratio", "target", "result")


def cells(item):
    return [
        item["bench"],
        item["figure"],
        _number(item["ours"], item["unit"]) if item["ours"] is not None else "-",
        ("%s: %s" % (item["peer_name"], _number(item["peer"], item["unit"]))) if item["peer"] is not None else (item["peer_name"] or "-"),
        format_ratio(item["ratio"]),
        item["target"] or "-",
        verdict(item),
    ]


def print_table(rows, file=None):
    file = file or sys.stdout
    table = [list(COLUMNS)] + [cells(item) for item in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(COLUMNS))]
    for index, line in enumerate(table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip(), file=file)
        if index == 0:
            print("  ".join("-" * width for width in widths), file=file)
    for item in rows:
        if item["note"]:
            print("  [%s] %s: %s" % (item["bench"], item["figure"], item["note"]), file=file)
    file.flush()


def markdown_table(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for item in rows:
        values = cells(item)
        if item["met"] is False:
            values[-1] = "**MISSED**"
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |")
    return "\n".join(lines)


# -- the machine ----------------------------------------------------------------


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for name in ("numpy", "tensorboard", "tensorflow", "keras", "playwright"):
        try:
            from importlib import metadata as importlib_metadata  # pylint: disable=import-outside-toplevel

            versions[name] = importlib_metadata.version(name)
        except Exception:  # pylint: disable=broad-except
            versions[name] = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "versions": versions,
    }


# -- processes ------------------------------------------------------------------


def peak_rss_kb(pid):
    """VmHWM of a process and of its descendants (TensorBoard's data server), `{pid: kB}`."""
    result = {}
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    result[pid] = int(line.split()[1])
        with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
            for child in handle.read().split():
                result.update(peak_rss_kb(int(child)))
    except OSError:
        pass
    return result


class TensorBoard:
    """A `tensorboard --logdir` process on a free loopback port, keeping every sample."""

    def __init__(self, logdir, extra_args=()):
        self._log = tempfile.TemporaryFile("w+")
        self.process, self.url = start_tensorboard(
            logdir, self._log, ["--samples_per_plugin", "histograms=0,tb_weightdiff=0", *extra_args], timeout=120
        )

    def output(self):
        self._log.seek(0)
        return self._log.read()

    def get(self, path, timeout=600):
        """`(status, body bytes, seconds)` of one GET."""
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                body, status = response.read(), response.status
        except urllib.error.HTTPError as error:
            body, status = error.read(), error.code
        return status, body, time.perf_counter() - started

    def get_json(self, path):
        status, body, _ = self.get(path)
        if status != 200:
            raise RuntimeError("GET %s: %s %s" % (path, status, body[:300]))
        return json.loads(body)

    def wait_for_data(self, runs, last_step, timeout=900):
        """Blocks until every run's weight series reach `last_step` (TensorBoard has loaded them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listing = self.get_json("/data/plugin/tb_weightdiff/runs")["runs"]
            if len(listing) >= runs and all(entry["max_step"] == last_step for entry in listing):
                return listing
            time.sleep(0.25)
        raise RuntimeError("TensorBoard did not load the logdir in %d s" % timeout)

    def peak_rss_kb(self):
        return peak_rss_kb(self.process.pid)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# -- process memory (Linux) --------------------------------------------------------


def status_kb(field):
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# -- logdirs --------------------------------------------------------------------


def fresh_verdicts_query(index):
    """A GET /verdicts query no earlier request made: thresholds of its own.

    The plugin keeps each run's verdicts per data version and thresholds, so
    new thresholds (what the tab's threshold form sends) make it read and
    judge every run again; these differ from the defaults by parts per billion.
    """
    return "?min_shift=%.12g" % (1e-3 * (1 + (index + 1) * 1e-9))


def cached_logdir(name, write):
    """`CACHE_DIR/name`, written by `write(path)` unless a complete copy is there; returns its path.

    Benchmarks that run at once (`run_all.py --jobs`) may ask for the same
    logdir: a lock beside it lets one write it while the other waits."""
    import fcntl  # pylint: disable=import-outside-toplevel

    path = os.path.join(CACHE_DIR, name)
    marker = os.path.join(path, ".complete")
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(marker):
            shutil.rmtree(path, ignore_errors=True)
            started = time.perf_counter()
            write(path)
            with open(marker, "w") as handle:
                handle.write("%.1f s\n" % (time.perf_counter() - started))
    return path


def benchmark_logdir(runs, tensors, steps, source="histograms"):
    """A logdir written by `make_logdir.py` (cached in CACHE_DIR); returns its path."""
    sys.path.insert(0, HERE)
    from make_logdir import make_logdir  # pylint: disable=import-outside-toplevel

    return cached_logdir(
        "%s_%dx%dx%d" % (source, runs, tensors, steps),
        lambda path: make_logdir(path, runs=runs, tensors=tensors, steps=steps, source=source),
    )
