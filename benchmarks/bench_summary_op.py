"""Benchmark 2: the summary op against TensorBoard's histogram summary, per call.

  python benchmarks/bench_summary_op.py [--mode smoke|quick|default|full]

On float32 normal data of 4,096, 1M and 20M values:

- `tb_weightdiff.summary.weights` vs `tf.summary.histogram`, both writing to
  a real `tf.summary.create_file_writer`, eagerly and inside `tf.function`.
  Each timed sample is a batch of calls followed by one `flush()`, divided by
  the calls: the throughput a training loop sees. Ours also with a reference
  (the distance and rotation from it), which `tf.summary.histogram` does not
  compute;
- numpy only: `weights_pb` vs TensorBoard's `histogram_pb` (no TensorFlow).

The ratio is ours / TensorBoard's: 0.1x is ten times faster. At 4,096 values
both ops are dominated by the fixed cost of writing one summary through
`tf.summary.write` (a "floor" row measures it with a precomputed tensor).
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "2 summary op"

SIZES = {
    "smoke": [4096, 65536],
    "quick": [4096, 1_000_000],
    "default": [4096, 1_000_000, 20_000_000],
    "full": [4096, 1_000_000, 20_000_000],
}


def _calls_and_repeats(size, mode):
    calls = 50 if size <= 10_000 else (5 if size <= 2_000_000 else 1)
    repeats = {"smoke": 3, "quick": 5, "default": 7, "full": 9}[mode]
    if size > 2_000_000:
        repeats = max(3, repeats // 2)
    return calls, repeats


def numpy_rows(size, mode, data, reference):
    # pylint: disable=import-outside-toplevel
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary

    from tb_weightdiff import summary

    _, repeats = _calls_and_repeats(size, mode)
    times = common.interleaved(
        {
            "peer": lambda: histogram_summary.histogram_pb("w", data),
            "ours": lambda: summary.weights_pb("w", data),
            "ours_ref": lambda: summary.weights_pb("w", data, reference=reference),
        },
        repeats,
    )
    label = "{:,} values".format(size)
    return [
        common.row(BENCH, "weights_pb, numpy only, %s" % label, times["ours"] * 1e3, times["peer"] * 1e3,
                   peer_name="histogram_pb"),
        common.row(BENCH, "  weights_pb with reference, %s" % label, times["ours_ref"] * 1e3, times["peer"] * 1e3,
                   peer_name="histogram_pb"),
    ]


def tensorflow_rows(size, mode, data, reference, logdir):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tb_weightdiff import metadata  # pylint: disable=import-outside-toplevel
    from tb_weightdiff import summary  # pylint: disable=import-outside-toplevel

    calls, repeats = _calls_and_repeats(size, mode)
    writer = tf.summary.create_file_writer(logdir)
    tensor = tf.constant(data)
    reference_tensor = tf.constant(reference)
    step = tf.constant(1, tf.int64)
    output = tf.constant(summary.weight_statistics(data[:16]))
    output_metadata = metadata.create_summary_metadata()

    def batch(function):
        def run():
            for _ in range(calls):
                function()
            writer.flush()

        return run

    with writer.as_default():
        eager = {
            "peer": batch(lambda: tf.summary.histogram("histogram", tensor, step=1)),
            "ours": batch(lambda: summary.weights("weights", tensor, step=1)),
            "ours_ref": batch(lambda: summary.weights("weights_ref", tensor, step=1, reference=reference_tensor)),
            "floor": batch(lambda: tf.summary.write("floor", output, step=1, metadata=output_metadata)),
        }
        in_graph = {
            "peer": batch(tf.function(lambda: tf.summary.histogram("histogram_fn", tensor, step=step))),
            "ours": batch(tf.function(lambda: summary.weights("weights_fn", tensor, step=step))),
            "ours_ref": batch(tf.function(
                lambda: summary.weights("weights_ref_fn", tensor, step=step, reference=reference_tensor))),
            "floor": batch(tf.function(
                lambda: tf.summary.write("floor_fn", output, step=step, metadata=output_metadata))),
        }
        if size > 2_000_000:
            for table in (eager, in_graph):
                table.pop("floor")
        eager_times = common.interleaved(eager, repeats)
        graph_times = common.interleaved(in_graph, repeats)
    writer.close()
    label = "{:,} values".format(size)
    rows = []
    for mode_name, times in (("eager", eager_times), ("tf.function", graph_times)):
        per_call = {key: value / calls * 1e3 for key, value in times.items()}
        rows.append(common.row(
            BENCH, "summary.weights, %s, %s" % (mode_name, label), per_call["ours"], per_call["peer"],
            peer_name="tf.summary.histogram", limit=0.1, target="<= 0.1x (>= 10x faster)",
            note=("each includes writing one summary: %.3f ms per call with a precomputed tensor "
                  "(tf.summary.write), which neither op can go below" % per_call["floor"]) if "floor" in per_call else "",
        ))
        rows.append(common.row(
            BENCH, "  with reference, %s, %s" % (mode_name, label), per_call["ours_ref"], per_call["peer"],
            peer_name="tf.summary.histogram",
        ))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    have_tf = common.have_module("tensorflow")
    if have_tf:
        common.quiet_tensorflow()
    import numpy as np  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tbwd_bench_op_") as tmp:
        for size in SIZES[args.mode]:
            print("== {:,} values".format(size), flush=True)
            data = rng.standard_normal(size, dtype=np.float32)
            reference = data + np.float32(0.01) * rng.standard_normal(size, dtype=np.float32)
            if have_tf:
                rows.extend(tensorflow_rows(size, args.mode, data, reference, os.path.join(tmp, str(size))))
            rows.extend(numpy_rows(size, args.mode, data, reference))
    if not have_tf:
        rows.insert(0, common.skipped(BENCH, "TensorFlow is not installed: summary.weights vs tf.summary.histogram"))
    common.emit(rows, args.rows_out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
