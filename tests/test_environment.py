"""The CI jobs test what they claim to: the installed wheel, and (in one job) no TensorFlow."""

import importlib.util
import os

import pytest

import tb_weightdiff

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.environ.get("TBWD_EXPECT_INSTALLED"), reason="only in the README's test command")
def test_the_installed_package_is_under_test_not_the_checkout():
    package_dir = os.path.dirname(os.path.abspath(tb_weightdiff.__file__))
    assert not package_dir.startswith(REPO + os.sep + "tb_weightdiff"), package_dir
    assert os.path.isfile(os.path.join(package_dir, "frontend", "index.js"))


@pytest.mark.skipif(not os.environ.get("TBWD_EXPECT_NO_TF"), reason="only in the no-TensorFlow job")
def test_tensorflow_and_keras_are_really_absent():
    assert importlib.util.find_spec("tensorflow") is None
    assert importlib.util.find_spec("keras") is None
