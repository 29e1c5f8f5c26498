"""Runs every benchmark and prints one table of ratios against the peers and the targets.

  python benchmarks/run_all.py            # the figures of the README's Performance section (~6 min on 2 cores)
  python benchmarks/run_all.py --quick    # fewer repeats, no 20M-value summary
  python benchmarks/run_all.py --full     # also 20 runs x 100 tensors x 200 steps (written once, ~3 min; ~25 min in all)
  python benchmarks/run_all.py --smoke    # tiny sizes, two benchmarks at a time: what the test suite runs
  python benchmarks/run_all.py --only 2,3 --markdown table.md

| # | script | ours | peer |
|---|---|---|---|
| 1 | bench_write.py | `WeightDiffCallback.on_epoch_end` | Keras `TensorBoard(histogram_freq=1)._log_weights` |
| 2 | bench_summary_op.py | `summary.weights`, `weights_pb` | `tf.summary.histogram`, `histogram_pb` |
| 3 | bench_logdir.py | GET /verdicts of a whole logdir | TensorBoard's Histograms route for every series; a raw `read_tensors` |
| 4 | bench_render.py | the tab drawn in headless Chromium | (TensorBoard's own page, for scale) |
| 5 | bench_memory.py | the callback's host memory; TensorBoard's peak RSS | the trainable parameters; TensorBoard serving the Histograms route |
| 6 | bench_cli.py | `tb-weightdiff report` wall time and peak memory | (loading and listing the logdir) |
| 7 | bench_torch_write.py | `WeightDiffLogger.log` (PyTorch) | the `add_histogram` loop over every parameter |
| 8 | bench_reset.py | the reset check, per layer (Keras, PyTorch) | one plain evaluation of the same batches |
| 9 | bench_scale_write.py | one logged epoch of 1,000 tensors / 100M parameters (Keras, PyTorch; our device path on CPU) | Keras `_log_weights`; the `add_histogram` loop |

Each script runs in its own process (TensorFlow, TensorBoard and Chromium
come and go with it) and can be run alone. Benchmarks that need TensorFlow,
or Chromium and Playwright, report themselves as skipped where those are
missing. Exit status: 0 when every benchmark ran (whether or not it met its
target), 1 when one failed.
"""

import argparse
import concurrent.futures
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCHMARKS = {
    "1": "bench_write.py",
    "2": "bench_summary_op.py",
    "3": "bench_logdir.py",
    "4": "bench_render.py",
    "5": "bench_memory.py",
    "6": "bench_cli.py",
    "7": "bench_torch_write.py",
    "8": "bench_reset.py",
    "9": "bench_scale_write.py",
}


class OtherLoad:
    """CPU seconds spent, while it watches, by processes outside this session.

    The benchmarks' own processes (TensorBoard, its data server, Chromium)
    share run_all's session; anything else that burns CPU meanwhile (another
    test run on the same machine, say) inflates the figures, and is reported.
    Processes are sampled every half second, so a process that starts and
    ends between two samples is missed.
    """

    def __init__(self):
        self._session = os.getsid(0)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._first, self._last = {}, {}
        self._stop = threading.Event()
        self._initial = set(self._sample())
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _sample(self):
        table = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name) as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # ppid, session, utime + stime
            table[int(name)] = (int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / self._tick)
        me = os.getpid()

        def ours(pid):
            # Descendants of run_all, even in a session of their own (Chromium).
            for _ in range(64):
                if pid == me:
                    return True
                if pid not in table or pid <= 1:
                    return False
                pid = table[pid][0]
            return False

        seen = {}
        for pid, (_, session, cpu) in table.items():
            if session in (0, self._session) or ours(pid):
                continue  # kernel threads, and ours
            seen[pid] = cpu
            self._first.setdefault(pid, cpu)
            self._last[pid] = cpu
        return seen

    def _watch(self):
        while not self._stop.wait(0.5):
            self._sample()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(
            self._last[pid] - (self._first[pid] if pid in self._initial else 0.0) for pid in self._last
        )


def header(mode):
    info = common.machine()
    versions = ", ".join("%s %s" % (name, version) for name, version in info["versions"].items() if version)
    return [
        "tb_weightdiff benchmarks, mode %s, %s" % (mode, time.strftime("%Y-%m-%d")),
        "machine: %s, %s cores, %s GiB memory; Python %s; %s"
        % (info["cpu"], info["cores"], info["memory_gib"], info["python"], versions),
    ]


_PRINT_LOCK = threading.Lock()


def _run_one(key, mode, env, tmp, alone):
    """Runs benchmark `key` in its own process: `{"rows", "failed", "warning"}`.
    `alone`: no other benchmark runs meanwhile, so other processes' CPU is watched."""
    script = os.path.join(common.HERE, BENCHMARKS[key])
    rows_file = os.path.join(tmp, "rows-%s.jsonl" % key)
    log_file = os.path.join(tmp, "stderr-%s.txt" % key)
    print("\n# benchmark %s: %s --mode %s" % (key, BENCHMARKS[key], mode), flush=True)
    started = time.perf_counter()
    other_load = OtherLoad() if alone else None
    out_file = os.path.join(tmp, "stdout-%s.txt" % key)
    with open(log_file, "w") as stderr, open(out_file, "w") as stdout:
        # Alone, its output comes as it goes; beside another, in one piece when it ends.
        result = subprocess.run(
            [sys.executable, script, "--mode", mode, "--rows-out", rows_file],
            stderr=stderr, stdout=None if alone else stdout, env=env, check=False,
        )
    wall = time.perf_counter() - started
    with _PRINT_LOCK:
        if not alone:
            with open(out_file) as handle:
                print("\n# benchmark %s, its output:\n%s" % (key, handle.read().rstrip()), flush=True)
        print("# benchmark %s took %.0f s" % (key, wall), flush=True)
    outcome = {"rows": [], "failed": False, "warning": None}
    others = other_load.stop() if other_load is not None else 0.0
    if others > 0.1 * wall:
        outcome["warning"] = ("other processes used %.0f CPU-seconds during benchmark %s (%.0f s): "
                              "its figures may be inflated; rerun on an idle machine" % (others, key, wall))
        print("# WARNING: " + outcome["warning"], flush=True)
    if result.returncode != 0:
        with open(log_file) as handle:
            tail = handle.read()[-3000:]
        outcome["failed"] = True
        print("benchmark %s FAILED (exit %d):\n%s" % (key, result.returncode, tail), flush=True)
        outcome["rows"].append(common.row("%s" % key, "FAILED: %s (exit %d)" % (BENCHMARKS[key], result.returncode), None))
        return outcome
    if os.path.exists(rows_file):
        with open(rows_file) as handle:
            outcome["rows"].extend(json.loads(line) for line in handle if line.strip())
    return outcome


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    for mode in ("smoke", "quick", "full"):
        group.add_argument("--" + mode, dest="mode", action="store_const", const=mode)
    parser.set_defaults(mode="default")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmark numbers (default: all)")
    parser.add_argument("--markdown", default=None, help="also write the table as markdown to this file")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    parser.add_argument("--jobs", type=int, default=None,
                        help="benchmarks run at once (default: 2 in --smoke, else 1: figures need an idle machine)")
    args = parser.parse_args(argv)
    chosen = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = [key for key in chosen if key not in BENCHMARKS]
    if unknown:
        parser.error("unknown benchmark %s; choose from %s" % (", ".join(unknown), ", ".join(BENCHMARKS)))
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs takes a whole number from 1 up")

    lines = header(args.mode)
    print("\n".join(lines), flush=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    rows, failures, warnings = [], [], []
    jobs = args.jobs if args.jobs is not None else (2 if args.mode == "smoke" else 1)
    with tempfile.TemporaryDirectory(prefix="tbwd_bench_") as tmp:
        run = functools.partial(_run_one, mode=args.mode, env=env, tmp=tmp, alone=jobs == 1)
        if jobs == 1:
            outcomes = [run(key) for key in chosen]
        else:
            # Smoke sizes: each benchmark mostly waits for its imports, TensorBoard and
            # Chromium, so two at a time halve the wall time; figures are not the point.
            with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                outcomes = list(pool.map(run, chosen))
        for key, outcome in zip(chosen, outcomes):
            if outcome["warning"]:
                warnings.append(outcome["warning"])
            if outcome["failed"]:
                failures.append(key)
            rows.extend(outcome["rows"])

    print("\n" + "=" * 20 + " all benchmarks " + "=" * 20)
    print("\n".join(lines))
    common.print_table(rows)
    judged = [item for item in rows if item["met"] is not None]
    missed = [item for item in judged if not item["met"]]
    print("\ntargets met: %d of %d" % (len(judged) - len(missed), len(judged)))
    for item in missed:
        if item["ours"] is None:
            figure = "no figure"
        elif item["ratio"] is not None and "x" in item["target"]:
            figure = common.format_ratio(item["ratio"])
        else:
            figure = "%.0f %s" % (item["ours"], item["unit"])
        print("  missed: [%s] %s: %s (target %s)" % (item["bench"], item["figure"].strip(), figure, item["target"]))
    for warning in warnings:
        print("WARNING: " + warning)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write("\n\n".join(lines) + "\n\n" + common.markdown_table(rows) + "\n")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"header": lines, "rows": rows}, handle, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
