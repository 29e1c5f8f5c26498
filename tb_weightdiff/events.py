"""Writing weight summaries into TensorBoard event files, without Keras or TensorFlow.

Owns how a training-side logger writes: TensorBoard's own `EventFileWriter`,
files named `events.out.tfevents.*.tb_weightdiff` (told apart from the files
of Keras's `TensorBoard` callback in the same run directory), one event per
tensor and step holding a `summary.weights_pb` summary. The Keras callback
writes through it; a logger for another framework should too.

Importing this module imports no TensorFlow. Creating a writer goes through
TensorBoard's `tensorboard.compat.tf`, which uses TensorFlow's file system
(and so imports TensorFlow) where TensorFlow is installed.
"""

import os
import time

import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer import event_file_writer
from tensorboard.util import tensor_util

from tb_weightdiff import metadata
from tb_weightdiff import summary as summary_lib

__all__ = ["FILENAME_SUFFIX", "create_writer", "guarded", "write_optimizer", "write_reset", "write_statistics", "write_weights"]

# TensorBoard's own scalar metadata: the optimizer's state shows in the Scalars tab too.
_SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name="", description="")

FILENAME_SUFFIX = ".tb_weightdiff"


def guarded(log, who, function, *args):
    """Calls `function(*args)`; on an exception, warns on `log` once and returns False.

    Training matters more than its logs: a logger whose write fails says so
    in one warning and stops logging (its caller keeps the flag); training
    goes on.
    """
    try:
        function(*args)
    except Exception as error:  # pylint: disable=broad-except
        log.warning(
            "%s stopped logging after an error; training continues: %s: %s",
            who,
            type(error).__name__,
            error,
        )
        return False
    return True


def create_writer(directory):
    """An `EventFileWriter` into `directory`, created if missing.

    Its files end in `FILENAME_SUFFIX`. Close it (or at least `flush()`) when
    done: events are written by a background thread.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    return event_file_writer.EventFileWriter(directory, filename_suffix=FILENAME_SUFFIX)


def write_weights(
    writer,
    name,
    data,
    step,
    reference=None,
    buckets=None,
    trainable=None,
    overwrite_input=False,
    layer_type=None,
):
    """Adds one event holding the weight summary of `data` at `step`.

    Args:
      writer: an `EventFileWriter` (from `create_writer`), or anything with
        its `add_event(event)`.
      name, data, reference, buckets, trainable, overwrite_input, layer_type:
        as in `tb_weightdiff.summary.weights_pb`; `name` is the tag.
      step: the event's step (int).

    Raises:
      ValueError: as `tb_weightdiff.summary.weights_pb`.
    """
    summary = summary_lib.weights_pb(
        name,
        data,
        reference=reference,
        buckets=buckets,
        trainable=trainable,
        overwrite_input=overwrite_input,
        layer_type=layer_type,
    )
    writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))


def write_statistics(writer, name, values, step, layer_type=None):
    """Adds one event holding an already computed stored vector at `step`.

    For writers that compute the statistics elsewhere (on a GPU:
    `tb_weightdiff.torch_summary.device_statistics`); `values` is the
    rank-1 float64 vector of `summary.weight_statistics`'s layout.
    """
    summary = summary_lib._summary_pb(name, values, layer_type=layer_type)  # pylint: disable=protected-access
    writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))


def write_optimizer(writer, step, updates=None, learning_rate=None):
    """Adds the optimizer's state at `step` as two TensorBoard scalars (what is known of it).

    `updates` is the optimizer's update count so far, `learning_rate` its
    current learning rate; the verdicts read them to say how far each layer
    moved per update (`metadata.OPTIMIZER_UPDATES_TAG`, `LEARNING_RATE_TAG`).
    """
    summary = summary_pb2.Summary()
    for tag, value in ((metadata.OPTIMIZER_UPDATES_TAG, updates), (metadata.LEARNING_RATE_TAG, learning_rate)):
        if value is None:
            continue
        summary.value.add(
            tag=tag,
            metadata=_SCALAR_METADATA,
            tensor=tensor_util.make_tensor_proto(float(value), dtype=np.float32),
        )
    if summary.value:
        writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))


def write_reset(writer, name, tags, step, fields, metrics=None):
    """Adds one event holding a reset check of layer (or block) `name` at `step`.

    Args:
      writer: as in `write_weights`.
      name: the layer or block; the tag is `metadata.RESET_TAG_PREFIX + name`.
      tags: the weight tags it reset.
      step: the event's step (int), the step of the weights it checked.
      fields: `{field: float}` for every name in `metadata.RESET_FIELDS`.
      metrics: optional `{metric: (as trained, layer reset, all reset)}`.
    """
    metrics = metrics or {}
    names = sorted(metrics)
    tensor = metadata.encode_reset(
        [fields[field] for field in metadata.RESET_FIELDS], [metrics[metric] for metric in names]
    )
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=metadata.RESET_TAG_PREFIX + name,
        metadata=metadata.create_reset_metadata(name, tags, names),
        tensor=tensor_util.make_tensor_proto(tensor, dtype=np.float64),
    )
    writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))
