"""Packaging for tb-weightdiff: the TensorBoard plugin, its frontend and its CLI."""

import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))

VERSION = {}
with open(os.path.join(HERE, "tb_weightdiff", "version.py")) as handle:
    exec(handle.read(), VERSION)  # pylint: disable=exec-used

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
    LONG_DESCRIPTION = handle.read()

setuptools.setup(
    name="tb-weightdiff",
    version=VERSION["__version__"],
    description="A TensorBoard tab that shows which layers learned and which did not.",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["tb_weightdiff"],
    # The tab's ES modules and CSS, served as they are (no build step), and the route docs.
    package_data={"tb_weightdiff": ["frontend/*.js", "frontend/*.css", "frontend/*.svg", "http_api.md"]},
    include_package_data=False,
    install_requires=["tensorboard>=2.21", "numpy", "werkzeug"],
    extras_require={
        "tf": ["tensorflow>=2.21"],
        # For weights_pb from PyTorch code and the corpus's PyTorch recipes; pin a CPU
        # build first where a plain `torch` would pull a CUDA one.
        "torch": ["torch>=2.1"],
        # tb_weightdiff.lightning: the Lightning callback.
        "lightning": ["torch>=2.1", "lightning>=2.2"],
        "test": [
            "pytest",
            "pytest-timeout",
            # run_tests.sh runs the suite on two workers (a file per worker).
            "pytest-xdist",
            "playwright",
            "hypothesis",
            "scipy",
            "build",
            "setuptools>=64",
            "wheel",
        ],
    },
    entry_points={
        "tensorboard_plugins": [
            "tb_weightdiff = tb_weightdiff.loader:WeightDiffLoader",
        ],
        "console_scripts": [
            "tb-weightdiff = tb_weightdiff.cli:main",
        ],
    },
    classifiers=[
        "Framework :: TensorFlow",
        "Intended Audience :: Science/Research",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
