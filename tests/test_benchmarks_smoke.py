"""The benchmark suite runs end to end at tiny sizes and prints its table.

No timing is asserted: the figures are in the README's Performance section, measured by
`python benchmarks/run_all.py`. This only keeps the scripts working. Where
TensorFlow is absent (the no-TF job) the TensorFlow benchmarks must report
themselves as skipped instead of failing.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import HAVE_TENSORFLOW

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_ALL = os.path.join(ROOT, "benchmarks", "run_all.py")
HAVE_BROWSER = os.path.exists("/usr/bin/chromium")
BENCHMARKS = ("1 write", "2 summary op", "3 logdir", "4 render", "5 memory", "6 cli", "7 torch write", "8 reset check",
              "9 write at scale")
TF_BENCHMARKS = ("1 write", "2 summary op", "5 memory")
EXPECTED = BENCHMARKS if HAVE_TENSORFLOW else TF_BENCHMARKS


def _number(bench):
    return bench.split()[0]


def _table_rows(stdout):
    """The rows of the final table: `{bench: [line, ...]}`."""
    final = stdout.split("all benchmarks", 1)[1]
    rows = {}
    for line in final.splitlines():
        for bench in BENCHMARKS:
            if line.startswith(bench):
                rows.setdefault(bench, []).append(line)
    return rows


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench_cache")
    markdown = cache / "table.md"
    # Without TensorFlow (run_tests.sh's second job) only the TensorFlow
    # benchmarks run, to show that they say why they are skipped; the others
    # need nothing TensorFlow gives and run in the first job.
    only = [] if HAVE_TENSORFLOW else ["--only", ",".join(_number(bench) for bench in TF_BENCHMARKS)]
    result = subprocess.run(
        [sys.executable, RUN_ALL, "--smoke", "--markdown", str(markdown), *only],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, TBWD_BENCH_CACHE=str(cache)),
    )
    return result, markdown


def test_every_benchmark_runs_and_prints_its_table(smoke_run):
    result, markdown = smoke_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    stdout = result.stdout
    assert "machine:" in stdout and "cores" in stdout
    header = next(line for line in stdout.split("all benchmarks", 1)[1].splitlines() if line.startswith("bench"))
    for column in ("figure", "ours", "peer", "ratio", "target", "result"):
        assert column in header
    rows = _table_rows(stdout)
    assert set(rows) == set(EXPECTED), rows.keys()
    assert "targets met:" in stdout
    # At smoke size nothing is judged, so nothing can read as met or missed.
    assert "MISSED" not in stdout.split("all benchmarks", 1)[1]
    assert markdown.read_text().count("\n|") >= len(sum(rows.values(), []))


@pytest.mark.skipif(not HAVE_TENSORFLOW, reason="the TensorFlow job runs these benchmarks")
def test_the_peers_are_measured_in_the_same_run(smoke_run):
    rows = _table_rows(smoke_run[0].stdout)
    assert any("/histograms" in line and "read_tensors" not in line for line in rows["3 logdir"])
    assert any("read_tensors" in line for line in rows["3 logdir"])
    assert any("histogram_pb" in line for line in rows["2 summary op"])
    assert any("Histograms route" in line for line in rows["5 memory"])
    assert any("tb-weightdiff report" in line for line in rows["6 cli"])
    if HAVE_BROWSER:
        assert any("tab drawn" in line for line in rows["4 render"])
    if importlib.util.find_spec("torch") is not None:
        assert any("add_histogram loop" in line for line in rows["9 write at scale"])


def test_tensorflow_benchmarks_run_or_say_why_not(smoke_run):
    rows = _table_rows(smoke_run[0].stdout)
    if HAVE_TENSORFLOW:
        assert any("Keras _log_weights" in line for line in rows["1 write"])
        assert any("tf.summary.histogram" in line for line in rows["2 summary op"])
        assert any("callback peak host memory" in line for line in rows["5 memory"])
    else:
        assert any("skipped: TensorFlow is not installed" in line for line in rows["1 write"])
        assert any("skipped: TensorFlow is not installed" in line for line in rows["2 summary op"])
        assert any("skipped: TensorFlow is not installed" in line for line in rows["5 memory"])
