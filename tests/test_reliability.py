"""Reliability: no run hangs, a run that produced nothing usable fails, honest weights
metrics, failures that name their cause and fix, bounded diagnostics."""

import json
import os
import re
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from click.testing import CliRunner

import sdekit
from sdekit import _run as run_module
from sdekit._xla import CPU_FLAGS, configure_xla
from sdekit.cli import cli

# The program that deadlocked XLA's concurrency-optimised CPU scheduler on every run
# (docs/performance.md, "A run that hangs"): it must finish now that sdekit turns it off.
_HANG = textwrap.dedent("""
    import itertools, os, jax, sdekit
    means = [[2.0 * s for s in signs] for signs in itertools.product([-1, 1], repeat=5)]
    gmm = sdekit.create("target", "gmm", means=means, covs=1 / 32)
    s = sdekit.compose(gmm, {"name": "follmer", "steps": 4, "draws": 129, "chunk": 128},
                       process={"name": "pbm", "sigma": 1.0})
    jax.block_until_ready(s.sample(jax.random.key(0), 300))
    print(os.environ["XLA_FLAGS"])
""")


def test_xla_cpu_deadlock_reproducer_finishes():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    try:
        done = subprocess.run([sys.executable, "-c", _HANG], env=env, capture_output=True,
                              text=True, timeout=240)
    except subprocess.TimeoutExpired:
        raise AssertionError("the XLA CPU deadlock reproducer did not finish in 240 s") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == list(CPU_FLAGS)


def test_configure_xla_appends_and_keeps_the_users_flags():
    jax.devices()  # the backend has started: flags added now come too late, and it says so
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    with pytest.warns(RuntimeWarning, match="Import sdekit first"):
        assert configure_xla(env) == list(CPU_FLAGS)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *CPU_FLAGS]
    assert configure_xla(env) == []  # idempotent
    user = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
    assert configure_xla(user) == []
    assert user["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    empty: dict[str, str] = {}
    with pytest.warns(RuntimeWarning):
        configure_xla(empty)
    assert empty["XLA_FLAGS"].split() == list(CPU_FLAGS)


# --------------------------------------------------------------------------------------
# A run that produced nothing usable fails


class _Bad(sdekit.AbstractSampler):
    """Standard-normal samples of which the first `nan_rows` are NaN, with log-weights of
    which the first `nan_weights` are NaN."""

    target: sdekit.AbstractTarget
    nan_rows: int = eqx.field(static=True)
    nan_weights: int = eqx.field(static=True)

    def sample(self, key, n):
        x = jax.random.normal(key, (n, self.target.dim)).at[: self.nan_rows].set(jnp.nan)
        lw = jax.vmap(self.target.log_prob)(x).at[: self.nan_weights].set(jnp.nan)
        return sdekit.Samples(x, lw)


def _bad(target, nan_rows: int = 0, nan_weights: int = 0) -> _Bad:
    """A test sampler with non-finite samples or log-weights."""
    return _Bad(sdekit.resolve_part("target", target), nan_rows, nan_weights)


class _BadPlugin:
    @sdekit.hookimpl
    def register_samplers(self, register):
        register("test-bad", _bad)


@pytest.fixture
def bad_sampler(monkeypatch):
    sdekit.register_plugin(_BadPlugin(), "sdekit-test-bad")
    monkeypatch.setattr(run_module, "DEFAULT_DIAGNOSTICS", ("weights",))
    yield
    sdekit.unregister_plugin("sdekit-test-bad")


def _sample(tmp_path, *sets):
    out = tmp_path / "out"
    args = ["sample", "gaussian", "--sampler", "test-bad", "-n", "40", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, *(a for s in sets for a in ("--set", s))])
    return result, out


def test_a_run_of_mostly_nan_samples_fails_and_is_marked_failed(bad_sampler, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "samples.npz").write_bytes(b"an earlier run's samples")
    result, out = _sample(tmp_path, "sampler.nan_rows=21")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "21 of 40 samples are not finite" in errors[0] and "--steps" in errors[0]
    assert "JAX_ENABLE_X64=1" in errors[0] and "marks the run failed" in errors[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "21 of 40 samples" in metrics["error"]
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "metrics.json"]
    with pytest.raises(sdekit.ConfigError, match="failed and has no samples: 21 of 40"):
        sdekit.load_run(out)


def test_a_run_of_a_few_nan_samples_warns_and_succeeds(bad_sampler, tmp_path):
    result, out = _sample(tmp_path, "sampler.nan_rows=20")  # exactly half: not more
    assert result.exit_code == 0, result.output
    assert "20 of 40 samples are not finite" in result.stderr
    assert json.loads((out / "metrics.json").read_text())["status"] == "ok"


def test_mostly_nan_log_weights_fail_naming_the_target_or_the_weights(bad_sampler):
    config = {"target": "gaussian", "sampler": {"name": "test-bad", "nan_weights": 30}, "n": 40}
    with pytest.raises(sdekit.RunFailed, match="30 of 40 log-weights are not finite, though "
                       "the target's log-density is finite") as info:
        sdekit.run(config)
    assert info.value.run.metrics["status"] == "failed" and info.value.run.samples.x.shape == (40, 2)
    # a log-density that is NaN in float32 but finite in float64 at the samples
    target = sdekit.target_from_log_prob(_float32_nan, dim=2, check=False)
    x = jax.random.normal(jax.random.key(0), (40, 2))
    message = run_module._failure(None, target, sdekit.Samples(x, jax.vmap(target.log_prob)(x)))
    assert re.fullmatch(r"40 of 40 log-weights are not finite: the target's log-density is nan "
                        r"at 40 of the samples, e\.g\. x = \[.*\]; it is finite there in "
                        r"float64, so float32 is the likely cause: run with JAX_ENABLE_X64=1",
                        message), message


def _float32_nan(x):
    """log N(x; 0, I) + log(0.5), with the 0.5 computed so that float32 makes it log(-0.5)."""
    return -0.5 * x @ x + jnp.log(((jnp.ones(()) + 1e-9) - 1.0) * 1e9 - 0.5)
