"""Reliability: no run hangs, a run that produced nothing usable fails, honest weights
metrics, failures that name their cause and fix, bounded diagnostics."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from sdekit._xla import CPU_FLAGS, configure_xla

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
