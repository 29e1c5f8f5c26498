"""Benchmark 5: host memory, of the Keras callback and of TensorBoard serving the tab.

  python benchmarks/bench_memory.py [--mode smoke|quick|default|full]

The callback (needs TensorFlow): for the CIFAR10 CNN (612k parameters) and
the 21M-parameter wide MLP of benchmark 1, with `reference=True` and
`reference=False`, `on_train_begin` (reference snapshot, step 0) and then
`on_epoch_end` are called on a built model, and measured with `tracemalloc`
(every numpy buffer is traced):

- peak: the most the callback held at once during the calls, above what was
  allocated before them; the target is at most twice the trainable
  parameters' bytes;
- retained: what it still holds after them; with `reference=False` the
  target is nothing (the event writer's few kB aside), with `reference=True`
  it is `callback.reference_nbytes()`.

The peak resident set (VmHWM, which also sees TensorFlow's own allocator)
is reported beside it, for `on_epoch_end` and for Keras's `_log_weights`.

TensorBoard (no TensorFlow needed): peak resident memory (VmHWM) of the
`tensorboard` process plus its Rust data server, serving the logdir of
benchmark 3, once answering GET /verdicts (uncached, a few times) and once,
in a fresh process, answering the Histograms route for every series.
"""

import argparse
import gc
import os
import sys
import tempfile
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "5 memory"


def peak_rss_delta(function):
    """Peak RSS above the RSS before `function()`, in bytes (None if VmHWM cannot be reset)."""
    gc.collect()
    if not common.reset_peak_rss():
        function()
        return None
    before = common.status_kb("VmRSS")
    function()
    return max(0, common.status_kb("VmHWM") - before) * 1024


def callback_rows(name, make_model, reference, logdir):
    import tracemalloc  # pylint: disable=import-outside-toplevel

    from tb_weightdiff.keras import WeightDiffCallback  # pylint: disable=import-outside-toplevel

    model = make_model()
    trainable_bytes = sum(int(v.numpy().nbytes) for v in model.trainable_weights)
    callback = WeightDiffCallback(logdir, reference=reference)
    callback.set_model(model)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        callback.on_train_begin()
        peak_begin = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        callback.on_epoch_end(0)
        current, peak_end = tracemalloc.get_traced_memory()
        peak_end -= base
        retained = current - base
    finally:
        tracemalloc.stop()
    rss_peak = peak_rss_delta(lambda: callback.on_epoch_end(1))
    label = "%s, reference=%s" % (name, reference)
    peak = max(peak_begin, peak_end)
    rows = [
        common.row(
            BENCH, "callback peak host memory, %s" % label, peak / 1e6, trainable_bytes / 1e6, unit="MB",
            peer_name="trainable parameters", limit=2.0,
            note="on_train_begin %.1f MB, on_epoch_end %.1f MB (tracemalloc)" % (peak_begin / 1e6, peak_end / 1e6),
        ),
    ]
    if reference:
        rows.append(common.row(
            BENCH, "  retained after the calls, %s" % label, retained / 1e6, trainable_bytes / 1e6, unit="MB",
            peer_name="trainable parameters",
            note="reference_nbytes() = %.1f MB" % (callback.reference_nbytes() / 1e6),
        ))
    else:
        item = common.row(
            BENCH, "  retained after the calls, %s" % label, retained / 1e6, trainable_bytes / 1e6, unit="MB",
            peer_name="trainable parameters", target="0 (< 64 kB of writer buffers)",
            note="reference_nbytes() = %d" % callback.reference_nbytes(),
        )
        item["met"] = retained < 64 * 1024 and callback.reference_nbytes() == 0
        rows.append(item)
    if rss_peak is not None and reference:
        rows.append(common.row(
            BENCH, "  peak RSS during on_epoch_end, %s" % name, rss_peak / 1e6, trainable_bytes / 1e6, unit="MB",
            peer_name="trainable parameters", note="VmHWM above VmRSS: includes TensorFlow's allocator",
        ))
    return rows, model


def keras_rss_row(name, model, logdir):
    import keras  # pylint: disable=import-outside-toplevel

    trainable_bytes = sum(int(v.numpy().nbytes) for v in model.trainable_weights)
    callback = keras.callbacks.TensorBoard(log_dir=logdir, histogram_freq=1)
    callback.set_model(model)
    callback._log_weights(0)  # pylint: disable=protected-access
    rss_peak = peak_rss_delta(lambda: callback._log_weights(1))  # pylint: disable=protected-access
    if rss_peak is None:
        return []
    return [common.row(
        BENCH, "  peak RSS during Keras _log_weights, %s" % name, rss_peak / 1e6, trainable_bytes / 1e6, unit="MB",
        peer_name="trainable parameters", note="tf.summary.histogram one-hot encodes every value into 30 float64 buckets",
    )]


def tensorboard_rows(mode):
    runs, tensors, steps = (2, 4, 5) if mode == "smoke" else (5, 40, 100)
    path = common.benchmark_logdir(runs, tensors, steps, source="histograms")
    size = "%d runs x %d tensors x %d steps" % (runs, tensors, steps)
    requests = 2 if mode == "smoke" else 4

    def total_mb(server):
        return sum(server.peak_rss_kb().values()) / 1024

    with common.TensorBoard(path) as server:
        server.wait_for_data(runs, steps - 1)
        idle = total_mb(server)
        for index in range(requests):
            # New thresholds each time: every run judged afresh (see bench_logdir.py).
            status, body, _ = server.get("/data/plugin/tb_weightdiff/verdicts" + common.fresh_verdicts_query(index))
            if status != 200:
                raise RuntimeError("verdicts: %s %s" % (status, body[:200]))
        ours = total_mb(server)
        processes = len(server.peak_rss_kb())
    with common.TensorBoard(path) as server:
        server.wait_for_data(runs, steps - 1)
        tags = server.get_json("/data/plugin/histograms/tags")
        for run in sorted(tags):
            for tag in sorted(tags[run]):
                server.get("/data/plugin/histograms/histograms?" + urllib.parse.urlencode({"run": run, "tag": tag}))
        peer = total_mb(server)
    return [common.row(
        BENCH, "TensorBoard peak RSS serving GET /verdicts x%d, %s" % (requests, size), ours, peer, unit="MB",
        peer_name="serving the Histograms route for every series",
        note="tensorboard + its data server (%d processes); %.0f MB after loading, before any request" % (processes, idle),
    )]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    rows = []
    if common.have_module("tensorflow"):
        common.quiet_tensorflow()
        import bench_write  # pylint: disable=import-outside-toplevel

        models = [("CIFAR10 CNN", lambda: bench_write.cnn(16)[0])]
        if args.mode != "smoke":
            models.append(("wide MLP", lambda: bench_write.wide_mlp(16)[0]))
        with tempfile.TemporaryDirectory(prefix="tbwd_bench_memory_") as tmp:
            for name, make_model in models:
                print("== callback memory, %s" % name, flush=True)
                model = None
                for reference in (True, False):
                    found, model = callback_rows(name, make_model, reference, os.path.join(tmp, name, str(reference)))
                    rows.extend(found)
                rows.extend(keras_rss_row(name, model, os.path.join(tmp, name, "keras")))
                del model
                gc.collect()
    else:
        rows.append(common.skipped(BENCH, "TensorFlow is not installed: the callback's memory"))
    print("== TensorBoard peak RSS", flush=True)
    rows.extend(tensorboard_rows(args.mode))
    common.emit(rows, args.rows_out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
