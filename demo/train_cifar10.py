"""Trains the CIFAR10 CNN of the classic Keras TensorBoard tutorial twice, for the Weight Diff tab.

Two runs land in one logdir, a subdirectory each:

- `healthy`: the tutorial's model as it is;
- `frozen_conv2d_1`: the same model with its second convolution left at
  `trainable=False`, the mistake of a fine-tuning script that froze a block
  and never unfroze it. Its weights never move; the tab flags it.

Each run logs with both Keras's own `TensorBoard(histogram_freq=1)`, as the
tutorial does, and `WeightDiffCallback`, so the tab shows what each source
knows (Keras's histograms have no epoch-0 baseline and no distance from it).
When training ends the callback also runs the reset check on the validation
images: each layer in turn back at its initial weights, the loss measured,
the layer restored. The frozen convolution's reset costs exactly 0.

Data: `keras.datasets.cifar10.load_data()`, which downloads CIFAR10 once.
Where that is impossible (no internet), `--synthetic`, or the automatic
fallback, uses generated CIFAR-shaped images (32x32x3, 10 classes) whose
class is carried by a per-class colour pattern under noise, so the layers
really learn.

Usage:
  python demo/train_cifar10.py                 # real CIFAR10, default epochs
  python demo/train_cifar10.py --synthetic --samples 2000 --epochs 3
  tensorboard --logdir logs/cifar10            # then open "Weight Diff"
"""

import argparse
import os
import sys
import time

import numpy as np

DEFAULT_LOGDIR = os.path.join("logs", "cifar10")
FAULT_RUN = "frozen_conv2d_1"
FROZEN_LAYER = "conv2d_1"


def synthetic_cifar10(samples, seed=0):
    """CIFAR-shaped data with a learnable signal: per-class smooth patterns under noise."""
    rng = np.random.default_rng(seed)
    # Each class: a low-frequency colour pattern, upsampled from 4x4 to 32x32.
    coarse = rng.uniform(0, 1, size=(10, 4, 4, 3)).astype(np.float32)
    patterns = coarse.repeat(8, axis=1).repeat(8, axis=2)
    labels = rng.integers(0, 10, size=samples)
    images = np.empty((samples, 32, 32, 3), np.uint8)
    for start in range(0, samples, 5000):  # in chunks: float32 images of 50k are 600 MB
        chunk = labels[start : start + 5000]
        noise = rng.standard_normal((chunk.size, 32, 32, 3), dtype=np.float32) * 0.4
        brightness = rng.uniform(size=(chunk.size, 1, 1, 3)).astype(np.float32)
        # Faint patterns under strong noise: accuracy climbs over epochs, as on CIFAR10.
        images[start : start + chunk.size] = (np.clip(0.1 * patterns[chunk] + 0.4 * brightness + noise, 0, 1) * 255).astype(np.uint8)
    return images, labels.reshape(-1, 1).astype(np.uint8)


def load_data(synthetic, samples):
    """Returns `(x, y, source)`: images scaled to [0, 1], one-hot labels."""
    import keras  # pylint: disable=import-outside-toplevel

    source = "synthetic"
    if not synthetic:
        try:
            (x, y), _ = keras.datasets.cifar10.load_data()
            source = "cifar10"
        except Exception as error:  # pylint: disable=broad-except
            print(
                "CIFAR10 could not be downloaded (%s: %s); using synthetic "
                "CIFAR-shaped data instead (--synthetic)." % (type(error).__name__, str(error)[:120]),
                flush=True,
            )
            synthetic = True
    if synthetic:
        # As many images as CIFAR10's training set, so the run takes as long.
        x, y = synthetic_cifar10(samples or 50000)
    if samples:
        x, y = x[:samples], y[:samples]
    x = x.astype("float32") / 255.0
    y = keras.utils.to_categorical(y, 10)
    return x, y, source


def build_model(frozen_layer=None):
    """The tutorial's CNN: 612k parameters in 8 weight tensors."""
    import keras  # pylint: disable=import-outside-toplevel

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(32, (3, 3), activation="relu", name="conv2d"),
            keras.layers.MaxPooling2D((2, 2), name="max_pooling2d"),
            keras.layers.Dropout(0.25, name="dropout"),
            keras.layers.Conv2D(64, (3, 3), activation="relu", name="conv2d_1"),
            keras.layers.MaxPooling2D((2, 2), name="max_pooling2d_1"),
            keras.layers.Dropout(0.25, name="dropout_1"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(256, activation="relu", name="dense"),
            keras.layers.Dense(10, activation="softmax", name="dense_1"),
        ],
        name="sequential",
    )
    if frozen_layer:
        model.get_layer(frozen_layer).trainable = False
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def train_run(name, logdir, x, y, epochs, frozen_layer=None, seed=0):
    import keras  # pylint: disable=import-outside-toplevel

    from tb_weightdiff.keras import WeightDiffCallback  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(seed)
    run_dir = os.path.join(logdir, name)
    model = build_model(frozen_layer)
    print("\n== run %r%s ==" % (name, " (layer %s frozen)" % frozen_layer if frozen_layer else ""), flush=True)
    started = time.monotonic()
    split = int(len(x) * 0.8)  # validation_split=0.2 holds out the last fifth
    model.fit(
        x,
        y,
        batch_size=250,
        epochs=epochs,
        validation_split=0.2,
        verbose=2,
        callbacks=[
            keras.callbacks.TensorBoard(log_dir=run_dir, histogram_freq=1),
            # The reset check on (at most) 20 batches of 250 held-out images.
            WeightDiffCallback(run_dir, reset_check=(x[split:], y[split:]), reset_batch_size=250),
        ],
    )
    print("run %r: %.1f s" % (name, time.monotonic() - started), flush=True)


def print_verdicts(logdir):
    """Prints the CLI's verdict table, if this version of tb_weightdiff has it."""
    from tb_weightdiff import cli  # pylint: disable=import-outside-toplevel

    if "report" not in cli.build_parser().format_help():
        return
    print("\n== verdicts (tb-weightdiff report --logdir %s) ==" % logdir, flush=True)
    cli.main(["report", "--logdir", logdir])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", default=DEFAULT_LOGDIR, help="where the runs go (default %(default)s)")
    parser.add_argument(
        "--epochs", type=int, default=5,
        help="epochs per run (default %(default)s, a few minutes on 2 CPU cores; the tutorial uses 25)",
    )
    parser.add_argument("--synthetic", action="store_true", help="generated CIFAR-shaped data, no download")
    parser.add_argument("--samples", type=int, default=None, help="use only this many training images")
    args = parser.parse_args(argv)
    if args.epochs < 1 or (args.samples is not None and args.samples < 10):
        parser.error("--epochs must be >= 1 and --samples >= 10")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    x, y, source = load_data(args.synthetic, args.samples)
    print("data: %s, %d images" % (source, len(x)), flush=True)
    train_run("healthy", args.logdir, x, y, args.epochs)
    train_run(FAULT_RUN, args.logdir, x, y, args.epochs, frozen_layer=FROZEN_LAYER)
    print_verdicts(args.logdir)
    print("\nNow run:\n  tensorboard --logdir %s\nand open the Weight Diff tab." % args.logdir, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
