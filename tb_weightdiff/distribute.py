"""Which process writes logs under a `tf.distribute` strategy.

Owns the rule the training-side loggers follow so that a multi-worker job
writes each event once: `is_chief(strategy)`. It needs neither Keras nor
TensorFlow (a strategy is read through its attributes), so it imports on the
plugin side too; `strategy_of(model)` imports TensorFlow only when a model
carries no strategy of its own and TensorFlow is installed.
"""

__all__ = ["is_chief", "is_multi_worker", "strategy_of"]


def is_chief(strategy):
    """Whether this process should write logs under `strategy`.

    Single-process strategies (the default one, `MirroredStrategy`) always
    write. In a multi-worker cluster the `chief` task writes, or worker 0 when
    the cluster has no chief; every other worker stays silent, as Keras's own
    `BackupAndRestore` and `ModelCheckpoint` do in TensorFlow's guides.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True
    if task_type == "chief":
        return True
    if task_type != "worker":
        return False
    try:
        cluster = resolver.cluster_spec().as_dict()
    except Exception:  # pylint: disable=broad-except
        cluster = {}
    return "chief" not in cluster and int(getattr(resolver, "task_id", 0) or 0) == 0


def is_multi_worker(strategy):
    """Whether `strategy` spans several processes (a cluster with a task type)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is not None and bool(getattr(resolver, "task_type", None))


def strategy_of(model):
    """The strategy `model` was built under (`model.distribute_strategy`).

    Without one, TensorFlow's current strategy, or `None` where TensorFlow is
    not installed (another Keras backend, or no framework at all).
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None:
        return strategy
    try:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return tf.distribute.get_strategy()
