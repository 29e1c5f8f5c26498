"""`WeightDiffCallback` for PyTorch Lightning: the PyTorch logger, driven by the trainer.

Importing this module imports Lightning (`lightning.pytorch`, or the older
`pytorch_lightning` package where only that one is installed); where neither
is installed the import raises `ModuleNotFoundError` naming the install
command. The plugin side never imports it. What it owns is the Lightning
side only (when to log, where, on which rank); the tensors, tags, reference
and optimizer state are `tb_weightdiff.torch.WeightDiffLogger`'s.

Example:

```python
import lightning as L
from tb_weightdiff.lightning import WeightDiffCallback

trainer = L.Trainer(max_epochs=10, callbacks=[WeightDiffCallback()])
trainer.fit(model, train_loader)
# then: tensorboard --logdir lightning_logs  (open the "Weight Diff" tab)
```
"""

import os

from tb_weightdiff import reset as reset_lib
from tb_weightdiff import torch as torch_logger

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError:
    try:
        from pytorch_lightning import Callback
        from pytorch_lightning.loggers import TensorBoardLogger
    except ImportError as error:
        raise ModuleNotFoundError(
            "tb_weightdiff.lightning.WeightDiffCallback needs PyTorch Lightning, which is not "
            "installed. Please install it with `pip install lightning` (or "
            "`pip install 'tb-weightdiff[lightning]'`).",
            name="lightning",
        ) from error

__all__ = ["WeightDiffCallback"]


class WeightDiffCallback(Callback):
    """Logs every parameter of the `LightningModule` before training and every `every_n_epochs` epochs.

    Step 0 holds the weights before training (logged when `fit` starts),
    step `n` the weights after `n` epochs; the last epoch is always logged.
    The events join the run of the trainer's `TensorBoardLogger` (its
    `log_dir`, beside Lightning's own scalars), or go to `log_dir` when
    given. Only the global rank 0 writes. What is recorded for each tensor,
    and what it costs, is `tb_weightdiff.torch.WeightDiffLogger`'s; the
    trainer's first optimizer gives the update count and the learning rate.

    A second `fit` with the same callback starts a new history: a new step 0
    and a new reference (call it with another `log_dir`, or let Lightning's
    logger give the new fit a new version directory).

    Args:
      log_dir: where to write; default the `log_dir` of the trainer's first
        `TensorBoardLogger`. Required when the trainer has none.
      every_n_epochs: log every this many epochs (>= 1).
      reference, buffers, buckets, device_summary, device_reference: as in
        `WeightDiffLogger` (by default tensors on a GPU are summarized there).
      reset_check: batches (a `DataLoader`) for the reset check
        (`WeightDiffLogger.reset_check`): when training ends, and every
        `reset_every` epochs, each layer is put back to its initial weights,
        the model evaluated and the layer restored bit for bit. Needs
        `reset_loss`.
      reset_loss: `loss_fn(outputs, targets)` for the check.
      reset_metrics, reset_batches, reset_groups, reset_forward: as
        `metrics`, `max_batches`, `groups` and `forward` of
        `WeightDiffLogger.reset_check`.
      reset_every: also check every this many epochs (None: at the end only).

    Raises (when `fit` starts):
      ValueError: no `log_dir` and no `TensorBoardLogger` in the trainer.
      tb_weightdiff.torch.ShardedParametersError: the strategy shards the
        parameters (FSDP): no rank holds whole tensors.
    """

    def __init__(
        self, log_dir=None, every_n_epochs=1, reference=True, buffers=False, buckets=None,
        reset_check=None, reset_loss=None, reset_metrics=None, reset_every=None,
        reset_batches=reset_lib.DEFAULT_BATCHES, reset_groups=None, reset_forward=None,
        device_summary="auto", device_reference="auto",
    ):
        super().__init__()
        if reset_check is not None and reset_loss is None:
            raise ValueError("reset_check needs reset_loss: the loss_fn(outputs, targets) to evaluate with")
        if reset_check is not None and not reference:
            raise ValueError("reset_check needs reference=True: it puts back the weights from before training")
        self.reset_check = reset_check
        self.reset_loss = reset_loss
        self.reset_metrics = reset_metrics
        self.reset_every = reset_lib.check_every(reset_every)
        self.reset_batches = reset_lib.check_batches(reset_batches)
        self.reset_groups = reset_groups
        reset_lib.check_blocks(reset_groups)
        self.reset_forward = reset_forward
        self.last_reset = None
        self._checked = None  # the step of this fit's last reset check
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError("every_n_epochs must be an int >= 1, got %r" % (every_n_epochs,))
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.every_n_epochs = every_n_epochs
        self.reference = reference
        self.buffers = buffers
        self.buckets = buckets
        # Checked here, where they are given, not when fit starts.
        self.device_summary = torch_logger._check_choice(device_summary, "device_summary")  # pylint: disable=protected-access
        self.device_reference = torch_logger._check_choice(  # pylint: disable=protected-access
            device_reference, "device_reference", budget=True
        )
        self.logger = None

    def _directory(self, trainer):
        if self.log_dir is not None:
            return self.log_dir
        for found in getattr(trainer, "loggers", None) or []:
            if isinstance(found, TensorBoardLogger):
                return found.log_dir
        raise ValueError(
            "WeightDiffCallback found no TensorBoardLogger in the trainer (its loggers: %s); "
            "pass WeightDiffCallback(log_dir=...) to say where the weights go"
            % (", ".join(type(l).__name__ for l in getattr(trainer, "loggers", None) or []) or "none")
        )

    def on_fit_start(self, trainer, pl_module):
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        self._checked = None
        if not trainer.is_global_zero:
            return
        optimizers = getattr(trainer, "optimizers", None) or []
        self.logger = torch_logger.WeightDiffLogger(
            self._directory(trainer),
            pl_module,
            reference=self.reference,
            buffers=self.buffers,
            optimizer=optimizers[0] if optimizers else None,
            buckets=self.buckets,
            device_summary=self.device_summary,
            device_reference=self.device_reference,
        )

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1
        if self.logger is not None and epoch % self.every_n_epochs == 0:
            self.logger.log(epoch)
        if self.logger is not None and self.reset_every and epoch % self.reset_every == 0:
            self._check(epoch)

    def _check(self, step):
        if self.reset_check is None:
            return
        self.last_reset = self.logger.reset_check(
            self.reset_check, self.reset_loss, metrics=self.reset_metrics, max_batches=self.reset_batches,
            step=step, groups=self.reset_groups, forward=self.reset_forward,
        )
        self._checked = step

    def on_fit_end(self, trainer, pl_module):
        if self.logger is None:
            return
        # The final weights, when the last epoch was not one of every_n_epochs
        # (or training stopped early).
        epochs = trainer.current_epoch
        if self.logger.last_step != epochs and epochs > 0:
            self.logger.log(epochs)
        if self._checked != self.logger.last_step:
            self._check(self.logger.last_step)
        self.logger.close()
        self.logger = None

    def on_exception(self, trainer, pl_module, exception):
        if self.logger is not None:
            self.logger.close()
            self.logger = None
