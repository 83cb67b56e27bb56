"""`sdekit.fit_gaussian`: Laplace and mean-field fits against Gaussian targets with known
answers, and its errors.

Every fit here is of one target class and dimension (`Gaussian`, d = 3), so each method
compiles once.

Tolerances:

- Laplace: on a Gaussian target $\\log\\gamma$ is quadratic, so the mode is the mean and
  the Hessian is the precision $P$ exactly; the only error is the optimiser's. A converged
  fit has Newton decrement $\\sqrt{g^\\top P^{-1} g} \\le$ `tol`, which bounds the error of
  each coordinate of the mean by `tol` times its marginal sd (Cauchy-Schwarz). The scale
  and $\\log Z$ are exact up to float32 rounding of the Hessian and its Cholesky factor.
- Mean-field: the optimum is known ($\\mu$ = the mean, $s_i = 1/\\sqrt{P_{ii}}$), and the fit
  reaches it up to the noise of the last stochastic-gradient steps. Over 100 seeds (both
  targets below, default settings) the per-coordinate errors had a standard deviation of
  about 0.008 (in units of $s_i$), the largest of the 600 mean errors 0.024 and of the
  scale errors 0.020: the tolerance 0.05 is over 6 of those standard deviations. The
  ELBO is checked against its exact value $\\log Z - \\mathrm{KL}(q^*\\|\\pi)$ within 4
  standard errors of its 1024-draw estimate (computed exactly below) plus 0.02, the KL of
  a fit 0.05 off the optimum in every coordinate ($\\frac12 d\\,0.05^2 + d\\,0.05^2$).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float

import sdekit

MEAN = np.array([1.0, -2.0, 0.5])
SD = np.array([0.5, 2.0, 1.0])
CORRELATION = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
MF_TOL = 0.05


class Gaussian(sdekit.AbstractTarget):
    """$\\log\\gamma(x) = -\\frac12 (x - m)^\\top P (x - m)$: $Z = (2\\pi)^{d/2} \\det P^{-1/2}$."""

    mean: Float[Array, " d"]
    precision: Float[Array, "d d"]
    dim: int = eqx.field(static=True)

    def __init__(self, mean, precision):
        self.mean, self.precision = jnp.asarray(mean), jnp.asarray(precision)
        self.dim = len(mean)

    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        d = x - self.mean
        return -0.5 * d @ self.precision @ d


def gaussian(correlated: bool) -> tuple[Gaussian, np.ndarray]:
    cov = (CORRELATION if correlated else np.eye(3)) * np.outer(SD, SD)
    return Gaussian(MEAN, np.linalg.inv(cov)), cov


def log_Z(cov: np.ndarray) -> float:
    return 0.5 * len(cov) * np.log(2 * np.pi) + 0.5 * np.linalg.slogdet(cov)[1]


@pytest.mark.parametrize("correlated", [False, True])
def test_laplace_is_exact_on_a_gaussian(correlated):
    target, cov = gaussian(correlated)
    fit = sdekit.fit_gaussian(target, jax.random.key(0), method="laplace", tol=1e-3)
    marginal_sd = np.sqrt(np.diag(cov))  # the documented scale: sqrt(diag(H^-1))
    assert fit.method == "laplace" and bool(fit.converged)
    # one evaluation per start at least, plus the final gradient and the Hessian (d = 3)
    assert int(fit.evaluations) >= 4 + 1 + 3 + int(fit.iterations)
    np.testing.assert_array_less(np.abs(np.asarray(fit.mean) - MEAN), 1e-3 * marginal_sd + 1e-6)
    np.testing.assert_allclose(np.asarray(fit.scale), marginal_sd, rtol=1e-4)
    np.testing.assert_allclose(float(fit.log_Z), log_Z(cov), atol=1e-4)
    np.testing.assert_allclose(float(fit.objective), 0.0, atol=1e-5)


@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_mean_field_reaches_the_known_optimum(correlated, seed):
    target, cov = gaussian(correlated)
    precision = np.linalg.inv(cov)
    s = 1 / np.sqrt(np.diag(precision))  # the optimal mean-field sds: conditional ones
    fit = sdekit.fit_gaussian(target, jax.random.key(seed))
    assert fit.method == "mean-field"
    # two runs of 2000 steps of 64 draws and 1024 draws each, after the Laplace fit
    assert int(fit.evaluations) > 2 * (2000 * 64 + 1024)
    np.testing.assert_array_less(np.abs(np.asarray(fit.mean) - MEAN) / s, MF_TOL)
    np.testing.assert_array_less(np.abs(np.asarray(fit.scale) / s - 1), MF_TOL)
    if correlated:  # conditional sds 0.59, 0.53, 0.85 of the marginal ones: under-dispersed
        assert np.all(np.asarray(fit.scale) < 0.9 * np.sqrt(np.diag(cov)))
    else:
        assert bool(fit.converged)
    # exact ELBO of q* = N(mean, diag(s^2)), and the sd of one draw's log gamma - log q*
    kl = 0.5 * (np.linalg.slogdet(cov)[1] + np.sum(np.log(np.diag(precision))))
    root = np.diag(s)
    sd_term = np.sqrt(0.5 * np.sum((root @ (precision - np.diag(1 / s**2)) @ root) ** 2))
    assert abs(float(fit.log_Z) - (log_Z(cov) - kl)) <= 4 * sd_term / np.sqrt(1024) + 0.02


def test_fit_samples_and_log_prob():
    fit = sdekit.GaussianFit(jnp.array([1.0, 2.0]), jnp.array([0.5, 3.0]), "laplace",
                             jnp.asarray(0.0), jnp.asarray(0.0), jnp.asarray(1), jnp.asarray(1),
                             jnp.asarray(0.0), jnp.asarray(True))
    x = fit.sample(jax.random.key(0), 10_000)
    assert x.shape == (10_000, 2)
    # 4 standard errors of the sample mean and sd of 20 000 draws
    np.testing.assert_allclose(x.mean(0), [1.0, 2.0], atol=4 * 3.0 / np.sqrt(10_000))
    np.testing.assert_allclose(x.std(0) / np.array([0.5, 3.0]), 1, atol=4 / np.sqrt(20_000))
    expected = -0.5 * ((0.0 - 1.0) / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi) + (
        -0.5 * (2.0 / 3.0) ** 2 - np.log(3.0) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(float(fit.log_prob(jnp.array([0.0, 0.0]))), expected, rtol=1e-6)


def test_laplace_without_a_proper_mode_raises():
    # flat in x_1: the Hessian is singular everywhere
    target = Gaussian(MEAN, np.diag([1.0, 0.0, 1.0]))
    with pytest.raises(sdekit.FitError, match="not positive definite.*mean-field"):
        sdekit.fit_gaussian(target, jax.random.key(0), method="laplace")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "newton"}, ValueError,
         "method must be one of 'laplace', 'mean-field'; got 'newton'"),
        ({"steps": 0}, ValueError, "steps must be a positive int, got 0"),
        ({"starts": 2.5}, ValueError, "starts must be a positive int, got 2.5"),
        ({"learning_rate": -0.1}, ValueError, "learning_rate must be a positive number, got -0.1"),
        ({"tol": float("nan")}, ValueError, "tol must be a positive number, got nan"),
        ({"init": jnp.zeros(2)}, ValueError, r"init must have shape \(3,\), got shape \(2,\)"),
    ],
)
def test_bad_options_are_named(kwargs, error, match):
    target, _ = gaussian(False)
    with pytest.raises(error, match=match):
        sdekit.fit_gaussian(target, jax.random.key(0), **kwargs)


@pytest.mark.parametrize("key", [0, jnp.zeros(2), jax.random.split(jax.random.key(0), 2)])
def test_bad_key_is_named(key):
    target, _ = gaussian(False)
    with pytest.raises(TypeError, match="key must be one PRNG key"):
        sdekit.fit_gaussian(target, key)


def test_non_finite_start_is_named():
    def gamma_2(x):  # Gamma(2, 1) on x_0 > 0, standard normal in x_1; -inf at the origin
        x0 = jnp.where(x[0] > 0, x[0], 1.0)
        return jnp.where(x[0] > 0, jnp.log(x0) - x0, -jnp.inf) - 0.5 * x[1] ** 2

    target = sdekit.target_from_log_prob(gamma_2, dim=2)
    match = r"log_prob is -inf at the starting point \[0\. 0\.\]"
    with pytest.raises(sdekit.TargetError, match=match):
        sdekit.fit_gaussian(target, jax.random.key(0))


def test_target_spec_is_resolved():
    with pytest.raises(ValueError, match=r"init must have shape \(10,\)"):
        sdekit.fit_gaussian("funnel", jax.random.key(0), init=jnp.zeros(3))
