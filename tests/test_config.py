"""The one configuration system: `sdekit.resolve_config`, `sdekit.parse_set`, derived seeds."""

import pytest

import sdekit
from sdekit import _config as config_module


def registered(kind, *names):
    return all(n in sdekit.registry().names(kind) for n in names)


needs_builtins = pytest.mark.skipif(
    not (registered("target", "funnel", "gaussian") and registered("sampler", "pis")
         and registered("score", "mc-score")),
    reason="the targets / samplers / montecarlo plugins are not installed",
)


def test_parse_set_reads_toml_values_and_suggests_sections():
    assert sdekit.parse_set("sampler.steps=100") == ("sampler", "steps", 100)
    assert sdekit.parse_set("target.mean=[1, 2.5]") == ("target", "mean", [1, 2.5])
    assert sdekit.parse_set("score.x=a=b") == ("score", "x", "a=b")
    with pytest.raises(sdekit.ConfigError, match="Did you mean 'process'"):
        sdekit.parse_set("proces.beta_max=2")
    with pytest.raises(sdekit.ConfigError, match="Did you mean 'training'"):
        sdekit.parse_set("trainig.steps=2", ("data", "model", "training"))


def test_check_section_suggests_coerces_and_fills_defaults():
    options = {"steps": 10, "scale": 1.5, "exact": False, "label": None}
    assert sdekit.check_section("sampler", {"scale": 2}, options) == {
        "steps": 10, "scale": 2.0, "exact": False}
    with pytest.raises(sdekit.ConfigError, match="sampler.stpes.*Did you mean 'steps'"):
        sdekit.check_section("sampler", {"stpes": 3}, options)
    with pytest.raises(sdekit.ConfigError, match="sampler.exact must be true or false"):
        sdekit.check_section("sampler", {"exact": 1}, options)


@needs_builtins
@pytest.mark.parametrize("sets, needle", [
    (["process.bta=2"], "unknown option process.bta for process 'pbm'. Did you mean"),
    (["controller.widht=8"], "Did you mean 'width'"),
    (["sampler.train_iter=8"], "Did you mean 'train_iters'"),
])
def test_every_option_gets_a_suggestion(sets, needle):
    with pytest.raises(sdekit.ConfigError, match=needle):
        sdekit.resolve_config(target="funnel", sampler="pis", sets=sets)


def test_unknown_top_level_key_gets_a_suggestion():
    with pytest.raises(sdekit.ConfigError, match="unknown key 'sed'. Did you mean 'seed'"):
        sdekit.resolve_config({"sed": 1})


def test_derived_seeds_are_deterministic_and_distinct():
    assert sdekit.derive_seed(7, "controller") == sdekit.derive_seed(7, "controller")
    seeds = {sdekit.derive_seed(s, k) for s in range(50) for k in ("controller", "score")}
    assert len(seeds) == 100
    assert all(0 <= s < 2**31 for s in seeds)


@needs_builtins
def test_seed_reaches_every_part_and_is_recorded():
    seven = sdekit.resolve_config(target="funnel", sampler="pis", seed=7)
    eight = sdekit.resolve_config(target="funnel", sampler="pis", seed=8)
    assert seven["controller"]["seed"] == sdekit.derive_seed(7, "controller")
    assert eight["controller"]["seed"] == sdekit.derive_seed(8, "controller")
    assert sdekit.resolve_config(seven) == seven  # resolving is idempotent
    # a new seed re-derives the seeds the file derived from its old one
    assert sdekit.resolve_config(seven, seed=8) == eight
    score = sdekit.resolve_config(target="gaussian", score="mc-score", seed=3)["score"]
    assert score["seed"] == sdekit.derive_seed(3, "score")


@needs_builtins
def test_explicit_part_seed_is_kept():
    cfg = sdekit.resolve_config(target="funnel", sampler="pis", seed=7,
                                sets=["controller.seed=123"])
    assert cfg["controller"]["seed"] == 123
    assert sdekit.resolve_config(cfg, seed=9)["controller"]["seed"] == 123


@needs_builtins
def test_two_seeds_give_different_controller_initialisations():
    import equinox as eqx
    import jax
    import numpy as np

    from sdekit._run import compose_config

    def controller_leaves(seed):
        cfg = sdekit.resolve_config(target="funnel", sampler="pis", seed=seed,
                                    sets=["controller.width=8"])
        sampler, _ = compose_config(cfg)
        params = eqx.filter(sampler, eqx.is_inexact_array)
        return [np.asarray(a) for a in jax.tree.leaves(params)]

    a, b, a_again = controller_leaves(1), controller_leaves(2), controller_leaves(1)
    assert len(a) == len(b) > 0
    assert any(x.shape == y.shape and not np.array_equal(x, y) for x, y in zip(a, b))
    assert all(np.array_equal(x, y) for x, y in zip(a, a_again))


@needs_builtins
def test_default_job_is_not_given_the_answer():
    cfg = sdekit.resolve_config()
    assert cfg["target"]["name"] == config_module.DEFAULT_JOB["target"]["name"]
    assert sdekit.create("target", cfg["target"]["name"]).log_Z is not None
    assert "score" not in cfg and cfg["sampler"]["name"] == "smc"
    assert sdekit.resolve_config(n=100)["sampler"] == cfg["sampler"]  # flags apply on top
    assert sdekit.resolve_config({})["sampler"]["name"] == config_module.DEFAULTS["sampler"]["name"]
