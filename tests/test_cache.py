"""tb_weightdiff.cache: answers and per-run verdicts, each valid for one version of the data."""

import json
import threading
import time

import pytest
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer

from tb_weightdiff import cache as cache_lib
from tb_weightdiff import judge
from tb_weightdiff import metadata
from tb_weightdiff import plugin as plugin_lib
from tb_weightdiff import reader
from tb_weightdiff import scores
from tb_weightdiff import verdicts
from conftest import plugin_client
from logdirs import append_step
from logdirs import write_planted_logdir

PREFIX = "/data/plugin/tb_weightdiff"


def test_answer_cache_keeps_nothing_for_failed_requests():
    answers = cache_lib.AnswerCache(max_bytes=2)

    def fail():
        raise ValueError("bad request")

    for i in range(100):
        with pytest.raises(ValueError):
            answers.get(("key", i), 1, fail)
    assert len(answers) == 0 and answers._key_locks == {}  # pylint: disable=protected-access
    assert answers.get("a", 1, lambda: b"1") == b"1"
    assert answers.get("a", 1, lambda: b"x") == b"1"  # same version: cached
    assert answers.get("a", 2, lambda: b"2") == b"2"  # new data: recomputed
    answers.get("b", 1, lambda: b"b")
    answers.get("c", 1, lambda: b"c")
    assert len(answers) == 2  # two bytes at most: the oldest went


def test_a_cached_answer_is_refreshed_when_the_data_changes(tmp_path):
    series = write_planted_logdir(tmp_path)
    client, opened = plugin_client(tmp_path, "python")
    try:
        first = client.get(PREFIX + "/verdicts").get_data()
        assert client.get(PREFIX + "/verdicts").get_data() == first
    finally:
        opened.__exit__(None, None, None)
    append_step(tmp_path, series, 6)
    client, opened = plugin_client(tmp_path, "python")
    try:
        later = json.loads(client.get(PREFIX + "/verdicts?run=planted").get_data())
    finally:
        opened.__exit__(None, None, None)
    assert later["runs"][0]["steps"] == list(range(7))


def test_verdicts_put_together_from_run_entries_equal_one_judging(tmp_path, loader):
    """/verdicts assembles cached per-run entries; the bytes must mean what judging the logdir at once gives."""
    write_planted_logdir(tmp_path / "run1")
    write_planted_logdir(tmp_path / "run2")
    client, opened = plugin_client(tmp_path, loader)
    try:
        logdir = reader.Logdir(reader.ListingMemo(_provider_of(client)), loader)
        for query, runs, thresholds in (
            ("", None, verdicts.Thresholds()),
            ("?run=run1/planted&min_shift=0.5", ["run1/planted"], verdicts.Thresholds(min_shift=0.5)),
        ):
            response = client.get(PREFIX + "/verdicts" + query)
            assert response.status_code == 200
            expected = judge.analyze_logdir(logdir, runs=runs, thresholds=thresholds)
            if runs is None:
                expected["runs_without_weights"] = []
            assert json.loads(response.get_data()) == json.loads(verdicts.to_json(expected))
    finally:
        opened.__exit__(None, None, None)


def _plugin_of(client):
    app = client.application
    [plugin] = [p for p in app._plugins if p.plugin_name == metadata.PLUGIN_NAME]  # pylint: disable=protected-access
    return plugin


def _provider_of(client):
    return _plugin_of(client)._data_provider  # pylint: disable=protected-access


def _count_judgings(monkeypatch):
    """Spies on `judge.analyze_logdir`: the list it returns gets each call's sorted runs (None: all)."""
    judged = []
    real = judge.analyze_logdir

    def spy(logdir, runs=None, **kwargs):
        judged.append(sorted(runs) if runs is not None else None)
        return real(logdir, runs=runs, **kwargs)

    monkeypatch.setattr(judge, "analyze_logdir", spy)
    return judged


def _reloadable_client(logdir):
    """`(werkzeug client over the plugin, the multiplexer it reads)`: `multiplexer.Reload()`
    after writing to `logdir` is TensorBoard loading what is new."""
    from tensorboard.backend import application
    from tensorboard.plugins import base_plugin
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0, metadata.HISTOGRAM_PLUGIN_NAME: 0},
    )
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider)
    app = application.TensorBoardWSGI([plugin_lib.WeightDiffPlugin(context)])
    return werkzeug_test.Client(app, wrappers.Response), multiplexer


def test_an_answer_the_tab_holds_already_comes_back_as_a_304_until_the_data_changes(tmp_path):
    series = write_planted_logdir(tmp_path)
    client, multiplexer = _reloadable_client(tmp_path)
    first = client.get(PREFIX + "/verdicts")
    tag = first.headers["ETag"]
    assert first.status_code == 200 and tag.startswith('"') and first.get_data()
    again = client.get(PREFIX + "/verdicts", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.get_data() == b"" and again.headers["ETag"] == tag
    # Another question (thresholds, CSV) is another answer, with its own tag.
    other = client.get(PREFIX + "/verdicts?min_shift=0.5", headers={"If-None-Match": tag})
    assert other.status_code == 200 and other.headers["ETag"] != tag
    append_step(tmp_path, series, 6)
    multiplexer.Reload()
    later = client.get(PREFIX + "/verdicts", headers={"If-None-Match": tag})
    assert later.status_code == 200 and later.headers["ETag"] != tag
    assert json.loads(later.get_data())["runs"][-1]["steps"][-1] == 6


def test_the_distance_memo_is_filled_after_the_answer_and_a_poll_reuses_it(tmp_path, monkeypatch):
    # The first judging hashes no step before its answer: the memo is filled
    # once the response is closed (sent), and the judging after one new step
    # computes that step's distances only.
    from tb_weightdiff import distance

    series = write_planted_logdir(tmp_path)
    memo = scores.DistanceMemo()
    monkeypatch.setattr(scores, "DISTANCES", memo)
    client, multiplexer = _reloadable_client(tmp_path)
    response = client.get(PREFIX + "/verdicts")
    assert response.status_code == 200 and response.get_data()
    response.close()
    assert len(memo) > 0
    counted = []
    real = distance.Distributions.pairs
    monkeypatch.setattr(distance.Distributions, "pairs",
                        lambda self, first, second: counted.append(len(first)) or real(self, first, second))
    append_step(tmp_path, series, 6)
    multiplexer.Reload()
    later = json.loads(client.get(PREFIX + "/verdicts").get_data())
    assert later["runs"][-1]["steps"][-1] == 6
    assert sum(counted) == 2 * len(series)  # the new step's two distances per planted series, nothing else


def test_only_the_run_that_logged_a_step_is_judged_again(tmp_path, monkeypatch):
    series = write_planted_logdir(tmp_path / "a")
    write_planted_logdir(tmp_path / "b")
    client, multiplexer = _reloadable_client(tmp_path)
    judged = _count_judgings(monkeypatch)
    first = json.loads(client.get(PREFIX + "/verdicts").get_data())
    assert judged == [["a/keras_like/train", "a/planted", "b/keras_like/train", "b/planted"]]
    assert json.loads(client.get(PREFIX + "/verdicts?run=b/planted").get_data())["runs"] == [
        run for run in first["runs"] if run["run"] == "b/planted"
    ]
    detail = client.get(PREFIX + "/variable?run=a/planted&tag=model/dense/kernel")
    assert detail.status_code == 200
    assert len(judged) == 1  # the filtered answer and the detail came from the run cache

    append_step(tmp_path / "a", series, 6)
    multiplexer.Reload()
    second = json.loads(client.get(PREFIX + "/verdicts").get_data())
    assert judged[1:] == [["a/planted"]]
    changed = {run["run"]: run for run in second["runs"]}
    assert changed["a/planted"]["steps"] == [0, 1, 2, 3, 4, 5, 6]
    assert [run for run in second["runs"] if run["run"] != "a/planted"] == [
        run for run in first["runs"] if run["run"] != "a/planted"
    ]
    # New thresholds judge every run again (verdicts depend on them).
    client.get(PREFIX + "/verdicts?min_shift=0.5")
    assert judged[2] == ["a/keras_like/train", "a/planted", "b/keras_like/train", "b/planted"]


def test_a_plugins_listing_judges_ahead_and_the_tab_takes_those_verdicts(tmp_path, loader, monkeypatch):
    """TensorBoard's page asks for the plugins listing before it creates the tab: the
    verdicts are judged then, and the tab's first /verdicts is served from them."""
    write_planted_logdir(tmp_path / "run1")
    write_planted_logdir(tmp_path / "run2")
    client, opened = plugin_client(tmp_path, loader)
    try:
        plugin = _plugin_of(client)
        real = judge.analyze_logdir
        judged = _count_judgings(monkeypatch)
        listing = client.get("/data/plugins_listing")
        assert listing.status_code == 200
        plugin._warming.join(120)  # pylint: disable=protected-access
        assert judged == [["run1/keras_like/train", "run1/planted", "run2/keras_like/train", "run2/planted"]]
        answer = json.loads(client.get(PREFIX + "/verdicts").get_data())
        assert len(judged) == 1  # taken from the warm-up
        logdir = reader.Logdir(reader.ListingMemo(_provider_of(client)), loader)
        expected = real(logdir)
        expected["runs_without_weights"] = []
        assert answer == json.loads(verdicts.to_json(expected))
        # Nothing new: another listing (a reload) judges nothing.
        client.get("/data/plugins_listing")
        plugin._warming.join(120)  # pylint: disable=protected-access
        assert len(judged) == 1
    finally:
        opened.__exit__(None, None, None)


def test_a_request_during_the_warm_up_waits_for_it_instead_of_judging_again(tmp_path, monkeypatch):
    write_planted_logdir(tmp_path)
    client, opened = plugin_client(tmp_path, "python")
    try:
        plugin = _plugin_of(client)
        started, release, judged = threading.Event(), threading.Event(), []
        real = judge.analyze_logdir

        def slow(logdir, runs=None, **kwargs):
            judged.append(threading.current_thread().name)
            started.set()
            release.wait(60)
            return real(logdir, runs=runs, **kwargs)

        monkeypatch.setattr(judge, "analyze_logdir", slow)
        warming = plugin.warm_up()
        assert started.wait(60)
        assert plugin.warm_up() is None  # one warm-up at a time
        answers = []
        request = threading.Thread(target=lambda: answers.append(client.get(PREFIX + "/verdicts")))
        request.start()
        request.join(0.5)
        assert request.is_alive()  # waiting for the warm-up's judging
        release.set()
        request.join(60)
        warming.join(60)
        assert answers[0].status_code == 200 and len(json.loads(answers[0].get_data())["runs"]) == 2
        assert judged == ["tb_weightdiff-warm-up"]
    finally:
        opened.__exit__(None, None, None)


def test_a_failing_warm_up_is_logged_and_the_tab_still_answers(tmp_path, monkeypatch, caplog):
    write_planted_logdir(tmp_path)
    client, opened = plugin_client(tmp_path, "python")
    try:
        plugin = _plugin_of(client)
        real = judge.analyze_logdir
        calls = []

        def broken_once(logdir, runs=None, **kwargs):
            calls.append(runs)
            if len(calls) == 1:
                raise RuntimeError("disk went away")
            return real(logdir, runs=runs, **kwargs)

        monkeypatch.setattr(judge, "analyze_logdir", broken_once)
        with caplog.at_level("INFO", logger="tb_weightdiff.plugin"):
            plugin.warm_up().join(60)
        assert any("judging ahead of the tab failed" in record.getMessage() for record in caplog.records)
        response = client.get(PREFIX + "/verdicts")
        assert response.status_code == 200 and len(json.loads(response.get_data())["runs"]) == 2
        assert len(calls) == 2
    finally:
        opened.__exit__(None, None, None)


def test_the_plugin_reads_through_the_data_servers_stub_and_a_failure_there_is_asked_again(tmp_path, monkeypatch):
    write_planted_logdir(tmp_path)
    client, opened = plugin_client(tmp_path, "rust")
    try:
        fast = []
        real = reader._read_from_data_server  # pylint: disable=protected-access

        def counted(*args, **kwargs):
            fast.append(args[2])
            return real(*args, **kwargs)

        monkeypatch.setattr(reader, "_read_from_data_server", counted)
        first = client.get(PREFIX + "/verdicts")
        assert first.status_code == 200 and fast  # under TensorBoard's wrappers too

        def failing(*args, **kwargs):
            raise RuntimeError("stub went away")

        monkeypatch.setattr(reader, "_read_from_data_server", failing)
        again = client.get(PREFIX + "/verdicts?min_shift=0.001")  # new thresholds: judged again
        assert again.status_code == 200
        assert [run["run"] for run in json.loads(again.get_data())["runs"]] == [
            run["run"] for run in json.loads(first.get_data())["runs"]
        ]
    finally:
        opened.__exit__(None, None, None)


def _startup_judging(plugin):
    """The plugin's startup judging thread, once it has started (10 s at most)."""
    for _ in range(200):
        if plugin._warming is not None:  # pylint: disable=protected-access
            return plugin._warming  # pylint: disable=protected-access
        time.sleep(0.05)
    raise AssertionError("the startup judging did not start within 10 s")


@pytest.mark.parametrize("settle_seconds", [0.05, 60.0])
def test_once_tensorboard_has_loaded_the_logdir_it_is_judged_without_being_asked(tmp_path, monkeypatch, settle_seconds):
    """TensorBoard's data server has usually loaded the logdir before TensorBoard
    serves its page: the first look that sees weights judges, without waiting
    for a second look (60 s: two equal looks a minute apart would time out)."""
    write_planted_logdir(tmp_path)
    monkeypatch.setattr(plugin_lib, "STARTUP_WARM_UP", True)
    monkeypatch.setattr(plugin_lib, "STARTUP_FIRST_LOOK_SECONDS", 0.05)
    monkeypatch.setattr(plugin_lib, "STARTUP_SETTLE_SECONDS", settle_seconds)
    judged = _count_judgings(monkeypatch)
    client, opened = plugin_client(tmp_path, "python")
    try:
        _startup_judging(_plugin_of(client)).join(60)
        assert judged == [["keras_like/train", "planted"]]
        assert client.get(PREFIX + "/verdicts").status_code == 200
        assert len(judged) == 1
    finally:
        opened.__exit__(None, None, None)


def test_a_logdir_that_loads_in_stages_is_judged_again_at_startup_for_what_is_new(tmp_path, monkeypatch):
    """TensorBoard loads a large logdir in stages: the startup judging that
    caught the first stage is followed by one of the run that gained a step."""
    series = write_planted_logdir(tmp_path / "a")
    write_planted_logdir(tmp_path / "b")
    monkeypatch.setattr(plugin_lib, "STARTUP_WARM_UP", True)
    monkeypatch.setattr(plugin_lib, "STARTUP_SETTLE_SECONDS", 0.05)
    judged = _count_judgings(monkeypatch)
    client, multiplexer = _reloadable_client(tmp_path)

    def wait_for(count):
        for _ in range(400):
            plugin = _plugin_of(client)
            warming = plugin._warming  # pylint: disable=protected-access
            if len(judged) >= count and warming is not None and not warming.is_alive():
                return
            time.sleep(0.05)
        raise AssertionError("judged %r, expected %d judgings" % (judged, count))

    wait_for(1)
    assert judged == [["a/keras_like/train", "a/planted", "b/keras_like/train", "b/planted"]]
    time.sleep(0.5)
    assert len(judged) == 1  # nothing new: not judged again
    append_step(tmp_path / "a", series, 6)
    multiplexer.Reload()
    wait_for(2)
    assert judged[1:] == [["a/planted"]]  # only the run that changed
    answer = json.loads(client.get(PREFIX + "/verdicts").get_data())
    assert len(judged) == 2  # the tab's first request is served from the startup judging
    assert {run["run"]: run for run in answer["runs"]}["a/planted"]["steps"][-1] == 6


def test_a_logdir_without_weights_is_never_judged_at_startup(tmp_path, monkeypatch):
    monkeypatch.setattr(plugin_lib, "STARTUP_WARM_UP", True)
    monkeypatch.setattr(plugin_lib, "STARTUP_SETTLE_SECONDS", 0.02)
    monkeypatch.setattr(plugin_lib, "STARTUP_DEADLINE_SECONDS", 0.3)
    judged = []
    monkeypatch.setattr(judge, "analyze_logdir", lambda *args, **kwargs: judged.append(1))
    client, opened = plugin_client(tmp_path, "python")
    try:
        time.sleep(1.0)
        assert judged == [] and _plugin_of(client)._warming is None  # pylint: disable=protected-access
    finally:
        opened.__exit__(None, None, None)
