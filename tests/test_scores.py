"""The `exact` score of the scores plugin: a declared `AbstractDensityScore`, built from a target alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdekit

pytest.importorskip("sdekit_scores")


def test_exact_score_works_from_a_target_alone():
    score = sdekit.create("score", "exact", target="gmm40")
    assert isinstance(score, sdekit.AbstractDensityScore)
    assert isinstance(score.process, sdekit.AbstractProcess)  # the declared default, vp
    x = jnp.array([1.0, -2.0])
    # the score is the gradient of log p_t, and the potential is log p_t
    grad = jax.grad(score.log_prob, argnums=1)(0.3, x)
    np.testing.assert_allclose(score(0.3, x), grad, rtol=1e-4, atol=1e-6)
    assert score.potential(0.3, x) == score.log_prob(0.3, x)


def test_exact_score_log_prob_is_normalised_in_1d():
    """Riemann sum of exp(log p_t) over a wide grid, in float64: 1 to the grid's accuracy."""
    with jax.enable_x64(True):
        target = sdekit.create("target", "gmm", means=[[-2.0], [1.0]], covs=[0.3, 0.6])
        score = sdekit.create("score", "exact", target=target, process="ve")
        xs = jnp.linspace(-40.0, 40.0, 8001)[:, None]
        for t in (0.01, 0.5):
            p = jnp.exp(jax.vmap(lambda x: score.log_prob(t, x))(xs))
            assert float(jnp.sum(p) * (xs[1, 0] - xs[0, 0])) == pytest.approx(1.0, abs=1e-6)


def test_exact_score_of_a_non_mixture_says_what_to_do():
    with pytest.raises(sdekit.CompositionError) as info:
        sdekit.create("score", "exact", target="funnel")
    message = str(info.value)
    assert "Funnel" in message and "`mixture`" in message and "sdekit.GaussianMixture" in message
    for name in sdekit.registry().names("score"):
        if name != "exact":
            assert repr(name) in message
