"""Benchmark 1: what logging costs at the end of an epoch, against Keras's own weight histograms.

  python benchmarks/bench_write.py [--mode smoke|quick|default|full]

One `model.fit` carries both `keras.callbacks.TensorBoard(histogram_freq=1)`
and `WeightDiffCallback`. Timed per epoch, in the same fit:

- peer: Keras's weight-histogram writing, its `_log_weights` (one
  `tf.summary.histogram` per weight, eagerly), wrapped with a timer;
- ours: everything `WeightDiffCallback.on_epoch_end` does (host copy, one
  sort, histogram, 65 quantiles, moments, health counts, CRC-32, distance
  and rotation from the weights before training, event writing, flush).

Reported: the median over epochs (the first epoch left out: eager kernels
warm up), both as milliseconds and as bytes of weights per second, and ours
as a multiple of the physical floor: one numpy pass (`np.add.reduce`) over
the same weights already on the host.

Models: the tutorial's CIFAR10 CNN (`demo/train_cifar10.build_model`, 612k
parameters in 8 tensors) on synthetic CIFAR-shaped data, and a wide MLP with
21M parameters (1024 -> 4096 -> 4096 -> 10) on 64 samples: only the
epoch-end cost matters.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "1 write"


def cnn(samples):
    demo = common.load_demo("train_cifar10")
    import keras  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    model = demo.build_model()
    images, labels = demo.synthetic_cifar10(samples)
    x = images.astype("float32") / 255.0
    y = keras.utils.to_categorical(labels, 10)
    return model, x, y, 250


def wide_mlp(samples, width=4096, inputs=1024):
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(width, activation="relu", name="dense"),
            keras.layers.Dense(width, activation="relu", name="dense_1"),
            keras.layers.Dense(10, activation="softmax", name="dense_2"),
        ],
        name="wide_mlp",
    )
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, inputs)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, samples), 10)
    return model, x, y, samples


def floor_seconds(model, repeats=15):
    """One pass over the model's weights on the host: the least any statistic can cost."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    arrays = [np.asarray(variable.numpy()) for variable in model.weights]

    def one_pass():
        for array in arrays:
            np.add.reduce(array, axis=None)

    return common.interleaved({"floor": one_pass}, repeats)["floor"]


def measure(name, model, x, y, batch_size, epochs, logdir):
    import keras  # pylint: disable=import-outside-toplevel

    from tb_weightdiff.keras import WeightDiffCallback  # pylint: disable=import-outside-toplevel

    keras_callback = keras.callbacks.TensorBoard(log_dir=logdir, histogram_freq=1)
    ours = WeightDiffCallback(logdir)
    times = {"keras": [], "ours": [], "baseline": []}

    def timed(function, key):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[key].append(time.perf_counter() - started)

        return wrapper

    # Instance attributes shadow the methods Keras calls.
    keras_callback._log_weights = timed(keras_callback._log_weights, "keras")  # pylint: disable=protected-access
    ours.on_epoch_end = timed(ours.on_epoch_end, "ours")
    ours.on_train_begin = timed(ours.on_train_begin, "baseline")
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[keras_callback, ours])
    counted = slice(1, None) if epochs > 1 else slice(None)
    keras_seconds = common.median(times["keras"][counted])
    ours_seconds = common.median(times["ours"][counted])
    floor = floor_seconds(model)
    parameters = sum(int(v.numpy().size) for v in model.weights)
    weight_bytes = sum(int(v.numpy().nbytes) for v in model.weights)
    tensors = len(model.weights)
    what = "%s (%s parameters, %d tensors, %.1f MB)" % (name, "{:,}".format(parameters), tensors, weight_bytes / 1e6)
    rows = [
        common.row(
            BENCH, "epoch-end cost, %s" % what, ours_seconds * 1e3, keras_seconds * 1e3,
            peer_name="Keras _log_weights", limit=0.25,
            note="median of %d epochs; Keras records a 30-bucket histogram per tensor, we record that plus "
            "65 quantiles, moments, NaN/Inf counts, CRC-32 and the distance/rotation from the initial weights"
            % len(times["ours"][counted]),
        ),
        common.row(
            BENCH, "  throughput, %s" % name, weight_bytes / ours_seconds / 1e6, weight_bytes / keras_seconds / 1e6,
            unit="MB/s", peer_name="Keras", higher_is_better=True,
        ),
        common.row(
            BENCH, "  vs the floor (one np.add.reduce pass over the weights), %s" % name, ours_seconds * 1e3,
            floor * 1e3, peer_name="numpy pass",
            note="floor %.0f MB/s; Keras's _log_weights is %.0fx the floor" % (weight_bytes / floor / 1e6, keras_seconds / floor),
        ),
        common.row(
            BENCH, "  before training (on_train_begin: reference snapshot + step 0), %s" % name,
            common.median(times["baseline"]) * 1e3, None, peer_name="(Keras logs nothing before training)",
        ),
    ]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    if not common.have_module("tensorflow"):
        common.emit([common.skipped(BENCH, "TensorFlow is not installed")], args.rows_out, args.mode)
        return 0
    common.quiet_tensorflow()
    plan = {
        "smoke": {"cnn": (64, 2), "mlp": None},
        "quick": {"cnn": (500, 4), "mlp": (64, 2)},
        "default": {"cnn": (1000, 6), "mlp": (64, 3)},
        "full": {"cnn": (2000, 8), "mlp": (64, 4)},
    }[args.mode]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tbwd_bench_write_") as tmp:
        samples, epochs = plan["cnn"]
        print("== CIFAR10 CNN, %d samples, %d epochs" % (samples, epochs), flush=True)
        model, x, y, batch = cnn(samples)
        rows.extend(measure("CIFAR10 CNN", model, x, y, batch, epochs, os.path.join(tmp, "cnn")))
        if plan["mlp"]:
            samples, epochs = plan["mlp"]
            print("== wide MLP, %d samples, %d epochs" % (samples, epochs), flush=True)
            model, x, y, batch = wide_mlp(samples)
            rows.extend(measure("wide MLP", model, x, y, batch, epochs, os.path.join(tmp, "mlp")))
    common.emit(rows, args.rows_out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
