"""The recipe corpus's truth machinery (not the verdicts: those are judged elsewhere).

For one Keras and one PyTorch recipe: the truth names exactly the layers that
`tb-weightdiff report --json` finds in the run, from both sources, every fact
is a known one, and the runner writes truth.json.
"""

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import requires_tf

requires_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="PyTorch is not installed"
)


def _report(logdir, source):
    executable = shutil.which("tb-weightdiff", path=os.path.dirname(sys.executable)) or shutil.which("tb-weightdiff")
    assert executable, "the tb-weightdiff command is not installed"
    output = subprocess.run(
        [executable, "report", "--logdir", str(logdir), "--json", "--source", source, "--loader", "python"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output)


def _check(tmp_path, name):
    import recipes

    truths, _ = recipes.run(str(tmp_path), only=[name], check=False, out=io.StringIO())
    with open(tmp_path / "truth.json") as handle:
        assert json.load(handle) == json.loads(json.dumps(truths))
    entry = truths[name]
    assert entry["framework"] == recipes.RECIPES[name].framework
    assert set(entry["layers"].values()) <= set(recipes.FACTS)
    assert set(entry["variables"]) == set(entry["layers"])
    for source in ("tb_weightdiff", "histograms"):
        report = _report(tmp_path, source)
        runs = [run for run in report["runs"] if run["run"].split("/")[0] == name]
        assert runs, report["runs"]
        layers = {layer["name"]: {v["name"] for v in layer["variables"]} for run in runs for layer in run["layers"]}
        assert set(layers) == set(entry["layers"]), source
        for layer, variables in entry["variables"].items():
            assert set(variables) == layers[layer], (source, layer)
    return entry


@requires_tf
@pytest.mark.slow
def test_keras_recipe_truth_names_the_logged_layers(tmp_path):
    entry = _check(tmp_path, "keras_adamw_dead_path")
    assert entry["layers"]["dead_branch"] == "dead_decay"
    assert entry["layers"]["hidden_1"] == "trains"


@requires_torch
@pytest.mark.slow
def test_torch_recipe_truth_names_the_logged_layers(tmp_path):
    entry = _check(tmp_path, "torch_embedding_attention")
    assert entry["layers"]["encoder.self_attn"] == "trains"


def test_the_module_imports_without_training_anything():
    import recipes

    assert list(recipes.RECIPES)[:1] == ["keras_finetune_head"]
    assert {recipe.framework for recipe in recipes.RECIPES.values()} == {"keras", "torch"}
    assert recipes.expected_verdict("permuted", "histograms") == "frozen"
