"""The reset check (issue 16): each layer put back to its initial weights, the loss measured, the layer restored.

Real trainings: a Keras model (TensorFlow), a PyTorch model and a Lightning
module, each with a frozen layer and BatchNorm; a numpy model for the
format, the analysis and the CLI where no framework is installed.
"""

import json
import logging

import numpy as np
import pytest

from tb_weightdiff import cli
from tb_weightdiff import events
from tb_weightdiff import judge
from tb_weightdiff import metadata
from tb_weightdiff import reader
from tb_weightdiff import reset
from tb_weightdiff import verdicts
from conftest import requires_tf
from logdirs import write_reset_logdir


def _judged(path, loader="python", **kwargs):
    with reader.open_logdir(str(path), loader=loader) as logdir:
        return judge.analyze_logdir(logdir, **kwargs)


def _layers(result, run=None):
    entry = result["runs"][0] if run is None else next(r for r in result["runs"] if r["run"] == run)
    return entry, {layer["name"]: layer for layer in entry["layers"]}


# -- format, analysis and CLI, numpy only -----------------------------------------------


def test_reset_summaries_round_trip_through_both_loaders(tmp_path, loader):
    final = write_reset_logdir(tmp_path)
    run, layers = _layers(_judged(tmp_path, loader))
    assert run["reset_check"]["step"] == 4 and run["reset_check"]["groups"] == 3
    assert run["reset_check"]["evaluated"] == 2  # the frozen layer is not evaluated again
    frozen = layers["model/frozen"]["reset"]
    assert frozen["increase"] == 0.0 and frozen["impact"] == verdicts.ROBUST
    assert layers["model/frozen"]["verdict"] == verdicts.FROZEN
    for name in ("model/first", "model/last"):
        found = layers[name]["reset"]
        assert found["loss_reset"] == final[name]["loss_reset"]  # float64, stored exactly
        assert found["increase"] > 0 and found["ratio"] > 1
        assert found["undone"] == pytest.approx(
            (final[name]["loss_reset"] - final[name]["loss"]) / (final[name]["loss_initial"] - final[name]["loss"])
        )
        assert set(found["metrics"]) == {"mae"} and found["metrics"]["mae"]["reset"] > found["metrics"]["mae"]["trained"]
        assert found["tags"] == [name + "/kernel"] and found["block"] is False
    # No reset check is mistaken for a weight series.
    assert not any("reset" in warning for warning in run["warnings"])
    assert all(not layer["name"].startswith("tb_weightdiff") for layer in run["layers"])


def test_impact_thresholds_label_layers_without_changing_verdicts(tmp_path):
    write_reset_logdir(tmp_path)
    default = _judged(tmp_path)
    strict = _judged(tmp_path, thresholds=verdicts.Thresholds(max_robust_reset=0.999, min_critical_reset=1.0))
    _, before = _layers(default)
    _, after = _layers(strict)
    assert {n: l["verdict"] for n, l in before.items()} == {n: l["verdict"] for n, l in after.items()}
    assert after["model/first"]["reset"]["impact"] == verdicts.ROBUST
    # A learning layer whose reset costs almost nothing gets a line saying what that means.
    assert "robust layer" in after["model/first"]["reset_note"]
    assert after["model/frozen"]["reset_note"] is None  # frozen: resetting it changes nothing, nothing to say


def test_not_learning_but_critical_gets_its_line(tmp_path):
    write_reset_logdir(tmp_path)
    result = _judged(tmp_path, thresholds=verdicts.Thresholds(min_ratio_to_median=10.0, min_critical_reset=0.0))
    _, layers = _layers(result)
    flagged = [l for l in layers.values() if l["verdict"] == verdicts.NOT_LEARNING]
    assert flagged and all("the little it moved matters" in l["reset_note"] for l in flagged)


def test_unknown_reset_version_and_damage_are_skipped_with_a_reason(tmp_path, loader):
    write_reset_logdir(tmp_path)
    writer = events.create_writer(tmp_path / "checked")
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.util import tensor_util

    future = metadata.create_reset_metadata("model/first", ["model/first/kernel"])
    future.plugin_data.content = future.plugin_data.content.replace(b'"version":1', b'"version":9')
    damaged = metadata.create_reset_metadata("model/last2", ["model/last/kernel"])
    for tag, meta, values in (
        (metadata.RESET_TAG_PREFIX + "future", future, np.zeros(6)),
        (metadata.RESET_TAG_PREFIX + "damaged", damaged, np.array([1.0, 2.0, -1.0, 0.5, 0.6, 0.7])),
    ):
        summary = summary_pb2.Summary()
        summary.value.add(tag=tag, metadata=meta, tensor=tensor_util.make_tensor_proto(values, dtype=np.float64))
        writer.add_event(event_pb2.Event(step=4, summary=summary))
    writer.close()
    run, layers = _layers(_judged(tmp_path, loader))
    assert any("reset format version 9" in w for w in run["warnings"])
    assert any("damaged tb_weightdiff reset tensor: seconds" in w for w in run["warnings"])
    assert layers["model/last"]["reset"]["name"] == "model/last"  # the good check still counts
    assert all(layer["verdict"] for layer in layers.values())


def test_cli_prints_the_reset_column_and_json(tmp_path, capsys):
    write_reset_logdir(tmp_path)
    assert cli.main(["report", "--logdir", str(tmp_path), "--loader", "python"]) == 0
    out = capsys.readouterr().out
    assert "reset check at step 4" in out and "RESET" in out
    frozen_line = next(line for line in out.splitlines() if line.strip().startswith("frozen") and "model/frozen" in line)
    assert "+0 (0%, robust)" in frozen_line or " 0 (0%, robust)" in frozen_line
    assert cli.main(["report", "--logdir", str(tmp_path), "--loader", "python", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"][0]["reset_check"]["examples"] == 256
    assert cli.main(["report", "--logdir", str(tmp_path), "--loader", "python", "--csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].endswith("reset_increase,reset_undone,reset_impact")


def test_groups_and_bad_arguments():
    tags = ["net/block1/a/kernel", "net/block1/b/kernel", "net/head/kernel", "net/head/bias"]
    blocks = reset.check_blocks({"block1": r"/block1/"})
    assert [(g.name, g.tags) for g in reset.make_groups(tags, blocks)] == [
        ("block1", ("net/block1/a/kernel", "net/block1/b/kernel")), ("net/head", ("net/head/kernel", "net/head/bias")),
    ]
    assert [g.name for g in reset.make_groups(tags, lambda tag: "all")] == ["all"]
    for bad in ({"x": "("}, ["x"], {"": "a"}):
        with pytest.raises(ValueError, match="reset_groups"):
            reset.check_blocks(bad)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            reset.check_batches(bad)
        with pytest.raises(ValueError, match="reset_every"):
            reset.check_every(bad)


def test_swapped_restores_even_when_evaluating_fails():
    values = {"a": np.arange(3.0), "b": np.ones(2)}
    initial = {"a": np.zeros(3), "b": None}

    def assign(tag, value):
        values[tag] = value

    with pytest.raises(RuntimeError):
        with reset.swapped([("a", "a"), ("b", "b")], lambda t: values[t].copy(), assign, initial.get):
            assert values["a"].tolist() == [0.0, 0.0, 0.0] and values["b"].tolist() == [1.0, 1.0]
            raise RuntimeError("the model failed")
    assert values["a"].tolist() == [0.0, 1.0, 2.0]


# -- Keras, on a real training ---------------------------------------------------------


def _keras_model(keras, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.BatchNormalization(name="norm"),
        keras.layers.Dense(32, activation="relu", name="frozen", trainable=False),
        keras.layers.Dense(3, name="head"),
    ], name="net")
    model.compile(keras.optimizers.AdamW(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _keras_data(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype("float32")
    y = (np.argmax(x[:, :3] + 0.5 * x[:, 3:6], axis=1)).astype("int32")
    return x, y


def _bits(model):
    return [np.asarray(v.numpy()).tobytes() for v in model.weights]


@requires_tf
def test_keras_reset_check_on_a_real_training(tmp_path):
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    x, y = _keras_data()
    seen = []

    class Watch(keras.callbacks.Callback):
        """Placed before and after ours: the weights just before and just after each check."""

        def on_epoch_end(self, epoch, logs=None):
            seen.append(_bits(self.model))

    model = _keras_model(keras)
    callback = WeightDiffCallback(tmp_path, reset_check=(x[:256], y[:256]), reset_every=2, reset_batches=4)
    model.fit(x, y, epochs=4, batch_size=32, shuffle=False, verbose=0, callbacks=[Watch(), callback, Watch()])
    # Every weight, BatchNorm's moving statistics included, is restored bit for bit.
    assert len(seen) == 8 and all(seen[i] == seen[i + 1] for i in range(0, 8, 2))
    assert callback.last_reset["net/frozen"]["increase"] == 0.0
    assert callback.last_reset["net/hidden"]["increase"] > 0 and callback.last_reset["net/head"]["increase"] > 0

    # Training continues exactly as without the check.
    twin = _keras_model(keras)
    twin.fit(x, y, epochs=4, batch_size=32, shuffle=False, verbose=0)
    assert _bits(twin) == _bits(model)

    run, layers = _layers(_judged(tmp_path, "rust"))
    assert run["reset_check"]["steps"] == [2, 4]
    assert run["reset_check"]["batches"] == 4 and run["reset_check"]["examples"] == 128
    assert layers["net/frozen"]["verdict"] == verdicts.FROZEN and layers["net/frozen"]["reset"]["increase"] == 0.0
    assert layers["net/hidden"]["verdict"] == verdicts.LEARNING and layers["net/hidden"]["reset"]["increase"] > 0
    assert layers["net/norm"]["reset"]["tags"] == [
        "net/norm/gamma", "net/norm/beta", "net/norm/moving_mean", "net/norm/moving_variance"]
    assert set(layers["net/head"]["reset"]["metrics"]) >= {"accuracy"}
    assert len(layers["net/head"]["reset"]["increase_by_step"]) == 2


@requires_tf
def test_keras_reset_check_keeps_its_batches_and_resets_blocks(tmp_path):
    import keras
    import tensorflow as tf

    from tb_weightdiff.keras import WeightDiffCallback

    x, y = _keras_data()
    # A dataset that reshuffles on every pass: the check must still see the same examples each time.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(512, reshuffle_each_iteration=True).batch(32)
    model = _keras_model(keras)
    callback = WeightDiffCallback(tmp_path, reset_check=dataset, reset_batches=3,
                                  reset_groups={"body": r"net/(hidden|norm)/"})
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    first = callback.last_reset
    callback._check_resets(2)
    assert callback.last_reset == first  # the same weights and the same examples: the same losses
    assert set(first) == {"body", "net/frozen", "net/head"}
    _, layers = _layers(_judged(tmp_path))
    assert layers["net/hidden"]["reset"]["name"] == layers["net/norm"]["reset"]["name"] == "body"
    assert layers["net/hidden"]["reset"]["block"] is True
    assert layers["net/hidden"]["reset"]["examples"] == 96


@requires_tf
def test_keras_reset_check_failure_never_stops_training(tmp_path, caplog):
    import keras

    from tb_weightdiff.keras import WeightDiffCallback

    x, y = _keras_data()
    model = _keras_model(keras)
    before = []

    class Watch(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            before.append(_bits(self.model))

    callback = WeightDiffCallback(tmp_path, reset_check=(np.zeros((64, 5), "float32"), y[:64]))  # wrong width
    with caplog.at_level(logging.WARNING):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[Watch(), callback])
    assert "stopped its reset check" in caplog.text
    assert _bits(model) == before[0]
    run, _ = _layers(_judged(tmp_path))
    assert run["reset_check"] is None and run["steps"] == [0, 1, 2]
    with pytest.raises(ValueError, match="reference=True"):
        WeightDiffCallback(tmp_path, reference=False, reset_check=(x, y))
    with pytest.raises(ValueError, match="reset_every"):
        WeightDiffCallback(tmp_path, reset_check=(x, y), reset_every=0)


@requires_tf
def test_keras_reset_check_does_not_run_under_a_multi_worker_strategy(tmp_path, caplog, monkeypatch):
    import keras

    from tb_weightdiff import distribute
    from tb_weightdiff.keras import WeightDiffCallback

    # Every worker would have to evaluate (collective) with a reference only the chief keeps.
    monkeypatch.setattr(distribute, "is_multi_worker", lambda strategy: True)
    x, y = _keras_data()
    callback = WeightDiffCallback(tmp_path, reset_check=(x, y), reset_every=1)
    with caplog.at_level(logging.WARNING):
        _keras_model(keras).fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert caplog.text.count("does not run under a multi-worker strategy") == 1
    run, _ = _layers(_judged(tmp_path))
    assert run["reset_check"] is None and run["steps"] == [0, 1, 2]


# -- PyTorch and Lightning, on a real training -------------------------------------------


def _torch_setup(torch, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(512, 8)
    y = (x[:, :3] + 0.5 * x[:, 3:6]).argmax(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
        torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3),
    )
    model[3].requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return model, optimizer, x, y


def _train(torch, model, optimizer, x, y, epochs):
    for _ in range(epochs):
        for start in range(0, len(x), 32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[start:start + 32]), y[start:start + 32]).backward()
            optimizer.step()


def test_torch_reset_check_on_a_real_training(tmp_path):
    torch = pytest.importorskip("torch")
    from tb_weightdiff.torch import WeightDiffLogger

    model, optimizer, x, y = _torch_setup(torch)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    accuracy = {"accuracy": lambda out, target: (out.argmax(1) == target).float().mean()}
    with WeightDiffLogger(tmp_path, model, optimizer=optimizer, buffers=True) as logger:
        _train(torch, model, optimizer, x, y, 2)
        logger.log(2)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        first = logger.reset_check(loader, torch.nn.CrossEntropyLoss(), metrics=accuracy, max_batches=4)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
        assert model.training and all(m.training for m in model.modules())
        assert first["3"]["increase"] == 0.0 and first["0"]["increase"] > 0 and first["5"]["increase"] > 0
        # The same batches every time, though the DataLoader shuffles.
        assert logger.reset_check(loader, torch.nn.CrossEntropyLoss(), metrics=accuracy, max_batches=4) == first
        _train(torch, model, optimizer, x, y, 1)
        logger.log(3)
        logger.reset_check(loader, torch.nn.CrossEntropyLoss(), metrics=accuracy, max_batches=4)
    # Training went on exactly as without the checks.
    twin, twin_optimizer, _, _ = _torch_setup(torch)
    _train(torch, twin, twin_optimizer, x, y, 3)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), model.state_dict().values()))

    run, layers = _layers(_judged(tmp_path, "rust"))
    assert run["reset_check"]["steps"] == [2, 3] and run["reset_check"]["examples"] == 128
    assert layers["3"]["verdict"] == verdicts.FROZEN and layers["3"]["reset"]["increase"] == 0.0
    assert layers["0"]["reset"]["increase"] > 0 and layers["0"]["reset"]["metrics"]["accuracy"]["trained"] > 0.5
    assert layers["1"]["reset"]["tags"] == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]


def test_torch_reset_check_refuses_without_a_reference(tmp_path):
    torch = pytest.importorskip("torch")
    from tb_weightdiff.torch import WeightDiffLogger

    model, _, x, y = _torch_setup(torch)
    with WeightDiffLogger(tmp_path, model, reference=False) as logger:
        with pytest.raises(ValueError, match="reference=True"):
            logger.reset_check([(x, y)], torch.nn.CrossEntropyLoss())
    with WeightDiffLogger(tmp_path / "b", model) as logger:
        with pytest.raises(ValueError, match="no batches"):
            logger.reset_check([], torch.nn.CrossEntropyLoss())
        with pytest.raises(ValueError, match="forward="):
            logger.reset_check([{"x": x}], torch.nn.CrossEntropyLoss())
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(RuntimeError):  # the model's own error propagates, the weights restored first
            logger.reset_check([(x[:, :5], y)], torch.nn.CrossEntropyLoss())
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_lightning_callback_runs_the_reset_check(tmp_path):
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from tb_weightdiff.lightning import WeightDiffCallback

    model, _, x, y = _torch_setup(torch)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, inputs):
            return self.net(inputs)

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    callback = WeightDiffCallback(reset_check=data, reset_loss=torch.nn.CrossEntropyLoss(), reset_every=1, reset_batches=2)
    trainer = pl.Trainer(max_epochs=2, default_root_dir=str(tmp_path), callbacks=[callback], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, logger=pl.loggers.TensorBoardLogger(tmp_path))
    trainer.fit(Module(), data)
    assert callback.last_reset["net.3"]["increase"] == 0.0
    run, layers = _layers(_judged(tmp_path))
    assert run["reset_check"]["steps"] == [1, 2]
    assert layers["net.0"]["reset"]["increase"] > 0
    with pytest.raises(ValueError, match="reset_loss"):
        WeightDiffCallback(reset_check=data)
