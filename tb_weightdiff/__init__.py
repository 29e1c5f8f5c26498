"""tb_weightdiff: which layers learned? A TensorBoard plugin that compares weights across epochs.

This module imports nothing heavy: TensorBoard imports the package through its
`tensorboard_plugins` entry point. The training-side modules are attributes
loaded on first touch (PEP 562): `tb_weightdiff.summary` (numpy and
TensorBoard's protos; TensorFlow only when `summary.weights` is called) and
`tb_weightdiff.keras` (imports Keras, so its backend, when touched).
"""

import importlib

from tb_weightdiff.version import __version__

__all__ = ["__version__"]

# Not in `__all__`: `from tb_weightdiff import *` must not import Keras.
_LAZY_SUBMODULES = ("keras", "summary")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        # import_module binds the submodule as an attribute of this package,
        # so this runs once per name.
        return importlib.import_module("%s.%s" % (__name__, name))
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
