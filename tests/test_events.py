"""Writing weight summaries to event files without Keras: runs with and without TensorFlow."""

import os

import numpy as np
import pytest

from tb_weightdiff import events
from tb_weightdiff import reader


def test_write_weights_one_event_per_tensor_and_step(tmp_path, rng):
    w0 = rng.standard_normal((5, 4)).astype(np.float32)
    w1 = w0 * 1.5
    run_dir = tmp_path / "run1" / "train"  # created by the writer
    writer = events.create_writer(run_dir)
    events.write_weights(writer, "fc1/weight", w0, 0, reference=w0, trainable=True)
    events.write_weights(writer, "fc1/weight", w1.copy(), 1, reference=w0, trainable=True, overwrite_input=True)
    events.write_weights(writer, "fc1/bias", np.zeros(4), 1, buckets=3, trainable=False)
    writer.close()

    (name,) = os.listdir(run_dir)
    assert name.startswith("events.out.tfevents.") and name.endswith(events.FILENAME_SUFFIX)
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        series, warnings = reader.read_series(opened)
    assert warnings == []
    by_tag = {s.tag: s for s in series}
    assert {s.run for s in series} == {"run1/train"}
    assert by_tag["fc1/weight"].steps == [0, 1]
    assert by_tag["fc1/bias"].steps == [1]
    first, last = by_tag["fc1/weight"].summaries
    assert first.stat("reference_distance") == 0.0
    assert last.stat("relative_change") == pytest.approx(0.5, rel=1e-6)
    assert last.stat("trainable") == 1.0
    bias = by_tag["fc1/bias"].summaries[0]
    assert bias.stat("trainable") == 0.0 and bias.histogram.shape == (3, 3)


def test_write_weights_rejects_what_weights_pb_rejects(tmp_path):
    class _Writer:
        def __init__(self):
            self.events = []

        def add_event(self, event):
            self.events.append(event)

    writer = _Writer()
    with pytest.raises(ValueError, match="buckets"):
        events.write_weights(writer, "w", np.ones(3), 0, buckets=-1)
    with pytest.raises(ValueError, match="reference has 4 elements"):
        events.write_weights(writer, "w", np.ones(3), 0, reference=np.ones(4))
    assert writer.events == []
    events.write_weights(writer, "w", np.ones(3), 7)
    (event,) = writer.events
    assert event.step == 7 and event.wall_time > 0
    assert [value.tag for value in event.summary.value] == ["w"]


def test_create_writer_fails_where_a_file_blocks_the_directory(tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the log directory should go")
    with pytest.raises(OSError):
        events.create_writer(blocker / "train")


def test_the_optimizer_state_is_logged_as_scalars_and_read_back(tmp_path, loader):
    writer = events.create_writer(tmp_path / "run1")
    for step, updates, rate in ((0, 0, 1e-3), (1, 50, 5e-4), (2, 100, 2.5e-4)):
        events.write_weights(writer, "fc1/weight", np.arange(6.0) * (step + 1), step, layer_type="Linear")
        events.write_optimizer(writer, step, updates=updates, learning_rate=rate)
    events.write_optimizer(writer, 3, updates=None, learning_rate=None)  # nothing known: nothing written
    writer.close()
    with reader.open_logdir(str(tmp_path), loader=loader) as opened:
        optimizer = reader.read_optimizer(opened, ["run1", "missing"])
        (series,), _ = reader.read_series(opened)
    assert optimizer == {
        "run1": {
            "steps": [0, 1, 2],
            "updates": [0.0, 50.0, 100.0],
            "learning_rate": [pytest.approx(1e-3), pytest.approx(5e-4), pytest.approx(2.5e-4)],
        }
    }
    assert series.layer_type == "Linear"
