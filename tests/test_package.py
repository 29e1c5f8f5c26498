"""The package as a user installs it: wheel contents, entry points, console script, no TF."""

import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import tb_weightdiff
from conftest import requires_tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HEAVY = ("tensorflow", "keras", "tf_keras", "torch", "jax")


def _tracked_files():
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell which files a clean clone has")
    return [f for f in listed if f and os.path.exists(os.path.join(REPO, f))]


@pytest.mark.slow
def test_wheel_from_a_clean_checkout_carries_the_frontend(tmp_path):
    checkout = tmp_path / "checkout"
    for name in _tracked_files():
        target = checkout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(REPO, name), target)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(checkout)],
        check=True, capture_output=True,
    )
    (wheel,) = glob.glob(str(tmp_path / "dist" / "*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        source = checkout / "tb_weightdiff" / "frontend"
        frontend = {os.path.relpath(p, source) for p in glob.glob(str(source / "*"))}
        assert frontend >= {"index.js", "model.js", "views.js", "charts.js", "dom.js", "style.css"}
        for name in frontend:
            assert "tb_weightdiff/frontend/" + name in names
        (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert "[tensorboard_plugins]" in text
    assert "tb_weightdiff = tb_weightdiff.loader:WeightDiffLoader" in text
    assert "tb-weightdiff = tb_weightdiff.cli:main" in text


def test_installed_entry_point_loads_the_plugin():
    from tensorboard.plugins import base_plugin

    (entry_point,) = [
        ep for ep in importlib.metadata.entry_points(group="tensorboard_plugins") if ep.name == "tb_weightdiff"
    ]
    loader_class = entry_point.load()
    assert issubclass(loader_class, base_plugin.TBLoader)
    plugin = loader_class().load(base_plugin.TBContext(data_provider=None))
    assert plugin.plugin_name == "tb_weightdiff"
    assert plugin.frontend_metadata().tab_name == "Weight Diff"


def test_the_plugin_side_imports_no_tensorflow():
    code = (
        "import sys\n"
        "import tb_weightdiff, tb_weightdiff.loader, tb_weightdiff.plugin, tb_weightdiff.cli\n"
        "import tb_weightdiff.reader, tb_weightdiff.metadata, tb_weightdiff.summary\n"
        "import tb_weightdiff.distribute, tb_weightdiff.events\n"
        "from tb_weightdiff import summary\n"
        "summary.weights_pb('w', [1.0, 2.0])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))\n" % (_HEAVY,)
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _run_python(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


def test_importing_the_package_imports_nothing_heavy_and_summary_loads_on_touch():
    code = (
        "import sys\n"
        "import tb_weightdiff\n"
        "print(sorted(m for m in sys.modules if m.startswith('tb_weightdiff')))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))\n"
        "print(sorted(set(dir(tb_weightdiff)) & {'keras', 'summary'}))\n"
        "pb = tb_weightdiff.summary.weights_pb('w', [1.0, 2.0])\n"
        "print(pb.value[0].tag, tb_weightdiff.summary is sys.modules['tb_weightdiff.summary'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))\n"
        "try:\n"
        "    tb_weightdiff.no_such_module\n"
        "except AttributeError as error:\n"
        "    print(error)\n" % (_HEAVY + ("numpy", "tensorboard"), _HEAVY)
    )
    assert _run_python(code) == [
        "['tb_weightdiff', 'tb_weightdiff.version']",
        "[]",
        "['keras', 'summary']",
        "w True",
        "[]",
        "module 'tb_weightdiff' has no attribute 'no_such_module'",
    ]


@requires_tf
def test_the_keras_module_loads_keras_only_when_touched():
    code = (
        "import sys\n"
        "import tb_weightdiff\n"
        "print('keras' in sys.modules)\n"
        "callback_class = tb_weightdiff.keras.WeightDiffCallback\n"
        "print('keras' in sys.modules, callback_class.__module__, callback_class.__qualname__)\n"
    )
    assert _run_python(code)[-2:] == ["False", "True tb_weightdiff.keras WeightDiffCallback"]


def test_loader_survives_a_broken_plugin_module(monkeypatch, caplog):
    from tensorboard.plugins import base_plugin

    from tb_weightdiff import loader

    monkeypatch.setitem(sys.modules, "tb_weightdiff.plugin", None)  # import raises ImportError
    assert loader.WeightDiffLoader().load(base_plugin.TBContext()) is None
    assert "Weight Diff tab (tb_weightdiff) is disabled" in caplog.text


def _cli(*args):
    executable = shutil.which("tb-weightdiff", path=os.path.dirname(sys.executable)) or shutil.which("tb-weightdiff")
    assert executable, "the tb-weightdiff console script is not installed"
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=60)


def test_cli_version_and_help():
    version = _cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == "tb-weightdiff %s" % tb_weightdiff.__version__
    help_text = _cli("--help")
    assert help_text.returncode == 0
    assert "Which layers learned?" in help_text.stdout


def test_cli_bad_flag_is_one_line_and_exit_2():
    result = _cli("--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr
