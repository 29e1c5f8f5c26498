"""The verdicts on the corpus of real training recipes (tests/recipes.py), from every source.

Every recipe of the corpus is trained at CI size (Keras 3 where TensorFlow is
installed, PyTorch where torch is), logged by our summaries and by the
framework's own weight histograms, and every layer's verdict is checked
against what is known to be true of it: no miss, no false alarm. What a
source provably cannot tell (histograms of a permuted layer; histograms that
the judge itself says cannot tell weight decay from learning) is allowed
only where the judge says so. The README's calibration table is
`python tests/recipes.py --logdir DIR --table` (`--size full` for the larger
corpus).
"""

import importlib.util
import io

import pytest

import recipes
from conftest import HAVE_TENSORFLOW

pytestmark = pytest.mark.slow

HAVE_TORCH = importlib.util.find_spec("torch") is not None

FRAMEWORKS = [name for name, present in (("keras", HAVE_TENSORFLOW), ("torch", HAVE_TORCH)) if present]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not FRAMEWORKS:
        pytest.skip("neither TensorFlow nor PyTorch is installed")
    logdir = tmp_path_factory.mktemp("corpus")
    names = [name for name, recipe in recipes.RECIPES.items() if recipe.framework in FRAMEWORKS]
    recipes.run(str(logdir), size="ci", seed=0, only=names, check=False, out=io.StringIO())
    return logdir, names


@pytest.fixture(scope="module")
def judged(corpus):
    logdir, _ = corpus
    return recipes.judge_corpus(str(logdir), loader="rust")


def test_every_layer_of_every_recipe_is_judged_from_both_sources(corpus, judged):
    _, names = corpus
    judged_recipes = {(recipe, source) for recipe, source, _, _, _ in judged}
    assert judged_recipes == {(name, source) for name in names for source in ("tb_weightdiff", "histograms")}
    assert all(fact in recipes.FACTS for _, _, _, fact, _ in judged)


def test_no_miss_and_no_false_alarm(judged):
    wrong = [
        "%s (%s) %s: %s judged %s: %s" % (recipe, source, name, fact, layer["verdict"], layer["reason"])
        for recipe, source, name, fact, layer in judged
        if recipes.outcome(fact, source, layer) in ("miss", "false alarm")
    ]
    assert wrong == []


def test_what_a_source_cannot_tell_is_said_and_only_for_histograms(judged):
    cannot = [(recipe, source, name, fact) for recipe, source, name, fact, layer in judged
              if recipes.outcome(fact, source, layer) == "cannot tell"]
    assert all(source == "histograms" for _, source, _, _ in cannot)
    # Histograms of a permuted layer never change: they say frozen. Ours see it move.
    permuted = [(source, layer["verdict"]) for _, source, _, fact, layer in judged if fact == "permuted"]
    if HAVE_TENSORFLOW:
        assert sorted(permuted) == [("histograms", "frozen")] * 2 + [("tb_weightdiff", "learning")] * 2


def test_a_dead_path_under_weight_decay_is_decay_only_from_our_summaries(judged):
    dead = [(recipe, layer) for recipe, source, _, fact, layer in judged if fact == "dead_decay" and source == "tb_weightdiff"]
    assert dead
    for recipe, layer in dead:
        assert layer["verdict"] == "decay_only", (recipe, layer["name"], layer["reason"])
        assert layer["hint"] and "gradient" in layer["hint"]
        assert layer["rescale_residual"] < 0.09 and layer["margin"] > 0


def test_fine_tuning_at_a_small_learning_rate_is_learning(judged):
    tuned = [(recipe, source, layer) for recipe, source, _, fact, layer in judged
             if "finetune_unfrozen" in recipe and fact == "trains"]
    assert tuned
    for recipe, source, layer in tuned:
        assert layer["verdict"] == "learning", (recipe, source, layer["name"], layer["reason"])
        assert layer["hint"] is None


def test_every_flagged_layer_has_a_hint_and_every_margin_is_positive(judged):
    for recipe, source, name, _, layer in judged:
        if layer["verdict"] in ("frozen", "decay_only", "not_learning", "diverged"):
            assert layer["hint"], (recipe, source, name)
        assert layer["margin"] is None or layer["margin"] >= 0, (recipe, source, name)


@pytest.mark.skipif(not HAVE_TENSORFLOW, reason="the optimizer's state is logged by the Keras callback")
def test_the_callback_logs_the_optimizer_and_the_run_says_how_far_each_update_moved(judged):
    ours = [layer for recipe, source, _, fact, layer in judged
            if source == "tb_weightdiff" and recipe.startswith("keras_") and fact == "trains"]
    assert ours and all(layer["update_ratio"] is not None and layer["update_ratio"] > 0 for layer in ours)


def test_both_loaders_judge_the_corpus_alike(corpus, judged):
    logdir, _ = corpus
    python = recipes.judge_corpus(str(logdir), loader="python")
    assert [(r, s, n, layer["verdict"]) for r, s, n, _, layer in python] == [
        (r, s, n, layer["verdict"]) for r, s, n, _, layer in judged
    ]
