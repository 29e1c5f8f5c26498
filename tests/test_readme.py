"""The README's usage lines work as written."""

import re

import numpy as np
import pytest

from conftest import requires_tf

README = __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "README.md")


def _readme():
    with open(README, encoding="utf-8") as handle:
        return handle.read()


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    text = _readme()
    assert "`bash run_demo.sh`" in text and "`bash run_tests.sh`" in text
    with open(__import__("os").path.join(__import__("os").path.dirname(README), ".ci", "run")) as handle:
        assert "bash run_tests.sh" in handle.read()


def test_weights_pb_example_without_tensorflow(tmp_path):
    import tensorboard.summary.writer.event_file_writer  # noqa: F401  (the README's spelling)
    from tensorboard.compat.proto.event_pb2 import Event

    import tensorboard
    from tb_weightdiff import reader
    from tb_weightdiff.summary import weights_pb

    w0 = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    w = w0 * 1.1
    epoch = 3
    block = re.search(r"from tb_weightdiff.summary import weights_pb\n(.*?)```", _readme(), re.S).group(1)
    namespace = {"tensorboard": tensorboard, "Event": Event, "weights_pb": weights_pb, "w": w, "w0": w0, "epoch": epoch}
    exec(block.replace('"logs/run1"', repr(str(tmp_path / "run1"))), namespace)  # pylint: disable=exec-used
    namespace["writer"].close()
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        (series,), _ = reader.read_series(opened)
    assert (series.tag, series.steps) == ("fc1/weight", [3])
    assert series.summaries[0].stat("relative_change") == pytest.approx(0.1, rel=1e-6)


@requires_tf
def test_summary_op_example(tmp_path):
    import tensorflow as tf

    import tb_weightdiff.summary as wd
    from tb_weightdiff import reader

    kernel = tf.Variable(tf.ones((2, 2)))
    initial_kernel = kernel.numpy()
    epoch = 1
    with tf.summary.create_file_writer(str(tmp_path / "run1")).as_default():
        wd.weights("encoder/dense/kernel", kernel, step=epoch, reference=initial_kernel)
    assert 'wd.weights("encoder/dense/kernel", kernel, step=epoch, reference=initial_kernel)' in _readme()
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        (series,), _ = reader.read_series(opened)
    assert series.tag == "encoder/dense/kernel"
