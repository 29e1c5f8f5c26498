"""Benchmark 6: `tb-weightdiff report` on the logdir of benchmark 3, wall time and peak memory.

  python benchmarks/bench_cli.py [--mode smoke|quick|default|full]

The figures of the README's "Command line" section: the whole command (it
starts TensorBoard's Rust data server, or reads with TensorBoard's Python
loader, then judges every run), on 5 runs x 40 tensors x 100 steps of our
summaries and of plain histograms. Peak memory is the command's and its data
server's (`ru_maxrss` of the finished children). For scale, the peer is the
time to only list the logdir's runs with the same loader (`--run` of a run
that does not exist fails right after the data server has loaded the logdir).
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "6 cli"


def _command():
    executable = shutil.which("tb-weightdiff", path=os.path.dirname(sys.executable)) or shutil.which("tb-weightdiff")
    if executable:
        return [executable]
    return [sys.executable, "-m", "tb_weightdiff.cli"]


def run(arguments):
    """`(seconds, peak kB of the children so far, exit status)` of one command."""
    started = time.perf_counter()
    result = subprocess.run(_command() + arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - started
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, result.returncode, result.stderr


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    runs, tensors, steps = (2, 4, 5) if args.mode == "smoke" else (5, 40, 100)
    repeats = {"smoke": 1, "quick": 1, "default": 3, "full": 3}[args.mode]
    rows = []
    smoke = args.mode == "smoke"
    for source in ("histograms",) if smoke else ("tb_weightdiff", "histograms"):
        path = common.benchmark_logdir(runs, tensors, steps, source=source)
        for loader in ("rust",) if smoke else ("rust", "python"):
            times, peaks = [], []
            for _ in range(repeats):
                # A fresh interpreter per measurement, so ru_maxrss is this command's.
                probe = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--probe", path, loader],
                    capture_output=True, text=True, check=True,
                )
                seconds, peak_kb, listing = (float(x) for x in probe.stdout.split())
                times.append(seconds)
                peaks.append(peak_kb)
            rows.append(common.row(
                BENCH, "tb-weightdiff report, %s loader, %s, %d x %d x %d" % (loader, source, runs, tensors, steps),
                common.median(times), listing, unit="s", peer_name="load + list only",
                note="peak memory %.0f MB (the command and its data server)" % (max(peaks) / 1024),
            ))
    common.emit(rows, args.rows_out, args.mode)
    return 0


def probe(path, loader):
    seconds, peak, status, stderr = run(["report", "--logdir", path, "--loader", loader])
    if status not in (0, 1):
        raise SystemExit("report failed (%d): %s" % (status, stderr[-500:]))
    listing, _, _, _ = run(["report", "--logdir", path, "--loader", loader, "--run", "no such run"])
    print(seconds, peak, listing)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        probe(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
