"""Writes a synthetic logdir of weight time series, for timing the analysis and the CLI.

Each run is a "training" of `tensors / 2` dense layers (kernel + bias), whose
weights follow a random walk with drift from a Glorot-like start, written at
every step either as our own summaries (`weights_pb`, with the step-0
reference) or as TensorBoard's plain histograms (`histogram_pb`, as Keras's
callback would write them). Ground truth is planted in every run: layer 0 is
frozen, layer 1 moves 1e4 times less than the others, and in the last run
layer 2 turns NaN from step `steps // 2`.

Usage:

    python benchmarks/make_logdir.py OUT_DIR [--runs 5] [--tensors 40] [--steps 100]
        [--source tb_weightdiff|histograms]
    time tb-weightdiff report --logdir OUT_DIR --loader rust

Needs numpy and tensorboard only (no TensorFlow). `make_logdir` is also what
the CLI tests use for their small logdirs.
"""

import argparse
import os
import sys
import time

import numpy as np

FROZEN_LAYER = 0
SLOW_LAYER = 1
DIVERGED_LAYER = 2


def layer_name(index):
    return "model/dense_%d" % index


def _write(run_dir, events, suffix):
    # pylint: disable=import-outside-toplevel
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer import event_file_writer

    writer = event_file_writer.EventFileWriter(run_dir, filename_suffix=suffix)
    for step, summary in events:
        writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))
    writer.close()


def make_logdir(
    path,
    runs=5,
    tensors=40,
    steps=100,
    source="tb_weightdiff",
    width=64,
    seed=0,
    diverge=True,
    step_list=None,
):
    """Writes `runs` runs of `tensors` weight series over `steps` steps under `path`.

    Args:
      path: the logdir to create (runs are `run_0`, `run_1`, ...).
      runs, tensors, steps: the size; `tensors` counts kernels and biases.
      source: "tb_weightdiff" (our summaries) or "histograms" (plain histograms).
      width: each kernel is `width x width`, each bias `width`.
      seed: the random seed.
      diverge: plant a NaN in layer 2 of the last run from step `steps // 2`.
      step_list: optional explicit steps to log (gaps, late start); default
        `range(steps)`.

    Returns:
      `{run: {layer: expected verdict}}` for the planted layers.
    """
    # pylint: disable=import-outside-toplevel
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary

    from tb_weightdiff import summary as summary_lib

    rng = np.random.default_rng(seed)
    logged = list(step_list) if step_list is not None else list(range(steps))
    layers = max(tensors // 2, 1)
    expected = {}
    for run_index in range(runs):
        run = "run_%d" % run_index
        planted = {layer_name(FROZEN_LAYER): "frozen", layer_name(SLOW_LAYER): "not_learning"}
        diverged_here = diverge and run_index == runs - 1 and layers > DIVERGED_LAYER
        if diverged_here:
            planted[layer_name(DIVERGED_LAYER)] = "diverged"
        expected[run] = planted
        state = {}
        for layer in range(layers):
            kernel = rng.normal(0, np.sqrt(1.0 / width), (width, width)).astype(np.float32)
            bias = np.zeros(width, np.float32)
            rate = 0.0 if layer == FROZEN_LAYER else (1e-6 if layer == SLOW_LAYER else 1e-2)
            state[layer] = (kernel, bias, kernel.copy(), bias.copy(), rate)
        events = []
        last = max(logged) if logged else 0
        for step in range(last + 1):
            for layer in range(layers):
                kernel, bias, kernel0, bias0, rate = state[layer]
                if step > 0 and rate:
                    kernel = kernel + rate * (
                        rng.standard_normal(kernel.shape).astype(np.float32) * np.sqrt(1.0 / width)
                        + 0.2 * kernel
                    )
                    bias = bias + rate * rng.standard_normal(bias.shape).astype(np.float32) * 0.1
                if diverged_here and layer == DIVERGED_LAYER and step >= steps // 2:
                    kernel = kernel.copy()
                    kernel[0, 0] = np.nan
                state[layer] = (kernel, bias, kernel0, bias0, rate)
                if step not in logged:
                    continue
                for name, value, reference in (("kernel", kernel, kernel0), ("bias", bias, bias0)):
                    tag = "%s/%s" % (layer_name(layer), name)
                    if source == "tb_weightdiff":
                        summary = summary_lib.weights_pb(tag, value, reference=reference, trainable=True)
                    else:
                        summary = histogram_summary.histogram_pb(tag + "/histogram", value)
                    events.append((step, summary))
        suffix = ".tb_weightdiff" if source == "tb_weightdiff" else ".histograms"
        run_dir = os.path.join(path, run)
        os.makedirs(run_dir, exist_ok=True)
        _write(run_dir, events, suffix)
    return expected


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tensors", type=int, default=40)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--source", choices=("tb_weightdiff", "histograms"), default="tb_weightdiff")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    make_logdir(args.out_dir, args.runs, args.tensors, args.steps, args.source, seed=args.seed)
    print(
        "wrote %d runs x %d tensors x %d steps (%s) to %s in %.1f s"
        % (args.runs, args.tensors, args.steps, args.source, args.out_dir, time.perf_counter() - start)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
