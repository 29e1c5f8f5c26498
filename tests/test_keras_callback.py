"""WeightDiffCallback in real `model.fit` runs on small learnable data."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from tb_weightdiff import metadata
from tb_weightdiff import reader
from conftest import requires_tf


def _fingerprint(array):
    return float(zlib.crc32(np.ascontiguousarray(array).tobytes()))


def _data(seed=0, n=256):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (x @ rng.standard_normal((8, 1)) + 0.1).astype(np.float32)
    return x, y


def _model(keras):
    inner = keras.Sequential([keras.layers.Dense(6, activation="tanh", name="inner_dense")], name="inner")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="frozen_dense"),
            inner,
            keras.layers.Dense(1, name="head"),
        ],
        name="sequential",
    )
    model.get_layer("frozen_dense").trainable = False
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _read(logdir, loader="python"):
    with reader.open_logdir(str(logdir), loader=loader) as opened:
        ours, warnings = reader.read_series(opened)
        keras_histograms, _ = reader.read_series(opened, plugin_name=metadata.HISTOGRAM_PLUGIN_NAME)
    assert warnings == []
    return {s.tag: s for s in ours}, {s.tag: s for s in keras_histograms}, {s.run for s in ours + keras_histograms}


@requires_tf
def test_callback_records_before_and_after_training(tmp_path):
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    keras.utils.set_random_seed(1)
    model = _model(keras)
    initial = {v.path: np.array(v.numpy()) for v in model.weights}
    x, y = _data()
    callback = WeightDiffCallback(str(tmp_path / "run1"))
    model.fit(
        x, y, epochs=3, batch_size=32, verbose=0,
        callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "run1"), histogram_freq=1), callback],
    )
    final = {v.path: np.array(v.numpy()) for v in model.weights}

    ours, keras_histograms, runs = _read(tmp_path)
    # One run: our events sit beside Keras's own in <log_dir>/train.
    assert runs == {"run1/train"}
    assert set(ours) == set(initial) == {
        "sequential/frozen_dense/kernel", "sequential/frozen_dense/bias",
        "sequential/inner/inner_dense/kernel", "sequential/inner/inner_dense/bias",
        "sequential/head/kernel", "sequential/head/bias",
    }
    assert {tag[: -len("/histogram")] for tag in keras_histograms} == set(initial)
    for tag, series in ours.items():
        assert series.steps == [0, 1, 2, 3], tag
        first, last = series.summaries[0], series.summaries[-1]
        assert first.stat("fingerprint") == _fingerprint(initial[tag]), tag
        assert last.stat("fingerprint") == _fingerprint(final[tag]), tag
        np.testing.assert_allclose(first.quantiles, np.quantile(initial[tag].astype(np.float64), metadata.QUANTILE_PROBABILITIES))
        np.testing.assert_allclose(last.stat("mean"), final[tag].astype(np.float64).mean(), rtol=1e-12)
        np.testing.assert_allclose(
            last.stat("reference_distance"), np.linalg.norm(final[tag].astype(np.float64) - initial[tag]), rtol=1e-9
        )
        assert first.stat("reference_distance") == 0.0
        frozen = tag.startswith("sequential/frozen_dense/")
        assert [s.stat("trainable") for s in series.summaries] == [0.0 if frozen else 1.0] * 4
        if frozen:
            assert [s.stat("reference_distance") for s in series.summaries] == [0.0] * 4
        else:
            assert last.stat("reference_distance") > 0, tag
    assert callback.reference_nbytes() == sum(a.nbytes for a in initial.values())
    # Each tensor names its layer's class; the optimizer's update count and
    # learning rate sit beside them as TensorBoard scalars.
    assert {tag: series.layer_type for tag, series in ours.items()} == {tag: "Dense" for tag in ours}
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        optimizer = reader.read_optimizer(opened, ["run1/train"])["run1/train"]
    steps_per_epoch = len(x) // 32
    assert optimizer["steps"] == [0, 1, 2, 3]
    assert optimizer["updates"] == [0.0] + [float(steps_per_epoch * epoch) for epoch in (1, 2, 3)]
    assert optimizer["learning_rate"] == [pytest.approx(0.01)] * 4


@requires_tf
def test_freq_logs_every_nth_epoch_and_the_last(tmp_path):
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    model = _model(keras)
    x, y = _data()
    model.fit(x, y, epochs=5, verbose=0, callbacks=[WeightDiffCallback(str(tmp_path), freq=2)])
    ours, _, _ = _read(tmp_path)
    assert {tuple(s.steps) for s in ours.values()} == {(0, 2, 4, 5)}


@requires_tf
def test_reference_off_keeps_no_copy(tmp_path):
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    model = _model(keras)
    x, y = _data()
    callback = WeightDiffCallback(str(tmp_path), reference=False)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert callback.reference_nbytes() == 0
    ours, _, _ = _read(tmp_path)
    for series in ours.values():
        assert all(np.isnan(s.stat("reference_distance")) for s in series.summaries)


@requires_tf
def test_logging_failure_never_stops_training(tmp_path, caplog):
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the log directory should go")
    model = _model(keras)
    x, y = _data()
    with caplog.at_level(logging.WARNING, logger="tb_weightdiff.keras"):
        history = model.fit(x, y, epochs=3, verbose=0, callbacks=[WeightDiffCallback(str(blocker / "run"))])
    assert len(history.history["loss"]) == 3
    warnings = [r for r in caplog.records if "stopped logging" in r.getMessage()]
    assert len(warnings) == 1


@requires_tf
def test_rejects_bad_arguments():
    from tb_weightdiff.keras import WeightDiffCallback

    with pytest.raises(ValueError, match="freq"):
        WeightDiffCallback("logs", freq=0)
    with pytest.raises(ValueError, match="buckets"):
        WeightDiffCallback("logs", buckets=-3)


_MIRRORED_SCRIPT = r"""
import json, os, sys, glob
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tb_weightdiff.distribute import is_chief
from tb_weightdiff.keras import WeightDiffCallback
logdir = sys.argv[1]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.standard_normal((128, 4)).astype(np.float32)
y = x.sum(axis=1, keepdims=True)
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[WeightDiffCallback(logdir)])
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "chief": is_chief(strategy),
    "files": sorted(os.path.basename(p) for p in glob.glob(os.path.join(logdir, "train", "*"))),
    "final": {v.path: np.asarray(v.numpy()).astype(float).ravel().tolist() for v in model.weights},
}))
"""


@requires_tf
@pytest.mark.slow
def test_mirrored_strategy_over_two_cpus_writes_once(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["chief"] is True
    ours_files = [f for f in report["files"] if f.endswith(".tb_weightdiff")]
    assert len(ours_files) == 1, report["files"]
    ours, _, _ = _read(tmp_path)
    assert set(ours) == set(report["final"])
    for tag, series in ours.items():
        # One event per step: the replicas did not each write.
        assert series.steps == [0, 1, 2], tag
        final = np.asarray(report["final"][tag])
        np.testing.assert_allclose(series.summaries[-1].stat("mean"), final.mean(), rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("keras") is not None, reason="checks the message where Keras is absent")
def test_callback_without_keras_names_the_install():
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'tb-weightdiff\[tf\]'") as raised:
        import tb_weightdiff.keras  # noqa: F401
    assert raised.value.name == "keras"
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'tb-weightdiff\[tf\]'"):
        from tb_weightdiff.keras import WeightDiffCallback  # noqa: F401
    assert "tb_weightdiff.keras" not in sys.modules  # a failed import leaves nothing half-built
    import tb_weightdiff

    with pytest.raises(ModuleNotFoundError, match=r"pip install 'tb-weightdiff\[tf\]'"):
        tb_weightdiff.keras  # pylint: disable=pointless-statement  (the lazy attribute)


@requires_tf
def test_the_callback_is_a_plain_module_level_class():
    import inspect
    import pydoc

    import keras

    import tb_weightdiff.keras
    from tb_weightdiff.keras import WeightDiffCallback

    assert WeightDiffCallback.__qualname__ == "WeightDiffCallback"
    assert WeightDiffCallback.__module__ == "tb_weightdiff.keras"
    assert tb_weightdiff.keras.WeightDiffCallback is WeightDiffCallback
    assert issubclass(WeightDiffCallback, keras.callbacks.Callback)
    assert list(inspect.signature(WeightDiffCallback).parameters) == [
        "log_dir", "freq", "reference", "buckets", "subdir",
        "reset_check", "reset_every", "reset_batches", "reset_batch_size", "reset_groups",
    ]
    assert "class WeightDiffCallback" in pydoc.render_doc(tb_weightdiff.keras, renderer=pydoc.plaintext)


@requires_tf
def test_the_callback_is_registered_and_its_config_round_trips():
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    assert keras.saving.get_registered_object("tb_weightdiff>WeightDiffCallback") is WeightDiffCallback
    assert keras.saving.get_registered_name(WeightDiffCallback) == "tb_weightdiff>WeightDiffCallback"
    callback = WeightDiffCallback("logs/run1", freq=2, reference=False, buckets=np.int64(7), subdir="validation")
    config = callback.get_config()
    assert config == {
        "log_dir": "logs/run1", "freq": 2, "reference": False, "buckets": 7, "subdir": "validation",
        "reset_every": None, "reset_batches": 20, "reset_batch_size": 32, "reset_groups": None,
    }
    json.dumps(config)  # plain values only
    rebuilt = WeightDiffCallback.from_config(config)
    assert type(rebuilt) is WeightDiffCallback and rebuilt.get_config() == config
    assert WeightDiffCallback.from_config(WeightDiffCallback().get_config()).get_config() == WeightDiffCallback().get_config()
    # Keras's own serialization finds it by its registered name.
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(callback)))
    assert serialized["registered_name"] == "tb_weightdiff>WeightDiffCallback"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is WeightDiffCallback and restored.get_config() == config


@requires_tf
def test_unbuilt_model_gets_a_baseline_after_the_first_batch_and_a_warning(tmp_path, caplog):
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    model = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(1)])  # no Input: unbuilt
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    with caplog.at_level(logging.WARNING, logger="tb_weightdiff.keras"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[WeightDiffCallback(str(tmp_path))])
    assert "not built before fit()" in caplog.text
    ours, _, _ = _read(tmp_path)
    assert len(ours) == 4
    for series in ours.values():
        assert series.steps == [0, 1, 2]
        assert series.summaries[0].stat("reference_distance") == 0.0
        assert series.summaries[-1].stat("reference_distance") > 0.0
