"""tb_weightdiff: which layers learned? A TensorBoard plugin that compares weights across epochs.

This module imports nothing heavy: TensorBoard imports the package through its
`tensorboard_plugins` entry point, and the training-side modules
(`tb_weightdiff.summary`, `tb_weightdiff.keras`) import TensorFlow only when a
function that needs it is called.
"""

from tb_weightdiff.version import __version__

__all__ = ["__version__"]
