"""The reset check: put each layer back to its weights from before training, measure the loss.

A layer that moved is not proof that it mattered. Zhang, Bengio and Singer
("Are All Layers Created Equal?", JMLR 2022) reset each layer of a trained
network to its initial weights and found *critical* layers, whose reset
undoes what training gained, and *robust* ones, whose reset costs almost
nothing. The loggers keep the weights from before training (their
reference), which is what the check needs.

What this module owns is the procedure every framework's logger follows,
and how its results are written; the framework's logger gives it three
operations on its own tensors:

- `evaluate()`: the loss (and metrics) of the model on a fixed set of
  batches, as `{"loss": float, metric: float}`; the same examples every time;
- `swap(groups)`: a context manager that puts the initial weights of the
  groups' tensors in place and restores the values they had, bit for bit,
  on leaving (even when evaluating failed);
- `unchanged(group)`: whether the group's tensors still equal their initial
  weights bit for bit (a frozen layer: resetting it changes nothing, so it
  is not evaluated again and its loss increase is exactly 0).

Per check: one evaluation as trained, one with every group reset (the model
before training, the scale of "what training gained"), and one per group
that moved. Each group's result is written as a reset summary
(`tb_weightdiff.metadata.RESET_FIELDS`, through `events.write_reset`) at the step of the weights it checked.
"""

import contextlib
import re
import time

from tb_weightdiff import events
from tb_weightdiff import scores

__all__ = [
    "DEFAULT_BATCHES", "Group", "check_batches", "check_blocks", "check_every", "make_groups", "run_check",
    "summarize", "swapped", "write",
]

# Batches per evaluation when the caller does not say: 20 batches of 32 are
# 640 examples, a few per cent of a CIFAR10 validation set.
DEFAULT_BATCHES = 20


class Group:
    """Tensors reset together: one layer, or a block the user named."""

    __slots__ = ("name", "tags")

    def __init__(self, name, tags):
        self.name = name
        self.tags = tuple(tags)

    def __repr__(self):
        return "Group(%r, %d tensors)" % (self.name, len(self.tags))


def check_batches(batches, name="reset_batches"):
    """`batches` (a count, or with `name` a batch size) as an int >= 1, or ValueError naming it."""
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError("%s must be an int >= 1, got %r" % (name, batches))
    return batches


def check_every(every):
    """`every` (epochs between checks) as None or an int >= 1, or ValueError."""
    if every is None:
        return None
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError("reset_every must be None or an int >= 1, got %r" % (every,))
    return every


def check_blocks(blocks):
    """`blocks` as `[(name, compiled pattern)]`, or a callable, or None; ValueError otherwise.

    Args:
      blocks: None (every layer is reset on its own), `{block name: regular
        expression}` (a tensor whose tag the expression matches, by
        `re.search`, is reset with the block's other tensors; the first block
        that matches wins), or a callable `tag -> block name or None`.
    """
    if blocks is None or callable(blocks):
        return blocks
    if not isinstance(blocks, dict):
        raise ValueError("reset_groups must be None, a dict {block name: regex} or a callable, got %s"
                         % type(blocks).__name__)
    compiled = []
    for name, pattern in blocks.items():
        if not isinstance(name, str) or not name:
            raise ValueError("reset_groups: a block name must be non-empty text, got %r" % (name,))
        try:
            compiled.append((name, re.compile(pattern)))
        except (re.error, TypeError) as error:
            raise ValueError("reset_groups[%r]: not a regular expression: %s" % (name, error)) from None
    return compiled


def make_groups(tags, blocks=None):
    """The groups to reset, in model order: each layer's tags (the analysis's layer of a tag,
    `scores.split_tag`), unless a block of `check_blocks` claims them."""
    order, members = [], {}
    for tag in tags:
        name = None
        if callable(blocks):
            name = blocks(tag)
        elif blocks:
            name = next((block for block, pattern in blocks if pattern.search(tag)), None)
        if name is None:
            name = scores.split_tag(tag)[0]
        if name not in members:
            order.append(name)
            members[name] = []
        members[name].append(tag)
    return [Group(name, members[name]) for name in order]


def run_check(groups, evaluate, swap, unchanged, clock=time.perf_counter):
    """Evaluates the model as trained, with every group reset, and with each group reset.

    Returns:
      `[(group, fields, metrics)]`: `fields` for `metadata.RESET_FIELDS` but
      the batch and example counts (the caller knows them), `metrics`
      `{name: (as trained, group reset, all reset)}`.
    """
    trained = _scores(evaluate())
    with swap(groups):
        initial = _scores(evaluate())
    results = []
    for group in groups:
        if unchanged(group):
            reset, seconds = trained, 0.0
        else:
            start = clock()
            with swap([group]):
                reset = _scores(evaluate())
            seconds = clock() - start
        fields = {"seconds": seconds, "loss": trained["loss"], "loss_reset": reset["loss"],
                  "loss_initial": initial["loss"]}
        metrics = {
            name: (value, reset.get(name, float("nan")), initial.get(name, float("nan")))
            for name, value in trained.items() if name != "loss"
        }
        results.append((group, fields, metrics))
    return results


def _scores(values):
    if not isinstance(values, dict) or "loss" not in values:
        raise ValueError("the reset check's evaluation must give a dict with a 'loss', got %r" % (values,))
    found = {}
    for name, value in values.items():
        try:
            found[str(name)] = float(value)
        except (TypeError, ValueError):
            continue  # a metric that is not one number (a confusion matrix, say) is left out
    return found


def write(writer, step, results, batches, examples):
    """Writes each group's result of `run_check` as a reset summary at `step`."""
    for group, fields, metrics in results:
        events.write_reset(
            writer, group.name, group.tags, step, dict(fields, batches=batches, examples=examples), metrics
        )


def summarize(results):
    """`{group name: {"loss", "loss_reset", "loss_initial", "increase"}}`: what a logger returns."""
    return {
        group.name: {
            "loss": fields["loss"],
            "loss_reset": fields["loss_reset"],
            "loss_initial": fields["loss_initial"],
            "increase": fields["loss_reset"] - fields["loss"],
        }
        for group, fields, _ in results
    }


@contextlib.contextmanager
def swapped(tensors, read, assign, initial):
    """`swap` for a framework: `tensors` `[(tag, tensor)]`; `read(tensor)` a copy of its value that
    `assign(tensor, value)` restores exactly; `initial(tag)` the value from before training (or None:
    that tensor is left as it is)."""
    saved = []
    try:
        for tag, tensor in tensors:
            value = initial(tag)
            if value is None:
                continue
            saved.append((tensor, read(tensor)))
            assign(tensor, value)
        yield
    finally:
        for tensor, value in reversed(saved):
            assign(tensor, value)

