"""tb_weightdiff.scores: how tags name layers, the scale rule, the scores of each variable."""

import dataclasses

import numpy as np
import pytest

from tb_weightdiff import judge
from tb_weightdiff import scores
from tb_weightdiff import verdicts
from series import by_variable, histograms, ours, walk


@pytest.mark.parametrize(
    "tag, expected",
    [
        ("sequential/conv2d/kernel", ("sequential/conv2d", "kernel")),
        ("sequential/conv2d/kernel/histogram", ("sequential/conv2d", "kernel")),
        ("model/inner/dense/bias", ("model/inner/dense", "bias")),
        ("layer1.0.conv1.weight", ("layer1.0.conv1", "weight")),  # torch's parameter names
        ("w", ("w", "w")),
        ("histogram", ("histogram", "histogram")),
    ],
)
def test_split_tag(tag, expected):
    assert scores.split_tag(tag) == expected


def test_relative_change_and_cosine_are_the_summaries_own(rng):
    start = rng.normal(size=100)
    end = start * 1.5 + 0.1
    [run] = judge.analyze_series([ours("a/w", [start, end])])
    variable = run["layers"][0]["variables"][0]
    assert variable["relative_change"] == pytest.approx(np.linalg.norm(end - start) / np.linalg.norm(start))
    cosine = end @ start / np.linalg.norm(end) / np.linalg.norm(start)
    assert variable["cosine_distance"] == pytest.approx(1 - cosine, rel=1e-6)
    assert variable["reference_distance"] == pytest.approx(np.linalg.norm(end - start))
    assert variable["movement_kind"] == "relative_change"
    assert variable["movement"] == variable["relative_change"]


def test_shift_is_w1_over_the_baseline_std(rng):
    start = rng.normal(size=1000)
    moved = start + 0.5
    [run] = judge.analyze_series([ours("a/w", [start, moved], reference=None)])
    variable = run["layers"][0]["variables"][0]
    assert variable["scale_basis"] == "baseline_std"
    assert variable["scale"] == pytest.approx(start.std())
    assert variable["distance_from_baseline"][1] == pytest.approx(0.5, rel=1e-9)
    assert variable["shift"] == pytest.approx(0.5 / start.std(), rel=1e-9)
    # Without a reference the shift is the movement.
    assert variable["movement_kind"] == "shift" and variable["relative_change"] is None


def test_zero_spread_falls_back_to_the_layers_kernel(rng):
    kernel = rng.normal(0, 0.5, (8, 8))
    bias = [np.zeros(8), np.full(8, 0.01)]
    [run] = judge.analyze_series(
        [ours("d/kernel", [kernel, kernel * 1.1]), ours("d/bias", bias)]
    )
    variables = by_variable(run["layers"][0])
    assert variables["bias"]["scale_basis"] == "layer_baseline_std"
    assert variables["bias"]["scale"] == pytest.approx(kernel.std())
    assert variables["bias"]["shift"] == pytest.approx(0.01 / kernel.std())
    # A lone zero-initialised vector: its own spread at the last step, then its RMS.
    [alone] = judge.analyze_series([ours("e/bias", [np.zeros(4), np.array([0.0, 0.0, 0.0, 1.0])])])
    assert alone["layers"][0]["variables"][0]["scale_basis"] == "last_std"
    [constant] = judge.analyze_series([ours("f/scale", [np.zeros(3), np.full(3, 2.0)])])
    variable = constant["layers"][0]["variables"][0]
    assert variable["scale_basis"] == "rms" and variable["shift"] == pytest.approx(1.0)


def test_a_run_is_scored_in_one_pass_as_each_layer_alone(rng):
    # The per-step scores of all variables are computed on their steps joined:
    # the numbers must be those of each layer scored on its own, bit for bit.
    kernel = rng.normal(0, 0.5, (8, 8))
    walked = [kernel + 0.01 * i * rng.normal(size=kernel.shape) for i in range(5)]
    nan = [kernel, kernel * 1.01, np.full_like(kernel, np.nan), kernel]
    series_list = [
        ours("d/kernel", walked), ours("d/bias", [np.zeros(8), np.zeros(8), np.full(8, 0.01)]),
        ours("z/bias", [np.zeros(3)] * 4),  # no spread at any step: no scale
        ours("n/kernel", nan, reference=None), histograms("h/kernel", walked, steps=[2, 4, 6, 8, 10]),
        histograms("h/bias", [np.zeros(8), np.full(8, 1e-30), np.full(8, 3e30)]),
        histograms("one/kernel", walked[:1]),
    ]
    _, together = _scored(series_list)
    assert together["z/bias"].scale is None and together["n/kernel"].diverged_step == 2
    assert together["z/bias"].shift_from_baseline.tolist() == [0.0] * 4  # only 0 means something there
    for layer in ("d", "z", "n", "h", "one"):
        _, alone = _scored([s for s in series_list if s.tag.startswith(layer + "/")])
        for tag, variable in alone.items():
            for field in ("distance_from_baseline", "shift_from_baseline", "per_step_shift"):
                np.testing.assert_array_equal(
                    getattr(together[tag], field).view(np.int64), getattr(variable, field).view(np.int64)
                )
            for field in ("scale", "scale_basis", "movement", "movement_step", "settled_step", "rescale"):
                assert getattr(together[tag], field) == getattr(variable, field), (tag, field)


def _scored(series_list, fraction=0.1):
    variables = scores.build_variables(series_list, [])
    return scores.score_layers(variables, fraction), {v.tag: v for v in variables}


def test_like_is_compared_with_like(rng):
    kernel = rng.normal(0, 0.2, (8, 8))
    series = [
        ours("m/dense/kernel", [kernel, kernel * 1.1]),
        ours("m/dense/bias", [np.zeros(8), np.full(8, 0.01)]),
        ours("m/embedding/embeddings", [kernel, kernel * 1.1]),
        ours("m/torch_embed/weight", [kernel, kernel * 1.1]),
        ours("m/norm/gamma", [np.ones(8), np.ones(8) * 1.01]),
        ours("m/norm/moving_mean", [np.zeros(8), np.full(8, 0.2)], trainable=False),
        ours("m/ln/weight", [np.ones(8), np.linspace(0.9, 1.1, 8)]),  # torch's LayerNorm: ones at first
    ]
    series[3] = dataclasses.replace(series[3], tag="m.embed_tokens.weight")
    _, by_tag = _scored(series)
    groups = {tag: variable.peer_group for tag, variable in by_tag.items()}
    assert groups == {
        "m/dense/kernel": scores.WEIGHTS,
        "m/dense/bias": scores.CONSTANT_INIT,
        "m/embedding/embeddings": scores.EMBEDDING,
        "m.embed_tokens.weight": scores.EMBEDDING,
        "m/norm/gamma": scores.CONSTANT_INIT,
        "m/norm/moving_mean": scores.STATISTICS,
        "m/ln/weight": scores.CONSTANT_INIT,
    }
    # The writer's layer class, where it recorded one, comes first.
    typed = dataclasses.replace(ours("m/table/weight", [kernel, kernel * 1.1]), layer_type="Embedding")
    assert scores.peer_group(scores.build_variables([typed], [])[0]) == scores.EMBEDDING


def test_a_layer_is_decided_by_gamma_not_beta_nor_its_statistics(rng):
    ones, zeros = np.ones(8), np.zeros(8)
    variables = scores.build_variables(
        [
            histograms("bn/beta/histogram", [zeros + 0.01 * rng.standard_normal(8), zeros + 0.05 * rng.standard_normal(8)]),
            histograms("bn/gamma/histogram", [ones + 0.01 * rng.standard_normal(8), ones + 0.02 * rng.standard_normal(8)]),
            histograms("bn/moving_mean/histogram", [zeros + rng.standard_normal(8), zeros + rng.standard_normal(8)]),
        ],
        [],
    )
    scores.score_layers(variables)
    assert scores.driver(variables).name == "gamma"


def test_decay_alone_leaves_no_rotation_and_learning_does(rng):
    start = rng.normal(0, 0.1, (16, 16)).astype(np.float32)
    decayed = [start * np.float32(0.999) ** (10 * step) for step in range(4)]
    learned = [start + 0.01 * step * rng.standard_normal(start.shape).astype(np.float32) for step in range(4)]
    _, by_tag = _scored([ours("a/dead/kernel", decayed), ours("a/live/kernel", learned)])
    dead, live = by_tag["a/dead/kernel"], by_tag["a/live/kernel"]
    assert dead.rescale_residual < 1e-3 and dead.rescale == pytest.approx(0.999 ** 30, rel=1e-5)
    assert live.rescale_residual > 0.5
    assert dead.movement_step == 3


def test_settled_step_is_where_the_per_step_shift_stays_low():
    steps = [0, 1, 2, 3, 4, 5, 6]
    assert scores.settled_step(steps, [np.nan, 5, 4, 3, 0.2, 0.1, 0.0], 0.1) == 3
    assert scores.settled_step(steps, [np.nan, 5, 4, 3, 2, 1, 0.1], 0.1) is None  # only the last interval is low
    assert scores.settled_step(steps, [np.nan, 0, 0, 0, 0, 0, 0], 0.1) is None  # never moved
    assert scores.settled_step(steps[:2], [np.nan, 1.0], 0.1) is None


def _settled_alone(steps, values, fraction):
    """`settled_step` of one series as first written (the batched one must equal it)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if values.size < 3 or not finite[1:].any():
        return None
    peak = float(np.max(values[finite]))
    if not peak > 0:
        return None
    last = int(np.flatnonzero(finite & (values > fraction * peak))[-1])
    return None if values.size - 1 - last < 2 else int(steps[last])


def test_largest_and_settled_of_many_series_at_once_equal_each_alone(rng):
    arrays = []
    for _ in range(400):
        values = rng.exponential(1.0, int(rng.integers(0, 9))) * rng.choice([0.0, 1e-300, 1.0, 1e300])
        values[rng.random(values.size) < 0.2] = np.nan
        if rng.random() < 0.2 and values.size:
            values[rng.integers(values.size)] = rng.choice([np.inf, -np.inf, values.max(initial=0)])
        if rng.random() < 0.3:
            values = np.round(values, 1)  # ties: the first of equals
        arrays.append(values)
    steps = [list(range(10, 10 + 3 * len(values), 3)) for values in arrays]

    def largest_alone(values):
        finite = np.isfinite(values)
        return int(np.argmax(np.where(finite, values, -np.inf))) if finite.any() else None

    assert scores._largest_each(arrays) == [largest_alone(values) for values in arrays]
    for fraction in (0.0, 0.1, 0.5, 0.999):
        expected = [_settled_alone(s, values, fraction) for s, values in zip(steps, arrays)]
        assert scores.settled_steps(steps, arrays, fraction) == expected
        assert sum(step is not None for step in expected) > 5
    assert scores._largest_each([]) == [] and scores.settled_steps([], [], 0.1) == []


def test_histogram_facts_of_a_batch_equal_each_series_alone(rng):
    from tb_weightdiff import distance

    def alone(distributions):  # as `_variable_from_histograms` computed them, one series at a time
        totals, nonfinite = distributions.logged_row_stats()
        raw, rows = distributions.raw, distributions.rows
        bad = np.flatnonzero(nonfinite)
        frozen = bool(len(rows)) and bool(np.all(rows == rows[0]) and np.all(raw == raw[:1]))
        return int(np.max(totals[np.isfinite(totals)], initial=0)), (int(bad[0]) if bad.size else None), frozen

    arrays, lengths = [], []
    for number in range(120):
        base = np.stack([np.arange(6.0), np.arange(1.0, 7.0), rng.integers(0, 9, 6).astype(float)], axis=1)
        steps = []
        for step in range(int(rng.integers(0, 6))):
            row = base.copy()
            if number % 3:  # a third stay frozen
                row[:, 2] = rng.integers(0, 9, 6)
            if rng.random() < 0.1:
                row[rng.integers(6), rng.integers(3)] = rng.choice([np.nan, np.inf, -5.0])
            steps.append(row)
        arrays += steps
        lengths.append(len(steps))
    batch = distance.histogram_distributions(arrays)
    series, offset = [], 0
    for length in lengths:
        series.append(batch.take_rows(offset, length))
        offset += length
    expected = [alone(d) for d in series]
    assert sum(frozen for _, _, frozen in expected) > 20 and sum(bad is not None for _, bad, _ in expected) > 5
    assert scores._histogram_facts(series) == expected
    order = rng.permutation(len(series))[:70]  # not the whole batch, nor in its order
    assert scores._histogram_facts([series[i] for i in order]) == [expected[i] for i in order]
    assert scores._histogram_facts([distance.histogram_distributions(arrays[:4])]) == [
        alone(distance.histogram_distributions(arrays[:4]))
    ]


def test_fixed_edges_of_many_pairs_at_once_equal_each_alone(rng):
    from tb_weightdiff import distance

    def alone(distributions, first, second):  # as first written, one pair at a time
        inner = [distributions.raw[row, 1 : int(distributions.rows[row]), 0] for row in (first, second)]
        if inner[0].size < 2 or inner[1].size < 2:
            return False
        known = np.sort(inner[0])
        where = np.minimum(np.searchsorted(known, inner[1]), known.size - 1)
        return bool(np.mean(known[where] == inner[1]) > 0.5)

    def histogram(edges):
        return np.stack([edges[:-1], edges[1:], np.ones(edges.size - 1)], axis=1)

    arrays = []
    for _ in range(250):
        first = np.sort([np.linspace(-1, 1, int(rng.integers(2, 12))),  # torch's fixed buckets
                         rng.normal(size=int(rng.integers(2, 12))),
                         rng.choice([-0.0, 0.0, 0.5, 1.0, 1.5, np.nan], int(rng.integers(2, 9)))][rng.integers(3)])
        kind = rng.integers(3)
        if kind == 0:  # the same edges, a few dropped
            second = first[rng.random(first.size) < 0.8]
        elif kind == 1:  # its own range
            second = np.sort(rng.normal(size=int(rng.integers(2, 12))))
        else:  # some shared, repeats, -0.0 against 0.0
            second = np.sort(np.concatenate([rng.choice(first, int(rng.integers(0, 6))), rng.normal(size=3)]))
        if second.size < 2:
            second = first
        arrays += [histogram(first), histogram(second)]
    batch = distance.histogram_distributions(arrays)
    pairs = [(batch, i, i + 1) for i in range(0, len(arrays), 2)] + [
        (batch, int(a), int(b)) for a, b in rng.integers(0, len(arrays), (100, 2))
    ]
    expected = [alone(*pair) for pair in pairs]
    assert 50 < sum(expected) < 300
    assert scores._fixed_edges_each(pairs) == expected
    assert scores._fixed_edges_each([]) == []


def test_updates_give_the_movement_per_update(rng):
    start = rng.normal(size=(8, 8))
    _, by_tag = _scored([ours("a/w", [start, start * 1.5])])
    variable = by_tag["a/w"]
    scores.attach_updates([variable], [0, 1], [0, 400])
    assert variable.updates == 400
    assert variable.update_ratio == pytest.approx(variable.movement / 20)


def _pair_counter(monkeypatch):
    from tb_weightdiff import distance

    counted = []
    real = distance.Distributions.pairs

    def pairs(self, first, second):
        counted.append(len(first))
        return real(self, first, second)

    monkeypatch.setattr(distance.Distributions, "pairs", pairs)
    return counted


@pytest.mark.parametrize("make", [ours, histograms])
def test_a_series_that_gained_a_step_computes_only_the_new_steps_distances(rng, monkeypatch, make):
    arrays = walk(rng, rng.normal(0, 0.1, 300), 12, 0.05)
    series = [make("m/dense/kernel", arrays), make("m/dense/bias", [a[:20] for a in arrays])]
    shorter = [dataclasses.replace(s, steps=s.steps[:-1], summaries=s.summaries[:-1]) for s in series]
    fresh = judge.analyze_series(series)  # (the default memo: its own tags' entries)
    memo = scores.DistanceMemo()
    monkeypatch.setattr(scores, "DISTANCES", memo)
    counted = _pair_counter(monkeypatch)
    judge.analyze_series(shorter)
    assert sum(counted) == 2 * 2 * 10  # two series, 10 later steps, from the baseline and the step before
    memo.flush()  # (the plugin's, once its answer has gone out)
    counted.clear()
    assert judge.analyze_series(series) == fresh  # the memo changes no number
    assert sum(counted) == 2 * 2  # only the new step's two distances, per series
    counted.clear()
    # An earlier step that changed (a rewritten log): its distances and all after are computed again.
    changed = list(arrays)
    changed[5] = changed[5] * 1.5
    rewritten = [make("m/dense/kernel", changed), make("m/dense/bias", [a[:20] for a in changed])]
    with monkeypatch.context() as patch:
        patch.setattr(scores, "DISTANCES", scores.DistanceMemo())
        expected = judge.analyze_series(rewritten)
    counted.clear()
    assert judge.analyze_series(rewritten) == expected
    assert sum(counted) == 2 * 2 * 7  # steps 5..11 again, from the baseline and the step before
    memo.flush()
    counted.clear()
    # The same data again (new thresholds, another poll): nothing computed.
    judge.analyze_series(rewritten, thresholds=verdicts.Thresholds(min_shift=0.5))
    assert sum(counted) == 0


def test_a_first_judging_stores_its_memo_entries_when_the_memo_is_flushed(rng, monkeypatch):
    """The first judging of a batch hashes nothing before its answer: its steps'
    digests, distances and rescale fits are stored by `flush` (the plugin's,
    after the answer has gone out), or when deferred rows pass the memo's budget."""
    from tb_weightdiff import distance

    memo = scores.DistanceMemo()
    monkeypatch.setattr(scores, "DISTANCES", memo)
    hashed = []
    real_digests = distance.Distributions.row_digests

    def row_digests(self, rows=None):
        hashed.append(len(self.valid) if rows is None else len(rows))
        return real_digests(self, rows)

    monkeypatch.setattr(distance.Distributions, "row_digests", row_digests)
    series = [histograms("m/dense/kernel", walk(rng, rng.normal(0, 0.1, 300), 8, 0.05)),
              histograms("m/dense/bias", walk(rng, rng.normal(0, 0.1, 20), 8, 0.05))]
    first = judge.analyze_series(series)
    assert hashed == [2]  # each series' first step only: the entries' names
    assert len(memo) == 0 and len(memo._fits) == 0
    memo.flush()
    assert hashed == [2, 16] and len(memo) == 2 and len(memo._fits) == 2
    memo.flush()  # nothing left to store
    assert hashed == [2, 16]
    counted = _pair_counter(monkeypatch)
    fits = []
    real_fits = distance.rescale_fits
    monkeypatch.setattr(distance, "rescale_fits", lambda requests: fits.append(len(requests)) or real_fits(requests))
    again = judge.analyze_series(series, thresholds=verdicts.Thresholds(min_shift=0.5))
    assert sum(counted) == 0 and fits == [0]  # distances and fits from the memo

    def figures(result):
        return [(v["tag"], v["shift_from_baseline"], v["rescale_residual"], v["rescale"])
                for v in result[0]["layers"][0]["variables"]]

    assert figures(again) == figures(first) and first[0]["layers"][0]["variables"][0]["rescale"] is not None
    # Before a flush, a judging of the same steps reuses nothing of them (and is still right).
    other = [histograms("n/dense/kernel", walk(rng, rng.normal(0, 0.1, 300), 8, 0.05))]
    expected = judge.analyze_series(other)
    counted.clear()
    assert judge.analyze_series(other) == expected and sum(counted) == 2 * 7 and len(memo) == 2
    memo.flush()
    counted.clear()
    assert judge.analyze_series(other) == expected and sum(counted) == 0 and len(memo) == 3
    # Past its budget, the memo stores the oldest deferred batches at once.
    small = scores.DistanceMemo(max_deferred_bytes=1)
    monkeypatch.setattr(scores, "DISTANCES", small)
    judge.analyze_series(series)
    assert len(small) == 0  # one batch deferred: kept, whatever its size
    judge.analyze_series(other)
    assert len(small) == 2  # the first batch stored when the second was deferred


def test_the_distance_memo_is_bounded_and_can_be_turned_off(rng, monkeypatch):
    memo = scores.DistanceMemo(max_steps=25)
    monkeypatch.setattr(scores, "DISTANCES", memo)
    for index in range(5):
        judge.analyze_series([histograms("t%d/kernel" % index, walk(rng, rng.normal(0, 0.1, 50), 10, 0.05))])
    memo.flush()
    assert len(memo) == 2  # 10 steps each, 25 at most: the oldest went
    counted = _pair_counter(monkeypatch)
    series = [histograms("t4/kernel", walk(rng, rng.normal(0, 0.1, 50), 10, 0.05))]
    variables = scores.build_variables(series, [])
    scores.score_layers(variables, memo=False)
    scores.score_layers(scores.build_variables(series, []), memo=False)
    assert sum(counted) == 2 * 2 * 9


def test_runs_whose_series_start_alike_keep_a_memo_entry_each(rng, monkeypatch):
    """Zero-initialised biases of two runs share tag and first step; a poll of each
    must still reuse its own distances."""
    memo = scores.DistanceMemo()
    monkeypatch.setattr(scores, "DISTANCES", memo)
    runs = {run: [np.zeros(16)] + [rng.normal(0, 0.1, 16) for _ in range(7)] for run in ("a", "b")}
    series = [histograms("m/dense/bias", arrays, run=run) for run, arrays in runs.items()]
    judge.analyze_series(series)
    memo.flush()
    assert len(memo) == 2
    counted = _pair_counter(monkeypatch)
    judge.analyze_series(series)
    assert sum(counted) == 0
