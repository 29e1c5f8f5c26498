"""`WeightDiffCallback`: records every weight tensor of a Keras model across training.

Importing this module imports Keras (and so TensorFlow, or whichever Keras
backend is configured); where Keras is missing the import raises
`ModuleNotFoundError` naming the install command. The plugin side never
imports it: `import tb_weightdiff` stays light, and `tb_weightdiff.keras`
is imported the first time it is touched.

The callback is registered for Keras serialization as
`"tb_weightdiff>WeightDiffCallback"`; `get_config()` holds its constructor
arguments. What it owns here is the Keras side: which variables, their tags,
one host copy of each per step, when to log, and never failing a `fit`. The
rest it shares with every training-side logger: it writes through
`tb_weightdiff.events` (TensorBoard's own event writer and the numpy-only
statistics behind `tb_weightdiff.summary.weights_pb`, so it adds no
TensorFlow ops to the training graph and works with every Keras 3 backend),
and only the process `tb_weightdiff.distribute.is_chief` picks writes.
"""

import logging
import os
import time

import numpy as np

from tb_weightdiff import distribute
from tb_weightdiff import events
from tb_weightdiff import reset as reset_lib
from tb_weightdiff import summary as summary_lib

try:
    import keras
except ImportError as error:
    raise ModuleNotFoundError(
        "tb_weightdiff.keras.WeightDiffCallback needs Keras, which is not "
        "installed. Please install it with `pip install 'tb-weightdiff[tf]'` "
        "(TensorFlow brings Keras 3).",
        name="keras",
    ) from error

logger = logging.getLogger(__name__)

__all__ = ["WeightDiffCallback"]

# Backends whose `keras.ops.convert_to_numpy` returns a new array (`np.array(x)`)
# for a variable; for any other the callback copies the value itself.
_COPYING_BACKENDS = ("tensorflow", "jax", "torch", "numpy")


@keras.saving.register_keras_serializable(package="tb_weightdiff")
class WeightDiffCallback(keras.callbacks.Callback):
    """Logs every weight tensor of the model before training and every `freq` epochs.

    For each weight variable of each layer (nested models included) the
    callback writes a `tb_weightdiff` summary (histogram, quantiles,
    moments, health counts, and the distance from the weights before
    training) under the tag `<variable path>`, e.g.
    `sequential/conv2d/kernel`, the same path Keras's own `TensorBoard`
    callback uses (it adds `/histogram`). Step 0 holds the weights before
    training (logged in `on_train_begin`); step `n` the weights after `n`
    epochs. Note that Keras's `TensorBoard` callback logs its histograms
    at step `n - 1` after `n` epochs. A model that is not built when
    `fit` starts (no `keras.Input`) gets its weights only inside the
    first train step, which also updates them: step 0 then holds the
    weights after the first batch, and a warning says so. Whether each
    variable is trainable is recorded with every step, and so are each
    variable's layer class and the optimizer's update count and learning
    rate (two TensorBoard scalars): the verdicts use them to compare like
    with like and to measure movement per update.

    Events go to `<log_dir>/train`, beside those of
    `keras.callbacks.TensorBoard(log_dir)`, so both appear as one run.

    Memory: with `reference=True` (the default) the callback keeps a host
    copy of every weight as it was before training, to measure how far each
    moved: as many bytes as the model's weights (4 bytes per float32
    parameter: 2.4 MB for a 612k-parameter CNN, 400 MB for 100M
    parameters). Each logging step also copies one variable at a time to
    the host and sorts that copy in place, so at its peak the callback
    holds the reference plus the largest variable. Pass `reference=False`
    to keep no copy; the tab then judges movement from histograms,
    quantiles and fingerprints alone.

    A failure while logging (a full disk, say) never stops training: it is
    logged as a warning once and logging stops. Under a multi-worker
    `tf.distribute` strategy only the chief writes, and the reset check does
    not run (a warning says so). After a reset check, `callback.last_reset`
    holds `{layer: {"loss", "loss_reset", "loss_initial", "increase"}}`.

    The callback is registered with Keras as
    `"tb_weightdiff>WeightDiffCallback"`; `get_config()` returns its
    constructor arguments and `from_config(config)` rebuilds it.

    Args:
      log_dir: the run directory, as given to `keras.callbacks.TensorBoard`;
        events go to its `train` subdirectory.
      freq: log every `freq` epochs (>= 1). The final weights are always
        logged when training ends, even if `epochs` is not a multiple.
      reference: keep the weights from before training on the host and
        record each variable's distance from them.
      buckets: histogram buckets per tensor (default 30, as TensorBoard).
      subdir: the subdirectory of `log_dir` to write to (default "train").
      reset_check: data to run the reset check on (`(x, y)` or `(x, y,
        sample_weight)` arrays, a `tf.data.Dataset`, a `keras.utils.PyDataset`,
        or any iterable of such batches), or None for no check. When training
        ends (and every `reset_every` epochs), each layer in turn is put back
        to its weights from before training (its non-trainable state, such
        as BatchNorm's moving statistics, too), the model is evaluated on
        these batches, and the layer is restored bit for bit; the loss (and
        the compiled metrics) with the layer reset, as trained and with
        every layer reset are recorded, and the tab shows which layers
        mattered. Needs `reference=True`. The first `reset_batches` batches
        are taken once and kept (on the host), so every evaluation of every
        check sees the same examples. Cost: 2 + (layers that moved)
        evaluations of `reset_batches` batches per check; a layer still at
        its initial weights (frozen) is not evaluated again, its increase is
        0. Not part of `get_config()` (data is not configuration).
      reset_every: also check every `reset_every` epochs (None: only at the
        end of training).
      reset_batches: batches per evaluation (default 20).
      reset_batch_size: the batch size for array data (default 32); a
        dataset's own batches are kept as they are.
      reset_groups: layers to reset together, as `{block name: regular
        expression}` matched against the variables' paths (e.g.
        `{"block1": r"/block1_"}` for a ResNet stage or a transformer
        block), or a callable `path -> block name or None`; default: each
        layer alone.

    Example:

    ```python
    from tb_weightdiff.keras import WeightDiffCallback

    model.fit(
        x_train, y_train, epochs=10,
        callbacks=[
            keras.callbacks.TensorBoard("logs/run1", histogram_freq=1),
            WeightDiffCallback("logs/run1"),
        ],
    )
    # then: tensorboard --logdir logs  (open the "Weight Diff" tab)
    ```
    """

    def __init__(
        self, log_dir="logs", freq=1, reference=True, buckets=None, subdir="train",
        reset_check=None, reset_every=None, reset_batches=reset_lib.DEFAULT_BATCHES, reset_batch_size=32,
        reset_groups=None,
    ):
        super().__init__()
        if isinstance(freq, bool) or not isinstance(freq, int) or freq < 1:
            raise ValueError("freq must be an int >= 1, got %r" % (freq,))
        self.log_dir = os.fspath(log_dir)
        self.freq = freq
        self.keep_reference = bool(reference)
        # Checked here, where it was given, not at the first epoch's end; a
        # plain int (not numpy's) keeps `get_config()` JSON-serializable.
        self.buckets = None if buckets is None else summary_lib.check_buckets(buckets)
        self.subdir = subdir
        if reset_check is not None and not self.keep_reference:
            raise ValueError("reset_check needs reference=True: the check puts back the weights from before training")
        self.reset_check = reset_check
        self.reset_every = reset_lib.check_every(reset_every)
        self.reset_batches = reset_lib.check_batches(reset_batches)
        self.reset_batch_size = reset_lib.check_batches(reset_batch_size, "reset_batch_size")
        self.reset_groups = reset_groups
        self._blocks = reset_lib.check_blocks(reset_groups)
        self._reset_data = None
        self._reset_failed = False
        self._last_checked_step = None
        self.last_reset = None
        self._writer = None
        self._reference = {}
        self._baseline_logged = False
        self._baseline_pending = False
        self._last_logged_step = None
        self._last_epoch = None
        self._failed = False
        self._chief = None

    def get_config(self):
        """The constructor arguments, for `from_config` and Keras serialization."""
        return {
            "log_dir": self.log_dir,
            "freq": self.freq,
            "reference": self.keep_reference,
            "buckets": self.buckets,
            "subdir": self.subdir,
            "reset_every": self.reset_every,
            "reset_batches": self.reset_batches,
            "reset_batch_size": self.reset_batch_size,
            "reset_groups": self.reset_groups if isinstance(self.reset_groups, dict) else None,
        }

    @classmethod
    def from_config(cls, config):
        """A new callback from `get_config()`'s dict (no state is carried over)."""
        return cls(**config)

    # -- Keras hooks ----------------------------------------------------

    def on_train_begin(self, logs=None):
        # A second `fit` on the same callback continues the same history:
        # the reference and step 0 stay those of the first training.
        if self._baseline_logged:
            return
        self._baseline_logged = True
        if not self._is_chief():
            return
        if not self.model.weights:
            # A model without an Input is built inside its first train
            # step, which also applies the first update: the weights from
            # before training never exist where a callback can see them.
            self._baseline_pending = True
            logger.warning(
                "WeightDiffCallback: the model is not built before fit(), so "
                "step 0 holds the weights after the first batch, not before "
                "training. Build it first (keras.Input(...) or model.build(...)) "
                "to record the initial weights."
            )
            return
        self._record_baseline()

    def on_train_batch_end(self, batch, logs=None):
        if self._baseline_pending:
            self._baseline_pending = False
            self._record_baseline()

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if (epoch + 1) % self.freq == 0:
            self._guard(self._log, epoch + 1)
        if self.reset_every and (epoch + 1) % self.reset_every == 0:
            self._check_resets(epoch + 1)

    def on_train_end(self, logs=None):
        if self._last_epoch is not None and self._last_logged_step != self._last_epoch + 1:
            self._guard(self._log, self._last_epoch + 1)
        if self._last_epoch is not None and self._last_checked_step != self._last_epoch + 1:
            self._check_resets(self._last_epoch + 1)
        if self._writer is not None:
            self._guard(self._writer.flush)

    # -- internals ------------------------------------------------------

    def _record_baseline(self):
        if self.keep_reference:
            self._guard(self._snapshot_reference)
        self._guard(self._log, 0)

    def _is_chief(self):
        if self._chief is None:
            self._chief = distribute.is_chief(distribute.strategy_of(self.model))
        return self._chief

    def _guard(self, function, *args):
        if not self._failed and self._is_chief():
            self._failed = not events.guarded(logger, "WeightDiffCallback", function, *args)

    def _variables(self):
        """Unique weight variables, in model order, with their trainability."""
        trainable = {id(v) for v in self.model.trainable_weights}
        seen = set()
        for variable in self.model.weights:
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            yield variable, id(variable) in trainable

    def _layer_types(self):
        """`{id(variable): class name of the innermost layer that owns it}`."""
        found = {}
        pending = [self.model]
        while pending:
            layer = pending.pop()
            for variable in getattr(layer, "weights", ()):
                found[id(variable)] = type(layer).__name__  # inner layers come later and win
            pending.extend(reversed(getattr(layer, "layers", None) or getattr(layer, "_layers", None) or []))
        return found

    def _optimizer_state(self):
        """`(update count, learning rate)` of the model's optimizer, None where unknown."""
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None, None
        values = []
        for name in ("iterations", "learning_rate"):
            try:
                value = float(np.asarray(keras.ops.convert_to_numpy(getattr(optimizer, name))))
            except Exception:  # pylint: disable=broad-except
                value = None  # an optimizer without it, or a schedule it cannot evaluate
            values.append(value)
        return tuple(values)

    @staticmethod
    def _tag(variable):
        path = getattr(variable, "path", None) or variable.name
        return path.replace(":", "_")

    @staticmethod
    def _host_value(variable):
        """A host copy of `variable` that this callback owns (it gets sorted in place)."""
        backend = keras.backend.backend()
        value = None
        if backend == "tensorflow":
            # One copy: `convert_to_numpy` makes two (TensorFlow's own
            # `numpy()`, then `np.array`), which doubles the peak memory
            # and the time of the largest tensor.
            read = getattr(getattr(variable, "value", None), "numpy", None)
            try:
                value = np.asarray(read()) if read is not None else None
            except Exception:  # pylint: disable=broad-except
                value = None  # e.g. a distributed variable: the generic way below
        if value is None:
            value = np.asarray(keras.ops.convert_to_numpy(variable))
        fresh = backend in _COPYING_BACKENDS
        if not (fresh and value.flags.owndata and value.flags.writeable):
            value = value.copy()
        return value

    def _snapshot_reference(self):
        self._reference = {self._tag(v): self._host_value(v) for v, _ in self._variables()}

    def _get_writer(self):
        if self._writer is None:
            self._writer = events.create_writer(os.path.join(self.log_dir, self.subdir))
        return self._writer

    def _log(self, step):
        writer = self._get_writer()
        layer_types = self._layer_types()
        for variable, trainable in self._variables():
            tag = self._tag(variable)
            value = self._host_value(variable)
            reference = self._reference.get(tag)
            if reference is not None and reference.size != value.size:
                reference = None  # the variable was rebuilt with a new shape
            # `value` is this callback's own fresh host copy: sorting it in
            # place saves a second copy of the largest tensor.
            events.write_weights(
                writer,
                tag,
                value,
                step,
                reference=reference,
                buckets=self.buckets,
                trainable=trainable,
                overwrite_input=True,
                layer_type=layer_types.get(id(variable)),
            )
        updates, learning_rate = self._optimizer_state()
        events.write_optimizer(writer, step, updates=updates, learning_rate=learning_rate)
        writer.flush()
        self._last_logged_step = step

    # -- the reset check -------------------------------------------------

    def _check_resets(self, step):
        """Runs the reset check at `step`. Every process evaluates (under a multi-worker
        strategy `evaluate` is collective); the chief writes. A failure warns once and
        ends the checks, never training; the weights are restored before it is reported."""
        if self.reset_check is None or self._reset_failed or self._failed:
            return
        self._last_checked_step = step
        if distribute.is_multi_worker(distribute.strategy_of(self.model)):
            # `evaluate` is collective there, and only the chief keeps a reference: every
            # worker would have to hold one and swap in step, or the job would hang.
            self._reset_failed = True
            logger.warning(
                "WeightDiffCallback: the reset check does not run under a multi-worker strategy "
                "(evaluate is collective there, and only the chief keeps the weights from before "
                "training); the weights are logged as usual"
            )
            return
        if not self._reference:
            return
        try:
            x, y, sample_weight, batch_size, batches, examples = self._reset_batches()
            variables = {self._tag(v): v for v, _ in self._variables()}
            groups = reset_lib.make_groups(
                [tag for tag in variables if tag in self._reference], self._blocks
            )

            def evaluate():
                return self.model.evaluate(
                    x, y, sample_weight=sample_weight, batch_size=batch_size, verbose=0, return_dict=True
                )

            def swap(chosen):
                return reset_lib.swapped(
                    [(tag, variables[tag]) for group in chosen for tag in group.tags],
                    self._host_value,
                    lambda variable, value: variable.assign(value),
                    self._reference.get,
                )

            def unchanged(group):
                return all(_same_bits(self._host_value(variables[tag]), self._reference[tag]) for tag in group.tags)

            started = time.perf_counter()
            results = reset_lib.run_check(groups, evaluate, swap, unchanged)
            if self._is_chief() and not self._failed:
                writer = self._get_writer()
                reset_lib.write(writer, step, results, batches, examples)
                writer.flush()
            self.last_reset = reset_lib.summarize(results)
            logger.info(
                "WeightDiffCallback: reset check at step %d: %d layers, %d batches, %.2f s",
                step, len(groups), batches, time.perf_counter() - started,
            )
        except Exception as error:  # pylint: disable=broad-except
            self._reset_failed = True
            logger.warning(
                "WeightDiffCallback stopped its reset check after an error (the weights were restored; "
                "training continues): %s: %s", type(error).__name__, error,
            )

    def _reset_batches(self):
        """`(x, y, sample_weight, batch_size, batches, examples)`: the check's data, taken once."""
        if self._reset_data is None:
            self._reset_data = _take_batches(self.reset_check, self.reset_batches, self.reset_batch_size)
        return self._reset_data

    def reference_nbytes(self):
        """Host bytes held by the reference snapshot (0 with `reference=False`)."""
        return sum(array.nbytes for array in self._reference.values())


def _same_bits(a, b):
    """Whether two host arrays hold the same values bit for bit (NaN equal to itself)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _numpy_tree(value):
    return keras.tree.map_structure(lambda leaf: np.asarray(keras.ops.convert_to_numpy(leaf)), value)


def _rows(value, count):
    return keras.tree.map_structure(lambda leaf: leaf[:count], value)


def _split_batch(batch):
    """`(x, y, sample_weight)` of one batch, as `keras.utils.unpack_x_y_sample_weight`."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if not isinstance(batch, tuple):
        return batch, None, None
    if len(batch) == 1:
        return batch[0], None, None
    if len(batch) == 2:
        return batch[0], batch[1], None
    if len(batch) == 3:
        return batch
    raise ValueError("a reset_check batch must be x, (x,), (x, y) or (x, y, sample_weight), got %d items" % len(batch))


def _take_batches(data, batches, batch_size):
    """The first `batches` batches of `data` as host arrays, with their batch size and counts.

    Arrays (`(x, y[, sample_weight])`) are sliced to `batches * batch_size`
    rows; a dataset or any other iterable of batches gives its first
    `batches` batches, concatenated (the same examples at every evaluation,
    even where the dataset reshuffles on each pass).
    """
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and not _is_batch_stream(data):
        x, y, sample_weight = _split_batch(tuple(data))
        count = batches * batch_size
        x, y = _numpy_tree(_rows(x, count)), _numpy_tree(_rows(y, count))
        sample_weight = None if sample_weight is None else _numpy_tree(_rows(sample_weight, count))
        examples = len(keras.tree.flatten(x)[0])
        if examples == 0:
            raise ValueError("reset_check holds no examples")
        return x, y, sample_weight, batch_size, -(-examples // batch_size), examples
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not hasattr(data, "element_spec"):
        taken = [data[index] for index in range(min(len(data), batches))]  # a PyDataset, a Sequence
    else:
        taken = []
        for batch in data:
            taken.append(batch)
            if len(taken) == batches:
                break
    if not taken:
        raise ValueError("reset_check gave no batches")
    parts = [_split_batch(_numpy_tree(batch)) for batch in taken]
    first_size = len(keras.tree.flatten(parts[0][0])[0])

    def joined(index):
        if parts[0][index] is None:
            return None
        return keras.tree.map_structure(lambda *leaves: np.concatenate(leaves), *[part[index] for part in parts])

    x, y, sample_weight = joined(0), joined(1), joined(2)
    examples = len(keras.tree.flatten(x)[0])
    return x, y, sample_weight, first_size, len(taken), examples


def _is_batch_stream(data):
    """A list of batches (each a tuple) rather than `(x, y)` arrays."""
    return isinstance(data, list) and all(isinstance(item, (tuple, list)) for item in data)
