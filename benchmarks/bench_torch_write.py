"""Benchmark 7: what the PyTorch logger costs per logged epoch, against the `add_histogram` loop.

  python benchmarks/bench_torch_write.py [--mode smoke|quick|default|full]

Timed, interleaved over repeats on the same model:

- peer: the common habit, `for name, p in model.named_parameters():
  writer.add_histogram(name, p, epoch)` and `writer.flush()`
  (`torch.utils.tensorboard`, its default buckets);
- ours: `WeightDiffLogger.log(epoch)` (host copy, one sort, 30-bucket
  histogram, 65 quantiles, moments, NaN/Inf counts, CRC-32, distance and
  rotation from the weights before training, event writing, flush).

Models: the PyTorch twin of the tutorial's CIFAR10 CNN
(`demo/train_cifar10_torch.build_model`, 612k parameters) and a wide MLP
(1024 -> 4096 -> 4096 -> 10, 21M parameters). Weights are moved a little
between repeats (both sides see the same tensors); no training is timed.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "7 torch write"


def wide_mlp(width=4096, inputs=1024):
    import torch  # pylint: disable=import-outside-toplevel

    return torch.nn.Sequential(
        torch.nn.Linear(inputs, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    )


def measure(name, model, repeats, logdir):
    import torch  # pylint: disable=import-outside-toplevel
    from torch.utils.tensorboard import SummaryWriter  # pylint: disable=import-outside-toplevel

    from tb_weightdiff.torch import WeightDiffLogger  # pylint: disable=import-outside-toplevel

    writer = SummaryWriter(os.path.join(logdir, "histograms"))
    logger = WeightDiffLogger(os.path.join(logdir, "ours"), model)
    step = {"ours": 0, "peer": 0}

    def nudge():
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(0.999)

    def ours():
        step["ours"] += 1
        logger.log(step["ours"])

    def peer():
        step["peer"] += 1
        for parameter_name, parameter in model.named_parameters():
            writer.add_histogram(parameter_name, parameter, step["peer"])
        writer.flush()

    times = common.interleaved({"ours": ours, "peer": peer, "nudge": nudge}, repeats)
    logger.close()
    writer.close()
    parameters = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    what = "%s (%s parameters, %d tensors)" % (name, "{:,}".format(parameters), tensors)
    return [
        common.row(
            BENCH, "per logged epoch, %s" % what, times["ours"] * 1e3, times["peer"] * 1e3,
            peer_name="add_histogram loop", limit=0.25,
            note="median of %d; the peer records one histogram per tensor (its default ~1,500 "
            "fixed buckets, trimmed), we record 30 buckets plus 65 exact quantiles, moments, counts, "
            "CRC-32 and the distance/rotation from step 0; both sort-bound" % repeats,
        ),
        common.row(
            BENCH, "  reference kept on the host, %s" % name, logger_bytes(parameters), None, unit="MB",
            peer_name="(add_histogram keeps none)",
        ),
    ]


def logger_bytes(parameters):
    return parameters * 4 / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    if not common.have_module("torch"):
        common.emit([common.skipped(BENCH, "PyTorch is not installed")], args.rows_out, args.mode)
        return 0
    import torch  # pylint: disable=import-outside-toplevel

    torch.manual_seed(0)
    plan = {"smoke": (2, False), "quick": (5, True), "default": (9, True), "full": (15, True)}[args.mode]
    repeats, with_mlp = plan
    rows = []
    with tempfile.TemporaryDirectory(prefix="tbwd_bench_torch_") as tmp:
        print("== CIFAR10 CNN (PyTorch), %d repeats" % repeats, flush=True)
        rows.extend(measure("CIFAR10 CNN", common.load_demo("train_cifar10_torch").build_model(), repeats, os.path.join(tmp, "cnn")))
        if with_mlp:
            print("== wide MLP (PyTorch), %d repeats" % repeats, flush=True)
            rows.extend(measure("wide MLP", wide_mlp(), repeats, os.path.join(tmp, "mlp")))
    common.emit(rows, args.rows_out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
