"""`tb-weightdiff report`, run as the installed command (no TensorFlow needed)."""

import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from tb_weightdiff import verdicts
from conftest import write_events

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_make_logdir():
    spec = importlib.util.spec_from_file_location("make_logdir", os.path.join(REPO, "benchmarks", "make_logdir.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_logdir = _load_make_logdir()


def _command():
    found = shutil.which("tb-weightdiff", path=os.path.dirname(sys.executable))
    assert found, "tb-weightdiff is not installed beside %s" % sys.executable
    return found


def run_cli(*args, timeout=120):
    return subprocess.run(
        [_command(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


@pytest.fixture(scope="module")
def logdirs(tmp_path_factory):
    """A logdir of our summaries and one of plain histograms, both with planted layers."""
    base = tmp_path_factory.mktemp("cli")
    ours = base / "ours"
    expected = make_logdir.make_logdir(str(ours), runs=2, tensors=8, steps=4, width=8, seed=3)
    histograms = base / "histograms"
    make_logdir.make_logdir(str(histograms), runs=1, tensors=8, steps=4, width=8, seed=4, diverge=False,
                            source="histograms")
    return {"ours": ours, "histograms": histograms, "expected": expected}


def report_json(logdir, *args):
    result = run_cli("report", "--logdir", logdir, "--json", *args)
    assert result.returncode == 0, result.stderr

    def reject(constant):
        raise AssertionError("%s in strict JSON" % constant)

    return json.loads(result.stdout, parse_constant=reject)


def test_json_shape_and_planted_verdicts(logdirs):
    result = report_json(logdirs["ours"])
    assert set(result) == {"thresholds", "runs"}
    assert result["thresholds"] == verdicts.Thresholds().to_json()
    assert [run["run"] for run in result["runs"]] == ["run_0", "run_1"]
    for run in result["runs"]:
        assert {"run", "source", "steps", "baseline_step", "warnings", "layers"} <= set(run)
        assert run["source"] == "tb_weightdiff"
        assert run["steps"] == [0, 1, 2, 3] and run["baseline_step"] == 0
        layer_verdicts = {layer["name"]: layer["verdict"] for layer in run["layers"]}
        for layer, verdict in logdirs["expected"][run["run"]].items():
            assert layer_verdicts[layer] == verdict, (run["run"], layer)
        assert set(layer_verdicts.values()) - set(logdirs["expected"][run["run"]].values()) <= {"learning"}
        for layer in run["layers"]:
            assert {"name", "verdict", "variables"} <= set(layer)
            for variable in layer["variables"]:
                assert {"name", "tag", "verdict"} <= set(variable)
                assert variable["verdict"] in verdicts.VERDICTS
    # Worst first.
    ranks = [verdicts.VERDICTS.index(layer["verdict"]) for layer in result["runs"][1]["layers"]]
    assert ranks == sorted(ranks) and ranks[0] == 0


def test_table_is_readable_and_worst_first(logdirs):
    result = run_cli("report", "--logdir", logdirs["ours"])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "run run_1  (source tb_weightdiff; steps 0..3, 4 logged; baseline step 0)" in text
    run_1 = text.split("run run_1")[1]
    header = next(line for line in run_1.splitlines() if line.lstrip().startswith("VERDICT"))
    name_column = header.index("LAYER")
    rows = [line for line in run_1.splitlines() if line.split() and line.split()[0] in verdicts.VERDICTS]
    # Layers start in the name column; their variables are indented under them.
    layer_lines = [line for line in rows if line[name_column] != " "]
    order = [line.split()[0] for line in layer_lines]
    assert order[:3] == ["diverged", "not_learning", "frozen"]
    assert set(order[3:]) == {"learning"}
    assert "model/dense_2" in layer_lines[0] and "    kernel" in run_1
    assert "layers: 1 diverged, 1 not_learning, 1 frozen, 1 learning" in run_1


def test_csv_has_one_row_per_variable(logdirs):
    result = run_cli("report", "--logdir", logdirs["ours"], "--csv", "--run", "run_0")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 8
    assert {row["run"] for row in rows} == {"run_0"}
    frozen = [row for row in rows if row["layer"] == "model/dense_0"]
    assert {row["verdict"] for row in frozen} == {"frozen"}
    assert {row["variable"] for row in frozen} == {"kernel", "bias"}
    assert all(row["verdict"] in verdicts.VERDICTS for row in rows)


def test_csv_is_the_one_schema_and_guards_formula_cells(tmp_path):
    import numpy as np

    from tb_weightdiff import summary

    weights = np.linspace(-1, 1, 40)
    write_events(
        tmp_path / "=cmd|' /C calc'!A0",
        {step: [summary.weights_pb("=HYPERLINK(\"x\")/kernel", weights * (1 + 0.1 * step), reference=weights)] for step in range(3)},
    )
    result = run_cli("report", "--logdir", tmp_path, "--csv")
    assert result.returncode == 0, result.stderr
    reader = csv.reader(io.StringIO(result.stdout))
    assert tuple(next(reader)) == verdicts.CSV_COLUMNS
    (row,) = [dict(zip(verdicts.CSV_COLUMNS, cells)) for cells in reader]
    # A spreadsheet would run these as formulas; they are data.
    assert row["run"] == "'=cmd|' /C calc'!A0"
    assert row["layer"] == "'=HYPERLINK(\"x\")" and row["tag"] == "'=HYPERLINK(\"x\")/kernel"
    assert row["verdict"] == "learning" and float(row["movement"]) > 0


def test_fail_on_exits_1_when_a_verdict_matches(logdirs):
    result = run_cli("report", "--logdir", logdirs["ours"], "--fail-on", "frozen,not_learning")
    assert result.returncode == 1
    assert "run run_0" in result.stdout
    assert result.stderr.strip() == "tb-weightdiff: --fail-on matched: not_learning, frozen"
    # Only run_1 has a diverged layer.
    assert run_cli("report", "--logdir", logdirs["ours"], "--run", "run_0", "--fail-on", "diverged").returncode == 0
    assert run_cli("report", "--logdir", logdirs["ours"], "--run", "run_1", "--fail-on", "diverged", "--json").returncode == 1


def test_threshold_flags_change_verdicts(logdirs):
    strict = report_json(logdirs["ours"], "--run", "run_0", "--min-relative-change", "100", "--min-shift", "100")
    assert strict["thresholds"]["min_relative_change"] == 100.0
    assert {layer["verdict"] for layer in strict["runs"][0]["layers"]} == {"not_learning", "frozen"}
    lenient = report_json(
        logdirs["ours"], "--run", "run_0", "--min-relative-change", "0", "--min-shift", "0", "--min-ratio-to-median", "0"
    )
    assert {layer["verdict"] for layer in lenient["runs"][0]["layers"]} == {"learning", "frozen"}


def test_histogram_logdir_and_both_loaders_agree(logdirs):
    python = report_json(logdirs["histograms"], "--loader", "python")
    rust = report_json(logdirs["histograms"], "--loader", "rust")
    assert python == rust
    [run] = python["runs"]
    assert run["source"] == "histograms"
    assert any("not the weights before training" in warning for warning in run["warnings"])
    layer_verdicts = {layer["name"]: layer["verdict"] for layer in run["layers"]}
    assert layer_verdicts["model/dense_0"] == "frozen" and layer_verdicts["model/dense_1"] == "not_learning"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--run", "nope"], ["no weight data for run 'nope'", "'run_0', 'run_1'"]),
        (["--fail-on", "frozen,sleepy"], ["--fail-on", "'sleepy'", "learning"]),
        (["--fail-on", ""], ["--fail-on"]),
        (["--min-shift", "-1"], ["--min-shift", ">= 0"]),
        (["--min-relative-change", "lots"], ["--min-relative-change", "not a number"]),
        (["--min-ratio-to-median", "nan"], ["--min-ratio-to-median"]),
        (["--settled-fraction", "1"], ["settled_fraction must be below 1"]),
        (["--json", "--csv"], ["not allowed with"]),
        (["--loader", "java"], ["--loader", "invalid choice"]),
    ],
)
def test_bad_requests_exit_2_with_one_line(logdirs, args, fragments):
    assert_one_line_error(run_cli("report", "--logdir", logdirs["ours"], *args), *fragments)


def test_logdirs_without_weight_data_exit_2(tmp_path):
    from tensorboard.plugins.scalar import summary_v2 as scalar_summary

    assert_one_line_error(run_cli("report", "--logdir", tmp_path / "missing"), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("report", "--logdir", empty), "holds no tb_weightdiff summaries and no weight histograms")
    scalars = tmp_path / "scalars"
    write_events(scalars / "run", {0: [scalar_summary.scalar_pb("loss", 1.0)]})
    assert_one_line_error(run_cli("report", "--logdir", scalars, "--json"), "holds no")
    assert_one_line_error(run_cli("report"), "--logdir")


def test_help_and_version():
    result = run_cli("--help")
    assert result.returncode == 0 and "report" in result.stdout
    result = run_cli("report", "--help")
    assert result.returncode == 0
    # One flag per threshold, made from the thresholds themselves.
    flat = " ".join(result.stdout.split())
    for threshold in verdicts.Thresholds.describe():
        assert "--%s X" % threshold["name"].replace("_", "-") in flat
        assert "%s (default %g)" % (threshold["help"], threshold["default"]) in flat
    assert "--fail-on" in result.stdout
    assert run_cli("--version").stdout.startswith("tb-weightdiff ")
