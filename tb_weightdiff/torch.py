"""`WeightDiffLogger`: records every parameter of a PyTorch model across training.

PyTorch is imported when a logger is created, never when this module is: the
plugin side never touches it, and `import tb_weightdiff.torch` works (and
documents itself) where PyTorch is missing. What this module owns is the
PyTorch side: which tensors (`named_parameters()`, buffers on request),
their tags (the parameter names), one host copy of each per step, the rank
that writes, and what the optimizer can tell. Everything else it shares with
the Keras callback: it writes through `tb_weightdiff.events` (TensorBoard's own
event writer and `tb_weightdiff.summary.weights_pb`).

Example:

```python
from tb_weightdiff.torch import WeightDiffLogger

with WeightDiffLogger("runs/exp1", model, optimizer=optimizer) as weights:
    for epoch in range(epochs):
        train_one_epoch(model, optimizer)
        weights.log(epoch + 1)
# then: tensorboard --logdir runs  (open the "Weight Diff" tab)
```
"""

import itertools
import logging
import os
import time

import numpy as np

from tb_weightdiff import events
from tb_weightdiff import metadata
from tb_weightdiff import reset as reset_lib

logger = logging.getLogger(__name__)

__all__ = ["WeightDiffLogger", "ShardedParametersError"]

_FINGERPRINT = metadata.STAT_FIELDS.index("fingerprint")

# device_reference="auto": references stay on an accelerator while they take
# at most this share of its total memory and of its memory free when the
# logger is created (the rest is kept on the host).
_DEVICE_REFERENCE_TOTAL_SHARE = 0.10
_DEVICE_REFERENCE_FREE_SHARE = 0.50

_INSTALL_HINT = (
    "tb_weightdiff.torch needs PyTorch, which is not installed. Please install "
    "it, e.g. `pip install torch` (or `pip install 'tb-weightdiff[torch]'`)."
)


class ShardedParametersError(ValueError):
    """The model's parameters are sharded across ranks (FSDP): no rank holds a whole tensor."""


def _import_torch():
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ModuleNotFoundError(_INSTALL_HINT, name="torch") from error
    return torch


def _rank(torch):
    """This process's rank in the default process group, 0 when there is none."""
    distributed = getattr(torch, "distributed", None)
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return 0
    return distributed.get_rank()


def _unwrap(torch, model):
    """The module whose parameters are the model's own: DDP and DataParallel wrap it in `.module`."""
    wrappers = [torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel]
    while isinstance(model, tuple(wrappers)):
        model = model.module
    return model


def _sharding(torch, model):
    """A sentence saying how `model`'s parameters are sharded, or None when they are whole."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel  # pylint: disable=import-outside-toplevel
    except ImportError:  # a build without torch.distributed
        FullyShardedDataParallel = ()
    try:
        from torch.distributed.tensor import DTensor  # pylint: disable=import-outside-toplevel
    except ImportError:
        DTensor = ()
    for module in model.modules():
        if FullyShardedDataParallel and isinstance(module, FullyShardedDataParallel):
            return "the model is wrapped in FullyShardedDataParallel (its parameters are flattened and sharded)"
    for name, parameter in model.named_parameters():
        if DTensor and isinstance(parameter, DTensor):
            return "parameter %r is a DTensor sharded over %s (fully_shard, or tensor parallelism)" % (
                name,
                parameter.placements,
            )
        if type(parameter).__name__ == "FlatParameter":
            return "parameter %r is an FSDP FlatParameter" % name
    return None


def _sharded_error(reason):
    return ShardedParametersError(
        "WeightDiffLogger cannot summarize sharded parameters: %s. Each rank holds only part of "
        "each tensor, and a summary of a shard (its histogram, norm, distance) would be wrong "
        "numbers for the whole tensor. Log an unsharded copy instead: gather a full state dict "
        "on rank 0 (torch.distributed.checkpoint.state_dict.get_model_state_dict with "
        "StateDictOptions(full_state_dict=True, cpu_offload=True)) and summarize it with "
        "tb_weightdiff.summary.weights_pb, or log the model before it is sharded." % reason
    )


class WeightDiffLogger:
    """Logs every parameter of a PyTorch model before training and whenever `log(step)` is called.

    For each parameter of `model.named_parameters()` the logger writes a
    `tb_weightdiff` summary (histogram, quantiles, moments, health counts and,
    with `reference=True`, the distance from the weights before training)
    under the parameter's name as its tag: `layer2.0.conv1.weight` is the
    variable `weight` of the layer `layer2.0.conv1`. With each step it records
    whether the parameter is trainable (`requires_grad`) and the class of the
    module that owns it (`Conv2d`, `Embedding`, `LayerNorm`: the verdicts
    compare like with like). Step 0 is logged when the logger is created: the
    weights before training. Parameters shared by several modules (tied
    embeddings) are logged once, under their first name.

    Events go to `log_dir` itself (the run directory, as with
    `SummaryWriter(log_dir)`), in files ending in `.tb_weightdiff`. Pass the
    `SummaryWriter` of your own scalars (PyTorch's or tensorboardX's) instead
    of a directory, and the weights land in the same run; the logger then
    writes its own event file into that writer's directory and never closes
    your writer. If you also keep `writer.add_histogram(name, p, epoch)` in
    that run, give those tags a suffix (`name + "/histogram"`, as Keras does):
    in one run a tag belongs to one plugin, and with the same bare names the
    two writers' events would land in one series.

    What it costs: on the host path each `log()` copies one tensor at a time
    to the host (one device-to-host copy per tensor at most; bfloat16 and
    float16 are widened to float32 on their device first) and sorts that copy
    in place. With `reference=True` (the default) the logger also keeps a host
    copy of every logged tensor as it was at step 0: as many bytes as those
    tensors hold as float32 (2.4 MB for a 612k-parameter CNN, 400 MB for 100M
    parameters). At its peak it holds the reference plus the largest tensor,
    twice for a bfloat16 or float16 tensor on the CPU. Pass `reference=False`
    to keep no copy; the tab then judges movement from histograms, quantiles
    and fingerprints alone.

    The device path (`device_summary`): for a tensor on an accelerator the
    summary is computed there with PyTorch ops
    (`tb_weightdiff.torch_summary.device_statistics`: one sort, binary
    searches, float64 sums) and only the summary (about 170 float64 values)
    is copied to the host; its numbers are the host path's (exactly for
    counts, extremes, quantiles and histogram; float64 sums to within
    ~1e-12). Its fingerprint is `torch_summary.device_fingerprint`, not
    CRC-32, and one logger keeps one fingerprint kind for all its steps,
    chosen when it is created: with `device_summary="auto"` the device kind
    when any logged tensor is then off the CPU (CPU tensors then take the
    numpy path with that fingerprint computed by PyTorch on the CPU), else
    CRC-32 (a model moved to a GPU after the logger was created is then
    summarized on the host, and an info message says so). Not tested on a
    GPU (none here): the tests run the same ops on CPU tensors. On the CPU
    the numpy path is 8-17x faster (PyTorch's CPU sort is the cost), hence
    "auto".

    Distributed training: under DistributedDataParallel (or DataParallel) the
    logger unwraps `model.module`; when a default process group is
    initialized only rank 0 writes, and every other rank's logger does
    nothing (no copies, no files). Sharded parameters (FSDP, `fully_shard`,
    DTensor) raise `ShardedParametersError` when the logger is created or
    logs: no rank holds a whole tensor, and a summary of a shard would be
    wrong numbers. The error says how to log a gathered copy instead.

    A failure while writing (a full disk, say) never stops training: it is
    logged as a warning once and logging stops.

    Args:
      log_dir: the run directory (str or path), or a `SummaryWriter` whose
        run the weights should join (anything with `get_logdir()` or
        `log_dir`/`logdir`).
      model: a `torch.nn.Module` (wrapped in DDP or DataParallel, or not).
      reference: keep the weights of step 0 on the host and record each
        tensor's distance from them.
      buffers: also log the floating-point buffers (BatchNorm's
        `running_mean` and `running_var`), recorded as not trainable.
      optimizer: optional `torch.optim.Optimizer`; its update count (the
        number of `optimizer.step()` calls since the logger was created,
        plus the step count a resumed optimizer's state already holds) and
        its largest learning rate are recorded with every step (two
        TensorBoard scalars), so the verdicts can measure movement per
        update.
      buckets: histogram buckets per tensor (default 30, as TensorBoard).
      device_summary: `"auto"` (default): summarize tensors off the CPU on
        their device, CPU tensors with numpy; `True`: every tensor with
        PyTorch ops where it lives (on the CPU too); `False`: every tensor
        on the host with numpy (CRC-32 fingerprints, as before).
      device_reference: where the step-0 reference of a tensor summarized on
        an accelerator is kept. `"auto"` (default): on that device while the
        references there take at most 10 % of its total memory and half of
        its free memory (`torch.cuda.mem_get_info` when the logger is
        created), the rest on the host; `True`: all on the device; `False`:
        all on the host; an int: a budget in bytes per device. A host
        reference is moved to the device one block (`torch_summary.CHUNK`
        elements) at a time when it is needed. A reference on the device is
        kept in the tensor's own dtype; on the host as float32. CPU tensors
        always have a host reference (there the device is the host).

    Raises:
      ModuleNotFoundError: PyTorch is not installed.
      TypeError: `model` is not a `torch.nn.Module`.
      ShardedParametersError: the model's parameters are sharded.
      ValueError: a bad `buckets`, `device_summary` or `device_reference`.
    """

    def __init__(self, log_dir, model, reference=True, buffers=False, optimizer=None, buckets=None,
                 device_summary="auto", device_reference="auto"):
        torch = _import_torch()
        from tb_weightdiff import summary as summary_lib  # pylint: disable=import-outside-toplevel

        if not isinstance(model, torch.nn.Module):
            raise TypeError("model must be a torch.nn.Module, got %s" % type(model).__name__)
        self._torch = torch
        self.model = _unwrap(torch, model)
        self.directory = _directory_of(log_dir)
        self.keep_reference = bool(reference)
        self.buffers = bool(buffers)
        self.optimizer = optimizer
        self.buckets = None if buckets is None else summary_lib.check_buckets(buckets)
        self.device_summary = _check_choice(device_summary, "device_summary")
        self.device_reference = _check_choice(device_reference, "device_reference", budget=True)
        self.fingerprint_kind = None  # "crc32" or "device", chosen below
        self._noted_host_fallback = False
        self.active = _rank(torch) == 0
        self.last_step = None
        self._writer = None
        self._reference = {}
        self._failed = False
        self._closed = False
        self._updates = 0
        self._updates_before = 0
        self._hook = None
        self._skipped = set()
        self._kept_batches = None  # (data, its first batches, whether it gave as many as asked)
        self._check_sharding()
        if not self.active:
            return
        if optimizer is not None:
            self._updates_before = _resumed_updates(optimizer)
            self._hook = optimizer.register_step_post_hook(self._count_update)
        self.fingerprint_kind = self._choose_fingerprint_kind()
        if self.keep_reference:
            self._guard(self._snapshot_reference)
        self._guard(self._log, 0)

    # -- public ---------------------------------------------------------

    def log(self, step=None):
        """Logs every tensor at `step` (default: the last logged step + 1).

        Call it after the epoch (or the steps) you want a point for: step `n`
        conventionally holds the weights after `n` epochs, step 0 those before
        training. Does nothing on a rank other than 0, after `close()`, or
        once a write has failed.

        Raises:
          ShardedParametersError: the model's parameters have been sharded
            since the logger was created.
          ValueError: `step` is not a non-negative int.
        """
        if step is None:
            step = 0 if self.last_step is None else self.last_step + 1
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError("step must be a non-negative int, got %r" % (step,))
        if self._closed or not self.active:
            return
        self._check_sharding()
        self._guard(self._log, step)

    def reset_check(self, data, loss_fn, metrics=None, max_batches=reset_lib.DEFAULT_BATCHES, step=None,
                    groups=None, forward=None):
        """Which layers mattered: puts each layer back to its weights of step 0, measures the loss.

        For each layer in turn (a module's own parameters; with
        `buffers=True` its floating-point buffers, BatchNorm's running
        statistics, too) the logger copies the step-0 values in, evaluates
        the model on the first `max_batches` batches of `data` in eval mode
        under `torch.no_grad()`, and copies the values it had back, bit for
        bit (on leaving, even when evaluating raised). It also evaluates the
        model as it is and with every layer reset (the model before
        training). The results are written as reset summaries at `step`;
        the tab and `tb-weightdiff report` show, per layer, how much of
        what training gained its reset undoes. The modules' train/eval
        modes are restored afterwards, so training can go on.

        The batches are taken from `data` at the first call and kept (where
        they are), so every evaluation of every check sees the same
        examples, even from a shuffling `DataLoader`. Cost: 2 + (layers that
        moved) evaluations of `max_batches` batches; a layer still at its
        step-0 weights is not evaluated again (its increase is 0).

        Args:
          data: an iterable of batches (a `DataLoader`): `(inputs, targets)`,
            where `inputs` is a tensor (`model(inputs)`), a tuple
            (`model(*inputs)`) or a dict (`model(**inputs)`); or anything,
            with `forward`.
          loss_fn: `loss_fn(outputs, targets)`, a scalar mean over the batch
            (`torch.nn.CrossEntropyLoss()`); batches are weighted by their size.
          metrics: optional `{name: fn(outputs, targets) -> scalar}` (an
            accuracy), averaged the same way.
          max_batches: batches per evaluation (default 20).
          step: the step to record it at (default: the last logged step).
          groups: layers to reset together: `{block name: regular
            expression}` matched against the parameter names
            (`{"layer1": r"^layer1\\."}` for a ResNet stage), or a callable
            `name -> block name or None`; default each module alone.
          forward: optional `forward(model, batch) -> (outputs, targets)`
            for batches of another shape (a Hugging Face dict, say).

        Returns:
          `{layer: {"loss", "loss_reset", "loss_initial", "increase"}}`, or
          None on a rank other than 0 or after `close()`.

        Raises:
          ValueError: the logger keeps no reference (`reference=False`), no
            batches, or a bad argument. Errors of the model or `loss_fn` propagate
            (the weights are restored first).
        """
        if not self.keep_reference:
            raise ValueError("reset_check needs reference=True: it puts back the weights of step 0")
        max_batches = reset_lib.check_batches(max_batches, "max_batches")
        blocks = reset_lib.check_blocks(groups)
        if self._closed or not self.active:
            return None
        if step is None:
            step = self.last_step or 0
        torch = self._torch
        batches = self._reset_batches(data, max_batches)
        tensors = {name: tensor for name, tensor, _, _ in self._tensors() if name in self._reference}
        reset_groups = reset_lib.make_groups(list(tensors), blocks)
        counted = []  # examples per evaluation: the same batches every time

        def evaluate():
            found, examples = _evaluate(self.model, batches, loss_fn, metrics or {}, forward)
            counted.append(examples)
            return found

        def initial(name):
            tensor = tensors[name]
            value = self._reference[name]
            if not isinstance(value, torch.Tensor):
                value = torch.from_numpy(value)
            return value.reshape(tensor.shape).to(device=tensor.device, dtype=tensor.dtype)

        def swap(chosen):
            return reset_lib.swapped(
                [(name, tensors[name]) for group in chosen for name in group.tags],
                lambda tensor: tensor.detach().clone(),
                lambda tensor, value: tensor.data.copy_(value),
                initial,
            )

        def unchanged(group):
            # Compared where the tensor lives: no host copy. A tensor holding NaN never
            # equals its reference here, and is evaluated: resetting it is a real change.
            return all(
                tensors[name].numel() == _numel(self._reference[name]) and torch.equal(tensors[name], initial(name))
                for name in group.tags
            )

        modes = [(module, module.training) for module in self.model.modules()]
        started = time.perf_counter()
        try:
            self.model.eval()
            with torch.no_grad():
                results = reset_lib.run_check(reset_groups, evaluate, swap, unchanged)
        finally:
            for module, training in modes:
                module.training = training
        self._guard(self._write_resets, step, results, len(batches), counted[0])
        logger.info("WeightDiffLogger: reset check at step %d: %d layers, %d batches, %.2f s",
                    step, len(reset_groups), len(batches), time.perf_counter() - started)
        return reset_lib.summarize(results)

    def _write_resets(self, step, results, batches, examples):
        writer = self._get_writer()
        reset_lib.write(writer, step, results, batches, examples)
        writer.flush()

    def _reset_batches(self, data, max_batches):
        """The first `max_batches` batches of `data`, taken once per `data` and kept."""
        kept = self._kept_batches
        if kept is None or kept[0] is not data or len(kept[1]) < max_batches and kept[2]:
            batches = list(itertools.islice(iter(data), max_batches))
            if not batches:
                raise ValueError("reset_check: data gave no batches")
            kept = (data, batches, len(batches) == max_batches)
            self._kept_batches = kept
        return kept[1][:max_batches]

    def flush(self):
        """Writes what is buffered to disk."""
        if self._writer is not None:
            self._guard(self._writer.flush)

    def close(self):
        """Flushes and closes the logger's own event file (never a `SummaryWriter` it was given)."""
        if self._closed:
            return
        self._closed = True
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as error:  # pylint: disable=broad-except
                logger.warning("WeightDiffLogger could not close its event file: %s: %s", type(error).__name__, error)
        self._reference = {}
        self._kept_batches = None

    def reference_nbytes(self):
        """Host bytes held by the reference snapshot (0 with `reference=False`)."""
        return sum(_nbytes(value) for value in self._reference.values() if not _on_accelerator(value))

    def device_reference_nbytes(self):
        """Accelerator bytes held by the reference snapshot (`device_reference`); 0 on a CPU-only model."""
        return sum(_nbytes(value) for value in self._reference.values() if _on_accelerator(value))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    # -- internals ------------------------------------------------------

    def _check_sharding(self):
        reason = _sharding(self._torch, self.model)
        if reason is not None:
            raise _sharded_error(reason)

    def _count_update(self, *unused):
        self._updates += 1

    def _guard(self, function, *args):
        if not self._failed:
            self._failed = not events.guarded(logger, "WeightDiffLogger", function, *args)

    def _tensors(self):
        """`(name, tensor, trainable, layer class)` for every tensor to log, in model order."""
        owners = {}
        for module_name, module in self.model.named_modules():
            prefix = module_name + "." if module_name else ""
            for name, _ in module.named_parameters(recurse=False):
                owners.setdefault(prefix + name, type(module).__name__)
            for name, _ in module.named_buffers(recurse=False):
                owners.setdefault(prefix + name, type(module).__name__)
        for name, parameter in self.model.named_parameters():
            yield name, parameter, bool(parameter.requires_grad), owners.get(name)
        if self.buffers:
            for name, buffer in self.model.named_buffers():
                if buffer.is_floating_point():
                    yield name, buffer, False, owners.get(name)

    def _loggable(self, name, tensor):
        """Whether `tensor` has a weight summary (warns once for one that has none)."""
        if tensor.device.type == "meta":
            raise ValueError("%s is on the meta device: it holds no values yet (materialize the model first)" % name)
        if not (tensor.is_floating_point() or tensor.dtype in _plain_dtypes(self._torch)):
            if name not in self._skipped:  # complex, quantized: no weight summary
                self._skipped.add(name)
                logger.warning("WeightDiffLogger skips %s: dtype %s has no weight summary", name, tensor.dtype)
            return False
        return True

    def _host_copy(self, name, tensor):
        """A flat host numpy copy of `tensor` that this logger owns (it gets sorted in place), or None."""
        torch = self._torch
        tensor = tensor.detach()
        if not self._loggable(name, tensor):
            return None
        fresh = False
        if tensor.is_floating_point() and (tensor.element_size() < 4 or tensor.dtype == torch.bfloat16):
            tensor = tensor.float()  # numpy has no bfloat16 or float8: widened on the tensor's own device
            fresh = True
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()  # the one device-to-host copy
            fresh = True
        value = tensor.numpy()
        if not fresh or not value.flags.c_contiguous:
            # A CPU parameter's numpy() is the parameter itself; a strided one
            # (channels_last) is copied in its logical order, as a reference is.
            value = np.array(value, order="C")
        return value.reshape(-1)

    def _choose_fingerprint_kind(self):
        """One fingerprint kind for every step of this logger (see the class docstring)."""
        if self.device_summary is False:
            return "crc32"
        if self.device_summary is True:
            return "device"
        off_cpu = any(tensor.device.type not in ("cpu", "meta") for _, tensor, _, _ in self._tensors())
        return "device" if off_cpu else "crc32"

    def _on_device_path(self, tensor):
        """Whether `tensor` is summarized with PyTorch ops where it lives (else numpy on the host)."""
        if self.fingerprint_kind != "device":
            return False
        return self.device_summary is True or tensor.device.type != "cpu"

    def _device_budgets(self):
        """`{device: bytes}`, the reference bytes each accelerator may hold (`device_reference`)."""
        torch = self._torch
        budgets = {}
        for _, tensor, _, _ in self._tensors():
            device = tensor.device
            if device.type in ("cpu", "meta") or device in budgets:
                continue
            if self.device_reference is True:
                budgets[device] = float("inf")
            elif self.device_reference is False:
                budgets[device] = 0
            elif self.device_reference != "auto":
                budgets[device] = int(self.device_reference)
            else:
                budgets[device] = _auto_budget(torch, device)
        return budgets

    def _snapshot_reference(self):
        reference = {}
        budgets = self._device_budgets()
        for name, tensor, _, _ in self._tensors():
            tensor = tensor.detach()
            if tensor.device.type != "cpu" and self._on_device_path(tensor) and self._loggable(name, tensor):
                nbytes = tensor.numel() * tensor.element_size()
                if nbytes <= budgets.get(tensor.device, 0):
                    budgets[tensor.device] -= nbytes
                    # The tensor's own dtype, contiguous, in logical order: one device copy.
                    reference[name] = tensor.clone(memory_format=self._torch.contiguous_format).reshape(-1)
                    continue
            value = self._host_copy(name, tensor)
            if value is not None:
                reference[name] = value
        self._reference = reference

    def _get_writer(self):
        if self._writer is None:
            self._writer = events.create_writer(self.directory)
        return self._writer

    def _optimizer_state(self):
        if self.optimizer is None:
            return None, None
        rates = []
        for group in getattr(self.optimizer, "param_groups", ()):
            try:
                rates.append(float(group["lr"]))
            except (KeyError, TypeError, ValueError, RuntimeError):
                continue
        return self._updates_before + self._updates, max(rates) if rates else None

    def _log(self, step):
        writer = self._get_writer()
        with self._torch.no_grad():
            for name, tensor, trainable, layer_type in self._tensors():
                tensor = tensor.detach()
                reference = self._reference.get(name)
                if reference is not None and _numel(reference) != tensor.numel():
                    reference = None  # the tensor was replaced by one of another shape
                if self._on_device_path(tensor):
                    if not self._loggable(name, tensor):
                        continue
                    from tb_weightdiff import torch_summary  # pylint: disable=import-outside-toplevel

                    values = torch_summary.device_statistics(
                        tensor, reference=reference, buckets=self.buckets, trainable=trainable
                    )
                    events.write_statistics(writer, name, values, step, layer_type=layer_type)
                    continue
                self._note_host_fallback(tensor)
                value = self._host_copy(name, tensor)
                if value is None:
                    continue
                if self.fingerprint_kind == "device":
                    # A CPU tensor under device fingerprints: numpy's statistics, PyTorch's fingerprint.
                    from tb_weightdiff import summary as summary_lib  # pylint: disable=import-outside-toplevel
                    from tb_weightdiff import torch_summary  # pylint: disable=import-outside-toplevel

                    fingerprint = torch_summary.device_fingerprint(tensor)
                    values = summary_lib.weight_statistics(
                        value, reference=reference, buckets=self.buckets, trainable=trainable, overwrite_input=True
                    )
                    values[_FINGERPRINT] = fingerprint
                    events.write_statistics(writer, name, values, step, layer_type=layer_type)
                    continue
                events.write_weights(
                    writer,
                    name,
                    value,
                    step,
                    reference=reference,
                    buckets=self.buckets,
                    trainable=trainable,
                    overwrite_input=True,
                    layer_type=layer_type,
                )
        updates, learning_rate = self._optimizer_state()
        events.write_optimizer(writer, step, updates=updates, learning_rate=learning_rate)
        writer.flush()
        self.last_step = step


    def _note_host_fallback(self, tensor):
        if (self.device_summary == "auto" and self.fingerprint_kind == "crc32" and tensor.device.type != "cpu"
                and not self._noted_host_fallback):
            self._noted_host_fallback = True
            logger.info(
                "WeightDiffLogger: the model was on the CPU when the logger was created, so its fingerprints "
                "are CRC-32 and tensors on %s are summarized on the host; create the logger after moving the "
                "model (or pass device_summary=True) to summarize them on the device", tensor.device,
            )


def _check_choice(value, what, budget=False):
    """`"auto"`, True or False (or, with `budget`, an int of bytes >= 0)."""
    if value == "auto" and isinstance(value, str) or value is True or value is False:
        return value
    if budget and isinstance(value, int) and value >= 0:
        return int(value)
    raise ValueError("%s must be \"auto\", True or False%s, got %r"
                     % (what, " or a budget in bytes (int >= 0)" if budget else "", value))


def _auto_budget(torch, device):
    """Bytes of references `device_reference="auto"` keeps on `device`: 0 where its memory is unknown."""
    backend = getattr(torch, device.type, None)
    mem_get_info = getattr(backend, "mem_get_info", None)
    if mem_get_info is None:
        return 0
    try:
        free, total = mem_get_info(device)
    except Exception:  # pylint: disable=broad-except
        return 0
    return int(min(_DEVICE_REFERENCE_TOTAL_SHARE * total, _DEVICE_REFERENCE_FREE_SHARE * free))


def _numel(value):
    """Elements of a reference: a host numpy array or a tensor."""
    return value.numel() if hasattr(value, "numel") and callable(value.numel) else value.size


def _nbytes(value):
    if isinstance(value, np.ndarray):
        return value.nbytes
    return value.numel() * value.element_size()


def _on_accelerator(value):
    return not isinstance(value, np.ndarray) and value.device.type != "cpu"


def _call(model, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _outputs_and_targets(model, batch, forward):
    if forward is not None:
        return forward(model, batch)
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            "reset_check: a batch must be (inputs, targets); pass forward=(model, batch) -> "
            "(outputs, targets) for batches of another shape"
        )
    return _call(model, batch[0]), batch[1]


def _size(targets):
    """Examples in a batch: its targets' first dimension (their length, or 1 for a scalar target)."""
    if hasattr(targets, "shape") and len(targets.shape):
        return int(targets.shape[0])
    try:
        return len(targets)
    except TypeError:
        return 1


def _evaluate(model, batches, loss_fn, metrics, forward):
    """`({"loss": mean, metric: mean}, examples)` over `batches`, each batch weighted by its size."""
    totals = {"loss": 0.0}
    totals.update({name: 0.0 for name in metrics})
    count = 0
    for batch in batches:
        outputs, targets = _outputs_and_targets(model, batch, forward)
        size = _size(targets)
        totals["loss"] += float(loss_fn(outputs, targets)) * size
        for name, function in metrics.items():
            totals[name] += float(function(outputs, targets)) * size
        count += size
    return {name: total / count for name, total in totals.items()}, count


def _plain_dtypes(torch):
    """The non-floating dtypes a weight summary takes: bool and the integers."""
    return (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _directory_of(log_dir):
    """The run directory of `log_dir`: a path, or a `SummaryWriter` (PyTorch's or tensorboardX's)."""
    if isinstance(log_dir, (str, bytes, os.PathLike)):
        return os.fsdecode(log_dir)
    for attribute in ("get_logdir", "log_dir", "logdir"):
        found = getattr(log_dir, attribute, None)
        if callable(found):
            found = found()
        if isinstance(found, (str, os.PathLike)):
            return os.fspath(found)
    raise TypeError(
        "log_dir must be a directory or a SummaryWriter (with get_logdir()), got %s" % type(log_dir).__name__
    )


def _resumed_updates(optimizer):
    """The step count a resumed optimizer's state already holds (Adam's `step`), else 0."""
    most = 0
    for state in getattr(optimizer, "state", {}).values():
        step = state.get("step") if isinstance(state, dict) else None
        if step is None:
            continue
        try:
            most = max(most, int(float(step)))
        except (TypeError, ValueError, RuntimeError):
            continue
    return most
