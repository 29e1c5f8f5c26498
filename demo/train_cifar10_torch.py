"""The PyTorch twin of train_cifar10.py: the same CIFAR10 CNN, the same two runs, logged by WeightDiffLogger.

Two runs land in one logdir, a subdirectory each:

- `healthy`: the tutorial's CNN (612k parameters), in PyTorch;
- `frozen_conv2d_1`: the same model with its second convolution left at
  `requires_grad=False`. Its weights never move; the tab flags it.

Each run logs as PyTorch users do, `SummaryWriter(run).add_histogram(...)`
for every parameter after every epoch (under `name + "/histogram"`, so the
tags do not clash with ours), and `WeightDiffLogger` into the same writer:
step 0 before training, the distance from it, trainability, the optimizer's
update count.

Data: CIFAR10's own archive (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz,
163 MB, kept under ~/.cache/tb_weightdiff), read with numpy: no torchvision
needed. Where it cannot be downloaded (no internet), `--synthetic`, or the
automatic fallback, uses the same generated CIFAR-shaped images as the Keras
demo.

Usage:
  python demo/train_cifar10_torch.py
  python demo/train_cifar10_torch.py --synthetic --samples 2000 --epochs 3
  tensorboard --logdir logs/cifar10_torch      # then open "Weight Diff"
"""

import argparse
import os
import pickle
import sys
import tarfile
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_cifar10  # noqa: E402  (the synthetic data and the verdict table)

DEFAULT_LOGDIR = os.path.join("logs", "cifar10_torch")
FAULT_RUN = train_cifar10.FAULT_RUN
FROZEN_LAYER = train_cifar10.FROZEN_LAYER
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def download_cifar10(cache=os.path.join(os.path.expanduser("~"), ".cache", "tb_weightdiff")):
    """CIFAR10's training images `(x uint8 [N, 32, 32, 3], y uint8 [N, 1])`, from its own archive."""
    os.makedirs(cache, exist_ok=True)
    archive = os.path.join(cache, "cifar-10-python.tar.gz")
    if not os.path.exists(archive):
        partial = archive + ".part"
        urllib.request.urlretrieve(CIFAR10_URL, partial)  # nosec: a fixed https address
        os.replace(partial, archive)
    images, labels = [], []
    with tarfile.open(archive) as tar:
        for index in range(1, 6):
            batch = pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_%d" % index), encoding="bytes")
            images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], np.uint8))
    return np.concatenate(images), np.concatenate(labels).reshape(-1, 1)


def load_data(synthetic, samples):
    """Returns `(x float32 [N, 3, 32, 32] in [0, 1], y int64 [N], source)`."""
    source = "synthetic"
    if not synthetic:
        try:
            x, y = download_cifar10()
            source = "cifar10"
        except Exception as error:  # pylint: disable=broad-except
            print(
                "CIFAR10 could not be downloaded (%s: %s); using synthetic CIFAR-shaped data "
                "instead (--synthetic)." % (type(error).__name__, str(error)[:120]),
                flush=True,
            )
            synthetic = True
    if synthetic:
        x, y = train_cifar10.synthetic_cifar10(samples or 50000)
    if samples:
        x, y = x[:samples], y[:samples]
    return (x.astype(np.float32) / 255.0).transpose(0, 3, 1, 2).copy(), y.reshape(-1).astype(np.int64), source


def build_model(frozen_layer=None):
    """The tutorial's CNN in PyTorch, with the Keras demo's layer names: 612k parameters in 8 tensors."""
    import torch  # pylint: disable=import-outside-toplevel

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv2d = torch.nn.Conv2d(3, 32, 3)
            self.conv2d_1 = torch.nn.Conv2d(32, 64, 3)
            self.dense = torch.nn.Linear(64 * 6 * 6, 256)
            self.dense_1 = torch.nn.Linear(256, 10)
            self.pool = torch.nn.MaxPool2d(2)
            self.dropout = torch.nn.Dropout(0.25)

        def forward(self, x):
            x = self.dropout(self.pool(torch.relu(self.conv2d(x))))
            x = self.dropout(self.pool(torch.relu(self.conv2d_1(x))))
            return self.dense_1(torch.relu(self.dense(x.flatten(1))))

    model = CNN()
    if frozen_layer:
        getattr(model, frozen_layer).requires_grad_(False)
    return model


def train_run(name, logdir, x, y, epochs, frozen_layer=None, seed=0, batch_size=250):
    import torch  # pylint: disable=import-outside-toplevel
    from torch.utils.tensorboard import SummaryWriter  # pylint: disable=import-outside-toplevel

    from tb_weightdiff.torch import WeightDiffLogger  # pylint: disable=import-outside-toplevel

    torch.manual_seed(seed)
    model = build_model(frozen_layer)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    split = int(len(x) * 0.8)
    train_x, train_y = torch.from_numpy(x[:split]), torch.from_numpy(y[:split])
    valid_x, valid_y = torch.from_numpy(x[split:]), torch.from_numpy(y[split:])
    print("\n== run %r%s ==" % (name, " (layer %s frozen)" % frozen_layer if frozen_layer else ""), flush=True)
    started = time.monotonic()
    writer = SummaryWriter(os.path.join(logdir, name))
    with WeightDiffLogger(writer, model, optimizer=optimizer) as weights:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(split)
            for start in range(0, split, batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                accuracy = float((model(valid_x).argmax(1) == valid_y).float().mean()) if len(valid_x) else float("nan")
            writer.add_scalar("loss", float(loss), epoch + 1)
            writer.add_scalar("val_accuracy", accuracy, epoch + 1)
            for parameter_name, parameter in model.named_parameters():
                writer.add_histogram(parameter_name + "/histogram", parameter, epoch)
            weights.log(epoch + 1)
            print("epoch %d/%d: loss %.4f, val_accuracy %.4f" % (epoch + 1, epochs, float(loss), accuracy), flush=True)
        # The reset check on (at most) 20 batches of 250 held-out images: each layer back at
        # its initial weights, the loss measured, the layer restored.
        if len(valid_x):
            checked = time.monotonic()
            held_out = [(valid_x[i : i + batch_size], valid_y[i : i + batch_size]) for i in range(0, len(valid_x), batch_size)]
            accuracy_of = {"accuracy": lambda out, target: (out.argmax(1) == target).float().mean()}
            weights.reset_check(held_out, torch.nn.CrossEntropyLoss(), metrics=accuracy_of)
            print("reset check: %.1f s" % (time.monotonic() - checked), flush=True)
    writer.close()
    print("run %r: %.1f s" % (name, time.monotonic() - started), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", default=DEFAULT_LOGDIR, help="where the runs go (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (default %(default)s)")
    parser.add_argument("--synthetic", action="store_true", help="generated CIFAR-shaped data, no download")
    parser.add_argument("--samples", type=int, default=None, help="use only this many training images")
    args = parser.parse_args(argv)
    if args.epochs < 1 or (args.samples is not None and args.samples < 10):
        parser.error("--epochs must be >= 1 and --samples >= 10")
    x, y, source = load_data(args.synthetic, args.samples)
    print("data: %s, %d images" % (source, len(x)), flush=True)
    train_run("healthy", args.logdir, x, y, args.epochs)
    train_run(FAULT_RUN, args.logdir, x, y, args.epochs, frozen_layer=FROZEN_LAYER)
    train_cifar10.print_verdicts(args.logdir)
    print("\nNow run:\n  tensorboard --logdir %s\nand open the Weight Diff tab." % args.logdir, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
