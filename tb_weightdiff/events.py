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

from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer import event_file_writer

from tb_weightdiff import summary as summary_lib

__all__ = ["FILENAME_SUFFIX", "create_writer", "write_weights"]

FILENAME_SUFFIX = ".tb_weightdiff"


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
):
    """Adds one event holding the weight summary of `data` at `step`.

    Args:
      writer: an `EventFileWriter` (from `create_writer`), or anything with
        its `add_event(event)`.
      name, data, reference, buckets, trainable, overwrite_input: as in
        `tb_weightdiff.summary.weights_pb`; `name` is the tag.
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
    )
    writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))
