"""Which process writes under a `tf.distribute` strategy: runs with and without TensorFlow."""

import pytest

from tb_weightdiff import distribute
from tb_weightdiff.distribute import is_chief
from tb_weightdiff.distribute import is_multi_worker
from conftest import HAVE_TENSORFLOW
from conftest import requires_tf


class _Resolver:
    def __init__(self, task_type, task_id, cluster):
        self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

    def cluster_spec(self):
        class _Spec:
            def __init__(self, cluster):
                self._cluster = cluster

            def as_dict(self):
                return self._cluster

        return _Spec(self._cluster)


class _Strategy:
    def __init__(self, resolver):
        self.cluster_resolver = resolver


@pytest.mark.parametrize(
    "task_type, task_id, cluster, expected",
    [
        (None, None, {}, True),
        ("chief", 0, {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, True),
        ("worker", 0, {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, False),
        ("worker", 0, {"worker": ["b:1", "c:1"]}, True),
        ("worker", 1, {"worker": ["b:1", "c:1"]}, False),
        ("evaluator", 0, {"worker": ["b:1"], "evaluator": ["d:1"]}, False),
        ("ps", 0, {"worker": ["b:1"], "ps": ["e:1"]}, False),
    ],
)
def test_only_the_chief_writes(task_type, task_id, cluster, expected):
    assert is_chief(_Strategy(_Resolver(task_type, task_id, cluster))) is expected
    assert is_chief(object()) is True  # strategies without a cluster resolver
    assert is_multi_worker(_Strategy(_Resolver(task_type, task_id, cluster))) is bool(task_type)
    assert is_multi_worker(object()) is False


@requires_tf
def test_is_chief_with_tensorflow_cluster_resolver():
    import tensorflow as tf

    spec = tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]})
    second = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, task_type="worker", task_id=1)
    first = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, task_type="worker", task_id=0)
    assert not is_chief(_Strategy(second))
    assert is_chief(_Strategy(first))


def test_strategy_of_prefers_the_models_own():
    strategy = _Strategy(_Resolver("worker", 1, {"worker": ["b:1", "c:1"]}))

    class _Model:
        distribute_strategy = strategy

    assert distribute.strategy_of(_Model()) is strategy
    assert is_chief(distribute.strategy_of(_Model())) is False


def test_strategy_of_a_model_without_one():
    found = distribute.strategy_of(object())
    if not HAVE_TENSORFLOW:
        assert found is None
    else:
        import tensorflow as tf

        assert found is tf.distribute.get_strategy()
    assert is_chief(found) is True
