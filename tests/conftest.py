"""Shared fixtures: TensorFlow detection, event-file writing, opening logdirs both ways."""

import importlib.util
import os
import time

import numpy as np
import pytest

from tb_weightdiff import reader

# Quiet TensorFlow's C++ start-up chatter in test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HAVE_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None

requires_tf = pytest.mark.skipif(
    not HAVE_TENSORFLOW, reason="TensorFlow is not installed (the no-TF job)"
)


def write_events(run_dir, summaries_by_step, suffix=""):
    """Writes `{step: [Summary, ...]}` to one event file with TensorBoard's own writer."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer import event_file_writer

    writer = event_file_writer.EventFileWriter(run_dir, filename_suffix=suffix)
    for step in sorted(summaries_by_step):
        for summary in summaries_by_step[step]:
            writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))
    writer.close()


@pytest.fixture(params=["python", "rust"])
def loader(request):
    """Each reading test runs against both of TensorBoard's loaders."""
    return request.param


@pytest.fixture
def read_logdir(loader):
    """`read_logdir(path, plugin_name=...)` -> {(run, tag): Series}, with no warnings."""

    def read(path, **kwargs):
        with reader.open_logdir(str(path), loader=loader) as opened:
            series, warnings = reader.read_series(opened, **kwargs)
        assert warnings == []
        return {(s.run, s.tag): s for s in series}

    return read


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)
