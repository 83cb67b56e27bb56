"""`sdekit.testing`: every built-in part passes its conformance check, and broken parts fail it.

Only the public API: parts are built with `sdekit.create` / `sdekit.compose`, and the
deliberately broken parts subclass a built-in through its public class. Sizes (`n`,
`steps`) are small; the checks' tolerances come from `n` (see `sdekit.testing`). Most of
the time is compilation; the parts that compile longest are marked `slow`.
"""

import jax
import jax.numpy as jnp
import pytest

import sdekit
import sdekit.testing as st
from sdekit_processes import VP

# ---------------------------------------------------------------------------- process

PROCESSES = ["vp", "ve", "subvp", "pbm", {"name": "vp", "schedule": "cosine"}]


def test_every_process_is_covered():
    names = {p if isinstance(p, str) else p["name"] for p in PROCESSES}
    assert names == set(sdekit.registry().names("process"))


@pytest.mark.parametrize("process", PROCESSES, ids=str)
def test_builtin_process_conforms(process):
    measured = st.check_process(process)
    assert measured["chapman_kolmogorov_var"] <= st.EXACT_ULPS * 1.2e-7
    assert "short_interval_var" in measured  # short intervals were judged


class VarianceOff(VP):
    """A transition whose variance is 10 % too large."""

    def transition(self, s, t):
        a, sig = super().transition(s, t)
        return a, sig * jnp.sqrt(1.1)


class Cancelling(VP):
    """`1 - exp(-x)` for the variance: exact in real arithmetic, digits lost in float32."""

    def transition(self, s, t):
        dB = self.schedule.increment(s, t)
        return jnp.exp(-0.5 * dB), self.sigma * jnp.sqrt(1 - jnp.exp(-dB))


class DifferenceOfIntegrals(VP):
    """`B(t) - B(s)` of the integrated schedule: its rounding swamps a short step's increment."""

    def transition(self, s, t):
        dB = self.schedule.integral(t) - self.schedule.integral(s)
        return jnp.exp(-0.5 * dB), self.sigma * jnp.sqrt(-jnp.expm1(-dB))


class DriftOff(VP):
    """A drift 5 % stronger than the one the transition integrates."""

    def drift(self, t, y):
        return 1.05 * super().drift(t, y)


class VectorStd(VP):
    """A per-coordinate std where the interface has a scalar."""

    def transition(self, s, t):
        a, sig = super().transition(s, t)
        return a, sig * jnp.ones(3)


class Nonlinear(VP):
    def drift(self, t, y):
        return super().drift(t, y) + 0.1 * jnp.sin(y)


BROKEN = [
    (VarianceOff, "reference marginal r_t\\^2 = .*relative error 0.1"),
    (Cancelling, "short interval .*cancellation"),
    (DifferenceOfIntegrals, "short interval .*cancellation"),
    (DriftOff, "d/dt a_st = c\\(t\\) a_st"),
    (Nonlinear, "drift linear in y"),
]


@pytest.mark.parametrize("cls, match", BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_broken_process_fails(cls, match):
    with pytest.raises(st.ConformanceError, match=match) as info:
        st.check_process(cls())
    assert "tolerance" in str(info.value)


def test_wrong_shape_fails():
    with pytest.raises(st.ConformanceError, match=r"transition\(s, t\): returned shapes \[\(\), \(3,\)\]"):
        st.check_process(VectorStd())


def test_conformance_error_is_an_assertion_error():
    assert issubclass(st.ConformanceError, AssertionError)


# ----------------------------------------------------------------------------- target

SLOW = pytest.mark.slow


def _marked(cases, slow_names, name=lambda case: case):
    """`pytest.param`s of `cases`, those whose `name` is in `slow_names` marked `slow`."""
    return [pytest.param(*(c if isinstance(c, tuple) else (c,)),
                         marks=[SLOW] if name(c) in slow_names else [], id=name(c))
            for c in cases]


TARGETS = ["gaussian", "gmm", "gmm40", "funnel", "many-well-54", "many-well-32",
           "logistic-breast-cancer"]


def test_every_target_is_covered():
    assert set(TARGETS) <= set(sdekit.registry().names("target"))


@pytest.mark.parametrize("target", _marked(TARGETS, {"funnel", "many-well-32"}))
def test_builtin_target_conforms(target):
    measured = st.check_target(target, n=2000)
    instance = sdekit.create("target", target)
    if instance.has_exact_samples:
        assert {"stein_scale_se", "stein_shift_se"} <= set(measured)
    if instance.log_Z is not None and instance.has_exact_samples:
        assert "log_Z_se" in measured


def test_wrong_log_Z_fails():
    target = sdekit.create("target", "gmm")  # log_prob carries log Z = 0

    class Mislabelled(type(target)):
        @property
        def log_Z(self):
            return 0.3

    with pytest.raises(st.ConformanceError, match="log_Z against a bridge-sampling estimate"):
        st.check_target(Mislabelled(), n=2000)


def test_wrong_samples_fail():
    target = sdekit.create("target", "gaussian")

    class Wide(type(target)):
        def sample(self, key, n):
            return super().sample(key, n) * 1.1

    with pytest.raises(st.ConformanceError, match="Stein"):
        st.check_target(Wide(), n=2000)


# ------------------------------------------------------------------------------ score


def test_exact_score_conforms():
    measured = st.check_score("exact", target="gmm", process="vp")
    assert measured["exact_score_rms"] <= 10 * st.EXACT_ULPS * 1.2e-7


@pytest.mark.parametrize("name, process", [("mc-score", "vp"), ("follmer", "pbm")])
def test_estimated_scores_conform(name, process):
    # Monte-Carlo estimates: their accuracy is the caller's claim, here 20 % RMS.
    st.check_score({"name": name, "draws": 1000}, target="gaussian", process=process, rtol=0.2, n=64)


CONTROLLERS = ["mlp", "pis-grad", "limited-width"]


def test_every_controller_is_covered():
    assert set(CONTROLLERS) == set(sdekit.registry().names("controller"))


@pytest.mark.parametrize("name", CONTROLLERS)
def test_untrained_controller_conforms(name):
    target, process = sdekit.create("target", "gaussian"), sdekit.create("process", "vp")
    st.check_score(sdekit.create("controller", name, target=target, process=process), target=target)


def test_wrong_score_fails():
    class Halved(sdekit.AbstractScore):
        inner: sdekit.AbstractScore

        def __call__(self, t, x):
            return 0.5 * self.inner(t, x)

    target, process = sdekit.create("target", "gmm"), sdekit.create("process", "vp")
    exact = sdekit.resolve_part("score", "exact", target=target, process=process)
    with pytest.raises(st.ConformanceError, match="against the exact score"):
        st.check_score(Halved(exact), target=target, process=process)


# ---------------------------------------------------------------------------- sampler

# Untrained controllers: their weights are exact anyway. Sizes keep the effective sample
# size above what the check needs (untrained dis needs more particles).
SAMPLERS = [
    ({"name": "reverse-sde", "steps": 32}, 1000),
    ({"name": "pf-ode", "steps": 32}, 500),
    ({"name": "pis", "steps": 16}, 1000),
    ({"name": "dds", "steps": 16}, 1000),
    ({"name": "dis", "steps": 16}, 4000),
    ({"name": "follmer", "steps": 16, "draws": 64, "chunk": 64}, 500),
    ({"name": "smc", "steps": 10}, 100),
    ({"name": "nuts", "num_warmup": 50, "chains": 2}, 200),
    ({"name": "cmcd", "steps": 16}, 1000),
    ({"name": "cmcd", "steps": 16, "dynamics": "underdamped"}, 1000),
    ({"name": "scld", "steps": 16}, 1000),
]


def test_every_sampler_is_covered():
    assert {spec["name"] for spec, _ in SAMPLERS} == set(sdekit.registry().names("sampler"))


@pytest.mark.parametrize(
    "sampler, n", _marked(SAMPLERS, {"pf-ode", "follmer", "nuts"}, lambda c: c[0]["name"]))
def test_builtin_sampler_conforms(sampler, n):
    st.check_sampler(sampler, n=n)


def test_biased_weights_fail():
    class Biased(sdekit.AbstractSampler):
        inner: sdekit.AbstractSampler

        def sample(self, key, n):
            out = self.inner.sample(key, n)
            return sdekit.Samples(out.x, out.log_weights + 1.0)

    sampler = sdekit.compose("gaussian", {"name": "reverse-sde", "steps": 32})
    with pytest.raises(st.ConformanceError, match="log Z estimate against the analytic log Z"):
        st.check_sampler(Biased(sampler), sdekit.create("target", "gaussian"), n=1000)


# ------------------------------------------------------------------------- diagnostic

DIAGNOSTICS = {
    "eubo": {"points": 200},
    "fp-residual": {"n": 200},
    "girsanov-bound": {"n": 200},
    "ode-sde-gap": {"n": 200, "batches": 2, "w2_points": 200, "projections": 16, "sde_steps": 32},
    "sample-quality": {"mmd_points": 500},
    "score-error": {"n": 200},
    "sinkhorn": {"points": 200, "max_iterations": 200},
    "trajectory-l2": {"times": 3, "cells": 20, "substeps": 5, "n": 500},
    "w2": {"max_points": 200, "projections": 16, "sliced_points": 500},
    "weights": {},
}
SLOW_DIAGNOSTICS = ("fp-residual", "ode-sde-gap", "trajectory-l2")


def test_every_diagnostic_is_covered():
    assert set(DIAGNOSTICS) == set(sdekit.registry().names("diagnostic"))


@pytest.fixture(scope="module")
def run():
    target = sdekit.create("target", "gaussian")
    sampler = sdekit.compose(target, {"name": "reverse-sde", "steps": 32})
    return {"target": target, "sampler": sampler,
            "samples": sampler.sample(jax.random.PRNGKey(1), 500)}


@pytest.mark.parametrize("name", _marked(list(DIAGNOSTICS), SLOW_DIAGNOSTICS))
def test_builtin_diagnostic_conforms(name, run):
    if name == "eubo":  # needs backward weights: an (untrained) path sampler
        sampler = sdekit.compose(run["target"], {"name": "pis", "steps": 8})
        run = {**run, "sampler": sampler, "samples": sampler.sample(jax.random.PRNGKey(1), 500)}
    values = st.check_diagnostic({"name": name, **DIAGNOSTICS[name]}, **run)
    assert values, f"{name} applies to this run on a Gaussian"


def test_nondeterministic_diagnostic_fails():
    calls = []

    class Counting(sdekit.AbstractDiagnostic):
        def __call__(self, key, *, target=None, sampler=None, samples=None):
            calls.append(1)
            return {"value": float(len(calls))}

    with pytest.raises(st.ConformanceError, match="determinism"):
        st.check_diagnostic(Counting())

    class NotFinite(sdekit.AbstractDiagnostic):
        def __call__(self, key, *, target=None, sampler=None, samples=None):
            return {"value": float("nan")}

    with pytest.raises(st.ConformanceError, match="expected a finite number"):
        st.check_diagnostic(NotFinite())
