"""Load test: concurrent clients against a real TensorBoard serving the Weight Diff routes.

  python benchmarks/load_verdicts.py                      # 32 clients x 200 requests, 5 runs x 40 tensors x 100 steps
  python benchmarks/load_verdicts.py --clients 8 --requests 20 --runs 2 --tensors 5 --steps 10   # the CI size

Each client sends a mix of /verdicts (40 %), /variable (40 %) and /compare
(20 %) requests for random runs, tags and steps, all to 127.0.0.1. Prints the
error count, p50/p90/p99 latency per route and overall, and the peak resident
memory (VmHWM) of TensorBoard and of its data server. Exits 1 if any request
failed (a non-200 answer or a connection error).
"""

import argparse
import concurrent.futures
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "demo"))

from make_logdir import make_logdir  # noqa: E402
from common import peak_rss_kb  # noqa: E402
from screenshots import start_tensorboard  # noqa: E402


def fetch(url, timeout=120):
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError) as error:
        status = "error: %s" % error
    return status, time.perf_counter() - started


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run_load(base_url, catalogue, clients, requests_per_client, seed=0):
    """Runs the clients; returns `[(route, status, seconds)]`."""

    def client(index):
        rng = random.Random(seed * 1000 + index)
        results = []
        for _ in range(requests_per_client):
            run = rng.choice(sorted(catalogue))
            tag = rng.choice(catalogue[run]["tags"])
            draw = rng.random()
            if draw < 0.4:
                route, query = "verdicts", {}
            elif draw < 0.8:
                route, query = "variable", {"run": run, "tag": tag}
            else:
                steps = catalogue[run]["steps"]
                route, query = "compare", {"run": run, "tag": tag, "a": rng.choice(steps), "b": rng.choice(steps)}
            url = "%s/data/plugin/tb_weightdiff/%s?%s" % (base_url, route, urllib.parse.urlencode(query))
            status, seconds = fetch(url)
            results.append((route, status, seconds))
        return results

    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        return [item for part in pool.map(client, range(clients)) for item in part]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tensors", type=int, default=40)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--source", default="histograms", choices=["histograms", "tb_weightdiff"])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tbwd_load_") as tmp, tempfile.TemporaryFile("w+") as log_file:
        make_logdir(tmp, runs=args.runs, tensors=args.tensors, steps=args.steps, source=args.source)
        process, url = start_tensorboard(tmp, log_file)
        try:
            deadline = time.monotonic() + 300
            while True:  # wait until TensorBoard has loaded every step
                status, _ = fetch(url + "/data/plugin/tb_weightdiff/runs")
                if status == 200:
                    with urllib.request.urlopen(url + "/data/plugin/tb_weightdiff/verdicts", timeout=300) as response:
                        verdicts = json.loads(response.read())
                    if len(verdicts["runs"]) == args.runs and all(len(r["steps"]) == args.steps for r in verdicts["runs"]):
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("TensorBoard did not load the logdir in 300 s")
                time.sleep(1)
            catalogue = {
                run["run"]: {"tags": [v["tag"] for layer in run["layers"] for v in layer["variables"]], "steps": run["steps"]}
                for run in verdicts["runs"]
            }
            started = time.perf_counter()
            results = run_load(url, catalogue, args.clients, args.requests)
            elapsed = time.perf_counter() - started
            rss = peak_rss_kb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=10)
            log_file.seek(0)
            server_log = log_file.read()

    errors = [(route, status) for route, status, _ in results if status != 200]
    print("load: %d clients x %d requests = %d requests in %.1f s (%.0f req/s), logdir %d runs x %d tensors x %d steps (%s)"
          % (args.clients, args.requests, len(results), elapsed, len(results) / elapsed, args.runs, args.tensors, args.steps, args.source))
    print("errors: %d%s" % (len(errors), "" if not errors else " e.g. %r" % (errors[:5],)))
    print("%-9s %7s %9s %9s %9s" % ("route", "count", "p50 ms", "p90 ms", "p99 ms"))
    for route in ("verdicts", "variable", "compare", "all"):
        times = [s for r, status, s in results if (route == "all" or r == route) and status == 200]
        if times:
            print("%-9s %7d %9.1f %9.1f %9.1f" % (route, len(times), 1e3 * statistics.median(times),
                                                  1e3 * percentile(times, 0.9), 1e3 * percentile(times, 0.99)))
    print("peak RSS: tensorboard %.0f MB, data server %.0f MB" % (
        rss.get(process.pid, 0) / 1024, sum(v for k, v in rss.items() if k != process.pid) / 1024))
    if "Traceback" in server_log:
        print("tensorboard logged a traceback:\n" + server_log[-3000:])
        return 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
