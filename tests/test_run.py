"""`sdekit.run`, `sdekit.load_run` and `sdekit.diagnose` from Python, on built-in parts."""

import json

import jax
import numpy as np
import pytest

import sdekit
from sdekit import _run as run_module


def registered(kind, *names):
    return all(n in sdekit.registry().names(kind) for n in names)


pytestmark = pytest.mark.skipif(
    not (registered("target", "gaussian") and registered("sampler", "reverse-sde", "pis")
         and registered("score", "mc-score") and registered("diagnostic", "weights")),
    reason="the targets / samplers / montecarlo / diagnostics plugins are not installed",
)

#: A small run with a seeded part: the Monte-Carlo score draws with its own seed.
SMALL = {"seed": 3, "n": 64, "target": "gaussian",
         "sampler": {"name": "reverse-sde", "steps": 10},
         "score": {"name": "mc-score", "draws": 64, "chunk": 64}}
#: A small trained run: the controller's initialisation comes from a derived seed.
TRAINED = {"seed": 5, "n": 32, "target": "gaussian",
           "sampler": {"name": "pis", "steps": 8, "batch": 16, "train_iters": 20},
           "controller": {"width": 8}}
TIMINGS = {"train_seconds", "compile_seconds", "sample_seconds", "diagnostic_seconds"}


def _measured(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


@pytest.fixture(autouse=True)
def weights_only(monkeypatch):
    monkeypatch.setattr(run_module, "DEFAULT_DIAGNOSTICS", ("weights",))


def test_run_writes_and_load_run_reads_it_back(tmp_path):
    out = tmp_path / "small"
    run = sdekit.run(SMALL, out=out)
    assert isinstance(run, sdekit.Run) and run.directory == out
    assert sorted(p.name for p in out.iterdir()) == sorted(run_module.OUTPUT_FILES)
    assert run.samples.x.shape == (64, 2) and run.samples.log_weights.shape == (64,)
    assert run.config["score"]["seed"] == sdekit.derive_seed(3, "score")
    assert run.metrics["seed"] == 3 and np.isfinite(run.metrics["log_Z"])
    assert run.metrics == json.loads((out / "metrics.json").read_text())
    loaded = sdekit.load_run(out)
    assert loaded.config == run.config and loaded.metrics == run.metrics
    np.testing.assert_array_equal(loaded.samples.x, run.samples.x)
    np.testing.assert_array_equal(loaded.samples.log_weights, run.samples.log_weights)
    assert loaded.target.log_Z == run.target.log_Z
    # the run's config file reproduces it; diagnose repeats its metrics from the same key
    again = sdekit.run(out / "config.toml")
    np.testing.assert_array_equal(again.samples.x, run.samples.x)
    found = sdekit.diagnose(loaded, ["weights"])
    assert found["weights"]["log_Z"] == run.metrics["log_Z"]
    assert (out / "diagnostics.json").is_file()


def test_same_seed_is_bit_identical_and_another_seed_is_not():
    a, b = sdekit.run(SMALL), sdekit.run(SMALL)
    np.testing.assert_array_equal(a.samples.x, b.samples.x)
    np.testing.assert_array_equal(a.samples.log_weights, b.samples.log_weights)
    assert _measured(a.metrics) == _measured(b.metrics)
    c = sdekit.run({**SMALL, "seed": 4})
    assert c.config["score"]["seed"] != a.config["score"]["seed"]
    assert not np.array_equal(a.samples.x, c.samples.x)


def test_trained_run_is_bit_identical_per_seed():
    a, b = sdekit.run(TRAINED), sdekit.run(TRAINED)
    assert a.config["controller"]["seed"] == sdekit.derive_seed(5, "controller")
    assert a.metrics["train_seconds"] > 0
    for x, y in zip(jax.tree.leaves(a.sampler), jax.tree.leaves(b.sampler)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.samples.x, b.samples.x)
    np.testing.assert_array_equal(a.samples.log_weights, b.samples.log_weights)
    assert _measured(a.metrics) == _measured(b.metrics)


def test_a_failed_run_writes_nothing(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(sdekit.CompositionError, match="steps"):
        sdekit.run({**SMALL, "sampler": {"name": "reverse-sde", "steps": 0}}, out=out)
    with pytest.raises(sdekit.ConfigError, match="Did you mean 'draws'"):
        sdekit.run({**SMALL, "score": {"name": "mc-score", "draw": 3}}, out=out)
    assert list(tmp_path.iterdir()) == []


def test_load_run_names_what_is_missing(tmp_path):
    with pytest.raises(sdekit.ConfigError, match="config.toml does not exist"):
        sdekit.load_run(tmp_path)
