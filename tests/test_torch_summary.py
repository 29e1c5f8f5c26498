"""`torch_summary.device_statistics` against the numpy writer, and the logger's device path.

No GPU here: the device path runs its PyTorch ops on CPU tensors, which is the
same code a GPU runs. Exactly equal: counts, extremes, zero fraction,
quantiles, histogram edges and counts. Float64 sums taken in another order
(numpy's blocked dot against PyTorch's reductions): rtol 1e-12 for norms,
std and distances, the mean to 1e-12 of its scale (|mean| + std), and the
cosine distance to rtol 1e-9: it is a difference of cancelling terms
(`summary._reference_from_sums` falls back to an elementwise pass only
below a 1e-6 ratio, so up to ~1e6 ulps of the sums reach it, on both paths).
"""

import numpy as np
import pytest

from tb_weightdiff import metadata
from tb_weightdiff import reader
from tb_weightdiff import summary as summary_lib

torch = pytest.importorskip("torch")
from tb_weightdiff import torch_summary  # noqa: E402
from tb_weightdiff.torch import WeightDiffLogger  # noqa: E402

STATS = len(metadata.STAT_FIELDS)
INDEX = {name: i for i, name in enumerate(metadata.STAT_FIELDS)}
EXACT = ("count", "finite_count", "nan_count", "posinf_count", "neginf_count", "min", "max", "zero_fraction", "trainable")
RTOL_12 = ("std", "l2_norm", "reference_l2_norm", "reference_distance", "relative_change")


def _host(tensor):
    """What the numpy writer gets from the logger: bfloat16 widened to float32 (numpy has none)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.contiguous().numpy()


def _same(a, b):
    """Equal as numbers (-0.0 == 0.0), NaN equal to NaN."""
    a, b = np.asarray(a), np.asarray(b)
    return bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def assert_matches(tensor, reference=None, buckets=None, trainable=None):
    ours = torch_summary.device_statistics(tensor, reference=reference, buckets=buckets, trainable=trainable)
    host_reference = None
    if reference is not None:
        host_reference = _host(reference) if isinstance(reference, torch.Tensor) else reference
    numpy = summary_lib.weight_statistics(_host(tensor), reference=host_reference, buckets=buckets, trainable=trainable)
    assert ours.shape == numpy.shape and ours.dtype == np.float64
    for name in EXACT:
        assert _same(ours[INDEX[name]], numpy[INDEX[name]]), (name, ours[INDEX[name]], numpy[INDEX[name]])
    assert _same(ours[STATS:], numpy[STATS:]), "quantiles or histogram differ"
    for name in RTOL_12:
        np.testing.assert_allclose(ours[INDEX[name]], numpy[INDEX[name]], rtol=1e-12, atol=0, err_msg=name)
    scale = abs(numpy[INDEX["mean"]]) + (numpy[INDEX["std"]] if np.isfinite(numpy[INDEX["std"]]) else 0)
    np.testing.assert_allclose(ours[INDEX["mean"]], numpy[INDEX["mean"]], rtol=0, atol=1e-12 * scale, err_msg="mean")
    np.testing.assert_allclose(ours[INDEX["cosine_distance"]], numpy[INDEX["cosine_distance"]], rtol=1e-9, atol=1e-18)
    fingerprint = ours[INDEX["fingerprint"]]
    assert fingerprint == int(fingerprint) and 0 <= fingerprint < 2**32
    metadata.check_summaries(ours[None, :])  # what a reader accepts
    return ours


def _weights(n, dtype, seed, scale=0.05, offset=0.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=generator, dtype=torch.float64) * scale + offset).to(dtype)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 65, 1000, 200_704])
def test_equal_to_the_numpy_writer(dtype, n):
    weights = _weights(n, dtype, seed=n)
    assert_matches(weights)
    assert_matches(weights, reference=_weights(n, dtype, seed=n + 1), trainable=True)
    assert_matches(weights, reference=(weights.double() * 0.999).to(dtype).numpy() if dtype != torch.bfloat16
                   else (weights.double() * 0.999).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_inf_and_zeros(dtype):
    weights = _weights(5000, dtype, seed=3)
    weights[::9] = 0
    weights[11] = -0.0
    weights[[5, 700]] = float("nan")
    weights[17] = float("inf")
    weights[[19, 4000]] = -float("inf")
    ours = assert_matches(weights, reference=_weights(5000, dtype, seed=4))
    assert ours[INDEX["nan_count"]] == 2 and ours[INDEX["posinf_count"]] == 1 and ours[INDEX["neginf_count"]] == 2
    assert_matches(weights, reference=weights.clone())  # non-finite sums: the direct route


@pytest.mark.parametrize(
    "values",
    [
        torch.zeros(100),
        torch.full((7,), 2.5),
        torch.tensor([3.0]),
        torch.full((9,), float("nan")),
        torch.tensor([float("inf"), -float("inf"), float("nan")]),
        torch.tensor([-3.0e38, 3.0e38, 0.0]),
        torch.zeros(0),
        torch.zeros((0, 4)),
    ],
    ids=["zeros", "constant", "single", "all_nan", "no_finite", "huge_range", "empty", "empty_2d"],
)
def test_edge_tensors(values):
    assert_matches(values)
    assert_matches(values, reference=values.clone())
    assert_matches(values, reference=torch.ones_like(values))


@pytest.mark.parametrize("buckets", [0, 1, 2, 7, 31, 64])
def test_bucket_counts(buckets):
    assert_matches(_weights(10_000, torch.float32, seed=buckets, offset=1.0), buckets=buckets)


def test_integer_bool_and_strided_tensors():
    generator = torch.Generator().manual_seed(0)
    for tensor in (
        torch.randint(-5, 5, (1000,), generator=generator),
        torch.randint(0, 255, (777,), generator=generator, dtype=torch.uint8),
        torch.randint(0, 2, (300,), generator=generator).bool(),
    ):
        assert_matches(tensor)
        assert_matches(tensor, reference=tensor.clone())
    matrix = _weights(64 * 48, torch.float32, seed=5).reshape(64, 48)
    assert_matches(matrix.t(), reference=matrix.t().contiguous() * 0.5)  # in logical order, as numpy's copy
    conv = _weights(8 * 3 * 5 * 5, torch.float32, seed=6).reshape(8, 3, 5, 5)
    strided = conv.to(memory_format=torch.channels_last)
    assert np.array_equal(torch_summary.device_statistics(strided), torch_summary.device_statistics(conv), equal_nan=True)


def test_the_cancelling_rotation_and_several_blocks(monkeypatch):
    # Small blocks: the block sums, the second (elementwise) pass and the digest across blocks.
    monkeypatch.setattr(torch_summary, "CHUNK", 1000)
    weights = _weights(10_007, torch.float32, seed=7)
    noise = _weights(10_007, torch.float64, seed=8, scale=1e-9)
    rescaled = (weights.double() * 1.1 + noise).float()  # the norm moved, the direction hardly
    assert_matches(rescaled, reference=weights)
    assert_matches(weights, reference=torch.zeros_like(weights))  # ||W0|| = 0
    blocked = torch_summary.device_fingerprint(weights)
    monkeypatch.setattr(torch_summary, "CHUNK", 1 << 22)
    assert torch_summary.device_fingerprint(weights) == blocked


def test_bad_arguments():
    with pytest.raises(ValueError, match="reference has 3 elements but data has 4"):
        torch_summary.device_statistics(torch.zeros(4), reference=torch.zeros(3))
    with pytest.raises(ValueError, match="bool, integer or floating"):
        torch_summary.device_statistics(torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="buckets"):
        torch_summary.device_statistics(torch.zeros(4), buckets=-1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        torch_summary.device_statistics(np.zeros(4))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_fingerprint_tells_every_one_ulp_change(dtype):
    weights = _weights(3001, dtype, seed=9)
    first = torch_summary.device_fingerprint(weights)
    assert first == torch_summary.device_fingerprint(weights.clone()) == int(first) and 0 <= first < 2**32
    seen = {first}
    for position in (0, 1, 1500, 3000):
        for direction in (np.inf, -np.inf):
            changed = weights.clone()
            changed[position] = torch.nextafter(weights[position:position + 1], torch.tensor([direction], dtype=dtype))[0]
            fingerprint = torch_summary.device_fingerprint(changed)
            assert fingerprint not in seen, (position, direction)
            seen.add(fingerprint)
    swapped = weights.clone()
    swapped[[3, 4]] = weights[[4, 3]]
    assert weights[3] != weights[4] and torch_summary.device_fingerprint(swapped) != first  # order matters
    assert torch_summary.device_fingerprint(weights[:-1]) != first
    # In the stored vector, and for every integer dtype too.
    assert torch_summary.device_statistics(weights)[INDEX["fingerprint"]] == first
    for tensor in (torch.arange(10), torch.arange(10, dtype=torch.int16), torch.zeros(5, dtype=torch.bool), torch.zeros(0)):
        assert torch_summary.device_fingerprint(tensor) == torch_summary.device_fingerprint(tensor.clone())
    assert torch_summary.device_fingerprint(torch.zeros(4)) != torch_summary.device_fingerprint(torch.zeros(4, dtype=torch.float64))


# -- the logger ----------------------------------------------------------------


def _stored(directory):
    with reader.open_logdir(str(directory), loader="python") as opened:
        series, _ = reader.read_series(opened)
    return {(s.run, s.tag): s for s in series}


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory):
    """One real AdamW training, logged by the numpy path, the device path (forced, on CPU)
    and one logger that changes path mid-run (what a model moving off a GPU does)."""
    from test_torch_logger import Net, _train

    torch.manual_seed(0)
    logdir = tmp_path_factory.mktemp("device_summary")
    model = Net()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    loggers = {
        "numpy": WeightDiffLogger(logdir / "numpy", model, optimizer=optimizer, buffers=True, device_summary=False),
        "device": WeightDiffLogger(logdir / "device", model, optimizer=optimizer, buffers=True, device_summary=True),
        "auto": WeightDiffLogger(logdir / "auto", model, optimizer=optimizer, buffers=True),
        "moved": WeightDiffLogger(logdir / "moved", model, optimizer=optimizer, buffers=True, device_summary=True),
    }

    def on_epoch_end(epoch):
        if epoch == 3:
            # Half way: CPU tensors of a device-fingerprint logger now take the numpy path.
            loggers["moved"].device_summary = "auto"
        for logger in loggers.values():
            logger.log(epoch + 1)

    _train(model, optimizer, 6, on_epoch_end)
    for logger in loggers.values():
        logger.close()
    return logdir, loggers


def test_the_device_path_gives_the_numpy_paths_verdicts(both_paths):
    from test_torch_logger import EXPECTED, _verdicts

    logdir, loggers = both_paths
    assert loggers["numpy"].fingerprint_kind == "crc32" and loggers["auto"].fingerprint_kind == "crc32"
    assert loggers["device"].fingerprint_kind == "device"
    runs = _verdicts(logdir, "python")
    verdicts = {
        name: {layer["name"]: layer["verdict"] for layer in run["layers"]} for name, run in runs.items()
    }
    assert verdicts["numpy"] == dict(EXPECTED, dead="decay_only")
    assert verdicts["device"] == verdicts["numpy"] == verdicts["auto"] == verdicts["moved"]
    for name in ("numpy", "device", "moved"):
        assert runs[name]["steps"] == list(range(7))


def test_the_device_paths_numbers_are_the_numpy_paths(both_paths):
    logdir, _ = both_paths
    stored = _stored(logdir)
    tags = sorted(tag for run, tag in stored if run == "numpy")
    assert tags and tags == sorted(tag for run, tag in stored if run == "device")
    fingerprint = INDEX["fingerprint"]
    for tag in tags:
        numpy, device, auto = (stored[(run, tag)].table for run in ("numpy", "device", "auto"))
        assert np.array_equal(numpy, auto, equal_nan=True)  # auto on the CPU is the numpy path
        assert numpy.shape == device.shape
        others = [i for i in range(numpy.shape[1]) if i != fingerprint]
        np.testing.assert_allclose(device[:, others], numpy[:, others], rtol=1e-9, atol=1e-15, err_msg=tag)
        for name in EXACT[:-1] + ("trainable",):
            assert _same(device[:, INDEX[name]], numpy[:, INDEX[name]]), (tag, name)
        assert _same(device[:, STATS:], numpy[:, STATS:]), tag
        # Same tensors, same fingerprints: a change of fingerprint is a change of the values.
        changed = np.diff(numpy[:, fingerprint]) != 0
        assert np.array_equal(np.diff(device[:, fingerprint]) != 0, changed), tag


def test_one_logger_keeps_one_fingerprint_kind_when_the_path_changes(both_paths):
    logdir, _ = both_paths
    stored = _stored(logdir)
    fingerprint = INDEX["fingerprint"]
    for run, tag in stored:
        if run != "moved":
            continue
        device = stored[("device", tag)].table[:, fingerprint]
        moved = stored[("moved", tag)].table[:, fingerprint]
        assert np.array_equal(moved, device), tag  # steps 0-3 on the device path, 4-6 on numpy's
    frozen = stored[("moved", "frozen.weight")].table[:, fingerprint]
    assert np.all(frozen == frozen[0])


def test_logger_options(tmp_path):
    model = torch.nn.Linear(4, 3)
    logger = WeightDiffLogger(tmp_path / "a", model, device_summary=True, device_reference=1 << 20)
    # CPU tensors: the reference is on the host, the device is the host.
    assert logger.reference_nbytes() == 15 * 4 and logger.device_reference_nbytes() == 0
    logger.log(1)
    logger.close()
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="device_summary"):
            WeightDiffLogger(tmp_path / "b", model, device_summary=bad)
    with pytest.raises(ValueError, match="device_reference"):
        WeightDiffLogger(tmp_path / "c", model, device_reference=-1)


def test_the_lightning_callback_passes_the_options_through(tmp_path):
    pytest.importorskip("lightning")
    from tb_weightdiff.lightning import WeightDiffCallback

    class Trainer:
        is_global_zero = True
        optimizers = []
        loggers = []

    callback = WeightDiffCallback(log_dir=tmp_path, device_summary=True, device_reference=False)
    callback.on_fit_start(Trainer(), torch.nn.Linear(2, 2))
    assert callback.logger.device_summary is True and callback.logger.device_reference is False
    assert callback.logger.fingerprint_kind == "device"
    callback.logger.close()
    with pytest.raises(ValueError, match="device_summary"):
        WeightDiffCallback(device_summary="gpu")
