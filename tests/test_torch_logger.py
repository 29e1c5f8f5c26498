"""WeightDiffLogger and the Lightning callback, with real PyTorch and real Lightning trainings."""

import logging
import os

import numpy as np
import pytest

from tb_weightdiff import judge
from tb_weightdiff import metadata
from tb_weightdiff import reader
from tb_weightdiff import summary as summary_lib

torch = pytest.importorskip("torch")
from tb_weightdiff.torch import ShardedParametersError  # noqa: E402
from tb_weightdiff.torch import WeightDiffLogger  # noqa: E402

pytestmark = pytest.mark.slow


class Net(torch.nn.Module):
    """A frozen layer (requires_grad=False), a dead path (output times 0), BatchNorm and an embedding."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.a = torch.nn.Linear(28, 32)
        self.bn = torch.nn.BatchNorm1d(32)
        self.b = torch.nn.Linear(32, 32)
        self.frozen = torch.nn.Linear(32, 32)
        self.dead = torch.nn.Linear(32, 32)
        self.out = torch.nn.Linear(32, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x, tokens):
        h = torch.cat([x, self.embed(tokens)], dim=1)
        h = torch.relu(self.bn(self.a(h)))
        h = torch.relu(self.frozen(torch.relu(self.b(h))))
        return self.out(h + 0 * self.dead(h))


def _data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 20, generator=generator)
    tokens = torch.randint(0, 16, (512,), generator=generator)
    return x, tokens, x[:, :4].argmax(1)


def _train(model, optimizer, epochs, on_epoch_end):
    x, tokens, y = _data()
    for epoch in range(epochs):
        for start in range(0, 512, 32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[start:start + 32], tokens[start:start + 32]), y[start:start + 32])
            loss.backward()
            optimizer.step()
        on_epoch_end(epoch)


def _verdicts(logdir, loader, source="auto"):
    with reader.open_logdir(str(logdir), loader=loader) as opened:
        result = judge.analyze_logdir(opened, source=source)
    return {run["run"]: run for run in result["runs"]}


EXPECTED = {"a": "learning", "b": "learning", "bn": "learning", "out": "learning", "embed": "learning", "frozen": "frozen"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real AdamW training, logged by the logger (into the user's SummaryWriter) and by add_histogram."""
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    logdir = tmp_path_factory.mktemp("torch_logs")
    model = Net()
    initial = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    writer = SummaryWriter(str(logdir / "run"))
    habit = SummaryWriter(str(logdir / "histograms_only"))
    weights = WeightDiffLogger(writer, model, optimizer=optimizer, buffers=True)

    def on_epoch_end(epoch):
        for name, p in model.named_parameters():
            writer.add_histogram(name + "/histogram", p, epoch)
            habit.add_histogram(name, p, epoch)
        weights.log(epoch + 1)

    _train(model, optimizer, 6, on_epoch_end)
    weights.close()
    writer.close()
    habit.close()
    return logdir, initial, model


@pytest.mark.parametrize("loader", ["python", "rust"])
def test_a_real_training_is_judged_right_from_the_logger(trained, loader):
    logdir, _, _ = trained
    run = _verdicts(logdir, loader)["run"]
    assert run["source"] == metadata.PLUGIN_NAME
    assert run["steps"] == list(range(7))
    verdicts = {layer["name"]: layer["verdict"] for layer in run["layers"]}
    # The dead path gets no gradient; only AdamW's decoupled decay shrinks it.
    assert verdicts == dict(EXPECTED, dead="decay_only")
    assert run["optimizer"]["updates"] == [16.0 * step for step in range(7)]
    assert run["optimizer"]["learning_rate"][-1] == pytest.approx(1e-3)
    # Its own histograms share the run under suffixed tags, without a clash.
    assert not any("only plain histograms" in warning for warning in run["warnings"])


@pytest.mark.parametrize("loader", ["python", "rust"])
def test_the_same_training_through_add_histogram_is_judged_too(trained, loader):
    logdir, _, _ = trained
    run = _verdicts(logdir, loader)["histograms_only"]
    assert run["source"] == metadata.HISTOGRAM_PLUGIN_NAME
    layers = {layer["name"]: layer for layer in run["layers"]}
    dead = layers.pop("dead")
    # torch's fixed 10 %-wide buckets hide AdamW's shrink of the dead path: it is flagged, or
    # the judge says that histograms cannot tell (the corpus's "cannot tell"), never a silent miss.
    assert dead["verdict"] in ("decay_only", "not_learning") or "cannot resolve a rescaling" in dead["reason"]
    assert {name: layer["verdict"] for name, layer in layers.items()} == EXPECTED


def test_step_0_is_the_initial_parameters_and_requires_grad_is_recorded(trained):
    logdir, initial, model = trained
    with reader.open_logdir(str(logdir), loader="python") as opened:
        series, warnings = reader.read_series(opened, runs=["run"])
    assert warnings == []
    by_tag = {s.tag: s for s in series}
    # Every parameter under its own name, and the float buffers (not the int counter).
    assert set(initial) <= set(by_tag)
    assert {"bn.running_mean", "bn.running_var"} <= set(by_tag) and "bn.num_batches_tracked" not in by_tag
    for name, value in initial.items():
        expected = metadata.decode(
            summary_lib.weight_statistics(value, reference=value, trainable=name.split(".")[0] != "frozen")
        )
        step0 = by_tag[name].summaries[0]
        assert by_tag[name].steps[0] == 0
        assert np.array_equal(step0.quantiles, expected.quantiles)
        assert step0.stat("fingerprint") == expected.stat("fingerprint")
        assert step0.stat("reference_distance") == 0.0
    assert {s.stat("trainable") for s in by_tag["frozen.weight"].summaries} == {0.0}
    assert {s.stat("trainable") for s in by_tag["a.weight"].summaries} == {1.0}
    assert {s.stat("trainable") for s in by_tag["bn.running_mean"].summaries} == {0.0}
    final = model.a.weight.detach().numpy()
    assert by_tag["a.weight"].summaries[-1].stat("reference_distance") == pytest.approx(
        float(np.linalg.norm(final.astype(np.float64) - initial["a.weight"])), rel=1e-9
    )
    types = {s.tag: s.layer_type for s in series}
    assert types["embed.weight"] == "Embedding" and types["bn.weight"] == "BatchNorm1d" and types["a.weight"] == "Linear"


def test_bare_add_histogram_tags_beside_the_logger_are_named_not_lost(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    writer = SummaryWriter(str(tmp_path / "run"))
    with WeightDiffLogger(writer, model) as weights:
        for name, p in model.named_parameters():
            writer.add_histogram(name, p, 0)
        weights.log(1)
    writer.close()
    for loader in ("python", "rust"):
        # The first writer of a tag keeps it; either way the run says what happened and what to do.
        run = _verdicts(tmp_path, loader)["run"]
        assert run["warnings"] and all("name + '/histogram'" in w for w in run["warnings"][-2:]), run["warnings"]


def test_reference_false_keeps_nothing_and_records_no_distance(tmp_path):
    model = torch.nn.Linear(8, 8)
    with WeightDiffLogger(tmp_path, model, reference=False) as weights:
        assert weights.reference_nbytes() == 0
        weights.log()
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        series, _ = reader.read_series(opened)
    assert {s.steps[-1] for s in series} == {1}
    assert all(np.isnan(s.summaries[-1].stat("reference_distance")) for s in series)


def test_host_copies_leave_the_parameters_alone(tmp_path):
    """The logger sorts its own copies in place: the model's values, bf16 and channels_last included, never move."""
    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    half = torch.nn.Linear(8, 8).to(torch.bfloat16)
    model = torch.nn.ModuleDict({"conv": conv, "low": half})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with WeightDiffLogger(tmp_path, model) as weights:
        weights.log(1)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        series, warnings = reader.read_series(opened)
    assert warnings == []
    stored = {s.tag: s.summaries[0] for s in series}
    logical = before["conv.weight"].contiguous().numpy()
    assert stored["conv.weight"].stat("fingerprint") == metadata.decode(summary_lib.weight_statistics(logical)).stat("fingerprint")
    assert stored["low.weight"].stat("max") == float(before["low.weight"].float().max())


def test_ddp_is_unwrapped_and_only_rank_0_writes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=True)
    ours = [name for name in os.listdir(tmp_path) if name.endswith(".tb_weightdiff")]
    assert len(ours) == 1
    with reader.open_logdir(str(tmp_path), loader="python") as opened:
        series, _ = reader.read_series(opened)
    assert sorted(s.tag for s in series) == ["bias", "weight"]  # not module.weight
    assert {tuple(s.steps) for s in series} == {(0, 1)}


def _ddp_worker(rank, logdir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("TBWD_DDP_PORT", "29533"))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
        weights = WeightDiffLogger(logdir, model)
        assert weights.active == (rank == 0)
        model(torch.randn(2, 4)).sum().backward()
        weights.log(1)
        weights.close()
    finally:
        dist.destroy_process_group()


def test_sharded_parameters_are_refused_with_a_clear_error(tmp_path):
    from torch.distributed.tensor import DTensor, Shard, init_device_mesh
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29534")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        model = torch.nn.Linear(4, 4)
        model.weight = torch.nn.Parameter(DTensor.from_local(model.weight.detach(), mesh, [Shard(0)]))
        with pytest.raises(ShardedParametersError, match="sharded.*wrong numbers.*full_state_dict"):
            WeightDiffLogger(tmp_path, model)
    finally:
        dist.destroy_process_group()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tb_weightdiff")]


def test_a_failing_write_never_stops_training(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = torch.nn.Linear(4, 4)
    with caplog.at_level(logging.WARNING, logger="tb_weightdiff.torch"):
        weights = WeightDiffLogger(blocker / "run", model)
        weights.log(1)
        weights.log(2)
        weights.close()
    assert len([r for r in caplog.records if "stopped logging" in r.getMessage()]) == 1


def test_bad_arguments_fail_where_they_are_given(tmp_path):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        WeightDiffLogger(tmp_path, object())
    with pytest.raises(TypeError, match="SummaryWriter"):
        WeightDiffLogger(object(), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="buckets"):
        WeightDiffLogger(tmp_path, torch.nn.Linear(2, 2), buckets=-1)
    with WeightDiffLogger(tmp_path, torch.nn.Linear(2, 2)) as weights:
        with pytest.raises(ValueError, match="step"):
            weights.log(-1)


def test_a_tensorboardx_writer_is_accepted(tmp_path):
    tensorboardX = pytest.importorskip("tensorboardX")
    writer = tensorboardX.SummaryWriter(str(tmp_path / "run"))
    with WeightDiffLogger(writer, torch.nn.Linear(3, 3)) as weights:
        weights.log(1)
    writer.close()
    assert [run for run in _verdicts(tmp_path, "rust")] == ["run"]


# -- Lightning ----------------------------------------------------------


@pytest.mark.parametrize("every_n_epochs, steps", [(1, [0, 1, 2, 3, 4, 5]), (2, [0, 2, 4, 5])])
def test_the_lightning_callback_joins_the_trainers_run_and_judges_right(tmp_path, every_n_epochs, steps):
    lightning = pytest.importorskip("lightning")
    from tb_weightdiff.lightning import WeightDiffCallback

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def training_step(self, batch, _):
            x, tokens, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x, tokens), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_data()), batch_size=32)
    tensorboard = lightning.pytorch.loggers.TensorBoardLogger(str(tmp_path))
    trainer = lightning.Trainer(
        max_epochs=5, logger=tensorboard, callbacks=[WeightDiffCallback(every_n_epochs=every_n_epochs)],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )
    trainer.fit(Module(), loader)
    runs = _verdicts(tmp_path, "rust")
    run = runs["lightning_logs/version_0"]  # the trainer's own run: its scalars and our weights
    assert run["steps"] == steps
    verdicts = {layer["name"]: layer["verdict"] for layer in run["layers"]}
    assert verdicts == {"net." + name: verdict for name, verdict in dict(EXPECTED, dead="decay_only").items()}
    assert run["optimizer"]["updates"][-1] == 80.0


def test_the_lightning_callback_without_a_tensorboard_logger_says_where_to_write(tmp_path):
    lightning = pytest.importorskip("lightning")
    from tb_weightdiff.lightning import WeightDiffCallback

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

        def training_step(self, batch, _):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = lightning.Trainer(max_epochs=1, logger=False, callbacks=[WeightDiffCallback()],
                                enable_progress_bar=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    with pytest.raises(ValueError, match="no TensorBoardLogger.*log_dir"):
        trainer.fit(Module(), loader)
