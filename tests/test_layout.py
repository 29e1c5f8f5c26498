"""The package's layout: each module imports only the rooms below it, so the data walks one way
(event file -> reader -> scores -> verdicts -> judge -> cache -> routes), and only the judge reads series."""

import ast
import os

import tb_weightdiff

PACKAGE = os.path.dirname(os.path.abspath(tb_weightdiff.__file__))

# Lowest first. A module may import (at the top or inside a function) only
# modules of lower layers. A new module must be placed here on purpose.
LAYERS = [
    {"version"},
    {"metadata", "distribute"},
    {"summary", "distance", "reader"},
    {"scores", "events", "torch_summary"},
    {"verdicts", "reset"},
    {"judge"},
    {"cache"},
    {"plugin", "cli", "keras", "torch"},
    {"loader", "lightning"},
]
LAYER_OF = {name: index for index, layer in enumerate(LAYERS) for name in layer}

# What reads weight series out of a logdir; on the judging side only `judge` calls it.
_READING = {"read_series", "iter_read_series", "list_tensors", "list_resets", "read_resets"}


def _modules():
    return sorted(name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")


def _imports_and_reader_calls(name):
    with open(os.path.join(PACKAGE, name + ".py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    imported, reading = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "tb_weightdiff":
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tb_weightdiff."):
            imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported.update(a.name.split(".")[1] for a in node.names if a.name.startswith("tb_weightdiff."))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "reader":
            if node.attr in _READING:
                reading.add(node.attr)
    return imported, reading


def test_every_module_has_a_place():
    assert set(_modules()) == set(LAYER_OF), "place new modules in LAYERS on purpose"


def test_modules_import_only_the_layers_below():
    upward = []
    for name in _modules():
        imported, _ = _imports_and_reader_calls(name)
        for other in imported - {"__version__"}:
            if LAYER_OF[other] >= LAYER_OF[name]:
                upward.append("%s imports %s" % (name, other))
    assert upward == []


def test_only_the_judge_reads_series():
    readers = {name for name in _modules() if _imports_and_reader_calls(name)[1]} - {"reader"}
    assert readers == {"judge"}
