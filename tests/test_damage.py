"""One damaged tensor never takes down an answer: a fuzz run over damaged data.

A logdir holds healthy runs beside a run of our summaries damaged after
writing (random float64 vectors of every length and value class) and a run of
histograms holding random arrays (`tests/damage.py`). Through the judge, the
routes under both loaders, the CLI and a real TensorBoard: no 5xx, no
traceback, every damaged tag named in its run's warnings (or judged, when the
random vector happens to be a valid one), and the healthy runs judged exactly
as when they are alone.

`TBWD_DAMAGE_CASES` (default 200 tags of ours and 50 histograms) and
`TBWD_DAMAGE_SEEDS` (default 1) make the long run:
`TBWD_DAMAGE_CASES=2000 TBWD_DAMAGE_SEEDS=5 pytest tests/test_damage.py`.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from tb_weightdiff import judge
from tb_weightdiff import reader
from conftest import plugin_client
from damage import write_damaged_logdir
from damage import write_healthy_runs

CASES = int(os.environ.get("TBWD_DAMAGE_CASES", "200"))
SEEDS = list(range(int(os.environ.get("TBWD_DAMAGE_SEEDS", "1"))))
PREFIX = "/data/plugin/tb_weightdiff"
HEALTHY = ("healthy_a", "healthy_b", "keras_like/train")


@pytest.fixture(scope="module", params=SEEDS)
def logdirs(request, tmp_path_factory):
    damaged_dir = tmp_path_factory.mktemp("damaged")
    damaged = write_damaged_logdir(damaged_dir, CASES, seed=request.param)
    alone_dir = tmp_path_factory.mktemp("alone")
    write_healthy_runs(alone_dir, seed=request.param)
    return damaged_dir, alone_dir, damaged


def _judged(logdir, loader):
    with reader.open_logdir(str(logdir), loader=loader) as opened:
        return {run["run"]: run for run in judge.analyze_logdir(opened)["runs"]}


def test_every_damaged_tag_is_named_and_the_healthy_runs_are_judged_as_alone(logdirs, loader, caplog):
    damaged_dir, alone_dir, damaged = logdirs
    with caplog.at_level(logging.ERROR, logger="tb_weightdiff"):
        runs = _judged(damaged_dir, loader)
    # The reader's checks caught every damaged tensor: the judge never had to isolate one.
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    alone = _judged(alone_dir, loader)
    for run in HEALTHY:
        assert json.dumps(runs[run], sort_keys=True) == json.dumps(alone[run], sort_keys=True), run
    for run, tags in damaged.items():
        entry = runs[run]
        warned = "\n".join(entry["warnings"])
        judged = {variable["tag"] for layer in entry["layers"] for variable in layer["variables"]}
        unnamed = [tag for tag in tags if tag not in judged and tag not in warned]
        assert unnamed == [], (run, unnamed[:5])
        assert "good/dense/kernel" in "\n".join(judged)
        skipped = [tag for tag in tags if tag not in judged]
        assert len(skipped) > 0.9 * len(tags), (run, len(skipped), len(tags))


def test_no_route_answers_5xx_for_any_damaged_tag(logdirs, loader):
    damaged_dir, _, damaged = logdirs
    client, opened = plugin_client(damaged_dir, loader)
    statuses = {}
    try:
        for query in ("/verdicts", "/verdicts?format=csv", "/runs", "/verdicts?run=damaged&min_ratio_to_median=0.5"):
            response = client.get(PREFIX + query)
            statuses.setdefault(response.status_code, []).append(query)
        for run, tags in damaged.items():
            for tag in tags:
                for route in ("/variable?run=%s&tag=%s" % (run, tag), "/compare?run=%s&tag=%s&a=0&b=2" % (run, tag)):
                    response = client.get(PREFIX + route)
                    statuses.setdefault(response.status_code, []).append(route)
                    if response.status_code != 200:
                        assert response.headers["Content-Type"].startswith("text/plain"), route
                        assert "Traceback" not in response.get_data(as_text=True)
    finally:
        opened.__exit__(None, None, None)
    assert set(statuses) <= {200, 404}, {code: routes[:3] for code, routes in statuses.items()}
    assert len(statuses.get(200, [])) >= 4


def test_the_cli_reports_the_damaged_logdir_without_a_traceback(logdirs):
    damaged_dir, _, _ = logdirs
    executable = shutil.which("tb-weightdiff", path=os.path.dirname(sys.executable)) or shutil.which("tb-weightdiff")
    for output in ([], ["--json"], ["--csv"]):
        result = subprocess.run([executable, "report", "--logdir", str(damaged_dir), *output],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert "damaged" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_a_real_tensorboard_serves_the_damaged_logdir_without_a_traceback(logdirs, tensorboard_process, load_fast):
    damaged_dir, _, _ = logdirs
    server = tensorboard_process(damaged_dir, load_fast=load_fast,
                                 extra_args=["--samples_per_plugin", "tb_weightdiff=0,histograms=0"])
    body = server.wait_for(lambda j: {"healthy_a", "damaged"} <= {r["run"] for r in j["runs"]},
                           "/data/plugin/tb_weightdiff/verdicts", timeout=120)
    assert {run["run"] for run in body["runs"]} >= set(HEALTHY)
    assert "Traceback" not in server.output()
