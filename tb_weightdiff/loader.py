"""The `tensorboard_plugins` entry point: a loader that imports the plugin lazily.

TensorBoard imports every entry point's module at startup, and an exception
there takes all of TensorBoard down. This module therefore imports only
TensorBoard's `base_plugin`; the plugin module is imported in `load`, and if
that fails the Weight Diff tab is left out with a logged warning while the
rest of TensorBoard starts as usual.
"""

import logging

from tensorboard.plugins import base_plugin

logger = logging.getLogger(__name__)


class WeightDiffLoader(base_plugin.TBLoader):
    """Loads `tb_weightdiff.plugin.WeightDiffPlugin`, or nothing if it cannot."""

    def load(self, context):
        try:
            # pylint: disable=import-outside-toplevel
            from tb_weightdiff.plugin import WeightDiffPlugin
        except Exception as error:  # pylint: disable=broad-except
            logger.warning(
                "The Weight Diff tab (tb_weightdiff) is disabled: its plugin "
                "failed to import: %s: %s",
                type(error).__name__,
                error,
            )
            return None
        return WeightDiffPlugin(context)
