"""Benchmark 8: what the reset check costs per layer, against one plain evaluation of the same batches.

  python benchmarks/bench_reset.py [--mode smoke|quick|default|full]

The check evaluates the model once as trained, once with every layer reset
and once per layer that moved, each time on the same kept batches, and puts
weights in and back around each evaluation. Its peer is what one of those
evaluations costs without it: `model.evaluate(x, y)` (Keras) or a
`torch.no_grad()` loop over the same batches (PyTorch). The ratio per layer
(the check's time / (2 + layers evaluated) / one evaluation) is the
check's overhead over the evaluations it cannot avoid; the target is <= 1.2x.
The check's own bookkeeping (weights in and out, the frozen test) is a few
milliseconds; what moves the ratio is the evaluations themselves: a model
with a layer at its initial weights can evaluate 5-10 % slower than the
trained one (measured on the PyTorch CNN), and repeated evaluations of the
same batches vary by tens of per cent on a busy 2-core machine.

Models: the tutorial's CIFAR10 CNN in Keras (TensorFlow backend) and in
PyTorch on 20 batches of 250 synthetic images (5,000), and a larger
PyTorch model, a 6-block transformer encoder (d_model 256, 4.8M
parameters, 38 layers) on 20 batches of 32 sequences of 64 tokens.
The default size takes about 10 minutes on 2 cores (the transformer's 40
evaluations per check dominate); `--mode quick` about 7.
Weights are trained for one pass first, so every layer has moved.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "8 reset check"


def _row(name, layers, evaluated, check_seconds, one_evaluation, batches, examples, repeats, unit="examples"):
    per_layer = check_seconds / (2 + evaluated)
    return [
        common.row(
            BENCH, "per layer, %s (%d layers, %s %s)" % (name, layers, "{:,}".format(examples), unit), per_layer * 1e3,
            one_evaluation * 1e3, peer_name="one evaluation of the same %d batches" % batches, limit=1.2,
            note="median of %d checks; a check is %d evaluations (as trained, all reset, %d layers)"
            % (repeats, 2 + evaluated, evaluated),
        ),
        common.row(BENCH, "  whole check, %s" % name, check_seconds, None, unit="s", peer_name=""),
    ]


def keras_cnn(samples, batches, repeats, logdir):
    common.quiet_tensorflow()
    import keras  # pylint: disable=import-outside-toplevel

    from tb_weightdiff.keras import WeightDiffCallback  # pylint: disable=import-outside-toplevel

    demo = common.load_demo("train_cifar10")
    keras.utils.set_random_seed(0)
    images, labels = demo.synthetic_cifar10(samples)
    x, y = images.astype("float32") / 255.0, keras.utils.to_categorical(labels, 10)
    model = demo.build_model()
    callback = WeightDiffCallback(logdir, reset_check=(x, y), reset_batches=batches, reset_batch_size=250)
    model.fit(x, y, batch_size=250, epochs=1, verbose=0, callbacks=[callback])
    kept_x, kept_y = callback._reset_batches()[:2]  # pylint: disable=protected-access
    times = common.interleaved({
        "check": lambda: callback._check_resets(1),  # pylint: disable=protected-access
        "evaluate": lambda: model.evaluate(kept_x, kept_y, batch_size=250, verbose=0, return_dict=True),
    }, repeats)
    layers = len(callback.last_reset)
    return _row("CIFAR10 CNN, Keras", layers, layers, times["check"], times["evaluate"], batches, len(kept_x), repeats)


def _torch_check(name, model, batches_list, loss_fn, forward, repeats, logdir, train_steps, unit="examples"):
    import torch  # pylint: disable=import-outside-toplevel

    from tb_weightdiff.torch import WeightDiffLogger  # pylint: disable=import-outside-toplevel

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logger = WeightDiffLogger(logdir, model, optimizer=optimizer)
    model.train()
    for batch in batches_list[:train_steps]:
        optimizer.zero_grad()
        outputs, targets = forward(model, batch)
        loss_fn(outputs, targets).backward()
        optimizer.step()
    logger.log(1)

    def evaluate():
        model.eval()
        with torch.no_grad():
            for batch in batches_list:
                outputs, targets = forward(model, batch)
                float(loss_fn(outputs, targets))
        model.train()

    found = {}

    def check():
        found.update(logger.reset_check(batches_list, loss_fn, max_batches=len(batches_list), step=1, forward=forward))

    times = common.interleaved({"check": check, "evaluate": evaluate}, repeats)
    logger.close()
    examples = sum(int(b[0].shape[0]) for b in batches_list)
    return _row(name, len(found), len(found), times["check"], times["evaluate"], len(batches_list), examples, repeats,
                unit)


def torch_cnn(samples, batches, repeats, logdir):
    import torch  # pylint: disable=import-outside-toplevel

    demo = common.load_demo("train_cifar10_torch")
    torch.manual_seed(0)
    images, labels = common.load_demo("train_cifar10").synthetic_cifar10(samples)
    x = torch.from_numpy(images.astype("float32") / 255.0).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels.astype("int64").reshape(-1))
    data = [(x[i:i + 250], y[i:i + 250]) for i in range(0, min(len(x), 250 * batches), 250)]
    return _torch_check("CIFAR10 CNN, PyTorch", demo.build_model(), data, torch.nn.CrossEntropyLoss(),
                        lambda model, batch: (model(batch[0]), batch[1]), repeats, logdir, train_steps=len(data))


def transformer(blocks=6, width=256, vocabulary=2000, length=64):
    import torch  # pylint: disable=import-outside-toplevel

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(vocabulary, width)
            layer = torch.nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.1, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
            self.head = torch.nn.Linear(width, vocabulary)

        def forward(self, tokens):
            return self.head(self.encoder(self.embedding(tokens)))

    return Encoder()


def torch_transformer(batches, repeats, logdir, blocks=6):
    import torch  # pylint: disable=import-outside-toplevel

    torch.manual_seed(0)
    model = transformer(blocks)
    tokens = torch.randint(0, 2000, (32 * batches, 65))
    data = [(tokens[i:i + 32, :-1], tokens[i:i + 32, 1:]) for i in range(0, len(tokens), 32)]
    loss = torch.nn.CrossEntropyLoss()

    def forward(model, batch):
        return model(batch[0]).reshape(-1, 2000), batch[1].reshape(-1)

    return _torch_check("transformer, %d blocks, PyTorch" % blocks, model, data, loss, forward, repeats, logdir,
                        train_steps=min(len(data), 10), unit="sequences of 64 tokens")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    samples, batches, repeats, blocks = {
        "smoke": (250, 1, 1, 1), "quick": (5000, 20, 2, 6), "default": (5000, 20, 3, 6), "full": (5000, 20, 5, 6),
    }[args.mode]
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tbwd_bench_reset_") as tmp:
        if common.have_module("tensorflow"):
            print("== CIFAR10 CNN (Keras), %d batches, %d repeats" % (batches, repeats), flush=True)
            rows.extend(keras_cnn(samples, batches, repeats, os.path.join(tmp, "keras")))
        else:
            rows.append(common.skipped(BENCH, "TensorFlow is not installed (Keras CNN)"))
        if common.have_module("torch"):
            print("== CIFAR10 CNN (PyTorch)", flush=True)
            rows.extend(torch_cnn(samples, batches, repeats, os.path.join(tmp, "torch")))
            print("== transformer (PyTorch)", flush=True)
            rows.extend(torch_transformer(batches, repeats, os.path.join(tmp, "transformer"), blocks))
        else:
            rows.append(common.skipped(BENCH, "PyTorch is not installed"))
    print("benchmark 8 took %.0f s" % (time.monotonic() - started), flush=True)
    common.emit(rows, args.rows_out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
