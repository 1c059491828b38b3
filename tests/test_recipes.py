"""Recipes: plugins register training settings for datasets, losses and architectures; the more
specific ones win, the loss's own settings and the user's win over all; ``ganforge recipes`` lists
them and run.json records those a run used."""
import json

import pytest
from typer.testing import CliRunner

import ganforge
from ganforge import hookimpl, layering
from ganforge.cli import app
from ganforge.plugins import plugin_registered
from ganforge.rundir import read_record

TINY = dict(dataset="ring", batch_size=32, arch_options={"hidden": 16}, data_options={"n": 256}, steps=2)


class Recipes:
    """A plugin that registers the recipes given."""

    def __init__(self, *recipes):
        self.recipes = recipes

    @hookimpl
    def register_recipes(self, register):
        for recipe in self.recipes:
            register(**recipe)


def test_the_more_specific_recipe_wins_and_the_losss_own_settings_win_over_all():
    plugin = Recipes(dict(dataset="ring", settings={"lr_g": 1e-3, "d_steps": 3, "ema_decay": 0.99}, source="A"),
                     dict(dataset="ring", loss="hinge", settings={"lr_g": 2e-3, "pack": 4}, source="B"),
                     dict(dataset="ring", loss="hinge", arch="mlp", settings={"pack": 8}, source="C"),
                     dict(loss="hinge", settings={"lr_g": 7e-4, "lr_d": 7e-4}, source="D"),
                     dict(dataset="ring", loss="wgan", settings={"d_steps": 2, "lr_g": 3e-4}, source="E"))
    with plugin_registered(plugin, "my-recipes"):
        cfg, origins = ganforge.config_for(dataset="ring", loss="hinge")
        assert (cfg.lr_g, cfg.pack, cfg.lr_d) == (2e-3, 8, 7e-4)  # dataset+loss over loss over dataset; +arch on top
        assert cfg.batch_size == 512 and cfg.ema_decay == 0.99  # the built-in ring recipe, the plugin's under it
        assert origins["pack"] == "recipe 'ring+hinge+mlp' (plugin my-recipes)"
        assert origins["lr_d"] == "recipe 'hinge' (plugin my-recipes)"
        assert origins["batch_size"] == "recipe 'ring'"
        # a plugin recipe as specific as the built-in one comes after it: a plugin's wins
        assert origins["d_steps"] == "recipe 'ring' (plugin my-recipes)" and cfg.d_steps == 3
        assert ganforge.config_for(dataset="ring", loss="hinge", arch="dcgan")[0].pack == 4  # +arch: mlp only
        wgan, origins = ganforge.config_for(dataset="ring", loss="wgan")
        assert (wgan.d_steps, origins["d_steps"]) == (5, "loss 'wgan'")  # part of the method, over any recipe
        assert wgan.lr_g == 3e-4  # ... but its learning rate is a recipe's
        assert ganforge.config_for(dataset="ring", loss="hinge", lr_g=1.0, pack=1)[0].lr_g == 1.0  # the user's last
    assert layering.build({"dataset": "ring", "loss": "hinge"}).pack == 2  # unregistered: gone


def test_a_recipe_for_an_arch_applies_to_the_arch_the_dataset_recipe_picks():
    plugin = Recipes(dict(arch="mlp", settings={"g_steps": 2}, source="x"),
                     dict(dataset="digits", arch="mlp", settings={"arch_options": {"hidden": 32}}, source="y"))
    with plugin_registered(plugin):
        assert layering.build({"dataset": "ring"}).g_steps == 2  # ring's recipe picks mlp
        assert layering.build({"dataset": "ring", "arch": "dcgan"}).g_steps == 1
        assert layering.build({"dataset": "digits"}).arch_options == {"d_norm": "none"}  # digits picks dcgan
        assert layering.build({"dataset": "digits", "arch": "mlp"}).arch_options == {"hidden": 32}


@pytest.mark.parametrize("recipe, error", [
    (dict(dataset="ring", settings={"d_step": 4}, source="s"),
     "unknown config key 'd_step' in recipe 'ring' (plugin bad); did you mean 'd_steps'?"),
    (dict(dataset="ring", settings={"lr_g": -1.0}, source="s"),
     "lr_g must be positive, got -1.0 (in recipe 'ring' (plugin bad))"),
    (dict(dataset="ring", settings={"lr_g": 1e-3}), "a recipe needs a source: the benchmark or paper its settings "
                                                     "come from"),
    (dict(settings={"lr_g": 1e-3}, source="s"), "a recipe names a dataset, a loss or an arch it is for"),
    (dict(dataset="ring", settings={"dataset": "grid"}, source="s"),
     "recipe 'ring' (plugin bad) cannot set dataset: it selects runs by it"),
    (dict(dataset="shapes:shapes", settings={"lr_g": 1e-3}, source="s"),
     "recipe dataset must be a registered name without a plugin prefix, got 'shapes:shapes'"),
])
def test_a_malformed_recipe_keeps_its_plugin_out_with_one_line(recipe, error):
    with plugin_registered(Recipes(recipe), "bad") as registry:
        [plugin] = [p for p in registry.plugins if p.name == "bad"]
        assert plugin.error == f"UsageError: {error}"
        assert layering.build({"dataset": "ring"}).lr_g == 5e-4  # the others still work


def test_a_recipe_registered_twice_is_an_error():
    twice = dict(dataset="ring", loss="bce", settings={"lr_g": 1e-3}, source="s")
    with plugin_registered(Recipes(twice, twice), "twice") as registry:
        assert [p.error for p in registry.plugins if p.name == "twice"] == [
            "ValueError: recipe 'ring+bce' (plugin twice) registered twice"]


def test_ganforge_recipes_lists_what_applies_with_provider_source_and_resolved_settings():
    plugin = Recipes(dict(dataset="ring", loss="hinge", settings={"lr_g": 2e-3, "steps": 100}, source="my bench"))
    with plugin_registered(plugin, "mine"):
        result = CliRunner().invoke(app, ["recipes", "--dataset", "ring", "--loss", "hinge"])
        listing = CliRunner().invoke(app, ["recipes"])
        as_json = json.loads(CliRunner().invoke(app, ["recipes", "--dataset", "ring", "--loss", "hinge",
                                                      "--json"]).stdout)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "ganforge train --dataset ring --loss hinge applies, lowest first:"
    assert lines[1].startswith("recipe 'ring'  (ganforge ") and lines[1].endswith(", built-in)")
    assert lines[4] == "recipe 'ring+hinge' (plugin mine)  ((in-process) )"
    assert lines[5:7] == ["    source: my bench", "    settings: lr_g = 0.002, steps = 100"]
    assert "    steps = 100  # recipe 'ring+hinge' (plugin mine)" in lines
    assert "    batch_size = 512  # recipe 'ring'" in lines
    assert "recipe 'ring+hinge' (plugin mine)" in listing.stdout and "recipe 'grid+wgan'" in listing.stdout
    assert [r["source"] for r in as_json["recipes"]][1] == "my bench"
    assert as_json["resolved"]["lr_g"] == {"value": 2e-3, "set_by": "recipe 'ring+hinge' (plugin mine)"}
    bad = CliRunner().invoke(app, ["recipes", "--dataset", "nope"])
    assert bad.exit_code == 2 and bad.output.startswith("Error: unknown dataset 'nope'")


def test_run_json_records_the_recipes_a_run_used_and_a_resume_keeps_them(tmp_path):
    plugin = Recipes(dict(dataset="ring", loss="hinge", settings={"lr_g": 2e-3}, source="my bench"))
    with plugin_registered(plugin, "mine"):
        run = ganforge.train(**TINY, loss="hinge", out_dir=str(tmp_path), name="r")
    recipes = read_record(run)["recipes"]
    assert [(r.get("dataset"), r.get("loss"), r["plugin"]) for r in recipes] == [
        ("ring", None, "ganforge.builtin.recipes"), ("ring", "hinge", "mine")]
    assert recipes[1]["source"] == "my bench" and recipes[1]["package"] == "(in-process)"
    ganforge.train(resume=run, steps=3)  # the plugin is gone: what the run used is still on record
    assert read_record(run)["recipes"] == recipes


def test_mnist_alone_averages_its_ema_over_the_last_5_percent_of_the_steps(builtins_only):
    assert layering.build({"dataset": "mnist"}).ema_rampup == 0.05
    assert layering.build({"dataset": "mnist", "ema_rampup": 0.2}).ema_rampup == 0.2
    assert layering.build({"dataset": "digits"}).ema_rampup is None  # measured on MNIST alone


def test_stacked_mnist_trains_to_its_protocols_budget_by_default(builtins_only):
    result = CliRunner().invoke(app, ["recipes", "--dataset", "stacked-mnist"])
    assert result.exit_code == 0, result.output
    assert "    steps = 10000  # recipe 'stacked-mnist'" in result.stdout.splitlines()
    assert layering.build({"dataset": "stacked-mnist"}).steps == 10_000
    assert layering.build({"dataset": "stacked-mnist", "steps": 500}).steps == 500  # a flag still wins
    assert layering.build({"dataset": "folder"}).steps == 2000  # ganforge's default where nothing was measured
    assert layering.build({"dataset": "mnist"}).steps == 10_500  # where the README's MNIST figures come from
    assert layering.build({"dataset": "digits"}).steps == 2000
