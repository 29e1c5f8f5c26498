"""Benchmark 9: writing at scale: one logged epoch of a model with 1,000 weight tensors and 100M parameters.

  python benchmarks/bench_scale_write.py [--mode smoke|quick|default|full] [--cap-gb 12]

The model: a stack of 500 `Linear(448, 448)` layers with bias (1,000 tensors,
100,576,000 parameters, 402 MB as float32) in PyTorch, and the same stack of
`Dense(448)` layers in Keras; built, never trained (only the write is
timed). Each contender runs in a process of its own, one after another: it
builds the model, sets up (ours: the logger's reference snapshot and step 0;
a peer: one untimed call), then times `repeats` logged epochs, the weights
nudged (x 0.999) between them:

- PyTorch, ours: `WeightDiffLogger.log(step)` on the numpy path (what
  `device_summary="auto"` does for CPU tensors), and again with the device
  path forced on the CPU (`device_summary=True`: PyTorch's sort, searches and
  float64 sums; what runs on a GPU, here on CPU tensors);
- PyTorch, peer: `for name, p in model.named_parameters():
  writer.add_histogram(name, p, step)` and `writer.flush()`
  (`torch.utils.tensorboard`), as in benchmark 7;
- Keras, ours: `WeightDiffCallback.on_epoch_end`;
- Keras, peer: `keras.callbacks.TensorBoard(histogram_freq=1)._log_weights`,
  as in benchmark 1.

Time: the median over the timed epochs. Memory, per process, from
/proc/self/status: "while logging" is the peak resident set during the
timed epochs above the resident set before them (VmHWM reset through
/proc/self/clear_refs first: every allocation counts, numpy's, PyTorch's and
TensorFlow's); "process" is the whole process's peak (VmHWM: the imports,
the model, a reference), and "added" that peak above the resident set of
the built model (what setting up and logging add: a reference, the event
writer, TensorFlow when TensorBoard's writer imports it). The parent polls each process's VmRSS every 20 ms and
kills it above `--cap-gb` (default 12 GB), which is then the figure
("exceeded 12 GB"); a process also ends after `--timeout` seconds.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BENCH = "9 write at scale"

CONTENDERS = ("torch_ours", "torch_device", "torch_peer", "keras_ours", "keras_peer")

PLANS = {  # layers, width, timed epochs
    "smoke": (20, 32, 1),
    "quick": (500, 448, 1),
    "default": (500, 448, 2),
    "full": (500, 448, 3),
}


# -- one contender, in its own process -------------------------------------------


def _torch_contender(contender, layers, width, logdir):
    import torch  # pylint: disable=import-outside-toplevel
    from tensorboard.compat import tf  # pylint: disable=import-outside-toplevel

    # Both event writers go through TensorBoard's file layer, which imports
    # TensorFlow where it is installed: imported here, before the model is
    # built, so that "added" counts neither contender's imports.
    getattr(tf, "io", None)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    if contender == "torch_peer":
        from torch.utils.tensorboard import SummaryWriter  # pylint: disable=import-outside-toplevel

        writer = SummaryWriter(logdir)

        def epoch(step):
            for name, parameter in model.named_parameters():
                writer.add_histogram(name, parameter, step)
            writer.flush()

        setup = lambda: epoch(0)  # noqa: E731
        reference = lambda: 0  # noqa: E731
    else:
        from tb_weightdiff.torch import WeightDiffLogger  # pylint: disable=import-outside-toplevel

        holder = {}

        def setup():
            holder["logger"] = WeightDiffLogger(logdir, model, device_summary=contender == "torch_device")

        def epoch(step):
            holder["logger"].log(step)

        reference = lambda: holder["logger"].reference_nbytes()  # noqa: E731

    def nudge():
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(0.999)

    parameters = sum(p.numel() for p in model.parameters())
    return setup, epoch, nudge, reference, parameters, len(list(model.parameters()))


def _keras_contender(contender, layers, width, logdir):
    common.quiet_tensorflow()
    import keras  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((width,))] + [keras.layers.Dense(width) for _ in range(layers)])
    if contender == "keras_peer":
        callback = keras.callbacks.TensorBoard(log_dir=logdir, histogram_freq=1)
        callback.set_model(model)
        epoch = callback._log_weights  # pylint: disable=protected-access
        setup = lambda: epoch(0)  # noqa: E731
        reference = lambda: 0  # noqa: E731
    else:
        from tb_weightdiff.keras import WeightDiffCallback  # pylint: disable=import-outside-toplevel

        callback = WeightDiffCallback(logdir)
        callback.set_model(model)
        setup = callback.on_train_begin  # reference snapshot + step 0

        def epoch(step):
            callback.on_epoch_end(step - 1)

        reference = callback.reference_nbytes

    def nudge():
        for variable in model.weights:
            variable.assign(variable * 0.999)

    parameters = sum(int(v.shape.num_elements() if hasattr(v.shape, "num_elements") else _size(v.shape)) for v in model.weights)
    return setup, epoch, nudge, reference, parameters, len(model.weights)


def _size(shape):
    size = 1
    for dimension in shape:
        size *= int(dimension)
    return size


def run_contender(contender, layers, width, repeats, logdir):
    """Builds, sets up, times `repeats` epochs; returns the figures as a dict."""
    make = _torch_contender if contender.startswith("torch") else _keras_contender
    started = time.perf_counter()
    setup, epoch, nudge, reference, parameters, tensors = make(contender, layers, width, logdir)
    built = time.perf_counter() - started
    rss_built = common.status_kb("VmRSS")
    started = time.perf_counter()
    setup()
    setup_seconds = time.perf_counter() - started
    nudge()
    rss_before = common.status_kb("VmRSS")
    reset = common.reset_peak_rss()
    seconds = []
    for step in range(1, repeats + 1):
        started = time.perf_counter()
        epoch(step)
        seconds.append(time.perf_counter() - started)
        nudge()
    peak = common.status_kb("VmHWM")
    return {
        "contender": contender,
        "parameters": parameters,
        "tensors": tensors,
        "build_seconds": built,
        "setup_seconds": setup_seconds,
        "seconds": seconds,
        "rss_before_mb": rss_before / 1024,
        "peak_while_logging_mb": max(0, peak - rss_before) / 1024 if reset else None,
        "rss_built_mb": rss_built / 1024,
        "added_mb": max(0, peak - rss_built) / 1024,
        "process_peak_mb": peak / 1024,
        "reference_mb": reference() / 1e6,
    }


# -- the parent: one process per contender, under a memory cap --------------------


def _rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(contender, layers, width, repeats, cap_gb, timeout, tmp):
    """Runs one contender in a child process; `{"figures"...}` or `{"failed": reason}`."""
    out = os.path.join(tmp, contender + ".json")
    logdir = os.path.join(tmp, contender)
    command = [sys.executable, os.path.abspath(__file__), "--child", contender, "--layers", str(layers),
               "--width", str(width), "--repeats", str(repeats), "--out", out, "--logdir", logdir]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        most, reason = 0, None
        while process.poll() is None:
            most = max(most, _rss_kb(process.pid))
            if most > cap_gb * 1e9 / 1024:
                reason = "exceeded %g GB" % cap_gb
            elif time.monotonic() - started > timeout:
                reason = "took over %d s" % timeout
            if reason:
                process.kill()
                process.wait()
                break
            time.sleep(0.02)
        if reason is None and process.returncode != 0:
            stderr.seek(0)
            reason = "failed (exit %d): %s" % (process.returncode, stderr.read()[-600:].strip().replace("\n", " | "))
    if reason:
        return {"contender": contender, "failed": reason, "most_rss_mb": most / 1024,
                "wall_seconds": time.monotonic() - started}
    with open(out) as handle:
        found = json.load(handle)
    found["wall_seconds"] = time.monotonic() - started
    return found


def _median_ms(result):
    return common.median(result["seconds"]) * 1e3 if "seconds" in result else None


def _peer(result, name):
    """`(figure, peer name)` of a peer's time, or None and why not."""
    if "failed" in result:
        return None, "%s: %s" % (name, result["failed"])
    return _median_ms(result), name


def rows_for(results, layers, width, repeats, cap_gb):
    rows = []
    first = next((r for r in results.values() if "parameters" in r), None)
    if first is None:
        return [common.skipped(BENCH, "no contender ran: %s" % "; ".join(r.get("failed", "") for r in results.values()))]
    what = "%d x %s(%d, %d) (%s parameters, %s tensors)" % (
        layers, "%s", width, width, "{:,}".format(first["parameters"]), "{:,}".format(first["tensors"]))
    note_memory = ("peak RSS during the timed epochs above the RSS before them (VmHWM after clear_refs); "
                   "each contender in its own process, capped at %g GB RSS" % cap_gb)

    def megabytes_row(field, label, ours, peer, peer_name, note):
        ours_mb = ours.get(field) if "failed" not in ours else None
        if "failed" in peer:
            peer_mb, peer_name = None, "%s: %s" % (peer_name, peer["failed"])
        else:
            peer_mb = peer.get(field)
        return common.row(BENCH, label, ours_mb, peer_mb, unit="MB", peer_name=peer_name, note=note)

    def memory_row(label, ours, peer, peer_name):
        return megabytes_row("peak_while_logging_mb", label, ours, peer, peer_name, note_memory)

    def process_row(label, ours, peer, peer_name):
        return megabytes_row(
            "process_peak_mb", label, ours, peer, peer_name,
            "VmHWM of the whole process: imports, the model (%s MB of float32), our reference "
            "(%s MB)" % ("%.0f" % (first["parameters"] * 4 / 1e6), "%.0f" % (ours.get("reference_mb") or 0)))

    def added_row(label, ours, peer, peer_name):
        if "failed" in peer:
            peer_mb, peer_name = None, "%s: %s" % (peer_name, peer["failed"])
        else:
            peer_mb = peer.get("added_mb")
        return common.row(BENCH, label, ours.get("added_mb"), peer_mb, unit="MB", peer_name=peer_name,
                          note="process peak RSS above the RSS of the built model")

    if "torch_ours" in results:
        ours, device, peer = results["torch_ours"], results["torch_device"], results["torch_peer"]
        peer_ms, peer_name = _peer(peer, "add_histogram loop")
        rows.append(common.row(
            BENCH, "per logged epoch, PyTorch, %s" % (what % "Linear"), _median_ms(ours), peer_ms,
            peer_name=peer_name, limit=0.25,
            note="median of %d; ours: WeightDiffLogger.log on the numpy path (device_summary='auto' on CPU); "
            "%s" % (repeats, ours.get("failed", "setup (reference + step 0) %.1f s" % ours.get("setup_seconds", 0))),
        ))
        rows.append(memory_row("  peak RSS while logging, PyTorch", ours, peer, "add_histogram loop"))
        rows.append(process_row("  process peak RSS, PyTorch", ours, peer, "add_histogram loop"))
        rows.append(added_row("  peak RSS added to the built model, PyTorch", ours, peer, "add_histogram loop"))
        numpy_ms = _median_ms(ours)
        rows.append(common.row(
            BENCH, "  device path forced on the CPU (device_summary=True), per logged epoch", _median_ms(device),
            numpy_ms if "failed" not in ours else None,
            peer_name="our numpy path" if "failed" not in device else "our numpy path; device: %s" % device["failed"],
            note="PyTorch ops on CPU tensors: the code a GPU runs; PyTorch's CPU sort is the cost",
        ))
        rows.append(memory_row("  peak RSS while logging, device path on CPU / numpy path", device, ours, "numpy path"))
    if "keras_ours" in results:
        ours, peer = results["keras_ours"], results["keras_peer"]
        peer_ms, peer_name = _peer(peer, "Keras _log_weights")
        rows.append(common.row(
            BENCH, "per logged epoch, Keras, %s" % (what % "Dense"), _median_ms(ours), peer_ms,
            peer_name=peer_name, limit=0.25,
            note="median of %d; ours: WeightDiffCallback.on_epoch_end; %s" % (
                repeats, ours.get("failed", "setup (on_train_begin) %.1f s" % ours.get("setup_seconds", 0))),
        ))
        rows.append(memory_row("  peak RSS while logging, Keras", ours, peer, "Keras _log_weights"))
        rows.append(process_row("  process peak RSS, Keras", ours, peer, "Keras _log_weights"))
        rows.append(added_row("  peak RSS added to the built model, Keras", ours, peer, "Keras _log_weights"))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--cap-gb", type=float, default=12.0, help="kill a contender whose RSS exceeds this")
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds per contender")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--logdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        found = run_contender(args.child, args.layers, args.width, args.repeats, args.logdir)
        with open(args.out, "w") as handle:
            json.dump(found, handle)
        return 0

    layers, width, repeats = PLANS[args.mode]
    chosen = []
    if common.have_module("torch"):
        chosen += ["torch_ours", "torch_device", "torch_peer"]
    if common.have_module("tensorflow"):
        chosen += ["keras_ours", "keras_peer"]
    if not chosen:
        common.emit([common.skipped(BENCH, "neither PyTorch nor TensorFlow is installed")], args.rows_out, args.mode)
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="tbwd_bench_scale_") as tmp:
        for contender in chosen:
            print("== %s: %d x (%d, %d), %d timed epochs" % (contender, layers, width, width, repeats), flush=True)
            results[contender] = measure(contender, layers, width, repeats, args.cap_gb, args.timeout, tmp)
            print("   %s" % json.dumps(results[contender]), flush=True)
    rows = rows_for(results, layers, width, repeats, args.cap_gb)
    if not common.have_module("tensorflow"):
        rows.append(common.skipped(BENCH, "TensorFlow is not installed: the Keras rows"))
    if not common.have_module("torch"):
        rows.append(common.skipped(BENCH, "PyTorch is not installed: the PyTorch rows"))
    common.emit(rows, args.rows_out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
