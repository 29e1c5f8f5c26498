"""A corpus of real, small trainings with a known truth per layer.

Each recipe trains a small network the way people do (fine-tuning a frozen
backbone, AdamW with a dead path, schedules, BatchNorm, embeddings and
attention; Keras 3 and PyTorch), logs it with our summaries AND the
framework's own weight histograms into one run, and returns what is known to
be true of every layer that has weights:

    truth = RECIPES["keras_adamw_dead_path"].train(run_dir, size="ci", seed=0)
    truth == {"hidden_1": "trains", ..., "dead_branch": "dead_decay", ...}
    truth.variables == {"dead_branch": {"kernel": "dead_decay", "bias": "frozen"}, ...}
    truth.notes == {"dead_branch": "...what was measured..."}

The keys are the layer names of the analysis (`tb_weightdiff.scores.split_tag(tag)[0]`),
for both sources of the run. The facts:

| fact | what it means | a correct judge says |
|---|---|---|
| `trains` | the optimizer updates it with a real (non-zero) gradient of the loss | learning |
| `frozen` | never changes: trainable=False, requires_grad=False, not in the optimizer, or no gradient at all (which every optimizer here skips, weight decay included) | frozen |
| `frozen_stats` | a BatchNorm kept in inference mode with trainable=False: never changes | frozen |
| `dead_decay` | the loss's gradient is exactly 0, but weight decay or an L2 penalty changes it | decay_only (not_learning also flags it) |
| `slow` | planted: its gradient scaled down by 1e4 under SGD | not_learning |
| `nan` | planted: a NaN written into it | diverged |
| `permuted` | planted: trainable=False, permuted by a callback every epoch | learning (ours) / frozen (histograms: blind spot) |
| `statistics` | its only variables are non-trainable running statistics that change | learning (it is not flagged) |

A layer's fact is that of its trainable variables (BatchNorm's moving
statistics are `statistics` in `truth.variables`). Every fact is checked
while the recipe runs: the gradient of the data loss at the start (non-zero
for `trains`, exactly zero or absent for `dead_decay`), and the weights after
training against those before (bit-identical for `frozen`, changed
otherwise); a recipe whose truth does not hold raises `TruthError`.

Keras recipes log with `tb_weightdiff.keras.WeightDiffCallback(run_dir)` and
`keras.callbacks.TensorBoard(run_dir, histogram_freq=1)` in the same `fit`
(run `<run_dir>/train`). PyTorch recipes (`recipes_torch.py`) log
`SummaryWriter(run_dir).add_histogram(name + "/histogram", param, epoch)` for
every parameter after every epoch, and our `weights_pb` summaries at step 0
(before training) and after every epoch (run `<run_dir>`); recipes_torch.py
says why the histogram tags need the suffix. Keras and torch are imported
inside the functions that need them, so this module imports without either.

As a script:

    python tests/recipes.py --logdir DIR [--size ci|full] [--seed N] [--only NAME ...]
        trains the recipes into DIR/<recipe>/ and writes DIR/truth.json
    python tests/recipes.py --contradictions DIR OURS.json HISTOGRAMS.json
        prints, as markdown, the layers whose verdict in the two
        `tb-weightdiff report --json` outputs contradicts DIR/truth.json
"""

import argparse
import collections
import json
import os
import sys
import time
import warnings
import zlib

import numpy as np

# recipes_torch and test_calibration sit beside this file (pytest puts tests/ on sys.path; a script may not).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":
    sys.modules.setdefault("recipes", sys.modules[__name__])  # recipes_torch imports its helpers from here

Recipe = collections.namedtuple("Recipe", "name framework description train")

FACTS = ("trains", "frozen", "frozen_stats", "dead_decay", "slow", "nan", "permuted", "statistics")

# What a correct judge says of each fact, per source; None: nothing prescribed.
EXPECTED_VERDICT = {
    "trains": ("learning", "learning"),
    "frozen": ("frozen", "frozen"),
    "frozen_stats": ("frozen", "frozen"),
    "dead_decay": ("decay_only", "decay_only"),
    "slow": ("not_learning", "not_learning"),
    "nan": ("diverged", "diverged"),
    "permuted": ("learning", "frozen"),
    "statistics": ("learning", "learning"),
}


def expected_verdict(fact, source):
    """The verdict a correct judge gives a layer of `fact`, from `source` ("tb_weightdiff" or "histograms")."""
    ours, histograms = EXPECTED_VERDICT[fact]
    return histograms if source == "histograms" else ours


class TruthError(AssertionError):
    """A recipe's training did not do what its truth says."""


class Truth(dict):
    """`{layer: fact}`; `.variables` is `{layer: {variable: fact}}`, `.notes` `{layer: text}`."""

    def __init__(self, layers=(), variables=None, notes=None):
        super().__init__(layers)
        self.variables = variables or {}
        self.notes = notes or {}

    def to_json(self, framework):
        return {"framework": framework, "layers": dict(self), "variables": self.variables, "notes": self.notes}


def split_tag(tag):
    from tb_weightdiff.scores import split_tag as split  # pylint: disable=import-outside-toplevel

    return split(tag)


def rng_for(name, seed):
    """A numpy generator of its own for each recipe and seed."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def sizes(size, ci, full):
    if size not in ("ci", "full"):
        raise ValueError("size must be 'ci' or 'full', got %r" % (size,))
    return dict(ci if size == "ci" else full)


def check_facts(variables, initial, final, grads, notes):
    """Raises TruthError unless each variable did what its fact says.

    `variables`: `{(layer, variable): (fact, trainable, elements)}`; `initial`, `final`:
    `{(layer, variable): array}`; `grads`: `{(layer, variable): array or None}`
    (the data loss's gradient at the start; None where there is none).
    """
    problems = []
    for key, (fact, trainable, _) in variables.items():
        changed = not np.array_equal(initial[key], final[key], equal_nan=True)
        grad = grads.get(key)
        name = "%s/%s" % key
        if fact in ("frozen", "frozen_stats") and changed:
            problems.append("%s is %s but changed" % (name, fact))
        elif fact in ("trains", "dead_decay", "statistics", "permuted", "nan", "slow") and not changed:
            problems.append("%s is %s but never changed" % (name, fact))
        if fact == "trains" and (grad is None or not np.any(grad != 0)):
            problems.append("%s is trains but its gradient is %s" % (name, "absent" if grad is None else "zero"))
        if fact == "dead_decay" and grad is not None and np.any(grad != 0):
            problems.append("%s is dead_decay but its gradient is not zero (max %g)" % (name, np.abs(grad).max()))
        if fact == "statistics" and trainable:
            problems.append("%s is statistics but trainable" % name)
    if problems:
        raise TruthError("; ".join(problems))
    rms = {key: float(np.sqrt(np.mean(np.square(g, dtype=np.float64)))) for key, g in grads.items()
           if g is not None and g.size}
    largest = max(rms.values(), default=0.0)
    for key, (fact, _, _) in variables.items():
        if fact == "trains" and key in rms and rms[key] < 1e-6 * largest:
            # e.g. the key bias of attention: softmax cancels it, so its
            # gradient is zero but for rounding.
            notes.setdefault(key[0], []).append(
                "%s: its gradient at the start is only rounding noise (rms %.2g, the model's largest %.2g)."
                % (key[1], rms[key], largest)
            )
    for key, (fact, _, _) in variables.items():
        if fact == "dead_decay":
            before, after = initial[key].ravel().astype(np.float64), final[key].ravel().astype(np.float64)
            norm = np.linalg.norm(before)
            if norm > 0:
                cosine = 1 - before @ after / (norm * np.linalg.norm(after))
                notes.setdefault(key[0], []).append(
                    "%s: relative change %.3g, cosine distance %.3g, norm ratio %.6g"
                    % (key[1], np.linalg.norm(after - before) / norm, cosine, np.linalg.norm(after) / norm)
                )


def layer_truth(variables, notes):
    """`Truth` from `{(layer, variable): (fact, trainable, elements)}`: a layer's fact is its trainable variables'.

    Where a layer's trainable variables disagree (a dead Dense whose
    zero-initialised bias never moves), the largest decides, as in the
    analysis.
    """
    by_layer = {}
    for (layer, variable), value in variables.items():
        by_layer.setdefault(layer, {})[variable] = value
    layers, per_variable = {}, {}
    for layer, members in by_layer.items():
        per_variable[layer] = {name: fact for name, (fact, _, _) in members.items()}
        candidates = [m for m in members.values() if m[1]] or list(members.values())
        layers[layer] = max(candidates, key=lambda m: m[2])[0]
    return Truth(layers, per_variable, {layer: " ".join(text) for layer, text in notes.items()})


# ---------------------------------------------------------------- Keras --


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # pylint: disable=import-outside-toplevel

    return keras


def keras_tag(variable):
    """The tag `WeightDiffCallback` gives `variable` (Keras's histogram tag without `/histogram`)."""
    return (getattr(variable, "path", None) or variable.name).replace(":", "_")


def _keras_key(variable):
    return split_tag(keras_tag(variable))


def _keras_snapshot(model):
    return {_keras_key(v): np.array(v.numpy()) for v in model.weights}


def _resolve(layer_key, facts):
    """The fact of `layer_key` (e.g. `attention/query`): itself, else its innermost component named in `facts`."""
    if layer_key in facts:
        return facts[layer_key]
    for part in reversed(layer_key.split("/")):
        if part in facts:
            return facts[part]
    raise KeyError("no fact for layer %r" % layer_key)


def _keras_variables(model, facts, overrides):
    """`{(layer, variable): (fact, trainable, elements)}` for every weight of `model`.

    `facts`: `{Keras layer name: fact}` (a nested layer inherits its outer
    layer's fact); `overrides`: `{"layer/variable": fact}`. A non-trainable
    variable of a `trains` layer (BatchNorm's moving statistics) is `statistics`.
    """
    trainable_ids = {id(v) for v in model.trainable_weights}
    result = {}
    for variable in model.weights:
        key = _keras_key(variable)
        trainable = id(variable) in trainable_ids
        fact = _resolve(key[0], facts)
        if fact == "trains" and not trainable:
            fact = "statistics"
        fact = overrides.get("%s/%s" % key, fact)
        if fact not in FACTS:
            raise ValueError("unknown fact %r" % fact)
        result[key] = (fact, trainable, int(np.prod(variable.shape)))
    return result


def _slice(data, count):
    if isinstance(data, dict):
        return {name: value[:count] for name, value in data.items()}
    return data[:count]


def _keras_data_grads(model, x, y, data_loss):
    """The data loss's gradient for every trainable weight (None where it has none); weights restored."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    # A training-mode call moves BatchNorm's statistics and the dropout seeds:
    # every variable of the model is put back, so the fit is as without it.
    saved = [(v, np.array(v.numpy())) for v in model.variables]
    variables = list(model.trainable_weights)
    with tf.GradientTape() as tape:
        loss = data_loss(y, model(x, training=True))
    grads = tape.gradient(loss, variables)
    for variable, value in saved:
        variable.assign(value)
    return {
        _keras_key(v): None if g is None else np.asarray(tf.convert_to_tensor(g))
        for v, g in zip(variables, grads)
    }


def keras_fit_logged(model, x, y, run_dir, facts, overrides=None, data_loss=None, callbacks=(), notes=None,
                     **fit_args):
    """Fits `model` logged by both callbacks into `run_dir`, checks the truth, returns it.

    `data_loss(y, prediction)` is the loss without regularisation penalties
    (default: the compiled loss). `callbacks` run before the loggers, so both
    see what they did.
    """
    keras = _keras()
    from tb_weightdiff.keras import WeightDiffCallback  # pylint: disable=import-outside-toplevel

    variables = _keras_variables(model, facts, overrides or {})
    notes = {layer: [text] for layer, text in (notes or {}).items()}
    initial = _keras_snapshot(model)
    if data_loss is None:
        data_loss = keras.losses.get(model.loss)
    batch = fit_args.get("batch_size", 32)
    grads = _keras_data_grads(model, _slice(x, batch), _slice(y, batch), data_loss)
    with warnings.catch_warnings():
        # An unused head has no gradient: Keras warns at every step.
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        model.fit(
            x, y, verbose=0, shuffle=True,
            callbacks=[*callbacks, keras.callbacks.TensorBoard(run_dir, histogram_freq=1), WeightDiffCallback(run_dir)],
            **fit_args,
        )
    final = _keras_snapshot(model)
    check_facts(variables, initial, final, grads, notes)
    truth = layer_truth(variables, notes)
    truth.final = final
    truth.initial = initial
    return truth


def _teacher_task(rng, n, features=16, classes=4):
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((features, classes)), axis=1).astype(np.int32)
    return x, y


def gratings(rng, n, side=16):
    """Noisy coloured sinusoidal gratings: `(x [n, side, side, 3], orientation in [0, pi))`."""
    theta = rng.uniform(0, np.pi, n)
    frequency = rng.choice([0.6, 1.3], n)
    phase = rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    projection = xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None]
    image = np.sin(frequency[:, None, None] * projection + phase[:, None, None])
    colour = rng.uniform(0.4, 1.0, (n, 1, 1, 3))
    x = image[..., None] * colour + 0.3 * rng.standard_normal((n, side, side, 3))
    return x.astype(np.float32), theta


def orientation_classes(theta, classes=4):
    return np.minimum((theta / (np.pi / classes)).astype(np.int32), classes - 1)


# -- fine-tuning (Keras's transfer-learning guide, on a small conv backbone) --

_FINETUNE_CACHE = {}
BACKBONE_LAYERS = ("block1_conv", "block1_bn", "block2_conv", "block3_conv", "block3_bn")
TOP_BLOCK = ("block3_conv", "block3_bn")


def _backbone(keras):
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    # No bias before a BatchNorm (as in ResNet): in training mode the
    # BatchNorm cancels it, so its gradient is only rounding noise.
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="block1_conv")(inputs)
    x = layers.BatchNormalization(name="block1_bn")(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block2_conv")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="block3_conv")(x)
    x = layers.BatchNormalization(name="block3_bn")(x)
    x = layers.ReLU()(x)
    return keras.Model(inputs, x, name="backbone")


def _finetune_sizes(size):
    return sizes(size, ci=dict(pretrain_n=768, pretrain_epochs=4, n=384, head_epochs=3, tune_epochs=3),
                 full=dict(pretrain_n=8192, pretrain_epochs=10, n=8192, head_epochs=10, tune_epochs=10))


def _pretrained_backbone_weights(size, seed):
    """The backbone's weights after pre-training on 4-class orientation (not logged)."""
    key = ("backbone", size, seed)
    if key not in _FINETUNE_CACHE:
        keras = _keras()
        s = _finetune_sizes(size)
        keras.utils.set_random_seed(seed)
        x, theta = gratings(rng_for("pretrain", seed), s["pretrain_n"])
        backbone = _backbone(keras)
        model = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(4, name="pretrain_head")])
        model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, orientation_classes(theta), epochs=s["pretrain_epochs"], batch_size=32, verbose=0)
        _FINETUNE_CACHE[key] = backbone.get_weights()
    return _FINETUNE_CACHE[key]


def _finetune_model(keras, size, seed):
    """The guide's model: the pre-trained backbone, frozen, called with training=False; a new head."""
    weights = _pretrained_backbone_weights(size, seed)
    keras.utils.set_random_seed(seed + 1)
    backbone = _backbone(keras)
    backbone.set_weights(weights)
    backbone.trainable = False
    inputs = keras.Input((16, 16, 3))
    x = backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1, name="head")(x)
    model = keras.Model(inputs, outputs, name="finetune")
    return model, backbone


def _finetune_data(size, seed):
    """The new task: is the grating's orientation below 90 degrees (binary)."""
    x, theta = gratings(rng_for("finetune", seed), _finetune_sizes(size)["n"])
    return x, (theta < np.pi / 2).astype(np.float32)[:, None]


def _binary_loss(keras):
    return keras.losses.BinaryCrossentropy(from_logits=True)


def _frozen_backbone_facts(top_block_trains):
    facts = {name: "frozen" for name in BACKBONE_LAYERS}
    facts["block1_bn"] = facts["block3_bn"] = "frozen_stats"
    if top_block_trains:
        facts.update({name: "trains" for name in TOP_BLOCK})
    facts["head"] = "trains"
    return facts



def train_keras_finetune_head(run_dir, size="ci", seed=0):
    keras = _keras()
    s = _finetune_sizes(size)
    model, _ = _finetune_model(keras, size, seed)
    model.compile(keras.optimizers.Adam(1e-3), _binary_loss(keras))
    x, y = _finetune_data(size, seed)
    truth = keras_fit_logged(model, x, y, run_dir, _frozen_backbone_facts(False),
                             epochs=s["head_epochs"], batch_size=32)
    _FINETUNE_CACHE[("head", size, seed)] = model.get_weights()
    return truth


def _head_trained(keras, size, seed):
    """The fine-tuning model after its head phase (that of keras_finetune_head, re-run unlogged if needed)."""
    model, backbone = _finetune_model(keras, size, seed)
    key = ("head", size, seed)
    if key not in _FINETUNE_CACHE:
        model.compile(keras.optimizers.Adam(1e-3), _binary_loss(keras))
        x, y = _finetune_data(size, seed)
        model.fit(x, y, epochs=_finetune_sizes(size)["head_epochs"], batch_size=32, verbose=0, shuffle=True)
        _FINETUNE_CACHE[key] = model.get_weights()
    model.set_weights(_FINETUNE_CACHE[key])
    return model, backbone


def _train_keras_finetune_unfrozen(run_dir, size, seed, optimizer):
    keras = _keras()
    model, backbone = _head_trained(keras, size, seed)
    # The guide: unfreeze (here only the top block), recompile with a very
    # low learning rate. The guide means BatchNorm to stay in inference mode
    # because the base is called with training=False, but Keras 3's
    # functional call passes the outer training=True down, overriding it
    # (keras-team/keras#20285): a BatchNorm made trainable again runs in
    # training mode, and its moving statistics move. Only block1_bn, still
    # trainable=False, stays in inference mode.
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = layer.name in TOP_BLOCK
    keras.utils.set_random_seed(seed + 2)
    model.compile(optimizer, _binary_loss(keras))
    x, y = _finetune_data(size, seed)
    return keras_fit_logged(model, x, y, run_dir, _frozen_backbone_facts(True),
                            epochs=_finetune_sizes(size)["tune_epochs"], batch_size=32)


def train_keras_finetune_unfrozen_adam(run_dir, size="ci", seed=0):
    return _train_keras_finetune_unfrozen(run_dir, size, seed, _keras().optimizers.Adam(1e-5))


def train_keras_finetune_unfrozen_sgd(run_dir, size="ci", seed=0):
    return _train_keras_finetune_unfrozen(run_dir, size, seed, _keras().optimizers.SGD(1e-4, momentum=0.9))


# -- schedules --


def _small_cnn(keras, classes=4):
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv_1")(inputs)
    x = layers.BatchNormalization(name="bn_1")(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(16, activation="relu", name="dense")(x)
    outputs = layers.Dense(classes, name="head")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def _schedule_sizes(size):
    return sizes(size, ci=dict(n=384, epochs=12), full=dict(n=8192, epochs=40))


def train_keras_lr_step_decay(run_dir, size="ci", seed=0):
    keras = _keras()
    s = _schedule_sizes(size)
    keras.utils.set_random_seed(seed)
    x, theta = gratings(rng_for("keras_lr_step_decay", seed), s["n"])
    model = _small_cnn(keras)
    base, epochs = 0.05, s["epochs"]

    def step_decay(epoch, lr):  # x0.1 at 1/2 and at 3/4 of the epochs
        return base * (0.1 ** ((epoch >= epochs // 2) + (epoch >= 3 * epochs // 4)))

    model.compile(keras.optimizers.SGD(base, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return keras_fit_logged(model, x, orientation_classes(theta), run_dir,
                            {name: "trains" for name in ("conv_1", "bn_1", "conv_2", "dense", "head")},
                            callbacks=[keras.callbacks.LearningRateScheduler(step_decay)],
                            epochs=epochs, batch_size=32)


def train_keras_lr_cosine(run_dir, size="ci", seed=0):
    keras = _keras()
    s = _schedule_sizes(size)
    s["epochs"] += s["epochs"] // 4
    keras.utils.set_random_seed(seed)
    x, theta = gratings(rng_for("keras_lr_cosine", seed), s["n"])
    model = _small_cnn(keras)
    steps = s["epochs"] * -(-s["n"] // 32)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=steps)
    model.compile(keras.optimizers.Adam(schedule), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return keras_fit_logged(model, x, orientation_classes(theta), run_dir,
                            {name: "trains" for name in ("conv_1", "bn_1", "conv_2", "dense", "head")},
                            epochs=s["epochs"], batch_size=32)


# -- dead paths under weight decay / L2 --


def _dead_path_model(keras, l2=None):
    """An MLP with a dead branch (output x 0, joined to the logits) and an unused head (no loss)."""
    layers = keras.layers

    def dense(units, name, activation=None):
        regularizer = keras.regularizers.L2(l2) if l2 else None
        return layers.Dense(units, activation=activation, name=name, kernel_regularizer=regularizer)

    inputs = keras.Input((16,))
    h1 = dense(32, "hidden_1", "relu")(inputs)
    h2 = dense(32, "hidden_2", "relu")(h1)
    main = dense(4, "head")(h2)
    dead = dense(4, "dead_branch")(h1)
    muted = layers.Rescaling(0.0, name="times_zero")(dead)  # exactly zero gradient upstream
    out = layers.Add(name="join")([main, muted])
    aux = dense(4, "unused_head")(h2)  # a model output no loss is attached to
    return keras.Model(inputs, {"out": out, "aux": aux}, name="dead_path_mlp")


def _dead_path_sizes(size):
    # Batches of 16 for many steps: decay moves a dead path by ~lr*wd per step.
    return sizes(size, ci=dict(n=1024, epochs=10, batch_size=16), full=dict(n=8192, epochs=30, batch_size=16))


def _train_keras_dead_path(name, run_dir, size, seed, optimizer, l2, facts, overrides, notes):
    keras = _keras()
    s = _dead_path_sizes(size)
    keras.utils.set_random_seed(seed)
    x, y = _teacher_task(rng_for(name, seed), s["n"])
    model = _dead_path_model(keras, l2)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer, loss={"out": loss})
    return keras_fit_logged(model, x, {"out": y}, run_dir, facts, overrides,
                            data_loss=lambda y_true, y_pred: loss(y_true["out"], y_pred["out"]),
                            notes=notes, epochs=s["epochs"], batch_size=s["batch_size"])


_LIVE = {"hidden_1": "trains", "hidden_2": "trains", "head": "trains"}


def train_keras_adamw_dead_path(run_dir, size="ci", seed=0):
    keras = _keras()
    return _train_keras_dead_path(
        "keras_adamw_dead_path", run_dir, size, seed, keras.optimizers.AdamW(1e-3, weight_decay=0.01), None,
        dict(_LIVE, dead_branch="dead_decay", unused_head="frozen"),
        # 0 * decay = 0: the zero-initialised bias of the dead branch never moves.
        {"dead_branch/bias": "frozen"},
        {"unused_head": "No loss reaches it: its gradient is None, and Keras's optimizer skips "
                        "variables without a gradient, weight decay included, so it never changes."},
    )


def train_keras_sgd_l2_dead_path(run_dir, size="ci", seed=0):
    keras = _keras()
    return _train_keras_dead_path(
        "keras_sgd_l2_dead_path", run_dir, size, seed, keras.optimizers.SGD(0.05, momentum=0.9), 1e-3,
        dict(_LIVE, dead_branch="dead_decay", unused_head="dead_decay"),
        # Biases carry no penalty: zero data gradient (dead branch) or none
        # at all (unused head), so they stay at 0.
        {"dead_branch/bias": "frozen", "unused_head/bias": "frozen"},
        {"unused_head": "Only the L2 penalty reaches its kernel (its bias gets no gradient and never moves)."},
    )


def train_keras_adam_l2_dead_path(run_dir, size="ci", seed=0):
    keras = _keras()
    return _train_keras_dead_path(
        "keras_adam_l2_dead_path", run_dir, size, seed, keras.optimizers.Adam(1e-3), 1e-3,
        dict(_LIVE, dead_branch="dead_decay", unused_head="dead_decay"),
        {"dead_branch/bias": "frozen", "unused_head/bias": "frozen"},
        {"dead_branch": "Adam normalises the penalty's gradient 2*l2*w: each weight steps by about lr "
                        "towards 0 whatever its size (sign descent), so this is not a rescaling.",
         "unused_head": "Only the L2 penalty reaches its kernel, through Adam (see dead_branch)."},
    )


# -- BatchNorm --


def train_keras_batchnorm(run_dir, size="ci", seed=0):
    keras = _keras()
    layers = keras.layers
    s = sizes(size, ci=dict(n=512, epochs=5), full=dict(n=16384, epochs=20))
    keras.utils.set_random_seed(seed)
    x, y = _teacher_task(rng_for("keras_batchnorm", seed), s["n"])
    inputs = keras.Input((16,))
    # No bias before a BatchNorm in training mode (it cancels it: the
    # gradient would be rounding noise); dense_2 feeds one in inference mode.
    h = layers.Dense(32, use_bias=False, name="dense_1")(inputs)
    h = layers.BatchNormalization(name="bn_train")(h)
    h = layers.ReLU()(h)
    h = layers.Dense(32, name="dense_2")(h)
    # trainable=False: Keras 3 runs it in inference mode; nothing of it moves.
    h = layers.BatchNormalization(name="bn_frozen", trainable=False)(h)
    h = layers.ReLU()(h)
    h = layers.Dense(32, use_bias=False, name="dense_3")(h)
    # No gamma, no beta: its only variables are the moving statistics.
    h = layers.BatchNormalization(name="bn_stats_only", center=False, scale=False)(h)
    h = layers.ReLU()(h)
    outputs = layers.Dense(4, name="head")(h)
    model = keras.Model(inputs, outputs, name="batchnorm_mlp")
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    facts = {"dense_1": "trains", "bn_train": "trains", "dense_2": "trains", "bn_frozen": "frozen_stats",
             "dense_3": "trains", "bn_stats_only": "statistics", "head": "trains"}
    return keras_fit_logged(model, x, y, run_dir, facts, epochs=s["epochs"], batch_size=32)


# -- Embedding, attention, LayerNorm --

VOCABULARY, USED_TOKENS, SEQUENCE = 1000, 64, 12


def token_task(rng, n):
    """Sequences over USED_TOKENS ids of a VOCABULARY: label 1 if more "positive" tokens than negative."""
    used = rng.choice(VOCABULARY, USED_TOKENS, replace=False)
    polarity = np.where(np.arange(USED_TOKENS) % 2 == 0, 1, -1)
    picks = rng.integers(0, USED_TOKENS, (n, SEQUENCE))
    tokens = used[picks].astype(np.int32)
    label = (polarity[picks].sum(axis=1) > 0).astype(np.float32)[:, None]
    return tokens, label, used


def embedding_note(initial, final, used):
    """How many rows of an embedding changed, used and unused."""
    changed = np.any(initial != final, axis=1)
    unused = np.ones(len(initial), bool)
    unused[used] = False
    delta = np.linalg.norm(final - initial, axis=1)
    norm = np.linalg.norm(initial, axis=1)
    text = "%d of %d rows changed (%d of the %d rows looked up, %d of the %d never looked up)" % (
        changed.sum(), len(changed), changed[~unused].sum(), (~unused).sum(), changed[unused].sum(), unused.sum())
    if changed[unused].any():
        text += "; never-looked-up rows moved by %.3g of their norm (median), looked-up rows by %.3g" % (
            np.median(delta[unused] / norm[unused]), np.median(delta[~unused] / norm[~unused]))
    else:
        text += "; looked-up rows moved by %.3g of their norm (median)" % np.median(delta[~unused] / norm[~unused])
    return text + "."


def train_keras_layernorm_embedding_attention(run_dir, size="ci", seed=0):
    keras = _keras()
    layers = keras.layers
    s = sizes(size, ci=dict(n=512, epochs=5), full=dict(n=16384, epochs=20))
    keras.utils.set_random_seed(seed)
    tokens, label, used = token_task(rng_for("keras_layernorm_embedding_attention", seed), s["n"])
    inputs = keras.Input((SEQUENCE,), dtype="int32")
    e = layers.Embedding(VOCABULARY, 16, name="embedding")(inputs)
    a = layers.MultiHeadAttention(num_heads=2, key_dim=8, name="attention")(e, e)
    h = layers.LayerNormalization(name="layer_norm")(layers.Add()([e, a]))
    h = layers.Dense(32, activation="relu", name="ffn")(h)
    h = layers.GlobalAveragePooling1D()(h)
    outputs = layers.Dense(1, name="head")(h)
    model = keras.Model(inputs, outputs, name="token_classifier")
    model.compile(keras.optimizers.Adam(1e-3), _binary_loss(keras))
    facts = {"embedding": "trains", "attention": "trains", "layer_norm": "trains", "ffn": "trains", "head": "trains"}
    truth = keras_fit_logged(model, tokens, label, run_dir, facts, epochs=s["epochs"], batch_size=32)
    key = ("embedding", "embeddings")
    truth.notes["embedding"] = embedding_note(truth.initial[key], truth.final[key], used)
    return truth


# -- the planted faults of test_calibration.py --

_PLANTED_FACT = {"learning": "trains", "not_learning": "slow", "diverged": "nan", "frozen": "frozen"}


def _train_keras_planted(model_name, run_dir, size, seed):
    """test_calibration's model with its planted layers, logged by both callbacks (seed 0: its own seed)."""
    keras = _keras()
    import test_calibration  # pylint: disable=import-outside-toplevel

    build, default_seed = test_calibration.MODELS[model_name]
    seed = default_seed if seed == 0 else seed
    keras.utils.set_random_seed(seed)
    model, x, y, fit_args = build(keras, seed)
    if size == "full":
        fit_args = dict(fit_args, epochs=2 * fit_args["epochs"])
    _, _, Sabotage = test_calibration._planted_layers(keras)  # pylint: disable=protected-access
    facts = {layer: "permuted" if layer == "permuted_dense" else _PLANTED_FACT[verdict]
             for layer, verdict in test_calibration.EXPECTED_OURS.items()}
    # The planted layers' biases are ordinary: trained (slow, nan), or frozen
    # with the permuted (trainable=False) kernel, which alone is permuted.
    overrides = {"slow_dense/bias": "trains", "nan_dense/bias": "trains", "permuted_dense/bias": "frozen"}
    overrides = {"%s/%s" % (model_name, k): v for k, v in overrides.items()}
    return keras_fit_logged(model, x, y, run_dir, facts, overrides, callbacks=[Sabotage(seed)], **fit_args)


def train_keras_planted_mlp(run_dir, size="ci", seed=0):
    return _train_keras_planted("mlp", run_dir, size, seed)


def train_keras_planted_cnn(run_dir, size="ci", seed=0):
    return _train_keras_planted("cnn", run_dir, size, seed)


# ------------------------------------------------------------- registry --


def _recipes():
    import recipes_torch  # pylint: disable=import-outside-toplevel

    keras_recipes = [
        ("keras_finetune_head", train_keras_finetune_head,
         "Keras's transfer-learning guide on a small conv backbone (3 conv blocks, BatchNorm in the first and last) "
         "pre-trained (unlogged) on 4-class orientation of noisy gratings; backbone.trainable = False, "
         "called with training=False, a new Dense head trained on a binary orientation task with Adam(1e-3)."),
        ("keras_finetune_unfrozen_adam", train_keras_finetune_unfrozen_adam,
         "Continues keras_finetune_head: the top block (block3_conv, block3_bn) unfrozen, the rest frozen, "
         "recompiled with Adam(1e-5); logged as its own run (reference: the weights at the start of this "
         "phase). block1_bn stays trainable=False (inference mode: frozen_stats); block3_bn trains, and, "
         "although the base is called with training=False as the guide says, runs in training mode: "
         "Keras 3 overrides that flag with fit's training=True (keras-team/keras#20285), so its moving "
         "statistics change too."),
        ("keras_finetune_unfrozen_sgd", train_keras_finetune_unfrozen_sgd,
         "The same as keras_finetune_unfrozen_adam with SGD(1e-4, momentum=0.9)."),
        ("keras_lr_step_decay", train_keras_lr_step_decay,
         "A small CNN (conv, BatchNorm, conv, dense) from scratch with SGD(0.05, momentum 0.9) and a "
         "LearningRateScheduler that multiplies the rate by 0.1 at 1/2 and at 3/4 of the epochs."),
        ("keras_lr_cosine", train_keras_lr_cosine,
         "The same CNN with Adam and keras.optimizers.schedules.CosineDecay(1e-3) to 0 over the training: "
         "the late epochs move little."),
        ("keras_adamw_dead_path", train_keras_adamw_dead_path,
         "An MLP under AdamW(1e-3, weight_decay=0.01) with a dead branch (a Dense whose output is "
         "multiplied by 0, Rescaling(0.0), before joining the logits: exactly 0 gradient, shrunk by the "
         "decoupled decay) and an unused head (a model output with no loss: no gradient at all, which "
         "Keras skips, decay included, so it is frozen)."),
        ("keras_sgd_l2_dead_path", train_keras_sgd_l2_dead_path,
         "The dead-path MLP under SGD(0.05, momentum 0.9) with kernel_regularizer=L2(1e-3) on every Dense: "
         "the dead branch and the unused head are moved only by the penalty (a pure rescaling)."),
        ("keras_adam_l2_dead_path", train_keras_adam_l2_dead_path,
         "The dead-path MLP under Adam(1e-3) with L2(1e-3) kernels: Adam normalises the penalty's gradient, "
         "so the dead kernels shrink by about lr per step per weight, not by a rescaling."),
        ("keras_batchnorm", train_keras_batchnorm,
         "An MLP with a BatchNorm in training (trains; moving statistics: statistics), a BatchNorm with "
         "trainable=False (inference mode in Keras 3: frozen_stats) and a BatchNorm without gamma/beta "
         "(center=False, scale=False: only its moving statistics change)."),
        ("keras_layernorm_embedding_attention", train_keras_layernorm_embedding_attention,
         "Embedding(1000, 16) of which only 64 ids ever occur, MultiHeadAttention (2 heads) with a "
         "residual, LayerNormalization, Dense, pooled, Adam(1e-3). Everything trains; under Adam the "
         "embedding rows that are never looked up get zero gradient and zero moments, so they stay "
         "bit-identical: only the looked-up rows move (see the notes)."),
        ("keras_planted_mlp", train_keras_planted_mlp,
         "test_calibration.py's MLP with its planted faults (frozen, slow_dense gradient / 1e4, nan_dense, "
         "permuted_dense) beside healthy layers; SGD(0.05, momentum 0.9). Seed 0 = its own seed (7)."),
        ("keras_planted_cnn", train_keras_planted_cnn,
         "test_calibration.py's 1-D CNN with the same planted faults; plain SGD(0.05). Seed 0 = its own seed."),
    ]
    result = collections.OrderedDict()
    for name, train, description in keras_recipes:
        result[name] = Recipe(name, "keras", description, train)
    for name, train, description in recipes_torch.RECIPES:
        result[name] = Recipe(name, "torch", description, train)
    return result


RECIPES = _recipes()


# ---------------------------------------------------------------- runner --


def check_layer_names(run_dir, truth):
    """Raises TruthError unless the truth's layers are exactly the layers the analysis finds, from both sources."""
    from tb_weightdiff import judge, reader  # pylint: disable=import-outside-toplevel

    found = {}
    with reader.open_logdir(run_dir, loader="python") as opened:
        for source in ("tb_weightdiff", "histograms"):
            result = judge.analyze_logdir(opened, source=source)
            found[source] = {layer["name"] for run in result["runs"] for layer in run["layers"]}
    for source, names in found.items():
        if names != set(truth):
            raise TruthError("%s: layers from %s %s, truth %s" % (run_dir, source, sorted(names), sorted(truth)))


def run(logdir, size="ci", seed=0, only=None, check=True, out=sys.stdout):
    """Trains the chosen recipes into `logdir/<recipe>/`; writes (merges into) `logdir/truth.json`."""
    names = list(only) if only else list(RECIPES)
    unknown = [name for name in names if name not in RECIPES]
    if unknown:
        raise SystemExit("unknown recipes: %s (known: %s)" % (", ".join(unknown), ", ".join(RECIPES)))
    os.makedirs(logdir, exist_ok=True)
    truth_path = os.path.join(logdir, "truth.json")
    truths = {}
    if os.path.exists(truth_path):
        with open(truth_path) as handle:
            truths = json.load(handle)
    timings = {}
    for name in names:
        recipe = RECIPES[name]
        run_dir = os.path.join(logdir, name)
        if os.path.exists(run_dir):
            import shutil  # pylint: disable=import-outside-toplevel

            shutil.rmtree(run_dir)
        start = time.monotonic()
        truth = recipe.train(run_dir, size=size, seed=seed)
        timings[name] = time.monotonic() - start
        if check:
            check_layer_names(run_dir, truth)
        entry = truth.to_json(recipe.framework)
        entry.update(size=size, seed=seed, seconds=round(timings[name], 2), description=recipe.description)
        truths[name] = entry
        with open(truth_path, "w") as handle:
            json.dump(truths, handle, indent=1, sort_keys=False)
        print("%-38s %6.1f s  %s" % (name, timings[name], " ".join("%s=%s" % kv for kv in truth.items())),
              file=out, flush=True)
    print("%-38s %6.1f s" % ("total", sum(timings.values())), file=out, flush=True)
    return truths, timings


# ------------------------------------------------------ the confusion table --

# A layer of these facts did not learn: a verdict that does not flag it is a miss.
_FLAGGED_FACTS = {"dead_decay": {"decay_only", "not_learning"}, "slow": {"not_learning", "decay_only"}, "nan": {"diverged"}}
# What a source provably cannot see, when the judge says so in the layer's reason.
_CANNOT_TELL = "cannot tell"


def outcome(fact, source, layer):
    """How a verdict stands against the truth: "right", "miss", "false alarm" or "cannot tell".

    A miss is a layer that did not learn (dead_decay, slow, nan) called
    anything that does not flag it, or a frozen one called anything but
    frozen; a false alarm is a layer that learns (trains, statistics) flagged.
    "Cannot tell": histograms of a permuted layer (identical histograms), and
    a layer that did not learn whose histograms the judge itself says cannot
    tell it from learning.
    """
    verdict = layer["verdict"]
    if fact == "permuted" and source == "histograms":
        return "cannot tell" if verdict == "frozen" else "miss"
    if verdict == expected_verdict(fact, source):
        return "right"
    if fact in _FLAGGED_FACTS:
        if verdict in _FLAGGED_FACTS[fact]:
            return "right"
        if source == "histograms" and verdict == "learning" and _CANNOT_TELL in layer["reason"]:
            return "cannot tell"
        return "miss"
    if fact in ("frozen", "frozen_stats"):
        return "miss"
    return "false alarm"


def judge_corpus(logdir, loader="rust"):
    """Judges a corpus (from `run`) from both sources: `[(recipe, source, layer name, fact, layer dict)]`."""
    from tb_weightdiff import judge, reader  # pylint: disable=import-outside-toplevel

    with open(os.path.join(logdir, "truth.json")) as handle:
        truths = json.load(handle)
    rows = []
    with reader.open_logdir(logdir, loader=loader) as opened:
        for source in ("tb_weightdiff", "histograms"):
            for run_entry in judge.analyze_logdir(opened, source=source)["runs"]:
                recipe = run_entry["run"].split("/")[0]
                facts = truths.get(recipe, {}).get("layers", {})
                for layer in run_entry["layers"]:
                    rows.append((recipe, source, layer["name"], facts.get(layer["name"]), layer))
    return rows


def confusion_markdown(rows):
    """The README's confusion table: per recipe and source, layers, misses, false alarms,
    what the source cannot tell, and the smallest margin of a verdict (decades from flipping)."""
    table = collections.OrderedDict()
    for recipe, source, _, fact, layer in rows:
        cell = table.setdefault((recipe, source), {"layers": 0, "miss": 0, "false alarm": 0, "cannot tell": 0, "margins": []})
        cell["layers"] += 1
        result = outcome(fact, source, layer)
        if result != "right":
            cell[result] += 1
        elif layer.get("margin") is not None:
            cell["margins"].append((layer["margin"], layer["name"], layer["verdict"]))
    lines = [
        "| recipe | source | layers | misses | false alarms | cannot tell | smallest margin (layer, verdict) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for (recipe, source), cell in table.items():
        margin = min(cell["margins"]) if cell["margins"] else None
        lines.append("| %s | %s | %d | %d | %d | %d | %s |" % (
            recipe, "ours" if source == "tb_weightdiff" else "histograms", cell["layers"], cell["miss"],
            cell["false alarm"], cell["cannot tell"],
            "%.2f (%s, %s)" % margin if margin else "-"))
    totals = {key: sum(cell[key] for cell in table.values()) for key in ("layers", "miss", "false alarm", "cannot tell")}
    lines.append("| **all** | | %d | %d | %d | %d | |" % (
        totals["layers"], totals["miss"], totals["false alarm"], totals["cannot tell"]))
    return "\n".join(lines)


# ------------------------------------------------------ contradictions --


def contradictions(truths, reports):
    """`[(recipe, source, layer, fact, expected, layer json)]` where the verdict contradicts the truth.

    `reports`: `{source: tb-weightdiff report --json output}`; runs are
    matched to recipes by their first path component.
    """
    rows, statistics = [], []
    order = {name: index for index, name in enumerate(truths)}
    sources = {source: index for index, source in enumerate(reports)}
    for source, report in reports.items():
        for run_entry in report["runs"]:
            recipe = run_entry["run"].split("/")[0]
            if recipe not in truths:
                continue
            layers = truths[recipe]["layers"]
            for layer in run_entry["layers"]:
                fact = layers.get(layer["name"])
                if fact is None:
                    rows.append((recipe, source, layer["name"], "(no truth)", None, layer))
                    continue
                expected = expected_verdict(fact, source)
                if expected is None:
                    statistics.append((recipe, source, layer["name"], fact, None, layer))
                elif layer["verdict"] != expected:
                    rows.append((recipe, source, layer["name"], fact, expected, layer))

    def key(row):
        return order.get(row[0], len(order)), sources[row[1]]

    return sorted(rows, key=key), sorted(statistics, key=key)


def contradictions_markdown(truths, reports):
    from test_calibration import fmt  # pylint: disable=import-outside-toplevel

    rows, statistics = contradictions(truths, reports)
    lines = ["| recipe | source | layer | fact | expected | verdict | movement | x median | relative change | cosine distance |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def line(row):
        recipe, source, name, fact, expected, layer = row
        movement = fmt(layer["movement"])
        if layer["movement"] is not None:
            movement += " (%s)" % ("rel" if layer["movement_kind"] == "relative_change" else "shift")
        return "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            recipe, source, name, fact, expected or "-", layer["verdict"], movement,
            fmt(layer["ratio_to_median"]), fmt(layer["relative_change"]), fmt(layer["cosine_distance"]))

    lines.extend(line(row) for row in rows)
    total = sum(len(run_entry["layers"]) for report in reports.values() for run_entry in report["runs"]
                if run_entry["run"].split("/")[0] in truths)
    lines.append("")
    lines.append("%d of %d judged layers contradict the truth." % (len(rows), total))
    wrong = {row[0] for row in rows}
    right = [name for name in truths if name not in wrong]
    if right:
        lines.append("No contradiction from either source in: %s." % ", ".join(right))
    if statistics:
        lines.append("")
        lines.append("Layers whose fact prescribes no verdict (`statistics`):")
        lines.append("")
        lines.append(lines[0])
        lines.append(lines[1])
        lines.extend(line(row) for row in statistics)
    return "\n".join(lines)


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", help="train the recipes into LOGDIR/<recipe>/, truth in LOGDIR/truth.json")
    parser.add_argument("--size", choices=("ci", "full"), default="ci")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these recipes")
    parser.add_argument("--no-check", action="store_true", help="skip reading the run back to check the layer names")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--contradictions", nargs=3, metavar=("CORPUS", "OURS_JSON", "HISTOGRAMS_JSON"),
                        help="print the layers whose verdicts contradict CORPUS/truth.json, as markdown")
    parser.add_argument("--table", metavar="CORPUS",
                        help="judge CORPUS (trained before, or with --logdir now) and print the confusion table")
    args = parser.parse_args(argv)
    if args.table and not args.logdir:
        print(confusion_markdown(judge_corpus(args.table)))
        return 0
    if args.list:
        for recipe in RECIPES.values():
            print("%-38s %-6s %s" % (recipe.name, recipe.framework, recipe.description))
        return 0
    if args.contradictions:
        corpus, ours, histograms = args.contradictions
        with open(os.path.join(corpus, "truth.json")) as handle:
            truths = json.load(handle)
        reports = {}
        for source, path in (("tb_weightdiff", ours), ("histograms", histograms)):
            with open(path) as handle:
                reports[source] = json.load(handle)
        print(contradictions_markdown(truths, reports))
        return 0
    if not args.logdir:
        parser.error("--logdir is required (or --list, --contradictions)")
    run(args.logdir, size=args.size, seed=args.seed, only=args.only, check=not args.no_check)
    if args.table:
        print(confusion_markdown(judge_corpus(args.logdir)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
