"""weights_pb vs TensorBoard's histogram_pb on the same data: median wall time per call.

  python benchmarks/summary_pb.py [--sizes 4096 1000000] [--repeats 15]

weights_pb records more than histogram_pb (quantiles, moments, health counts,
a fingerprint and, with a reference, the distance from it), so a ratio below 1
means more for less. Both run numpy only; TensorFlow is not needed.
"""

import argparse
import statistics
import time

import numpy as np
from tensorboard.plugins.histogram import summary_v2 as histogram_summary

from tb_weightdiff import summary


def median_seconds(function, repeats):
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 1_000_000])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print("%10s  %14s  %18s  %16s  %8s" % ("values", "histogram_pb", "weights_pb", "weights_pb+ref", "ratio"))
    for size in args.sizes:
        data = rng.standard_normal(size).astype(np.float32)
        reference = data + 0.01 * rng.standard_normal(size).astype(np.float32)
        peer = median_seconds(lambda: histogram_summary.histogram_pb("w", data), args.repeats)
        ours = median_seconds(lambda: summary.weights_pb("w", data), args.repeats)
        ours_ref = median_seconds(lambda: summary.weights_pb("w", data, reference=reference), args.repeats)
        print(
            "%10d  %11.3f ms  %15.3f ms  %13.3f ms  %7.2fx"
            % (size, peer * 1e3, ours * 1e3, ours_ref * 1e3, ours / peer)
        )


if __name__ == "__main__":
    main()
